"""Both training loops on tiny configs: they run, write releases, and resume bit-exactly."""
import json

import pytest
import torch
from safetensors.torch import load_file

from ldmkit.config import load_config
from ldmkit.pipeline import Pipeline
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.ldm_loop import LDMRunConfig, train_ldm
from ldmkit.weights import read_release_metadata


def run_ae(out, steps, *extra):
    cfg = load_config(AutoencoderRunConfig, "tiny/autoencoder", [f"train.out_dir={out}", f"train.steps={steps}", *extra])
    return train_autoencoder(cfg)


def run_ldm(out, first_stage, steps, *extra):
    cfg = load_config(LDMRunConfig, "tiny/ldm",
                      [f"train.out_dir={out}", f"first_stage={first_stage}", f"train.steps={steps}", *extra])
    return train_ldm(cfg)


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    return run_ae(tmp_path_factory.mktemp("ae"), 4)


def assert_same_tensors(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_autoencoder_release(tiny_ae):
    meta = read_release_metadata(tiny_ae)
    assert meta["kind"] == "autoencoder" and meta["config"]["ch"] == 8
    assert meta["scale_factor"] > 0
    assert (tiny_ae.parent / "events.jsonl").read_text().count("\n") == 4
    assert (tiny_ae.parent / "samples" / "recon_final.png").is_file()


def test_autoencoder_resume_is_bit_exact(tmp_path, tiny_ae):
    # disc_start=2 in the tiny preset: the resumed half runs the discriminator too
    run_ae(tmp_path / "b", 2)
    resumed = run_ae(tmp_path / "b", 4)
    straight = run_ae(tmp_path / "a", 4)
    assert_same_tensors(straight, resumed)


def test_ldm_trains_samples_and_resumes(tmp_path, tiny_ae):
    straight = run_ldm(tmp_path / "a", tiny_ae, 4)
    run_ldm(tmp_path / "b", tiny_ae, 2)
    resumed = run_ldm(tmp_path / "b", tiny_ae, 4)
    assert_same_tensors(straight, resumed)
    events = [json.loads(l) for l in (tmp_path / "a" / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [1, 2, 3, 4] and all("loss" in e for e in events)

    pipe = Pipeline.load(straight)
    assert pipe.cfg.conditioner.num_classes == 18
    imgs = pipe(class_labels=[0, 1], num_inference_steps=3, seeds=[5, 6], output_type="pt")
    assert imgs.shape == (2, 3, 16, 16) and imgs.abs().max() <= 1
    # image k depends on its own seed only, not on the batch it was drawn in
    alone = pipe(class_labels=[1], num_inference_steps=3, seeds=[6], output_type="pt")
    torch.testing.assert_close(alone[0], imgs[1], atol=1e-5, rtol=0)
    pil = pipe(class_labels=[3], num_inference_steps=2, seeds=[1])
    assert pil[0].size == (16, 16)


def test_ldm_rejects_mismatched_latent_channels(tmp_path, tiny_ae):
    from ldmkit.config import ConfigError

    with pytest.raises(ConfigError, match="unet.in_channels"):
        run_ldm(tmp_path, tiny_ae, 1, "unet.in_channels=4")


def test_autoencoder_release_round_trip_and_eval(tmp_path, tiny_ae):
    from ldmkit.autoencoder import load_autoencoder
    from ldmkit.evaluation.autoencoder_report import evaluate_autoencoder

    model, cfg, scale = load_autoencoder(tiny_ae)
    saved = load_file(str(tiny_ae))
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert scale == read_release_metadata(tiny_ae)["scale_factor"] and cfg.ch == 8
    report = evaluate_autoencoder(tiny_ae, out=tmp_path)
    assert report["n_images"] == 6 and 0 < report["psnr"] < 100 and -1 <= report["ssim"] <= 1
    assert json.loads((tmp_path / "report.json").read_text())["psnr"] == report["psnr"]
    assert (tmp_path / "reconstructions.png").is_file()
