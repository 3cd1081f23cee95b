"""The command line: help, one-line errors with a non-zero exit, sampling with PNG metadata."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from ldmkit.cli.main import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ldmkit", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_subcommands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("train-autoencoder", "train-ldm", "eval-autoencoder", "sample", "demo"):
        assert cmd in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["train-autoencoder", "tiny/autoencoder", "model.ch=abc"], "model.ch"),
    (["train-autoencoder", "tiny/autoencoder", "model.chh=3"], "model.chh: unknown key"),
    (["train-autoencoder", "tiny/nope"], "not found"),
    (["train-ldm", "tiny/ldm", "first_stage=/nonexistent/ae.safetensors"], "first_stage"),
    (["sample", "/nonexistent/pipeline.safetensors"], "not found"),
    (["sample", "x.safetensors", "--guidance-interval", "700,100"], "--guidance-interval: expected LO,HI"),
    (["sample", "x.safetensors", "--steps", "many"], "--steps: expected an integer, got 'many'"),
])
def test_user_errors_are_one_line(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_sample_writes_pngs_with_metadata(tmp_path):
    from ldmkit.config import load_config
    from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
    from ldmkit.training.ldm_loop import LDMRunConfig, train_ldm

    ae = train_autoencoder(load_config(AutoencoderRunConfig, "tiny/autoencoder", [f"train.out_dir={tmp_path}/ae",
                                                                                    "train.steps=1"]))
    pipe = train_ldm(load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={tmp_path}/ldm", f"first_stage={ae}",
                                                           "train.steps=1", "guidance.rescale=0.7",
                                                           "guidance.interval=[0,30]"]))
    out = tmp_path / "samples"
    assert main(["sample", str(pipe), "--class", "2,5", "--n", "2", "--steps", "2", "--seed", "7",
                 "--out", str(out)]) == 0
    files = sorted(out.glob("0*.png"))
    assert len(files) == 4 and (out / "grid.png").is_file()
    meta = json.loads(Image.open(files[1]).text["ldmkit"])
    assert meta["seed"] == 8 and meta["class"] == 2 and meta["steps"] == 2 and meta["guidance"] == 3.0
    # the guidance defaults the model was trained with, unless the command line sets its own
    assert meta["guidance_rescale"] == 0.7 and meta["guidance_interval"] == [0, 30]
    assert main(["sample", str(pipe), "--class", "2", "--steps", "2", "--guidance-rescale", "0",
                 "--guidance-interval", "all", "--out", str(out / "plain")]) == 0
    meta = json.loads(Image.open(out / "plain" / "00000_seed0.png").text["ldmkit"])
    assert meta["guidance_rescale"] == 0 and meta["guidance_interval"] is None
    assert main(["sample", str(pipe), "--class", "99", "--out", str(out)]) == 2
