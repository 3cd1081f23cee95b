"""`ldmkit fine-tune`: a released SD-structured checkpoint adapted on a captioned image folder, with LoRA adapters
(only they train; the file they are written to rebuilds the merged release) or every UNet weight."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ldmkit.cli.main import main
from ldmkit.convert import export_diffusers, load_pipeline_any

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def base(tmp_path, tiny_sd):
    """A tiny SD 1.x-structured pipeline as a diffusers folder, and a folder of 6 captioned 64x64 images."""
    pipe = tiny_sd("1")
    # a 64-pixel release, so the fine-tune's default image size (the release's) is a CPU-sized one
    pipe.cfg = dataclasses.replace(pipe.cfg, autoencoder=dataclasses.replace(pipe.cfg.autoencoder, resolution=64))
    folder = export_diffusers(pipe, tmp_path / "base")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"a photo of sks object number {i}"})
    (images / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return pipe, folder, images


def _args(folder, images, out, *extra):
    return ["fine-tune", str(folder), str(images), *extra, "train.steps=3", "train.batch_size=2", "train.lr=1e-2",
            f"train.out_dir={out}", "train.sample_every=1000", "train.sample_steps=2", "train.ckpt_every=1000",
            "train.cache_latents=false", "train.log_every=1"]


def test_lora_fine_tune_trains_adapters_only(base, tmp_path):
    pipe, folder, images = base
    out = tmp_path / "run"
    assert main(_args(folder, images, out, "--lora", "4", "train.lora_text_encoder=true")) == 0
    lora = load_file(str(out / "lora.safetensors"))
    assert any(k.startswith("lora_unet_") for k in lora) and any(k.startswith("lora_te_") for k in lora)
    assert max(float(v.abs().max()) for k, v in lora.items() if "lora_up" in k) > 0  # B moved off zero
    tuned = load_pipeline_any(out / "pipeline.safetensors")
    # the release = the base + its LoRA file, merged (the base's own weights never trained)
    rebuilt = load_pipeline_any(folder)
    rebuilt.load_lora(out / "lora.safetensors")
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([700, 50]), torch.randn(2, 77, 64, generator=g)
    torch.testing.assert_close(tuned.unet(x, t, context=ctx), rebuilt.unet(x, t, context=ctx), rtol=0, atol=1e-5)
    assert (tuned.unet(x, t, context=ctx) - pipe.unet(x, t, context=ctx)).abs().max() > 1e-4
    assert all(torch.equal(v, pipe.autoencoder.state_dict()[k]) for k, v in tuned.autoencoder.state_dict().items())


def test_full_fine_tune_keeps_the_text_encoder_frozen(base, tmp_path):
    pipe, folder, images = base
    out = tmp_path / "full"
    assert main(_args(folder, images, out, "--full")) == 0
    assert not (out / "lora.safetensors").exists()
    tuned = load_pipeline_any(out / "pipeline.safetensors")
    changed = [k for k, v in tuned.unet.state_dict().items() if not torch.equal(v, pipe.unet.state_dict()[k])]
    assert changed
    ref = pipe.conditioner.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in tuned.conditioner.state_dict().items())  # SD's encoder is frozen
    # resume: the same command with more steps continues from the checkpoint
    assert main(_args(folder, images, out, "--full") + ["train.steps=4"]) == 0
    log = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if line.strip()]
    assert max(e.get("step", 0) for e in log) == 4


def test_missing_data_folder_is_one_line(base, tmp_path, capsys):
    _, folder, _ = base
    assert main(["fine-tune", str(folder), str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err.strip()
    assert "nope: not a folder" in err and "\n" not in err


def test_fine_tune_at_another_size_than_the_release(base, tmp_path, capsys):
    """A 64-px release tuned on 32-px crops: the same networks (convolutional), the release records 32 px, and its
    samples come out at 32 px by default; a size the first stage cannot divide is a one-line error."""
    pipe, folder, images = base
    out = tmp_path / "small"
    assert main(_args(folder, images, out, "--lora", "2", "data.image_size=32")) == 0
    tuned = load_pipeline_any(out / "pipeline.safetensors")
    f = pipe.cfg.autoencoder.downsample_factor
    assert tuned.cfg.autoencoder.resolution == 32 and tuned.cfg.latent_shape[1:] == (32 // f, 32 // f)
    assert all(torch.equal(v, pipe.autoencoder.state_dict()[k]) for k, v in tuned.autoencoder.state_dict().items())
    x = tuned(prompt=["a photo of sks object"], num_inference_steps=2, seeds=[0], output_type="pt")
    assert tuple(x.shape[-2:]) == (32, 32)
    capsys.readouterr()
    assert main(_args(folder, images, tmp_path / "bad", "--lora", "2", f"data.image_size={32 + f // 2}")) == 2
    err = capsys.readouterr().err.strip()
    assert f"data.image_size: {32 + f // 2} is not divisible by the first stage's factor {f}" in err and "\n" not in err


def test_prior_loss_and_pairs_closed_form():
    from ldmkit.training.prior import PriorPairs, prior_loss

    loss = torch.tensor([1.0, 2.0, 3.0, 5.0])
    flags = torch.tensor([False, True, False, True])
    assert float(prior_loss(loss, flags, 0.5)) == pytest.approx((1 + 3) / 2 + 0.5 * (2 + 5) / 2)
    assert float(prior_loss(loss, torch.zeros(4, dtype=torch.bool), 0.5)) == pytest.approx(11 / 4)
    pairs = PriorPairs([{"i": k} for k in range(2)], [{"i": 10 + k} for k in range(5)])
    assert len(pairs) == 10
    assert [pairs[j] for j in range(4)] == [{"i": 0, "prior": False}, {"i": 10, "prior": True},
                                            {"i": 1, "prior": False}, {"i": 11, "prior": True}]
    assert pairs[9] == {"i": 14, "prior": True} and pairs[8] == {"i": 0, "prior": False}


def test_dreambooth_prior_preservation_draws_class_images_once_and_trains(base, tmp_path, capsys, monkeypatch):
    pipe, folder, images = base
    out = tmp_path / "db"
    args = _args(folder, images, out, "--lora", "2", "--class-prompt", "a photo of an object", "--class-images", "3",
                 "--prior-weight", "0.5", "train.sample_steps=2")
    import ldmkit.training.ldm_loop as loop

    seen = []
    orig = loop.prior_loss
    monkeypatch.setattr(loop, "prior_loss", lambda l, p, w: seen.append((p.clone(), w)) or orig(l, p, w))
    assert main(args) == 0
    made = sorted((out / "class-images").glob("class_*.png"))
    assert [p.name for p in made] == ["class_00000.png", "class_00001.png", "class_00002.png"]
    rows = [json.loads(r) for r in (out / "class-images" / "metadata.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["a photo of an object"] * 3
    assert Image.open(made[0]).size == (64, 64)
    assert seen and all(w == 0.5 for _, w in seen) and any(bool(p.any()) for p, _ in seen)
    cfg = (out / "config.yaml").read_text()
    assert "prior_data:" in cfg and "class-images" in cfg
    # a second run (more steps) keeps the class images it has
    stamp = made[0].stat().st_mtime_ns
    assert main(args + ["train.steps=4"]) == 0
    assert made[0].stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert main(_args(folder, images, tmp_path / "db2", "--class-prompt", " ")) == 2
    err = capsys.readouterr().err.strip()
    assert "--class-prompt: expected the class's caption" in err and "\n" not in err


def test_bf16_lora_keeps_frozen_weights_in_bf16_and_releases_the_base_as_stored(base, tmp_path, monkeypatch):
    # a bf16 LoRA run stores the frozen UNet / text tower in bf16 (no float32 master copy: half the memory at SD's
    # size) with float32 adapters, checkpoints activations when asked, and merges its adapters into the base as it
    # is on disk, so the release equals `merge-lora` of its own file on the base to float32 precision
    from ldmkit.training import adapters

    seen = {}
    real = adapters.add_adapters

    def spy(pipe, tc, parts):
        n = real(pipe, tc, parts)
        seen["frozen"] = {p.dtype for m in (pipe.unet, pipe.conditioner) for p in m.parameters() if not p.requires_grad}
        seen["trainable"] = {p.dtype for p in pipe.unet.parameters() if p.requires_grad}
        seen["checkpointing"] = pipe.unet.cfg.use_checkpoint
        return n

    monkeypatch.setattr("ldmkit.training.ldm_loop.add_adapters", spy)
    _, folder, images = base
    out = tmp_path / "bf16"
    assert main(_args(folder, images, out, "--lora", "4", "train.precision=bf16", "unet.use_checkpoint=true")
                + ["train.sample_every=2"]) == 0
    assert seen == {"frozen": {torch.bfloat16}, "trainable": {torch.float32}, "checkpointing": True}
    assert (out / "samples" / "samples_0000002.png").is_file()  # sampled mid-run with the half-precision weights
    tuned = load_pipeline_any(out / "pipeline.safetensors")
    rebuilt = load_pipeline_any(folder)
    rebuilt.load_lora(out / "lora.safetensors")
    rebuilt.merge_lora()
    for name in ("unet", "conditioner"):
        ref = getattr(rebuilt, name).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in getattr(tuned, name).state_dict().items()), name
    assert tuned.cfg.autoencoder.resolution == 64 and tuned.unet.cfg.use_checkpoint


def test_bad_inputs_are_one_line_errors_and_write_nothing(base, tmp_path, capsys):
    _, folder, images = base

    def fails(args, code, *needles):
        capsys.readouterr()
        try:
            got = main(args)
        except SystemExit as e:  # argparse's usage errors exit 2
            got = e.code
        assert got == code
        err = capsys.readouterr().err.strip()
        assert all(n in err for n in needles) and "\n" not in err and "Traceback" not in err, err

    out = tmp_path / "zero"
    fails(_args(folder, images, out, "--lora", "0"), 2, "--lora", "expected an integer >= 1")
    assert not out.exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in images.glob("*.png"):
        (bare / f.name).write_bytes(f.read_bytes())
    fails(_args(folder, bare, tmp_path / "nocap"), 2, "none of the 6 images has a caption", "metadata.jsonl")
    assert not (tmp_path / "nocap" / "checkpoint.pt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(_args(folder, empty, tmp_path / "none"), 2, "no images", str(empty))
    # some captions missing: counted, and the run trains (the others as the empty prompt)
    for i in range(2):
        (bare / f"{i}.txt").write_text("a photo of sks object\n")
    capsys.readouterr()
    assert main(_args(folder, bare, tmp_path / "some")) == 0
    assert "4 of 6 images have no caption (4 missing): they train as the empty prompt" in capsys.readouterr().err
