"""`ldmkit cache-latents`: sharded moments (and mirrored ones), used by train-ldm, keyed by the autoencoder."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.autoencoder import Autoencoder, load_autoencoder
from ldmkit.cli.main import main
from ldmkit.config import load_config
from ldmkit.data import build_dataset
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.latents import INDEX, LatentCache, LatentSource, ShardedLatentCache, cache_dir, canonical
from ldmkit.training.ldm_loop import LDMRunConfig, train_ldm
from ldmkit.training.seeding import sample_generators
from ldmkit.weights import load_release, save_release

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    return train_autoencoder(load_config(AutoencoderRunConfig, "tiny/autoencoder",
                                         [f"train.out_dir={out}", "train.steps=2", "scale_samples=8"]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 11 random 20x20 images: 19 train items (every 10th file is held out)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(11):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.png")
    return root


def own_copy(ae, tmp_path):
    """The cache lives beside the first stage: each test gets its own autoencoder file."""
    dst = tmp_path / "ae" / "autoencoder.safetensors"
    dst.parent.mkdir()
    shutil.copy(ae, dst)
    return dst


def folder_overrides(ae, folder):
    return [f"first_stage={ae}", "data.name=image_folder", f"data.root={folder}", "data.flip=true",
            "conditioner.num_classes=2"]


def encode_calls(monkeypatch):
    calls = []
    real = Autoencoder.encode_moments

    def spy(self, x):
        calls.append(len(x))
        return real(self, x)

    monkeypatch.setattr(Autoencoder, "encode_moments", spy)
    return calls


def test_cache_latents_writes_shards_with_mirror_images(tmp_path, tiny_ae, folder, monkeypatch):
    ae = own_copy(tiny_ae, tmp_path)
    overrides = folder_overrides(ae, folder)
    assert main(["cache-latents", "tiny/ldm", *overrides, "--shard-size", "8", "--batch-size", "4"]) == 0
    cfg = load_config(LDMRunConfig, "tiny/ldm", overrides)
    path = cache_dir(ae, cfg.data, "fp32")
    index = json.loads((path / INDEX).read_text())
    assert index["n"] == 19 and index["flips"] and index["shards"] == [f"shard-0000{k}.safetensors" for k in range(3)]
    cache = LatentCache.load(path)
    images = torch.stack([build_dataset(canonical(cfg.data), "train")[i]["image"] for i in range(19)])
    model = load_autoencoder(ae)[0]
    with torch.no_grad():
        mean, std = model.encode_moments(images)
        mean_flip, std_flip = model.encode_moments(images.flip(-1))
    for got, want in ((cache.mean, mean), (cache.std, std), (cache.mean_flip, mean_flip), (cache.std_flip, std_flip)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(cache.mean, cache.mean_flip)  # random images are not mirror-symmetric
    # a cache too large for memory is read row by row from the shards: the same lookups
    lazy = LatentCache.load(path, max_bytes=0)
    assert isinstance(lazy, ShardedLatentCache) and len(lazy) == 19 and lazy.flips
    index, flip = torch.tensor([18, 0, 7, 8, 9, 16]), torch.tensor([True, False, True, False, True, False])
    for got, want in zip(lazy.moments(index, flip), cache.moments(index, flip)):
        assert torch.equal(got, want)

    # an interrupted cache (no index, a shard missing) re-encodes only what is missing
    (path / INDEX).unlink()
    (path / "shard-00001.safetensors").unlink()
    calls = encode_calls(monkeypatch)
    assert main(["cache-latents", "tiny/ldm", *overrides, "--shard-size", "8", "--batch-size", "4"]) == 0
    assert calls == [4, 4, 4, 4]  # 8 items, 2 batches of 4, each with its mirror
    torch.testing.assert_close(LatentCache.load(path).mean, cache.mean, atol=0, rtol=0)


def test_train_ldm_reads_the_cache_and_mirrors_images_with_latents(tmp_path, tiny_ae, folder, monkeypatch):
    ae = own_copy(tiny_ae, tmp_path)
    overrides = folder_overrides(ae, folder)
    assert main(["cache-latents", "tiny/ldm", *overrides]) == 0
    calls = encode_calls(monkeypatch)
    train_ldm(load_config(LDMRunConfig, "tiny/ldm", [*overrides, f"train.out_dir={tmp_path / 'run'}", "train.steps=2",
                                                     "train.sample_every=1000", "train.sample_steps=1"]))
    assert calls == []  # every latent came from the cache
    assert (tmp_path / "run" / "pipeline.safetensors").is_file()

    # each sample's generator picks the original or the mirror, and the image is mirrored alike
    cfg = load_config(LDMRunConfig, "tiny/ldm", overrides)
    cache = LatentCache.load(cache_dir(ae, cfg.data, "fp32"))
    cache.std, cache.std_flip = torch.zeros_like(cache.std), torch.zeros_like(cache.std_flip)  # z = mean exactly
    ds = build_dataset(canonical(cfg.data), "train")
    index = torch.arange(16) % 19
    batch = {"index": index, "image": torch.stack([ds[int(i)]["image"] for i in index])}
    z, out = LatentSource(None, 1.0, torch.device("cpu"), cache).latents(batch, sample_generators(0, 0, 0, 16))
    flipped = [torch.equal(z[k], cache.mean_flip[index[k]]) for k in range(16)]
    for k in range(16):
        assert flipped[k] or torch.equal(z[k], cache.mean[index[k]])
        assert torch.equal(out["image"][k], batch["image"][k].flip(-1) if flipped[k] else batch["image"][k])
    assert any(flipped) and not all(flipped)


def test_changed_autoencoder_invalidates_the_cache(tmp_path, tiny_ae, monkeypatch):
    ae = own_copy(tiny_ae, tmp_path)
    overrides = [f"first_stage={ae}"]
    cfg = load_config(LDMRunConfig, "tiny/ldm", overrides)
    assert main(["cache-latents", "tiny/ldm", *overrides]) == 0
    old_path = cache_dir(ae, cfg.data, "fp32")
    old = LatentCache.load(old_path)
    assert old is not None and len(old) == 64 and not old.flips  # shapes ignore data.flip

    # the same file name, other weights: a fine-tuned or retrained autoencoder
    tensors, meta = load_release(ae)
    tensors["encoder.conv_in.bias"] = tensors["encoder.conv_in.bias"] + 0.5
    save_release(ae, tensors, meta)
    new_path = cache_dir(ae, cfg.data, "fp32")
    assert new_path != old_path and LatentCache.load(new_path) is None
    # so does another data config or encode precision
    assert cache_dir(ae, load_config(LDMRunConfig, "tiny/ldm", [*overrides, "data.seed=1"]).data, "fp32") != new_path
    assert cache_dir(ae, cfg.data, "bf16") != new_path

    # train-ldm over the changed autoencoder encodes afresh (an in-memory set: the first run writes the cache)
    calls = encode_calls(monkeypatch)
    train_ldm(load_config(LDMRunConfig, "tiny/ldm", [*overrides, f"train.out_dir={tmp_path / 'run'}", "train.steps=1",
                                                     "train.sample_every=1000", "train.sample_steps=1"]))
    assert sum(calls) == 64
    new = LatentCache.load(new_path)
    model = load_autoencoder(ae)[0]
    images = build_dataset(cfg.data, "train").images_tensor()
    with torch.no_grad():
        torch.testing.assert_close(new.mean, model.encode_moments(images)[0], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(new.mean, old.mean, atol=1e-3)
    torch.testing.assert_close(LatentCache.load(old_path).mean, old.mean, atol=0, rtol=0)  # the old one is left alone
