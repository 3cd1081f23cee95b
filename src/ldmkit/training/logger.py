"""Progress for humans (tqdm: loss, it/s, ETA), a JSON-lines event file for tools, optional TensorBoard."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm


def _tensorboard_writer(log_dir: Path):
    """A SummaryWriter, or None when the ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


class RunLogger:
    """Rank 0's logger (``enabled=False`` elsewhere).

    On resume the event file is cut back to ``start_step``: the steps a killed run logged after its last
    checkpoint are run again, and each step should appear once.
    """

    def __init__(self, out_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 tensorboard: bool = False):
        self.enabled = enabled
        self.events = Path(out_dir) / "events.jsonl"
        self.total = total_steps
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, disable=not enabled,
                        file=sys.stderr, mininterval=1.0)
        self._t0, self._step0 = time.perf_counter(), start_step
        self.tb = None
        if enabled:
            self._truncate(start_step)
            if tensorboard:
                self.tb = _tensorboard_writer(Path(out_dir) / "tensorboard")
                if self.tb is None:
                    self.write("train.tensorboard=true but the tensorboard package is not installed "
                               "(pip install tensorboard); logging to events.jsonl only")

    def _truncate(self, start_step: int) -> None:
        if not self.events.exists():
            return
        lines = self.events.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= start_step]
        if len(kept) != len(lines):
            self.events.write_text("".join(line + "\n" for line in kept))

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation, a sample grid) out of the logged time and throughput."""
        self._t0 += seconds

    def step(self, n: int = 1) -> None:
        self.bar.update(n)

    def log(self, step: int, values: dict[str, Any], batch_size: int | None = None) -> None:
        """Write one event line and show the scalar values on the progress bar.

        ``batch_size`` is the global batch (images per optimiser step over every rank), for img/s.
        """
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._step0) / elapsed if elapsed > 0 else 0.0
        event = {"step": step, "time": round(elapsed, 3), "it_per_s": round(rate, 3), **values}
        if batch_size:
            event["img_per_s"] = round(rate * batch_size, 2)
        if rate > 0:
            event["eta_s"] = round((self.total - step) / rate, 1)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            event["max_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        with self.events.open("a") as f:
            f.write(json.dumps(event) + "\n")
        if self.tb is not None:
            for k, v in event.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if isinstance(v, float)}, refresh=False)

    def write(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
