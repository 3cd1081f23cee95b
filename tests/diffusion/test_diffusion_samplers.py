"""DDPM / DDIM samplers, DDIM timesteps and inversion, the sampler registry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.diffusion import (
    SAMPLERS,
    Schedule,
    ScheduleConfig,
    ddim_invert,
    ddim_timesteps,
    get_sampler,
    randn,
    sample_ddim,
    sample_ddpm,
)

DATA_STD = 0.5


def test_ddim_timesteps_match_the_original():
    np.testing.assert_array_equal(ddim_timesteps(1000, 50), np.arange(1, 1000, 20))
    assert ddim_timesteps(1000, 30).tolist() == list(range(1, 1000, 33))  # 31 steps, as the original
    quad = ddim_timesteps(1000, 10, "quad")
    assert quad[0] == 1 and quad[-1] == 801 and np.all(np.diff(quad) > 0)


def test_ddim_timesteps_drop_a_shift_past_the_schedule():
    # the original would index abar[1000] here and crash
    assert ddim_timesteps(1000, 3).tolist() == [1, 334, 667]
    assert ddim_timesteps(1000, 1000).tolist() == list(range(1, 1000))
    assert ddim_timesteps(100, 3).tolist() == [1, 34, 67]


@pytest.mark.parametrize("steps", [0, 1001])
def test_ddim_timesteps_rejects_out_of_range(steps):
    with pytest.raises(ConfigError, match="steps"):
        ddim_timesteps(1000, steps)


def test_ddim_eta0_is_deterministic_and_calls_back(sd_schedule, gaussian_denoiser, gen):
    fn = gaussian_denoiser(sd_schedule, DATA_STD)
    x_T = torch.randn(2, 3, generator=gen(0))
    seen = []
    a = sample_ddim(fn, x_T, sd_schedule, steps=10, callback=lambda i, t, x, x0: seen.append((i, t)))
    b = sample_ddim(fn, x_T, sd_schedule, steps=10)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert seen == [(i, 901 - 100 * i) for i in range(10)]


def test_ddim_maps_noise_to_data_and_inverts(sd_schedule, gaussian_denoiser, gen):
    fn = gaussian_denoiser(sd_schedule, DATA_STD)
    x_T = torch.randn(4, 1000, generator=gen(0), dtype=torch.float64)
    samples = sample_ddim(fn, x_T, sd_schedule, steps=500)
    assert samples.std().item() == pytest.approx(DATA_STD, rel=0.05)

    x0 = DATA_STD * torch.randn(4, 1000, generator=gen(1), dtype=torch.float64)
    errors = {}
    for steps in (100, 500):
        inverted = ddim_invert(fn, x0, sd_schedule, steps=steps)
        rec = sample_ddim(fn, inverted, sd_schedule, steps=steps)
        errors[steps] = ((rec - x0).norm() / x0.norm()).item()
    assert errors[500] < 4e-3 and errors[500] < errors[100] / 3  # first-order convergence
    # The inversion follows the probability-flow ODE: x_T / x_0 = sqrt(a s^2 + 1 - a) at both ends.
    a_T, a_0 = sd_schedule.alphas_cumprod[ddim_timesteps(1000, 500)[-1]], sd_schedule.alphas_cumprod[0]
    ratio = ((a_T * DATA_STD**2 + 1 - a_T) / (a_0 * DATA_STD**2 + 1 - a_0)).sqrt().item()
    torch.testing.assert_close(inverted, x0 * ratio, rtol=5e-3, atol=1e-3)


def test_ddim_inversion_then_sampling_reconstructs_at_30_db(sd_schedule, gaussian_denoiser, gen):
    """The editing round trip at a usual step count: 50 DDIM steps each way on latent-shaped Gaussian data,
    with the exact denoiser (the round trip's only error is the discretisation)."""
    fn = gaussian_denoiser(sd_schedule, DATA_STD)
    x0 = DATA_STD * torch.randn(4, 3, 8, 8, generator=gen(1))
    rec = sample_ddim(fn, ddim_invert(fn, x0, sd_schedule, steps=50), sd_schedule, steps=50)
    psnr = 10 * math.log10((x0.max() - x0.min()).item() ** 2 / ((rec - x0) ** 2).mean().item())
    assert psnr >= 30, psnr  # 44.6 dB


def test_ddpm_maps_noise_to_data(gaussian_denoiser, gen):
    schedule = Schedule(ScheduleConfig(timesteps=200, linear_start=1e-4, linear_end=0.1, beta_schedule="sqrt_linear"))
    fn = gaussian_denoiser(schedule, DATA_STD)
    seen = []
    out = sample_ddpm(fn, torch.randn(2, 2000, generator=gen(0)), schedule, generator=gen(1),
                      callback=lambda i, t, x, x0: seen.append(t))
    assert out.std().item() == pytest.approx(DATA_STD, rel=0.05)
    assert seen == list(range(199, -1, -1))
    with pytest.raises(ConfigError, match="steps"):
        sample_ddpm(fn, out, schedule, steps=50)


def test_ddpm_clip_denoised(gen):
    schedule = Schedule(ScheduleConfig(timesteps=20))
    x0s = []
    sample_ddpm(lambda x, t: -10 * torch.ones_like(x), torch.randn(1, 4, generator=gen(0)), schedule,
                generator=gen(1), clip_denoised=True, callback=lambda i, t, x, x0: x0s.append(x0))
    assert all(x0.abs().max() <= 1 for x0 in x0s)


@pytest.mark.parametrize("name, options", [("ddim", dict(steps=10, eta=1.0)), ("ddpm", {})])
def test_per_sample_generators_make_samples_batch_independent(name, options, gaussian_denoiser, gen):
    schedule = Schedule(ScheduleConfig(timesteps=50, linear_start=1e-3, linear_end=0.1))
    sampler = get_sampler(name)
    fn = gaussian_denoiser(schedule, DATA_STD)

    def run(seeds):
        gens = [gen(s) for s in seeds]
        return sampler(fn, randn((len(seeds), 3, 4, 4), gens), schedule, generator=gens, **options)

    both = run([1, 2])
    torch.testing.assert_close(both[0:1], run([1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(both[1:2], run([2]), rtol=0, atol=1e-6)
    assert not torch.allclose(both[0], both[1])


def test_registry_keeps_the_discrete_samplers():
    assert SAMPLERS["ddpm"] is sample_ddpm and SAMPLERS["ddim"] is sample_ddim
    assert get_sampler("ddim") is sample_ddim
