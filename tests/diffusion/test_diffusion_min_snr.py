import pytest
import torch

from ldmkit.diffusion import Schedule, ScheduleConfig, diffusion_loss, model_output_to_eps_x0
from ldmkit.diffusion.losses import min_snr_weight


def _loss_and_x0_error(param: str, seed: int, **weighting):
    """A wrong constant prediction: the weighted loss, the SNR at its timesteps and its x0-space squared error."""
    sched = Schedule(ScheduleConfig(timesteps=100, parameterization=param))
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 20, 50, 80, 99])
    wrong = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    loss, info = diffusion_loss(sched, lambda x, tt: wrong, x0, t=t, generator=g, snr_gamma=5.0, **weighting)
    _, x0_hat = model_output_to_eps_x0(sched, wrong, info["x_t"], t)
    abar = sched.alphas_cumprod[t]
    return loss, abar / (1 - abar), (x0_hat - x0).pow(2).flatten(1).mean(1)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_min_snr_loss_equals_clipped_snr_times_x0_error(param):
    loss, snr, x0_error = _loss_and_x0_error(param, 0)
    torch.testing.assert_close(loss, snr.clamp(max=5.0) * x0_error, rtol=1e-6, atol=1e-9)


def test_min_snr_weight_is_one_where_snr_is_below_gamma_for_eps():
    sched = Schedule(ScheduleConfig(timesteps=1000))
    t = torch.arange(1000)
    w = min_snr_weight(sched, t, 5.0)
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    assert torch.all(w[snr <= 5] == 1) and torch.all(w[snr > 5] < 1)


@pytest.mark.parametrize("param", ["x0", "v"])
def test_min_snr_plus_one_weights_the_x0_error_by_min_snr_plus_one(param):
    loss, snr, x0_error = _loss_and_x0_error(param, 1, snr_weighting="min_snr_plus_one")
    torch.testing.assert_close(loss, (snr + 1).clamp(max=5.0) * x0_error, rtol=1e-6, atol=1e-9)


def test_min_snr_plus_one_v_weight_is_one_at_high_noise_and_eps_is_refused():
    sched = Schedule(ScheduleConfig(timesteps=1000, parameterization="v"))
    t = torch.arange(1000)
    w = min_snr_weight(sched, t, 5.0, plus_one=True)
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    assert torch.all(w[snr + 1 <= 5] == 1) and torch.all(w[snr + 1 > 5] < 1)
    assert float(min_snr_weight(sched, t, 5.0)[-1]) < 1e-2  # Hang et al.'s v weight vanishes there
    with pytest.raises(ValueError, match="v \\(or x0\\) parameterization"):
        min_snr_weight(Schedule(ScheduleConfig(timesteps=1000)), t, 5.0, plus_one=True)
