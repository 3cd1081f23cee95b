"""Progress for humans (tqdm: loss, it/s, ETA) and a JSON-lines event file for tools."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLogger:
    def __init__(self, out_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.events = Path(out_dir) / "events.jsonl"
        self.total = total_steps
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, disable=not enabled,
                        file=sys.stderr, mininterval=1.0)
        self._t0, self._step0 = time.perf_counter(), start_step

    def step(self, n: int = 1) -> None:
        self.bar.update(n)

    def log(self, step: int, values: dict[str, Any], batch_size: int | None = None) -> None:
        """Write one event line and show the scalar values on the progress bar."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._step0) / elapsed if elapsed > 0 else 0.0
        event = {"step": step, "time": round(elapsed, 3), "it_per_s": round(rate, 3), **values}
        if batch_size:
            event["img_per_s"] = round(rate * batch_size, 2)
        if rate > 0:
            event["eta_s"] = round((self.total - step) / rate, 1)
        with self.events.open("a") as f:
            f.write(json.dumps(event) + "\n")
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if isinstance(v, float)}, refresh=False)

    def write(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
