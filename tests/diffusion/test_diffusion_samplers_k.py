"""Every sampler: closed-form convergence on Gaussian data, img2img starts, callbacks, per-sample seeds."""
from __future__ import annotations

import math

import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.diffusion import DiscreteSchedule, Schedule, ScheduleConfig, abar_at, get_sampler, q_sample, randn

DATA_STD = 0.5
ALL = ["ddpm", "ddim", "plms", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde",
       "dpmpp_2s_ancestral", "dpmpp_2s", "unipc"]


def exact_eps(schedule: Schedule):
    """E[eps | x_t] for x_0 ~ N(0, s^2 I), at integer or fractional t (abar as the sigma samplers see it)."""
    def fn(x, t):
        a = abar_at(schedule, t).to(x).reshape(-1, *[1] * (x.dim() - 1))
        return (1 - a).sqrt() * x / (a * DATA_STD**2 + 1 - a)
    return fn


def relative_error(name, steps, sd_schedule, noise):
    out = get_sampler(name)(exact_eps(sd_schedule), noise, sd_schedule, steps=steps, karras=True)
    # probability-flow ODE for Gaussian data: x(sigma) / sqrt(s^2 + sigma^2) is constant along the path
    s_max = DiscreteSchedule(sd_schedule).sigma_max
    exact = noise * math.sqrt(1 + s_max**2) * DATA_STD / math.sqrt(DATA_STD**2 + s_max**2)
    return ((out - exact).norm() / exact.norm()).item()


def test_sigma_samplers_converge_at_their_order(sd_schedule):
    noise = torch.randn(4, 500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    err = {name: [relative_error(name, n, sd_schedule, noise) for n in (10, 20, 40)]
           for name in ("euler", "heun", "dpmpp_2m")}
    assert 1.6 < err["euler"][1] / err["euler"][2] < 2.5  # first order: error halves with twice the steps
    for name in ("heun", "dpmpp_2m"):  # second order: at least ~quarters
        assert err[name][1] / err[name][2] > 3.5, (name, err[name])
        assert err[name][2] < err["euler"][2] / 10


@pytest.mark.parametrize("name", ALL)
def test_every_sampler_maps_noise_to_the_data_distribution(name, gen):
    schedule = Schedule(ScheduleConfig(timesteps=100, linear_start=1e-3, linear_end=0.2))  # abar_T ~ 1e-3
    steps = 100 if name == "ddpm" else 50  # first-order samplers are still ~6% off at 50 of T = 100
    out = get_sampler(name)(exact_eps(schedule), torch.randn(2, 4000, generator=gen(0)), schedule,
                            steps=steps, generator=gen(1))
    assert out.std().item() == pytest.approx(DATA_STD, rel=0.07)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0])
def test_img2img_starts_from_the_noised_input(name, strength, gen, sd_schedule):
    """The first model call sees q_sample(x_init, t, noise) at the timestep where the last share of the
    steps begins; strength 0 returns x_init untouched."""
    schedule = Schedule(ScheduleConfig(timesteps=100)) if name == "ddpm" else sd_schedule
    x_init, noise = torch.randn(2, 8, generator=gen(0)), torch.randn(2, 8, generator=gen(1))
    calls = []

    def fn(x, t):
        calls.append((x.clone(), t.clone()))
        return exact_eps(schedule)(x, t)

    steps = None if name == "ddpm" else 10
    out = get_sampler(name)(fn, noise, schedule, steps=steps, generator=gen(2), x_init=x_init, strength=strength)
    if strength == 0:
        assert not calls and torch.equal(out, x_init)
        return
    x, t = calls[0]
    a = abar_at(schedule, t).reshape(-1, 1).float()
    torch.testing.assert_close(x, a.sqrt() * x_init + (1 - a).sqrt() * noise, rtol=0, atol=1e-5)
    n_total = schedule.timesteps if name == "ddpm" else 10
    first = {"ddpm": n_total * strength - 1, "ddim": 1 + (n_total * strength - 1) * 100,
             "plms": 1 + (n_total * strength - 1) * 100}.get(name, 999 * (strength * n_total - 1) / (n_total - 1))
    assert t[0].item() == pytest.approx(first, abs=1e-4)


def test_strength_needs_x_init(sd_schedule):
    for name in ("ddim", "euler"):
        with pytest.raises(ConfigError, match="strength"):
            get_sampler(name)(exact_eps(sd_schedule), torch.zeros(1, 2), sd_schedule, steps=5, strength=0.5)


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "heun", "dpmpp_2m"])
def test_sigma_sampler_callbacks_report_ddpm_convention_states(name, gen, sd_schedule):
    seen = []
    out = get_sampler(name)(exact_eps(sd_schedule), torch.randn(1, 6, generator=gen(0)), sd_schedule, steps=6,
                            spacing="trailing", generator=gen(1), callback=lambda i, t, x, x0: seen.append((i, t, x)))
    assert [i for i, _, _ in seen] == list(range(6))
    assert [t for _, t, _ in seen] == pytest.approx([999, 832, 666, 499, 332, 166])
    torch.testing.assert_close(seen[-1][2], out)  # at sigma = 0 both conventions agree


@pytest.mark.parametrize("name", ["ddim", "plms", "euler", "euler_ancestral", "heun", "dpmpp_2m"])
def test_per_sample_generators_make_each_sample_batch_independent(name, gen, sd_schedule):
    fn = exact_eps(sd_schedule)
    options = {"eta": 1.0} if name == "ddim" else {}

    def run(seeds):
        gens = [gen(s) for s in seeds]
        return get_sampler(name)(fn, randn((len(seeds), 3, 4, 4), gens), sd_schedule, steps=8, generator=gens,
                                 **options)

    batch = run([4, 5, 6])
    torch.testing.assert_close(batch[1:2], run([5]), rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def test_q_sample_matches_the_sigma_space_start(sd_schedule, gen):
    # x_init + sigma noise, scaled by 1 / sqrt(1 + sigma^2), is q_sample at the same level
    x0, noise = torch.randn(2, 3, generator=gen(0), dtype=torch.float64), torch.randn(2, 3, generator=gen(1),
                                                                                      dtype=torch.float64)
    t = torch.tensor([500, 500])
    sigma = float(DiscreteSchedule(sd_schedule).t_to_sigma(500))
    torch.testing.assert_close((x0 + sigma * noise) / math.sqrt(1 + sigma**2), q_sample(sd_schedule, x0, t, noise))
