"""Seeded Gaussian noise and timestep draws, optionally one generator per sample.

With a list of generators, element k of the batch is drawn from generator k alone, so an image
depends only on its own seed, not on the batch size or its position in the batch. Draws always
happen on the generator's device and are then moved, so CPU generators work for any device.
``noise_source``: the per-step noise of the stochastic sigma-space samplers, fresh Gaussian or Brownian.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from ldmkit.config import ConfigError

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


NoiseFn = Callable[[float, float], Tensor]  # (sigma, sigma_next) -> N(0, I) of x's shape


class BrownianNoise:
    """Standard-normal increments (W(sigma_next) - W(sigma)) / sqrt(|sigma - sigma_next|) of a Brownian motion
    on [sigma_min, sigma_max], one per sample (seeds drawn from per-sample generators) or one for the batch."""

    def __init__(self, x: Tensor, sigma_min: float, sigma_max: float, generator: Generators) -> None:
        try:
            import torchsde
        except ImportError as e:  # an optional dependency (pip install 'ldmkit[sde]')
            raise ConfigError("noise_type: brownian needs the torchsde package (pip install torchsde)") from e
        self.batched = isinstance(generator, (list, tuple))
        gens = generator if self.batched else [generator]
        shape = x.shape[1:] if self.batched else x.shape
        self.device, self.dtype = x.device, x.dtype
        self.trees = []
        for g in gens:
            seed = int(torch.randint(0, 2**62, (), generator=g, device=g.device if g is not None else "cpu"))
            # halfway_tree: the path depends on the seed alone, not on where and in which order it is read
            # (torchsde's BrownianTree, as k-diffusion's BrownianTreeNoiseSampler uses it)
            self.trees.append(torchsde.BrownianInterval(t0=sigma_min, t1=sigma_max, size=tuple(shape),
                                                        dtype=torch.float32, entropy=seed, tol=1e-6,
                                                        halfway_tree=True))
        self.ends = (float(self.trees[0]._start), float(self.trees[0]._end))  # the tree keeps them in float32

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        lo, hi = max(min(sigma, sigma_next), self.ends[0]), min(max(sigma, sigma_next), self.ends[1])
        w = torch.stack([tree(lo, hi) for tree in self.trees]) if self.batched else self.trees[0](lo, hi)
        # the walk runs from high sigma to low: the increment W(lo) - W(hi) = -(W(hi) - W(lo))
        return (-w / math.sqrt(hi - lo)).to(device=self.device, dtype=self.dtype)


def noise_source(kind: str, x: Tensor, sigmas: list[float], generator: Generators) -> NoiseFn:
    """The per-step noise of a stochastic sigma-space sampler over the run's ``sigmas``: "gaussian" draws a fresh
    N(0, I) per step from ``generator`` (diffusers' convention), "brownian" reads :class:`BrownianNoise`."""
    if kind == "gaussian":
        return lambda sigma, sigma_next: randn(x.shape, generator, device=x.device, dtype=x.dtype)
    if kind == "brownian":
        positive = [s for s in sigmas if s > 0]
        return BrownianNoise(x, min(positive), max(positive), generator)
    raise ConfigError(f"noise_type: expected gaussian or brownian, got {kind!r}")
