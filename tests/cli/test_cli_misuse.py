"""CLI misuse: one-line errors (``ldmkit: error: ...``), exit code 2, no traceback, nothing written."""
from __future__ import annotations

import pytest
import torch

from ldmkit.autoencoder import AutoencoderConfig
from ldmkit.cli.main import main
from ldmkit.diffusion import ScheduleConfig
from ldmkit.nn import ConditionerConfig, UNetConfig
from ldmkit.pipeline import Pipeline, PipelineConfig

NAMES = ["tee", "trouser", "bag"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = PipelineConfig(
        autoencoder=AutoencoderConfig(kind="kl", resolution=16, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                                      z_channels=3, embed_dim=3),
        unet=UNetConfig(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), num_heads=2, context_dim=8),
        conditioner=ConditionerConfig(kind="class", num_classes=3, embed_dim=8),
        diffusion=ScheduleConfig(timesteps=50), scale_factor=0.5, class_names=NAMES)
    path = tmp_path_factory.mktemp("m") / "pipeline.safetensors"
    Pipeline(cfg).save(path)
    return path


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's usage errors
        return e.code


@pytest.mark.parametrize("args, needle", [
    (["--steps", "0"], "--steps: must be >= 1, got 0"),
    (["--steps", "-5"], "--steps: must be >= 1, got -5"),
    (["--steps", "ten"], "--steps: expected an integer, got 'ten'"),
    (["--guidance", "-1"], "--guidance: must be a finite number >= 0, got -1"),
    (["--guidance", "nan"], "--guidance: must be a finite number >= 0, got nan"),
    (["--n", "0"], "--n: must be >= 1, got 0"),
    (["--size", "17"], "not divisible by the first stage's factor 2"),
    (["--size", "0"], "--size: must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--class", "sneaker"], "--class 'sneaker': unknown class (known: tee, trouser, bag)"),
    (["--class", "7"], "--class 7: out of range, the model has classes 0..2"),
    (["--sampler", "warp"], "sampler: unknown 'warp'"),
    (["--eta", "0.5", "--sampler", "dpmpp_2m"], "sampler dpmpp_2m: no option eta"),
    (["--order", "3"], "sampler ddim: no option order"),
    (["--order", "5", "--sampler", "plms"], "--order: invalid choice: 5"),
    (["--order", "1", "--sampler", "plms"], "order: PLMS takes 2, 3 or 4, got 1"),
    (["--noise-type", "brownian"], "sampler ddim: no option noise_type"),
    (["--noise-type", "pink", "--sampler", "dpmpp_2m_sde"], "--noise-type: invalid choice: 'pink'"),
    (["--prompt", "a cat"], "given, but this model is not text-conditional"),
    (["--prompt-weighting"], "--prompt-weighting given, but this model is not text-conditional"),
    (["--boxes", "[[1, 0, 0, 1, 1]]"], "--boxes given, but this model is not a layout model"),
    (["--image", "missing.png"], "--image missing.png: file not found"),
    (["--strength", "0.5"], "--strength given without --image"),
])
def test_sample_misuse(ckpt, tmp_path, capsys, args, needle):
    code = _run(["sample", str(ckpt), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert needle in err.strip().splitlines()[-1], err
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_unknown_option_and_command(tmp_path, capsys):
    assert _run(["sample", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "nope.safetensors") in err and "not found" in err, err
    assert _run(["sample", "x.safetensors", "--stepz", "3"]) == 2
    assert "unrecognized arguments: --stepz 3" in capsys.readouterr().err
    assert _run(["smaple"]) == 2
    assert "invalid choice: 'smaple'" in capsys.readouterr().err
    assert _run(["train-ldm", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldmkit: error: ") and err.count("\n") == 1 and "missing" in err, err


def test_a_seed_list_of_the_wrong_length_is_named(ckpt):
    from ldmkit.pipeline import Pipeline

    with pytest.raises(ValueError, match="got a batch of 2, but the other inputs give 3 images"):
        Pipeline.load(ckpt)([0, 1], seeds=[1, 2, 3], num_inference_steps=1)
