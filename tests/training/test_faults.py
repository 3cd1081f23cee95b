"""Faults during a run: a SIGKILL inside the checkpoint write, a full disk while saving, non-finite losses and
gradients. Each leaves the last good checkpoint loadable and says so in one line."""
from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import time

import pytest
import torch

from ldmkit.cli.main import main
from ldmkit.config import RunStopped, load_config
from ldmkit.training import checkpoint as checkpoint_mod
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.checkpoint import load_checkpoint
from ldmkit.training.distributed import Dist
from ldmkit.training.guard import StepGuard, grad_norm

ARGS = ["train.steps=6", "train.ckpt_every=2", "train.sample_every=1000", "scale_samples=8"]


def ae_cfg(out, *extra):
    return load_config(AutoencoderRunConfig, "tiny/autoencoder", [f"train.out_dir={out}", *ARGS, *extra])


def _slow_second_write(run):
    """Child: the first checkpoint is written normally; the second one hangs halfway through its write."""
    torch.set_num_threads(1)
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 1:
            return real_save(obj, f, *a, **k)
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04" + b"\x00" * 4096)  # half a zip
            fh.flush()
            os.fsync(fh.fileno())
        time.sleep(600)

    checkpoint_mod.torch.save = save
    train_autoencoder(ae_cfg(run))


def test_sigkill_inside_the_checkpoint_write_keeps_the_previous_one(tmp_path, one_thread):
    run = tmp_path / "run"
    child = multiprocessing.get_context("fork").Process(target=_slow_second_write, args=(run,))
    child.start()
    try:
        deadline = time.monotonic() + 120
        # the second write is under way: the first checkpoint exists, the half-written temporary file beside it
        while not ((run / "checkpoint.pt").exists()
                   and [p for p in run.glob(".checkpoint.pt.*.tmp") if p.stat().st_size == 4100]):
            assert child.is_alive() and time.monotonic() < deadline, "the second write never started"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)  # inside the write of step 4
        child.join()
    finally:
        if child.is_alive():
            child.kill()
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2  # the previous checkpoint, whole
    assert list(run.glob(".checkpoint.pt.*.tmp"))  # the half-written temporary file is all that was lost
    release = train_autoencoder(ae_cfg(run))  # the same command resumes from step 2 and cleans up
    assert release.is_file() and not list(run.glob(".checkpoint.pt.*.tmp"))
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6


def test_full_disk_while_saving_stops_in_one_line(tmp_path, monkeypatch, capsys, one_thread):
    run = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint: part of it is written, then the disk is full
            with open(f, "wb") as fh:
                fh.write(b"\x00" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint_mod.torch, "save", save)
    code = main(["train-autoencoder", "tiny/autoencoder", f"train.out_dir={run}", *ARGS])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the closed progress bar: one line, no traceback
    assert code == 1 and "Traceback" not in err
    assert last.startswith("ldmkit: stopped: ") and "checkpoint of step 4" in last
    assert "No space left on device" in last and "(step 2) is intact" in last
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
    assert not list(run.glob(".checkpoint.pt.*.tmp")) and not list(run.glob("*.safetensors"))


def _nan_at(steps_bad: set[int], monkeypatch):
    """Make the autoencoder's loss NaN at the given (0-based) loop iterations."""
    from ldmkit.autoencoder import AutoencoderLoss

    real, seen = AutoencoderLoss.generator_loss, [0]

    def loss(self, *a, **k):
        out = real(self, *a, **k)
        seen[0] += 1
        if seen[0] - 1 in steps_bad:
            return out[0] * float("nan"), out[1]
        return out

    monkeypatch.setattr(AutoencoderLoss, "generator_loss", loss)


def test_a_nan_step_is_not_applied(tmp_path, monkeypatch, capsys, one_thread):
    _nan_at({3}, monkeypatch)
    release = train_autoencoder(ae_cfg(tmp_path / "run"))
    assert release.is_file()
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    # 7 batches drawn, 6 steps applied: the optimizer took 6 steps, none of them NaN
    assert ckpt["step"] == 6
    assert {int(s["step"]) for s in ckpt["opt_ae"]["state"].values()} == {6}
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert "step 4: non-finite loss: step not applied (1 in a row, 1 in all)" in capsys.readouterr().err


def test_consecutive_nan_steps_stop_the_run(tmp_path, monkeypatch, capsys, one_thread):
    _nan_at(set(range(3, 100)), monkeypatch)
    run = tmp_path / "run"
    code = main(["train-autoencoder", "tiny/autoencoder", f"train.out_dir={run}", *ARGS, "train.max_bad_steps=3"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"ldmkit: stopped: step 4: non-finite loss in 3 consecutive steps (train.max_bad_steps=3): "
                       f"the run stops; the last good checkpoint is {run / 'checkpoint.pt'} (step 2)")
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2 and not list(run.glob("*.safetensors"))


def test_guard_sees_non_finite_gradients(tmp_path):
    class Log:
        lines = []

        def write(self, m):
            self.lines.append(m)

    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.tensor([1.0, float("inf"), 0.0])
    assert not torch.isfinite(grad_norm([w]))
    guard = StepGuard(2, tmp_path / "checkpoint.pt", Log())
    assert not guard.ok(0, [torch.tensor(0.5)], grad_norm([w]), Dist(), torch.device("cpu"))
    assert "step 1: non-finite gradients" in Log.lines[0]
    w.grad = torch.ones(3)
    assert guard.ok(1, [torch.tensor(0.5)], grad_norm([w]), Dist(), torch.device("cpu"))  # the count restarts
    w.grad = torch.full((3,), float("nan"))
    assert not guard.ok(2, [torch.tensor(0.5)], grad_norm([w]), Dist(), torch.device("cpu"))
    with pytest.raises(RunStopped, match="step 4: non-finite gradients in 2 consecutive steps.*no checkpoint was"):
        guard.ok(3, [torch.tensor(0.5)], grad_norm([w]), Dist(), torch.device("cpu"))


def test_a_dead_data_loader_worker_is_reported_not_waited_on(tmp_path, monkeypatch, capsys, one_thread):
    from ldmkit.data.shapes import Shapes

    real = Shapes.__getitem__

    def item(self, index):
        info = torch.utils.data.get_worker_info()
        if info is not None and index % 7 == 3:  # a worker killed (out of memory, say) while decoding
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, index)

    monkeypatch.setattr(Shapes, "__getitem__", item)
    run = tmp_path / "run"
    start = time.monotonic()
    code = main(["train-autoencoder", "tiny/autoencoder", f"train.out_dir={run}", *ARGS, "train.num_workers=1"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and time.monotonic() - start < 120
    assert err.strip().splitlines()[-1].startswith("ldmkit: stopped: a data loader worker died (DataLoader worker")


def _ddp_train(rank, world, init_file, cfg, resume):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train_autoencoder(cfg, resume=resume)
    finally:
        dist.destroy_process_group()


def _group(cfg, init_file, resume):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ddp_train, args=(r, 2, str(init_file), cfg, resume)) for r in range(2)]
    for p in procs:
        p.start()
    return procs


def test_two_process_run_killed_on_one_rank_resumes_on_both(tmp_path, one_thread):
    """torchrun tears the group down when one worker dies: SIGKILL rank 1 mid-run, then rank 0 (blocked in its
    next collective); the same command resumes both ranks, and the result equals an uninterrupted run."""
    import json
    import random

    from safetensors.torch import load_file

    steps = ["train.steps=12", "train.batch_size=2", "loss.disc_start=1000"]
    cfg = lambda out: ae_cfg(out, *steps)  # noqa: E731
    killed = tmp_path / "killed"
    procs = _group(cfg(killed), tmp_path / "init1", resume=False)
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoint.pt").exists():
            assert all(p.is_alive() for p in procs) and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.005)
        time.sleep(random.uniform(0.0, 0.3))
        os.kill(procs[1].pid, signal.SIGKILL)
        time.sleep(0.5)
        os.kill(procs[0].pid, signal.SIGKILL)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    step = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 0 < step < 12 and not (killed / "autoencoder.safetensors").exists()
    for out, init, resume in ((killed, "init2", True), (tmp_path / "straight", "init3", False)):
        procs = _group(cfg(out), tmp_path / init, resume)
        for p in procs:
            p.join(300)
        assert [p.exitcode for p in procs] == [0, 0]
    a, b = (load_file(str(tmp_path / d / "autoencoder.safetensors")) for d in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(line)["step"] for line in (killed / "events.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 13))  # the log agrees with the checkpoint: each step once
