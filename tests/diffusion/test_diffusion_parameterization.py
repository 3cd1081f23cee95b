"""q_sample, eps / x0 / v conversions, training targets and the posterior."""
from __future__ import annotations

import pytest
import torch

from ldmkit.diffusion import (
    Schedule,
    ScheduleConfig,
    get_v,
    model_output_to_eps_x0,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_posterior,
    q_sample,
    target,
)

def _batch(gen, b=4):
    g = gen(0)
    x0 = torch.randn(b, 3, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(b, 3, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999][:b])
    return x0, eps, t


def test_q_sample_moments(sd_schedule, gen):
    n, t_val = 20000, 300
    x0 = torch.full((n, 2), 0.8)
    t = torch.full((n,), t_val)
    xt = q_sample(sd_schedule, x0, t, torch.randn(n, 2, generator=gen(1)))
    abar = sd_schedule.alphas_cumprod[t_val].item()
    assert xt.mean().item() == pytest.approx(abar**0.5 * 0.8, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - abar, rel=0.03)


def test_round_trips(sd_schedule, gen):
    x0, eps, t = _batch(gen)
    xt = q_sample(sd_schedule, x0, t, eps)
    torch.testing.assert_close(predict_x0_from_eps(sd_schedule, xt, t, eps), x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(predict_eps_from_x0(sd_schedule, xt, t, x0), eps, rtol=0, atol=1e-6)
    v = get_v(sd_schedule, x0, eps, t)
    torch.testing.assert_close(predict_x0_from_v(sd_schedule, xt, t, v), x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(predict_eps_from_v(sd_schedule, xt, t, v), eps, rtol=0, atol=1e-6)


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_target_and_model_output_agree(parameterization, sd_config, gen):
    schedule = Schedule(ScheduleConfig(**sd_config, parameterization=parameterization))
    x0, eps, t = _batch(gen)
    xt = q_sample(schedule, x0, t, eps)
    perfect_output = target(schedule, x0, eps, t)
    eps_hat, x0_hat = model_output_to_eps_x0(schedule, perfect_output, xt, t)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-6)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-6)


def test_q_posterior_matches_ddpm_eq7(sd_schedule, gen):
    x0, eps, t = _batch(gen)
    xt = q_sample(sd_schedule, x0, t, eps)
    mean, var, log_var = q_posterior(sd_schedule, x0, xt, t)
    b = sd_schedule.betas[t].view(-1, 1, 1, 1)
    abar = sd_schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    abar_prev = sd_schedule.alphas_cumprod_prev[t].view(-1, 1, 1, 1)
    expected = (abar_prev.sqrt() * b * x0 + (1 - b).sqrt() * (1 - abar_prev) * xt) / (1 - abar)
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(var, b * (1 - abar_prev) / (1 - abar))
    assert var.shape == log_var.shape == (4, 1, 1, 1)
