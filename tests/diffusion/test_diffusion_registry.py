"""One registry for k-diffusion / webui names and diffusers scheduler classes."""
from __future__ import annotations

import pytest

from ldmkit.config import ConfigError
from ldmkit.diffusion import SAMPLERS, check_options, get_sampler, sampler_name, sampler_options
from ldmkit.diffusion import sample_ddim, sample_dpmpp_2m, sample_euler_ancestral, sample_heun, sample_plms


@pytest.mark.parametrize("alias, canonical", [
    ("ddim", "ddim"), ("DDIMScheduler", "ddim"), ("plms", "plms"), ("PNDMScheduler", "plms"),
    ("dpmpp_2m", "dpmpp_2m"), ("DPM++ 2M", "dpmpp_2m"), ("DPMSolverMultistepScheduler", "dpmpp_2m"),
    ("euler", "euler"), ("EulerDiscreteScheduler", "euler"), ("euler_a", "euler_ancestral"),
    ("Euler a", "euler_ancestral"), ("EulerAncestralDiscreteScheduler", "euler_ancestral"),
    ("heun", "heun"), ("HeunDiscreteScheduler", "heun"), ("ddpm", "ddpm"), ("DDPMScheduler", "ddpm"),
    ("DPM++ 2M Karras", "dpmpp_2m_karras"), ("k_euler_a", "euler_ancestral"),
    # issue 22: k-diffusion / webui / diffusers spellings of the new solvers
    ("dpmpp_2m_sde", "dpmpp_2m_sde"), ("DPM++ 2M SDE", "dpmpp_2m_sde"), ("k_dpmpp_2m_sde", "dpmpp_2m_sde"),
    ("DPM++ 2M SDE Karras", "dpmpp_2m_sde_karras"), ("DPM++ 3M SDE", "dpmpp_3m_sde"),
    ("DPM++ 3M SDE Karras", "dpmpp_3m_sde_karras"), ("DPM++ 2S a", "dpmpp_2s_ancestral"),
    ("dpmpp_2s_ancestral", "dpmpp_2s_ancestral"), ("DPM++ 2S a Karras", "dpmpp_2s_ancestral_karras"),
    ("DPMSolverSinglestepScheduler", "dpmpp_2s"), ("UniPC", "unipc"), ("UniPCMultistepScheduler", "unipc"),
    ("unipc_bh2", "unipc"), ("unipc_bh1", "unipc_bh1"), ("LCM", "lcm"), ("LCMScheduler", "lcm"),
])
def test_both_naming_conventions(alias, canonical):
    assert sampler_name(alias) == canonical
    assert get_sampler(alias) is SAMPLERS[canonical]


def test_functions_behind_the_names():
    assert get_sampler("DDIMScheduler") is sample_ddim and get_sampler("PNDMScheduler") is sample_plms
    assert get_sampler("euler_a") is sample_euler_ancestral and get_sampler("heun") is sample_heun
    karras = get_sampler("dpmpp_2m_karras")
    assert karras.func is sample_dpmpp_2m and karras.keywords == {"karras": True}


def test_unknown_name_is_a_value_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown 'lms'") as err:
        get_sampler("lms")
    msg = str(err.value)
    assert isinstance(err.value, ConfigError) and "\n" not in msg
    for name in ("ddim", "plms", "dpmpp_2m", "euler", "euler_a", "heun", "ddpm", "DPMSolverMultistepScheduler",
                 "EulerAncestralDiscreteScheduler"):
        assert name in msg


def test_option_values_are_checked_before_any_model_runs():
    from ldmkit.diffusion import validate_options

    validate_options("unipc", {"order": 3})
    validate_options("dpmpp_2m_sde", {"noise_type": "brownian", "eta": 0.5})
    for name, options, match in (("plms", {"order": 1}, "order: PLMS takes 2, 3 or 4"),
                                 ("unipc", {"order": 4}, "order: UniPC takes 1, 2 or 3"),
                                 ("euler_a", {"eta": -1.0}, "eta: must be >= 0"),
                                 ("unipc", {"eta": 0.5}, "sampler unipc: no option eta")):
        with pytest.raises(ConfigError, match=match):
            validate_options(name, options)


def test_options():
    assert sampler_options("ddim") == {"eta", "spacing", "x_init", "strength"}
    assert {"eta", "karras", "spacing", "quantize"} <= sampler_options("euler_a")
    assert "karras" not in sampler_options("dpmpp_2m_karras")  # fixed by the name
    check_options("ddim", {"eta": 0.5})
    with pytest.raises(ConfigError, match="sampler heun: no option eta"):
        check_options("heun", {"eta": 0.5})
