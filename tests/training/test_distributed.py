"""Data-parallel training (2 gloo processes on CPU) and gradient accumulation match one process with the
same global batch, for both loops: the per-sample random streams and the rank-sliced batch order make
the split invisible up to float rounding."""
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from ldmkit.config import ConfigError, load_config
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.checkpoint import load_checkpoint
from ldmkit.training.ldm_loop import LDMRunConfig, train_ldm

torch.set_num_threads(1)  # two ranks share a 2-core machine
AE_STEPS, LDM_STEPS = 3, 3
# Adam divides by sqrt(v) + eps: the zero-initialised layers' first gradients (~1e-10, under eps) come
# out of any re-ordered float32 sum (all-reduce, accumulation) with ~10 % error, and Adam turns that into
# weight differences of ~1e-2 x lr (1e-5 at the presets' lr 1e-3). At lr 1e-5 they are ~1e-8, far inside
# the 1e-6 tolerance, while a wrong split (other noise or other images) moves weights by ~lr, far outside.
LR = "train.lr=1e-5"


def ae_cfg(out, *extra):
    return load_config(AutoencoderRunConfig, "tiny/autoencoder",
                       [f"train.out_dir={out}", f"train.steps={AE_STEPS}", "train.sample_every=1000", LR,
                        "loss.disc_start=1000", "scale_samples=8", *extra])


def ldm_cfg(out, first_stage, *extra):
    return load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={out}", f"first_stage={first_stage}",
                                                  f"train.steps={LDM_STEPS}", "train.sample_every=1000",
                                                  "train.sample_steps=1", LR, *extra])


def _worker(rank, world, init_file, jobs):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for kind, cfg in jobs:
            (train_autoencoder if kind == "ae" else train_ldm)(cfg, resume=False)
        assert dist.is_initialized()  # the loops leave a caller's process group standing
    finally:
        dist.destroy_process_group()


def assert_close_files(a, b, atol=1e-6):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=atol, rtol=0, msg=k)


def assert_close_checkpoints(a, b, atol=1e-6):
    ma, mb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], atol=atol, rtol=0, msg=k)


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 4 (the references), and the same global batch split other ways."""
    root = tmp_path_factory.mktemp("ddp")
    ae_ref = train_autoencoder(ae_cfg(root / "ae_ref", "train.batch_size=4"), resume=False)
    ldm_ref = train_ldm(ldm_cfg(root / "ldm_ref", ae_ref, "train.batch_size=4"), resume=False)
    # in one process: batch 2 x 2 accumulated micro-batches
    train_autoencoder(ae_cfg(root / "ae_acc", "train.batch_size=2", "train.grad_accum=2"), resume=False)
    train_ldm(ldm_cfg(root / "ldm_acc", ae_ref, "train.batch_size=2", "train.grad_accum=2"), resume=False)
    train_ldm(ldm_cfg(root / "ldm_b2", ae_ref, "train.batch_size=2"), resume=False)  # another global batch
    # two gloo processes: batch 2 each; batch 1 x 2 accumulated each; and the GAN phase (runs, not compared)
    jobs = [("ae", ae_cfg(root / "ae_ddp", "train.batch_size=2")),
            ("ldm", ldm_cfg(root / "ldm_ddp", ae_ref, "train.batch_size=2")),
            ("ldm", ldm_cfg(root / "ldm_ddp_acc", ae_ref, "train.batch_size=1", "train.grad_accum=2")),
            ("ae", ae_cfg(root / "ae_ddp_gan", "train.batch_size=2", "train.steps=2", "loss.disc_start=0"))]
    mp.start_processes(_worker, args=(2, str(root / "init"), jobs), nprocs=2, join=True, start_method="fork")
    return root, ae_ref, ldm_ref


def test_two_processes_match_one_ldm(runs):
    root, _, ldm_ref = runs
    for name in ("ldm_ddp", "ldm_ddp_acc"):
        assert_close_files(ldm_ref, root / name / "pipeline.safetensors")
        assert_close_checkpoints(ldm_ref.parent / "checkpoint.pt", root / name / "checkpoint.pt")
        # rank 0 alone logs, the loss averaged over ranks (= the global batch's)
        assert losses(root / name) == pytest.approx(losses(ldm_ref.parent), abs=1e-6)
        assert len(losses(root / name)) == LDM_STEPS


def assert_autoencoders_match(ref, other):
    """Every weight within 1e-6 and every logged loss within 1e-6 (relative); biases only within 10 x lr.

    The biases that a GroupNorm (or a softmax, for attention keys) cancels have a true gradient of 0; float32
    leaves ~1e-7 of noise whose sign Adam turns into steps of +-lr, whatever the batch split. They do not
    change what the model computes (the losses agree), so they are held to the noise bound only.
    """
    ta, tb = load_file(str(ref)), load_file(str(other))
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=1e-6 if not k.endswith(".bias") else 1e-4, rtol=0, msg=k)
    ea, eb = (
        [json.loads(line) for line in (p.parent / "events.jsonl").read_text().splitlines()] for p in (ref, other))
    assert len(ea) == len(eb) == AE_STEPS
    for a, b in zip(ea, eb):
        for key in ("rec_loss", "kl_loss", "total_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), key


def test_two_processes_match_one_autoencoder(runs):
    root, ae_ref, _ = runs
    assert_autoencoders_match(ae_ref, root / "ae_ddp" / "autoencoder.safetensors")
    gan = load_checkpoint(root / "ae_ddp_gan" / "checkpoint.pt")
    assert gan["step"] == 2 and len(gan["rng_ranks"]) == 2  # both ranks' RNG states, for an exact resume
    events = [json.loads(line) for line in (root / "ae_ddp_gan" / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [1, 2] and "disc_loss" in events[-1] and events[-1]["img_per_s"] > 0


def test_grad_accumulation_matches_the_large_batch(runs):
    root, ae_ref, ldm_ref = runs
    assert_close_files(ldm_ref, root / "ldm_acc" / "pipeline.safetensors")
    assert_close_checkpoints(ldm_ref.parent / "checkpoint.pt", root / "ldm_acc" / "checkpoint.pt")
    assert losses(root / "ldm_acc") == pytest.approx(losses(ldm_ref.parent), abs=1e-6)
    assert_autoencoders_match(ae_ref, root / "ae_acc" / "autoencoder.safetensors")
    # the comparison can fail: half the global batch (no accumulation) lands far outside the tolerance
    with pytest.raises(AssertionError):
        assert_close_files(ldm_ref, root / "ldm_b2" / "pipeline.safetensors", atol=1e-5)


def test_fp16_on_cpu_is_a_clear_error(tmp_path, runs):
    _, ae_ref, _ = runs
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a CUDA device"):
        train_ldm(ldm_cfg(tmp_path, ae_ref, "train.precision=fp16", "train.device=cpu"))


def test_scale_lr_is_the_original_rule(tmp_path, runs):
    _, ae_ref, _ = runs
    train_ldm(ldm_cfg(tmp_path, ae_ref, "train.steps=1", "train.batch_size=2", "train.grad_accum=2",
                      "train.scale_lr=true", "train.lr=1e-4"))  # the later lr override wins
    (event,) = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert event["lr"] == pytest.approx(1e-4 * 2 * 2)  # base lr x batch x processes (1) x accumulation


def test_fp16_grad_scaler_is_checkpointed_and_resumes_exactly(tmp_path, runs, monkeypatch):
    """The fp16 path is CUDA-only; with the check lifted it runs on CPU (autocast fp16 + GradScaler), which
    exercises the plumbing: scaled backward, unscale before clipping, the scaler's state in the checkpoint."""
    import ldmkit.training.run as run_mod

    monkeypatch.setattr(run_mod, "check_precision", lambda tc, device: None)
    _, ae_ref, _ = runs
    extra = ("train.precision=fp16", "train.grad_clip=1.0", "train.channels_last=true", "train.lr=1e-3")
    straight = train_ldm(ldm_cfg(tmp_path / "a", ae_ref, "train.steps=4", *extra))
    train_ldm(ldm_cfg(tmp_path / "b", ae_ref, "train.steps=2", *extra))
    resumed = train_ldm(ldm_cfg(tmp_path / "b", ae_ref, "train.steps=4", *extra))
    ta, tb = load_file(str(straight)), load_file(str(resumed))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    sa, sb = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert sa["scaler"] == sb["scaler"] and sa["scaler"]["scale"] > 0
    # fp16 arithmetic really ran: the losses after the first step differ from an fp32 run's
    fp32 = train_ldm(ldm_cfg(tmp_path / "c", ae_ref, "train.steps=4", *extra[1:]))
    assert losses(tmp_path / "a")[1:] != pytest.approx(losses(fp32.parent)[1:], abs=1e-7)
