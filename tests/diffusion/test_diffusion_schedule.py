"""Beta schedules and the derived float64 tables."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldmkit.config import ConfigError, from_dict
from ldmkit.diffusion import TABLES, Schedule, ScheduleConfig, make_betas


def test_linear_is_sqrt_spaced():
    cfg = ScheduleConfig(timesteps=1000, linear_start=1e-4, linear_end=2e-2)
    expected = np.linspace(math.sqrt(1e-4), math.sqrt(2e-2), 1000) ** 2
    betas = make_betas(cfg)
    assert betas.dtype == np.float64
    np.testing.assert_allclose(betas, expected, rtol=0, atol=1e-12)


def test_sd_schedule_final_alpha_bar(sd_schedule):
    closed_form = np.prod(1.0 - np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000) ** 2)
    abar_T = sd_schedule.alphas_cumprod[-1].item()
    assert abar_T == pytest.approx(closed_form, rel=1e-12)
    assert abar_T == pytest.approx(0.0047, abs=1e-4)


def test_cosine_matches_closed_formula():
    T, s = 100, 8e-3
    betas = make_betas(ScheduleConfig(timesteps=T, beta_schedule="cosine", cosine_s=s))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    abar = np.cumprod(1.0 - betas)
    for t in (0, 10, 50, 98):
        assert abar[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert betas.max() <= 0.999 and betas[-1] == pytest.approx(0.999)


def test_sqrt_linear_and_sqrt():
    lin = np.linspace(1e-4, 2e-2, 10)
    np.testing.assert_allclose(make_betas(ScheduleConfig(timesteps=10, beta_schedule="sqrt_linear")), lin)
    np.testing.assert_allclose(make_betas(ScheduleConfig(timesteps=10, beta_schedule="sqrt")), lin**0.5)


def test_tables_are_float64_and_consistent(sd_schedule):
    s = sd_schedule
    for name in TABLES:
        table = getattr(s, name)
        assert table.dtype == torch.float64 and table.shape == (1000,), name
    assert s.alphas_cumprod_prev[0] == 1.0
    torch.testing.assert_close(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    torch.testing.assert_close(s.sqrt_recip_alphas_cumprod * s.sqrt_alphas_cumprod, torch.ones(1000, dtype=torch.float64))
    torch.testing.assert_close(s.sqrt_recipm1_alphas_cumprod**2, 1 / s.alphas_cumprod - 1)


def test_posterior_coefficients_give_the_posterior_mean(sd_schedule):
    s = sd_schedule
    b, a, abar, abar_prev = s.betas, s.alphas, s.alphas_cumprod, s.alphas_cumprod_prev
    x0, xt = 0.7, -1.3
    mean = s.posterior_mean_coef1 * x0 + s.posterior_mean_coef2 * xt
    expected = (abar_prev.sqrt() * b * x0 + a.sqrt() * (1 - abar_prev) * xt) / (1 - abar)  # DDPM eq. 7
    torch.testing.assert_close(mean, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.posterior_variance, b * (1 - abar_prev) / (1 - abar))


def test_posterior_log_variance_is_clipped_at_1e20(sd_schedule):
    assert sd_schedule.posterior_variance[0] == 0.0
    assert sd_schedule.posterior_log_variance_clipped[0].item() == pytest.approx(math.log(1e-20))
    torch.testing.assert_close(sd_schedule.posterior_log_variance_clipped[1:], sd_schedule.posterior_variance[1:].log())


def test_v_posterior_interpolates_towards_beta():
    s = Schedule(ScheduleConfig(timesteps=50, v_posterior=1.0))
    torch.testing.assert_close(s.posterior_variance, s.betas)


def test_extract_shapes_and_casts(sd_schedule):
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float16)
    t = torch.tensor([0, 500, 999])
    c = sd_schedule.extract("sqrt_alphas_cumprod", t, x)
    assert c.shape == (3, 1, 1, 1) and c.dtype == torch.float16
    assert sd_schedule.alphas_cumprod.dtype == torch.float64
    c32 = sd_schedule.extract(sd_schedule.betas, t, (3, 5))
    assert c32.shape == (3, 1) and c32.dtype == torch.float32
    assert c32[2, 0].item() == pytest.approx(0.012, rel=1e-6)
    with pytest.raises(ConfigError, match="unknown"):
        sd_schedule.extract("nope", t, x)


@pytest.mark.parametrize("bad, key", [
    (dict(timesteps=1), "timesteps"),
    (dict(linear_start=0.1, linear_end=0.01), "linear_start"),
    (dict(beta_schedule="quadratic"), "beta_schedule"),
    (dict(parameterization="score"), "parameterization"),
    (dict(v_posterior=2.0), "v_posterior"),
])
def test_config_validation(bad, key):
    with pytest.raises(ConfigError, match=key):
        ScheduleConfig(**bad)
    with pytest.raises(ConfigError, match=key):
        from_dict(ScheduleConfig, bad)
