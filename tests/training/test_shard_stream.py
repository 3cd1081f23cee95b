"""Training on tar shards: ranks read disjoint shards covering the set, the stream resumes at exactly the next
sample (alone, through train-ldm, and under 2 gloo processes), and a broken shard stops a run with one line."""
import logging

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file

from ldmkit.cli.main import main
from ldmkit.config import load_config
from ldmkit.data import DataConfig, DataError, build_dataset
from ldmkit.data.shard_writer import write_shards
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.checkpoint import load_checkpoint
from ldmkit.training.ldm_loop import LDMRunConfig, train_ldm
from ldmkit.training.shard_stream import ShardStream
from ldmkit.training.stream import make_stream

torch.set_num_threads(1)
N = 23  # samples: 8 shards of 3 (the last holds 2), so epochs end mid-batch


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(12 if c == "a" else 11):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.png")
    out = tmp_path_factory.mktemp("shards")
    write_shards(root, out, per_shard=3)
    return out


def source(root, **kw):
    return build_dataset(DataConfig(name="webdataset", root=str(root), image_size=16, **kw), "train")


def keys(batches):
    return [k for b in batches for k in b["key"]]


def take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_ranks_read_disjoint_shards_that_cover_the_set(shards):
    ds = source(shards, shuffle_buffer=4)
    everything = {it["key"] for it in ds}
    assert len(everything) == N
    assert isinstance(make_stream(ds, 2, seed=0), ShardStream)
    streams = [ShardStream(ds, 2, seed=0, rank=r, world_size=2) for r in range(2)]
    orders = []
    for epoch in range(3):
        seen = [[raw.name for raw, _ in s.epoch_samples(epoch)] for s in streams]
        assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == everything
        assert all(len(set(s)) == len(s) for s in seen)
        orders.append([s.shard_order(epoch) for s in streams])
    assert orders[0] != orders[1]  # each epoch deals the shards anew
    assert sorted(orders[0][0] + orders[0][1]) == list(range(8))
    with pytest.raises(DataError, match="8 shard.* for 9 processes"):
        ShardStream(ds, 2, seed=0, rank=0, world_size=9)


def test_resumed_stream_yields_exactly_the_uninterrupted_sequence(shards, caplog):
    ds = source(shards, shuffle_buffer=5, flip=True)
    straight = take(ShardStream(ds, 5, seed=3), 12)  # 60 samples: two epoch ends inside batches
    assert len(set(keys(straight[:4]))) == 20 and sorted(keys(straight[:5])[:N]) == sorted(it["key"] for it in ds)
    first = ShardStream(ds, 5, seed=3)
    take(first, 7)
    state = {"ranks": [first.state_dict()]}  # as the checkpoint holds it
    assert state["ranks"][0]["epoch"] == 1 and state["ranks"][0]["consumed"] == 35 - N
    resumed = ShardStream(ds, 5, seed=3)
    resumed.load_state_dict(state)
    for a, b in zip(straight[7:], take(resumed, 5)):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])  # same samples, same flips
    plain = {it["key"]: it["image"] for it in ds}  # shard order, never flipped
    flips = [not torch.equal(x, plain[k]) for b in straight for k, x in zip(b["key"], b["image"])]
    assert all(torch.equal(x, plain[k].flip(-1)) for b in straight for k, x in zip(b["key"], b["image"])
               if not torch.equal(x, plain[k]))
    assert 0 < sum(flips) < len(flips)  # per-sample flips, drawn by the stream (and replayed on resume)

    # another process count: no exact continuation exists, the next epoch starts
    other = ShardStream(ds, 5, seed=3, rank=1, world_size=2)
    with caplog.at_level(logging.WARNING, "ldmkit.training"):
        other.load_state_dict(state)
    assert (other.epoch, other.consumed) == (2, 0) and "for 1 process(es), this run has 2" in caplog.text
    # other shards than the checkpoint's: refused
    moved = source(shards, shards="shard-{00000..00006}.tar", shuffle_buffer=5)
    with pytest.raises(DataError, match="not the shards of the checkpoint"):
        ShardStream(moved, 5, seed=3).load_state_dict(state)


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    return train_autoencoder(load_config(AutoencoderRunConfig, "tiny/autoencoder",
                                         [f"train.out_dir={out}", "train.steps=2", "scale_samples=8"]))


def ldm_overrides(out, ae, shards, steps, *extra):
    return [f"train.out_dir={out}", f"first_stage={ae}", "data.name=webdataset", f"data.root={shards}",
            "data.shuffle_buffer=4", "conditioner.num_classes=2", f"train.steps={steps}", "train.batch_size=3",
            "train.ckpt_every=2", "train.sample_every=1000", "train.sample_steps=1", "train.lr=1e-5",
            "train.num_threads=1", *extra]


def assert_same_weights(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_train_ldm_on_shards_resumes_bit_identically(tmp_path, tiny_ae, shards):
    cfg = lambda out, steps: load_config(LDMRunConfig, "tiny/ldm", ldm_overrides(out, tiny_ae, shards, steps))
    straight = train_ldm(cfg(tmp_path / "straight", 9))
    train_ldm(cfg(tmp_path / "stopped", 5))  # "interrupted" after 5 steps: 15 samples
    assert load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")["stream"]["ranks"][0]["consumed"] == 15
    resumed = train_ldm(cfg(tmp_path / "stopped", 9))  # 27 samples: into the second epoch
    assert_same_weights(straight, resumed)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt")["stream"] for d in ("straight", "stopped"))
    assert a == b and a["ranks"][0]["epoch"] == 1 and a["ranks"][0]["consumed"] == 27 - N


def _ddp_worker(rank, world, init_file, jobs):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for cfg, resume in jobs:
            train_ldm(cfg, resume=resume)
    finally:
        dist.destroy_process_group()


def test_two_processes_checkpoint_their_own_positions_and_resume(tmp_path, tiny_ae, shards):
    cfg = lambda steps: load_config(LDMRunConfig, "tiny/ldm", ldm_overrides(tmp_path / "run", tiny_ae, shards, steps))
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), [(cfg(2), False), (cfg(6), True)]), nprocs=2, join=True)
    ranks = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["stream"]["ranks"]
    assert len(ranks) == 2 and not set(ranks[0]["shards"]) & set(ranks[1]["shards"])  # each its own shards
    # each process resumed its own position: where its stream stands after 6 uninterrupted batches
    ds = source(shards, shuffle_buffer=4)
    for r in range(2):
        alone = ShardStream(ds, 3, seed=0, rank=r, world_size=2)
        take(alone, 6)
        assert ranks[r] == alone.state_dict()


def test_a_broken_shard_stops_train_ldm_with_one_line(tmp_path, tiny_ae, shards, capsys):
    broken = tmp_path / "shards"
    broken.mkdir()
    for p in shards.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    data = (broken / "shard-00004.tar").read_bytes()
    (broken / "shard-00004.tar").write_bytes(data[:1200])  # cut inside a member
    assert main(["train-ldm", "tiny/ldm", *ldm_overrides(tmp_path / "run", tiny_ae, broken, 20)]) == 2
    err = capsys.readouterr().err
    # one line (the progress bar may have printed before it)
    assert f"ldmkit: error: {broken / 'shard-00004.tar'}: corrupt tar shard (unexpected end of data)\n" in err
    (broken / "shard-00004.tar").unlink()
    overrides = ldm_overrides(tmp_path / "run", tiny_ae, broken, 20, "data.shards=shard-{00000..00007}.tar")
    assert main(["train-ldm", "tiny/ldm", *overrides, "--no-resume"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ldmkit: error: data.shards: shard {broken / 'shard-00004.tar'} not found"]
    # shards have no index to keep latents by: cache-latents says so (--embeddings would cache text only)
    assert main(["cache-latents", "tiny/ldm", *ldm_overrides(tmp_path / "run", tiny_ae, shards, 1)]) == 2
    assert "data.name: webdataset is streamed from tar shards" in capsys.readouterr().err
