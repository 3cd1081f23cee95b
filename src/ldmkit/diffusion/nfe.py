"""Network function evaluations (NFE) of a sampler run, and the step count that gives a target NFE.

Counted, not assumed: the sampler runs on a one-element stand-in model and the calls are counted, so
every rule is the sampler's own (DDIM's "uniform" spacing visits 16 timesteps when asked for 15, PLMS
makes N + 1 calls for N steps, Heun 2N - 1). One call is one model evaluation of the whole batch;
classifier-free guidance batches [uncond; cond] into that one call.
"""
from __future__ import annotations

import torch

from ldmkit.diffusion.registry import get_sampler
from ldmkit.diffusion.schedule import Schedule


def count_nfe(name: str, steps: int, schedule: Schedule, **options) -> int:
    """Model calls that sampler ``name`` makes for ``steps`` steps (with ``options``, e.g. spacing)."""
    calls = 0

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return torch.zeros_like(x)

    x = torch.zeros(1, 1, dtype=torch.float64)
    get_sampler(name)(model, x, schedule, steps=steps, generator=torch.Generator().manual_seed(0), **options)
    return calls


def steps_for_nfe(name: str, nfe: int, schedule: Schedule, **options) -> tuple[int, int]:
    """(steps, NFE): the step count whose NFE is ``nfe`` (``steps = nfe`` when that works, else the smallest
    such count), or else the closest one (ties: the smaller NFE). DDPM always gives (T, T).
    """
    try:
        if count_nfe(name, nfe, schedule, **options) == nfe:
            return nfe, nfe
    except ValueError:
        pass
    best: tuple[int, int] | None = None
    for steps in range(1, schedule.timesteps + 1):
        try:
            got = count_nfe(name, steps, schedule, **options)
        except ValueError:  # DDPM runs only steps == T
            continue
        if best is None or (abs(got - nfe), got) < (abs(best[1] - nfe), best[1]):
            best = (steps, got)
        if got >= nfe:
            break  # NFE never decreases with the step count: nothing closer lies beyond
    if best is None:
        raise ValueError(f"sampler {name}: no step count runs on this schedule")
    return best
