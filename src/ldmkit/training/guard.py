"""Steps whose loss or gradients are not finite are not applied; a run of them stops the training.

A data loader worker that dies is reported the same way (:meth:`StepGuard.next_batch`), not waited on.

One NaN batch (a corrupt image, an fp16 overflow the scaler missed) should cost one step, not the run: the
optimizer, the EMA and the step counter are left as they were, and the next batch is drawn. A model that
has diverged gives nothing but non-finite steps: after ``max_bad`` in a row the run stops with a one-line
:class:`RunStopped` that names the step and the last good checkpoint (which is never overwritten by the
diverged state). Every rank takes the same decision (one collective per step under ``torchrun``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from ..config import RunStopped


def grad_norm(params: Iterable[torch.nn.Parameter]) -> Tensor:
    """The 2-norm of all gradients (inf / nan when any entry is); a zero tensor without gradients."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: fused per-device norms
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


def clipped_norm(params, opt, scaler, grad_clip: float) -> Tensor | None:
    """Unscale and clip the gradients when ``grad_clip`` is set; the norm the guard checks (None under a loss
    scaler, which finds and skips overflowing gradients itself)."""
    if grad_clip:
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        return None if scaler.is_enabled() else norm
    return None if scaler.is_enabled() else grad_norm(params)


def skip_step(optimizers, scaler) -> None:
    """Leave the weights as they were: drop the gradients; a loss scaler halves its scale (as on an overflow)."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    if scaler.is_enabled():
        scaler.update(scaler.get_scale() * 0.5)


class StepGuard:
    def __init__(self, max_bad: int, checkpoint: Path, log):
        self.max_bad, self.checkpoint, self.log = max_bad, Path(checkpoint), log
        self.in_a_row = 0
        self.skipped = 0

    def _last_good(self) -> str:
        if not self.checkpoint.exists():
            return "no checkpoint was written yet"
        from .checkpoint import checkpoint_step  # lazily: reads the step only

        return f"the last good checkpoint is {self.checkpoint} (step {checkpoint_step(self.checkpoint)})"

    def next_batch(self, batches):
        """The next batch; a data loader worker that died (killed, out of memory) stops the run in one line."""
        try:
            return next(batches)
        except RuntimeError as e:
            if "DataLoader worker" not in str(e):
                raise
            first = " ".join(str(e).split("\n")[0].split())
            raise RunStopped(f"a data loader worker died ({first}): the run stops; {self._last_good()}; "
                             "fewer train.num_workers, or 0, need less memory") from None

    def ok(self, step: int, losses: list[Tensor], norm: Tensor | None, dist, device) -> bool:
        """True to apply the step. ``norm``: the gradients' norm (None when a loss scaler checks them)."""
        loss_ok = all(bool(torch.isfinite(v).all()) for v in losses)
        grads_ok = norm is None or math.isfinite(float(norm))
        bad = dist.any(not (loss_ok and grads_ok), device)
        if not bad:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        what = "loss" if not loss_ok else "gradients" if not grads_ok else "loss or gradients (on another rank)"
        if self.in_a_row >= self.max_bad:
            raise RunStopped(f"step {step + 1}: non-finite {what} in {self.in_a_row} consecutive steps "
                             f"(train.max_bad_steps={self.max_bad}): the run stops; {self._last_good()}")
        self.log.write(f"step {step + 1}: non-finite {what}: step not applied ({self.in_a_row} in a row, "
                       f"{self.skipped} in all)")
        return False
