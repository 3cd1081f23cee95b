"""``ldmkit train-classifier`` on a tiny pipeline, then ``ldmkit sample --classifier``; one-line errors."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ldmkit.autoencoder import AutoencoderConfig
from ldmkit.cli.main import main
from ldmkit.config import to_dict
from ldmkit.data import DataConfig
from ldmkit.diffusion import ScheduleConfig
from ldmkit.nn import ConditionerConfig, UNetConfig, load_noisy_classifier
from ldmkit.pipeline import Pipeline, PipelineConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster

DATA = DataConfig(name="shapes", image_size=16, channels=3, shapes_size=48)  # 48 train, 4 test items


def tiny_pipeline(path, kind: str = "class"):
    cfg = PipelineConfig(
        autoencoder=AutoencoderConfig(resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=3,
                                      embed_dim=3),
        unet=UNetConfig(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), num_head_channels=8, context_dim=16 if kind == "class" else None),
        conditioner=ConditionerConfig(kind=kind, num_classes=18, embed_dim=16),
        diffusion=ScheduleConfig(timesteps=50), scale_factor=0.7)
    torch.manual_seed(0)
    Pipeline(cfg).save(path, {"data": to_dict(DATA)})
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    pipe = tiny_pipeline(root / "pipeline.safetensors")
    code = main(["train-classifier", str(pipe), "--steps", "3", "--batch-size", "8", "--model-channels", "8",
                 "--eval-n", "4", "--device", "cpu"])
    return code, root


def test_train_classifier_writes_a_loadable_release(trained, capsys):
    code, root = trained
    assert code == 0
    clf = load_noisy_classifier(root / "classifier.safetensors")  # default: beside the pipeline
    meta = clf.trained_on
    assert meta["steps"] == 3 and meta["heldout_n"] == 4 and meta["scale_factor"] == pytest.approx(0.7)
    assert list(meta["heldout_accuracy"]) == ["0", "12", "25", "37", "49"]  # t = 0, T/4, T/2, 3T/4, T - 1
    assert all(0.0 <= a <= 1.0 for a in meta["heldout_accuracy"].values())
    assert meta["diffusion"]["timesteps"] == 50 and meta["data"]["name"] == "shapes"
    assert (clf.cfg.in_channels, clf.cfg.num_classes) == (3, 18)
    # the training set was encoded once, into a cache beside the pipeline
    assert len(list((root / "latent_cache").glob("shapes-train-*/index.json"))) == 1


def test_sample_with_the_classifier(trained):
    _, root = trained
    out = root / "samples"
    code = main(["sample", str(root / "pipeline.safetensors"), "--class", "2", "--n", "2", "--steps", "3",
                 "--sampler", "heun", "--classifier", str(root / "classifier.safetensors"), "--classifier-scale", "4",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0
    meta = json.loads(Image.open(next(out.glob("0*.png"))).text["ldmkit"])
    assert meta["classifier_scale"] == 4.0 and meta["classifier"].endswith("classifier.safetensors")


def test_bad_inputs_are_one_line_errors(trained, tmp_path, capsys):
    _, root = trained
    assert main(["train-classifier", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "nope.safetensors: pipeline file not found" in err and err.count("\n") == 1
    unconditional = tiny_pipeline(tmp_path / "uncond.safetensors", kind="none")
    assert main(["train-classifier", str(unconditional), "--device", "cpu"]) == 2
    assert "needs a class-conditional pipeline (conditioner.kind=none)" in capsys.readouterr().err
    assert main(["sample", str(root / "pipeline.safetensors"), "--classifier", str(tmp_path / "missing.safetensors"),
                 "--device", "cpu", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "missing.safetensors: file not found" in err and err.count("\n") == 1
    (tmp_path / "junk.safetensors").write_text("junk")
    assert main(["sample", str(root / "pipeline.safetensors"), "--classifier", str(tmp_path / "junk.safetensors"),
                 "--device", "cpu", "--out", str(tmp_path / "s")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
