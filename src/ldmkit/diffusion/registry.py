"""One sampler registry answering the names users know from k-diffusion / the webui and from diffusers.

Canonical names are k-diffusion's (``ddim``, ``plms``, ``dpmpp_2m``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``,
``dpmpp_2s_ancestral``, ``euler``, ``euler_ancestral``, ``heun``, ``ddpm``) plus ``unipc``, ``lcm`` and
``dpmpp_2s`` (diffusers' single-step solver); aliases cover webui labels ("Euler a", "DPM++ 2M SDE Karras",
"DPM++ 2S a", "UniPC") and diffusers scheduler classes (``DPMSolverMultistepScheduler``). Lookup ignores case, spaces and dashes, and
reads "++" as "pp".
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion.plms import sample_plms
from ldmkit.diffusion.samplers import sample_ddim, sample_ddpm
from ldmkit.diffusion.samplers_k import sample_dpmpp_2m, sample_euler, sample_euler_ancestral, sample_heun
from ldmkit.diffusion.samplers_lcm import sample_lcm
from ldmkit.diffusion.samplers_sde import (sample_dpmpp_2m_sde, sample_dpmpp_2s, sample_dpmpp_2s_ancestral,
                                          sample_dpmpp_3m_sde)
from ldmkit.diffusion.samplers_unipc import sample_unipc

SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "plms": sample_plms,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s": sample_dpmpp_2s,  # diffusers' DPMSolverSinglestep: grid points pair up (not k-diffusion's 2S)
    "unipc": sample_unipc,
    "unipc_bh1": functools.partial(sample_unipc, variant="bh1"),
    "lcm": sample_lcm,
    # webui's "Karras" variants: the same solvers on Karras et al.'s sigmas
    "dpmpp_2m_karras": functools.partial(sample_dpmpp_2m, karras=True),
    "dpmpp_2m_sde_karras": functools.partial(sample_dpmpp_2m_sde, karras=True),
    "dpmpp_3m_sde_karras": functools.partial(sample_dpmpp_3m_sde, karras=True),
    "dpmpp_2s_ancestral_karras": functools.partial(sample_dpmpp_2s_ancestral, karras=True),
    "euler_karras": functools.partial(sample_euler, karras=True),
    "heun_karras": functools.partial(sample_heun, karras=True),
}

# diffusers scheduler class -> canonical name (the diffusers config each matches: tests/diffusion/test_diffusion_parity.py)
DIFFUSERS_CLASSES: dict[str, str] = {
    "DDPMScheduler": "ddpm", "DDIMScheduler": "ddim", "PNDMScheduler": "plms",
    "DPMSolverMultistepScheduler": "dpmpp_2m", "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_ancestral", "HeunDiscreteScheduler": "heun",
    "UniPCMultistepScheduler": "unipc", "DPMSolverSinglestepScheduler": "dpmpp_2s", "LCMScheduler": "lcm",
}

# alias (normalised) -> canonical name
ALIASES: dict[str, str] = {
    "euler_a": "euler_ancestral", "k_euler": "euler", "k_euler_a": "euler_ancestral",
    "k_euler_ancestral": "euler_ancestral", "k_heun": "heun", "k_dpmpp_2m": "dpmpp_2m", "pndm": "plms",
    "k_dpmpp_2m_sde": "dpmpp_2m_sde", "k_dpmpp_3m_sde": "dpmpp_3m_sde", "k_dpmpp_2s_ancestral": "dpmpp_2s_ancestral",
    "dpmpp_2s_a": "dpmpp_2s_ancestral", "dpmpp_2s_a_karras": "dpmpp_2s_ancestral_karras", "unipc_bh2": "unipc",
    **{cls.lower(): name for cls, name in DIFFUSERS_CLASSES.items()},
}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("++", "pp").replace("-", "_").replace(" ", "_")


def sampler_name(name: str) -> str:
    """The canonical name of ``name`` (any convention); a ConfigError (a ValueError) lists the known ones."""
    key = _normalise(str(name))
    key = ALIASES.get(key, key)
    if key not in SAMPLERS:
        known = [*sorted(SAMPLERS), "euler_a", "dpmpp_2s_a", *sorted(DIFFUSERS_CLASSES)]
        raise ConfigError(f"sampler: unknown {name!r} (known: {', '.join(known)})")
    return key


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler registered under ``name`` (k-diffusion, webui or diffusers spelling)."""
    return SAMPLERS[sampler_name(name)]


def sampler_options(name: str) -> set[str]:
    """The keyword options the sampler ``name`` takes beyond the shared signature (e.g. eta, spacing)."""
    fn = get_sampler(name)
    fixed = set(fn.keywords) if isinstance(fn, functools.partial) else set()
    params = inspect.signature(fn).parameters
    shared = {"denoise_fn", "x_T", "noise", "schedule", "steps", "generator", "callback"}
    return {p for p in params if p not in shared} - fixed


def check_options(name: str, options: dict) -> None:
    """A one-line ConfigError naming any option the sampler ``name`` does not take."""
    unknown = sorted(set(options) - sampler_options(name))
    if unknown:
        raise ConfigError(f"sampler {sampler_name(name)}: no option {', '.join(unknown)} "
                          f"(it takes: {', '.join(sorted(sampler_options(name))) or 'none'})")


def validate_options(name: str, options: dict) -> None:
    """:func:`check_options`, then the values too: the sampler runs on a stand-in model (:func:`~.nfe.count_nfe`,
    milliseconds), so a bad value (PLMS order 1, a negative eta) fails before a checkpoint loads."""
    from ldmkit.diffusion.nfe import count_nfe  # (nfe imports this module)
    from ldmkit.diffusion.schedule import Schedule, ScheduleConfig

    check_options(name, options)
    schedule = Schedule(ScheduleConfig())
    count_nfe(name, schedule.timesteps if sampler_name(name) == "ddpm" else 2, schedule, **options)


def option_default(name: str, option: str):
    """The default value of ``option`` for the sampler ``name`` (e.g. eta: 0 for ddim, 1 for euler_a)."""
    if option not in sampler_options(name):
        raise ConfigError(f"sampler {sampler_name(name)}: no option {option}")
    return inspect.signature(get_sampler(name)).parameters[option].default
