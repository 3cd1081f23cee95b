"""Timestep spacings, Karras sigmas, the sigma <-> t maps and the discrete-model adapter."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.diffusion import DiscreteDenoiser, DiscreteSchedule, Schedule, ScheduleConfig, karras_sigmas
from ldmkit.diffusion import spaced_timesteps
from ldmkit.diffusion.timesteps import steps_to_run


def test_spacings():
    assert spaced_timesteps(1000, 4, "leading").tolist() == [0, 250, 500, 750]
    assert spaced_timesteps(1000, 4, "leading", steps_offset=1).tolist() == [1, 251, 501, 751]
    assert spaced_timesteps(1000, 4, "trailing").tolist() == [249, 499, 749, 999]
    assert spaced_timesteps(1000, 4, "linspace").tolist() == [0, 333, 666, 999]
    assert spaced_timesteps(1000, 3, "linspace").tolist() == [0, 499.5, 999]  # fractional, kept
    assert spaced_timesteps(1000, 50, "uniform").tolist() == list(range(1, 1000, 20))  # the original
    # leading + offset 1 is the original's uniform whenever N divides T
    np.testing.assert_array_equal(spaced_timesteps(1000, 20, "uniform"), spaced_timesteps(1000, 20, "leading", 1))


@pytest.mark.parametrize("steps", [1, 7, 61, 333, 1000])
def test_trailing_gives_n_distinct_valid_timesteps(steps):
    ts = spaced_timesteps(1000, steps, "trailing")
    assert len(ts) == steps and ts[-1] == 999 and ts[0] >= 0 and np.all(np.diff(ts) > 0)


@pytest.mark.parametrize("args, field", [((1000, 0, "linspace"), "steps"), ((1000, 10, "cosine"), "spacing"),
                                         ((1000, 10, "leading", 200), "steps_offset")])
def test_spacing_errors(args, field):
    with pytest.raises(ConfigError, match=field):
        spaced_timesteps(*args)


def test_karras_sigmas_closed_form():
    s = karras_sigmas(0.03, 14.6, 5, rho=7.0)
    assert s[0] == pytest.approx(14.6) and s[-1] == pytest.approx(0.03)
    root = s ** (1 / 7)
    np.testing.assert_allclose(np.diff(root), np.full(4, (0.03 ** (1 / 7) - 14.6 ** (1 / 7)) / 4))


def test_steps_to_run():
    assert [steps_to_run(10, s) for s in (0.0, 0.05, 0.3, 0.75, 1.0)] == [0, 0, 3, 7, 10]
    with pytest.raises(ConfigError, match="strength"):
        steps_to_run(10, 1.5)


def test_sigma_t_maps_are_inverse_and_exact_on_the_table(sd_schedule):
    d = DiscreteSchedule(sd_schedule)
    abar = sd_schedule.alphas_cumprod
    torch.testing.assert_close(d.t_to_sigma(torch.tensor([0.0, 10.0, 999.0])), ((1 - abar) / abar).sqrt()[[0, 10, 999]])
    t = torch.tensor([0.0, 0.25, 10.0, 499.5, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(d.sigma_to_t(d.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    # log sigma is linear in between: the midpoint is the geometric mean of the neighbours
    assert float(d.t_to_sigma(499.5)) == pytest.approx(math.sqrt(float(d.t_to_sigma(499) * d.t_to_sigma(500))))
    assert float(d.sigma_to_t(1e-6)) == 0 and float(d.sigma_to_t(1e6)) == 999


def test_sigmas_for_follow_the_spacing(sd_schedule):
    d = DiscreteSchedule(sd_schedule)
    s = d.sigmas_for(4, "trailing")
    torch.testing.assert_close(torch.from_numpy(s[:-1]), d.sigmas[[999, 749, 499, 249]])
    assert s[-1] == 0
    k = d.sigmas_for(4, "linspace", karras=True)
    assert k[0] == pytest.approx(d.sigma_max) and k[-2] == pytest.approx(d.sigma_min) and k[-1] == 0


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_discrete_denoiser_recovers_x0(parameterization):
    """With a model that knows x0, D(x0 + sigma eps, sigma) = x0 for every parameterization."""
    schedule = Schedule(ScheduleConfig(timesteps=100, parameterization=parameterization))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    d = DiscreteSchedule(schedule)
    seen = []

    def model(x_t, t):  # x_t = sqrt(a) x0 + sqrt(1 - a) eps, at the level the adapter reports
        seen.append(t)
        a = 1 / (1 + d.t_to_sigma(t.double()) ** 2)[:, None]
        torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)
        return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[parameterization]

    den = DiscreteDenoiser(model, schedule)
    for sigma in (float(d.sigmas[40]), float(d.t_to_sigma(40.3))):
        torch.testing.assert_close(den(x0 + sigma * eps, sigma), x0)
    assert seen[0].dtype == torch.long and seen[0].tolist() == [40, 40]  # integral t: a LongTensor
    assert seen[1].dtype == torch.float32 and seen[1][0].item() == pytest.approx(40.3, abs=1e-5)
    DiscreteDenoiser(model, schedule, quantize=True)(x0 + float(d.sigmas[40]) * eps, float(d.sigmas[40]))
    assert seen[-1].dtype == torch.long
