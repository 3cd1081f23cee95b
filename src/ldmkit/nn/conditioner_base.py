"""The one protocol every condition encoder implements, so Pipeline and the training loop treat them alike.

A conditioner reads one batch field (``input_key``) and turns it into the UNet's cross-attention context
(B, T, D). ``null`` gives the unconditional input of the same kind (null class, empty caption, empty layout)
and ``drop`` swaps samples for it at random, which is how one model learns both halves of classifier-free
guidance. The values are what the batch holds: LongTensor (B,) labels, list[str] captions, (B, N, 5) boxes.
"""
from __future__ import annotations

from typing import Any, Union

import torch
from torch import Tensor, nn

ConditionValues = Union[Tensor, list[str]]


class Conditioner(nn.Module):
    """Base class: subclasses set ``input_key`` / ``embed_dim`` and implement ``forward`` and ``null``."""

    input_key: str = ""
    embed_dim: int = 0

    def forward(self, values: Any) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def null(self, n: int, device: torch.device | str | None = None) -> ConditionValues:  # pragma: no cover
        raise NotImplementedError

    def drop(self, values: ConditionValues, p: float,
             generator: torch.Generator | list[torch.Generator] | None = None) -> ConditionValues:
        """Replace each sample by the null input with probability ``p`` (condition dropout for CFG training).

        Tensors: the draw happens on ``values.device``, so ``generator`` must live there. Lists of str have no
        device: the draw happens on ``generator.device`` (CPU when no generator is given). One uniform number
        is drawn per sample whatever p is, so the generator advances the same way for p = 0, 1 or between.
        A list of generators (one per sample) draws sample k's number from generator k, on its device.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}.drop: p must be in [0, 1], got {p}")
        if isinstance(values, str):
            raise TypeError(f"{type(self).__name__}.drop: expected a list of str, got one str")
        n = values.shape[0] if isinstance(values, Tensor) else len(values)
        if isinstance(generator, (list, tuple)):
            if len(generator) != n:
                raise ValueError(f"{type(self).__name__}.drop: {len(generator)} generators for {n} samples")
            u = torch.stack([torch.rand((), generator=g, device=g.device).cpu() for g in generator])
        else:
            device = values.device if isinstance(values, Tensor) else (generator.device if generator is not None
                                                                        else "cpu")
            u = torch.rand(n, generator=generator, device=device)
        mask = u < p  # rand in [0, 1): p=0 keeps all
        if isinstance(values, Tensor):
            mask = mask.to(values.device)
            null = self.null(n, values.device)
            return torch.where(mask.view(n, *[1] * (values.dim() - 1)), null.to(values.dtype), values)
        values = list(values)
        null = self.null(len(values))
        return [e if m else v for v, e, m in zip(values, null, mask.tolist())]
