"""Exponential moving average of parameters, with the original's warm-up."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps a frozen copy of ``model``'s trainable parameters; decay ramps as min(decay, (1 + n) / (10 + n)).

    The warm-up (as in the original LitEma) stops the average from being dominated by the
    random initialisation during short runs. Parameters that do not train (a LoRA run's released weights, a
    frozen text encoder) are shared with ``model``, not copied: their average is themselves, and at full size a
    copy would cost as much memory again as the weights (3.4 GB for SD's UNet in float32). Only the averaged
    parameters go into :meth:`state_dict`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
        self.model = copy.deepcopy(model, memo=dict(frozen)).eval()
        # the (ema, live) pairs that are averaged: every parameter that is not the shared frozen one
        self._pairs = [(n, e) for (n, e), p in zip(self.model.named_parameters(), model.parameters()) if e is not p]
        for _, e in self._pairs:
            e.requires_grad_(False)
        averaged = {n for n, _ in self._pairs}
        self._shared = {n for n, _ in self.model.named_parameters()} - averaged  # frozen: not in the state
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = self.decay
        if self.warmup:
            d = min(d, (1 + self.num_updates) / (10 + self.num_updates))
        live = dict(model.named_parameters())
        ema_params = [e for _, e in self._pairs]
        if ema_params:
            torch._foreach_lerp_(ema_params, [live[n].detach() for n, _ in self._pairs], 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        model = {k: v for k, v in self.model.state_dict().items() if k not in self._shared}
        return {"model": model, "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        """Also reads checkpoints written before frozen parameters were shared (their copies are skipped)."""
        saved = {k: v for k, v in state["model"].items() if k not in self._shared}
        missing, unexpected = self.model.load_state_dict(saved, strict=False)
        lost = [k for k in missing if k not in self._shared]
        if lost or unexpected:
            raise RuntimeError(f"EMA state: missing {lost[:3]}, unexpected {list(unexpected)[:3]}")
        self.num_updates = int(state["num_updates"])
