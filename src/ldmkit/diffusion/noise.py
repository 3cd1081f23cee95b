"""Seeded Gaussian noise and timestep draws, optionally one generator per sample.

With a list of generators, element k of the batch is drawn from generator k alone, so an image
depends only on its own seed, not on the batch size or its position in the batch. Draws always
happen on the generator's device and are then moved, so CPU generators work for any device.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def _check_per_sample(generator: Sequence[torch.Generator], batch: int) -> None:
    if len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for a batch of {batch}; pass one per sample")


def randn(shape: Sequence[int], generator: Generators = None, device: torch.device | str | None = None,
          dtype: torch.dtype | None = None) -> Tensor:
    """Standard normal noise of ``shape``, drawn in float32 then cast to ``dtype`` (default: torch's default).

    ``generator`` is None (global RNG), a ``torch.Generator``, or one generator per element of
    ``shape[0]``. ``device=None`` keeps the tensor where it was drawn.
    """
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        out = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
    else:
        _check_per_sample(generator, shape[0])
        parts = [torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generator]
        out = torch.stack([p.to(parts[0].device) for p in parts])
    return out.to(device=device if device is not None else out.device, dtype=dtype or torch.get_default_dtype())


def randint(high: int, batch: int, generator: Generators = None,
            device: torch.device | str | None = None) -> Tensor:
    """A LongTensor (batch,) uniform on {0, ..., high-1}; per-sample generators as in :func:`randn`."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        out = torch.randint(0, high, (batch,), generator=generator, device=gen_device)
    else:
        _check_per_sample(generator, batch)
        out = torch.cat([torch.randint(0, high, (1,), generator=g, device=g.device).cpu() for g in generator])
    return out.to(device if device is not None else out.device)
