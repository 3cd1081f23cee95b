import pytest
import torch

from ldmkit.diffusion import Schedule, ScheduleConfig, diffusion_loss, model_output_to_eps_x0
from ldmkit.diffusion.losses import min_snr_weight


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_min_snr_loss_equals_clipped_snr_times_x0_error(param):
    sched = Schedule(ScheduleConfig(timesteps=100, parameterization=param))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 20, 50, 80, 99])
    wrong = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    loss, info = diffusion_loss(sched, lambda x, tt: wrong, x0, t=t, generator=g, snr_gamma=5.0)
    _, x0_hat = model_output_to_eps_x0(sched, wrong, info["x_t"], t)
    abar = sched.alphas_cumprod[t]
    expected = (abar / (1 - abar)).clamp(max=5.0) * (x0_hat - x0).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-9)


def test_min_snr_weight_is_one_where_snr_is_below_gamma_for_eps():
    sched = Schedule(ScheduleConfig(timesteps=1000))
    t = torch.arange(1000)
    w = min_snr_weight(sched, t, 5.0)
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    assert torch.all(w[snr <= 5] == 1) and torch.all(w[snr > 5] < 1)
