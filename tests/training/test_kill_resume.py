"""A run killed with SIGKILL at an arbitrary step and resumed ends bit-identical to an uninterrupted run."""
import json
import multiprocessing
import os
import random
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from ldmkit.config import load_config
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.checkpoint import load_checkpoint
from ldmkit.training.ldm_loop import LDMRunConfig, train_ldm

torch.set_num_threads(1)
STEPS = 30


def ae_cfg(out):
    # disc_start=2 (preset): the killed and the resumed part both train the discriminator
    return load_config(AutoencoderRunConfig, "tiny/autoencoder",
                       [f"train.out_dir={out}", f"train.steps={STEPS}", "train.ckpt_every=3", "train.sample_every=1000",
                        "scale_samples=8"])


def ldm_cfg(out, first_stage):
    return load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={out}", f"first_stage={first_stage}",
                                                  f"train.steps={STEPS}", "train.ckpt_every=3",
                                                  "train.sample_every=1000", "train.sample_steps=1"])


def _train(kind, cfg):
    torch.set_num_threads(1)
    (train_autoencoder if kind == "ae" else train_ldm)(cfg)


def kill_mid_run(kind, cfg, run, rng):
    """Train in a child process; SIGKILL it a random moment after its first checkpoint appears."""
    child = multiprocessing.get_context("fork").Process(target=_train, args=(kind, cfg))
    child.start()
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():
            assert child.is_alive() and time.monotonic() < deadline, "no checkpoint before the run ended"
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == -signal.SIGKILL
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert 0 < step < STEPS and not any(run.glob("*.safetensors")), "killed too late to test a resume"
    return step


def assert_same_tensors(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def logged_steps(run):
    return [json.loads(line)["step"] for line in (run / "events.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["ae", "ldm"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, kind, tiny_first_stage):
    make = ae_cfg if kind == "ae" else (lambda out: ldm_cfg(out, tiny_first_stage))
    train = train_autoencoder if kind == "ae" else train_ldm
    kill_mid_run(kind, make(tmp_path / "killed"), tmp_path / "killed", random.Random())
    resumed = train(make(tmp_path / "killed"))  # the same command again: resumes from checkpoint.pt
    straight = train(make(tmp_path / "straight"))
    assert_same_tensors(straight, resumed)
    ca, cb = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("straight", "killed"))
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    assert ca["stream"] == cb["stream"] and torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    # the steps the killed run logged after its last checkpoint were cut, then logged again once
    assert logged_steps(tmp_path / "killed") == list(range(1, STEPS + 1))


@pytest.fixture(scope="module")
def tiny_first_stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    return train_autoencoder(load_config(AutoencoderRunConfig, "tiny/autoencoder",
                                         [f"train.out_dir={out}", "train.steps=2", "scale_samples=8"]))
