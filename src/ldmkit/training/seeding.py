"""Per-sample random streams keyed by (seed, step, position in the global batch).

Every random draw of a training step (posterior noise, masks, condition dropout, t, eps) comes from
the generator of the sample it is for, and that generator depends only on the run seed, the step and
the sample's position in the global batch. So the numbers a sample sees do not depend on how the
global batch is split: 1 process x batch 4, 2 processes x batch 2 and batch 2 x grad_accum 2 draw
the same noise for the same images, and a resumed step draws what the uninterrupted one did. Ranks
get distinct streams because they hold distinct positions.
"""
from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """A 64-bit finaliser (Steele et al. 2014): neighbouring inputs give unrelated seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def sample_seed(seed: int, step: int, position: int) -> int:
    """A 63-bit seed for one sample of one step."""
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ step) ^ position) >> 1


def sample_generators(seed: int, step: int, start: int, count: int) -> list[torch.Generator]:
    """CPU generators for global-batch positions ``start .. start + count - 1`` of ``step``.

    CPU generators on every device: the draws are the same on CPU and GPU, and cost little next to
    the model (a few small tensors per sample).
    """
    return [torch.Generator().manual_seed(sample_seed(seed, step, p)) for p in range(start, start + count)]
