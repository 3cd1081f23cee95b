"""The L_simple training loss."""
from __future__ import annotations

import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.diffusion import diffusion_loss


def test_exact_denoiser_beats_zero_predictor(sd_schedule, gaussian_denoiser, gen):
    x0 = 0.5 * torch.randn(64, 4, 4, 4, generator=gen(0))
    exact, info = diffusion_loss(sd_schedule, gaussian_denoiser(sd_schedule, 0.5), x0, generator=gen(1))
    zero, _ = diffusion_loss(sd_schedule, lambda x, t: torch.zeros_like(x), x0, generator=gen(1))
    assert exact.shape == zero.shape == (64,)
    assert exact.mean() < zero.mean()
    assert zero.mean().item() == pytest.approx(1.0, rel=0.1)  # E||eps||^2 per element
    assert info["t"].dtype == torch.long and int(info["t"].max()) < 1000


def test_given_t_and_noise_and_l1(sd_schedule):
    x0 = torch.ones(2, 3)
    t = torch.tensor([0, 999])
    noise = torch.full((2, 3), 2.0)
    loss, info = diffusion_loss(sd_schedule, lambda x, t: torch.zeros_like(x), x0, t=t, noise=noise, loss_type="l1")
    torch.testing.assert_close(loss, torch.full((2,), 2.0))
    assert info["t"] is t and info["target"] is noise
    with pytest.raises(ConfigError, match="loss_type"):
        diffusion_loss(sd_schedule, lambda x, t: x, x0, loss_type="huber")


def test_loss_is_reproducible_with_a_generator(sd_schedule, gen):
    x0 = torch.randn(8, 2, generator=gen(3))
    fn = lambda x, t: 0.1 * x
    a, _ = diffusion_loss(sd_schedule, fn, x0, generator=gen(5))
    b, _ = diffusion_loss(sd_schedule, fn, x0, generator=gen(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
