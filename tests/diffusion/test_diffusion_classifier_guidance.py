"""Classifier guidance: eps' = eps - s sqrt(1 - abar_t) grad log p(y | x_t), for every parameterization and
sampler, on top of classifier-free guidance; NFE counting."""
from __future__ import annotations

import pytest
import torch

from ldmkit.diffusion import (SAMPLERS, Schedule, ScheduleConfig, abar_at, cfg_denoise, classifier_grad,
                              classifier_guided, count_nfe, get_sampler, steps_for_nfe)

W = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, -1.0], [-1.0, 0.0, 2.0, 1.0]])  # 3 classes, 4 dims


def linear_classifier(x, t):
    """logits = W x (t ignored): grad_x log p(y | x) = W_y - sum_k p_k W_k in closed form."""
    return x.flatten(1) @ W.T.to(x)


def closed_form_grad(x, labels):
    w = W.to(x)
    p = torch.softmax(x @ w.T, dim=-1)  # (B, K)
    return w[labels] - p @ w


def to_eps(out, x, a, parameterization):
    """The eps implied by a model output (eps, v or x0) at x_t with abar a."""
    if parameterization == "eps":
        return out
    if parameterization == "v":
        return (1 - a).sqrt() * x + a.sqrt() * out
    return (x - a.sqrt() * out) / (1 - a).sqrt()


def test_classifier_grad_is_the_log_softmax_gradient():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1, 0])
    grad = classifier_grad(linear_classifier, x, torch.zeros(5, dtype=torch.long), labels)
    torch.testing.assert_close(grad, closed_form_grad(x, labels), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # samplers run without autograd; the gradient must still be taken
        torch.testing.assert_close(classifier_grad(linear_classifier, x, torch.zeros(5), labels), grad)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
@pytest.mark.parametrize("t", [torch.tensor([10, 500, 990]), torch.tensor([10.25, 500.5, 989.75])])
def test_guided_eps_is_eps_minus_scaled_gradient(parameterization, t):
    schedule = Schedule(ScheduleConfig(timesteps=1000, parameterization=parameterization))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels, scale = torch.tensor([2, 0, 1]), 2.5
    model = lambda x, t: 0.3 * x + 0.1  # noqa: E731  (any output in the schedule's parameterization)
    guided = classifier_guided(model, schedule, linear_classifier, labels, scale)(x, t)
    a = abar_at(schedule, t).reshape(-1, 1)  # table value, or the sigma-space level for fractional t
    expected_eps = to_eps(model(x, t), x, a, parameterization) - scale * (1 - a).sqrt() * closed_form_grad(x, labels)
    torch.testing.assert_close(to_eps(guided, x, a, parameterization), expected_eps, rtol=1e-6, atol=1e-8)


def test_guidance_applies_to_the_cfg_combined_eps():
    """Classifier guidance of the classifier-free-guided prediction; the classifier sees the batch once."""
    schedule = Schedule(ScheduleConfig(timesteps=1000))
    x, t = torch.randn(2, 4, generator=torch.Generator().manual_seed(2)), torch.tensor([300, 700])
    cond, uncond = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [0.0]])
    model_fn = lambda x, t, c: x * c  # noqa: E731
    seen = []

    def classifier(x, t):
        seen.append(x.shape[0])
        return linear_classifier(x, t)

    cfg = cfg_denoise(model_fn, cond, uncond, 3.0)
    out = classifier_guided(cfg, schedule, classifier, torch.tensor([1, 2]), 4.0)(x, t)
    a = schedule.alphas_cumprod[t].float().reshape(-1, 1)
    expected = x * (0 + 3.0 * (cond - 0)) - 4.0 * (1 - a).sqrt() * closed_form_grad(x, torch.tensor([1, 2]))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert seen == [2]


def exact_eps(schedule: Schedule, std: float = 0.5):
    """E[eps | x_t] for Gaussian data x_0 ~ N(0, std^2 I), at integer or fractional t."""
    def fn(x, t):
        a = abar_at(schedule, t).to(x).reshape(-1, *[1] * (x.dim() - 1))
        return (1 - a).sqrt() * x / (a * std**2 + 1 - a)
    return fn


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_is_guided_and_scale_0_is_unguided(name):
    """On Gaussian data, guiding towards class 1 of "is w.x large" moves every sampler's samples along w;
    scale 0 gives the unguided samples exactly."""
    schedule = Schedule(ScheduleConfig(timesteps=100, linear_start=1e-3, linear_end=0.2))
    w = torch.zeros(8)
    w[:4] = 0.5

    def classifier(x, t):  # logits [0, 4 w.x]: p(1 | x) grows along w
        return torch.stack([torch.zeros(len(x)), 4 * x @ w], dim=1)

    labels = torch.ones(64, dtype=torch.long)
    steps = 100 if name == "ddpm" else 10

    def run(fn):
        noise = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        return get_sampler(name)(fn, noise, schedule, steps=steps, generator=torch.Generator().manual_seed(1))

    plain = run(exact_eps(schedule))
    assert torch.equal(run(classifier_guided(exact_eps(schedule), schedule, classifier, labels, 0.0)), plain)
    guided = run(classifier_guided(exact_eps(schedule), schedule, classifier, labels, 1.0))
    assert (guided @ w).mean() > (plain @ w).mean() + 0.15  # 0.18 (dpmpp_2m_sde_karras) to 1.5 (euler) here
    # the directions the classifier ignores are left alone
    torch.testing.assert_close(guided[:, 4:], plain[:, 4:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, steps, nfe", [("ddim", 10, 10), ("ddim", 15, 16), ("plms", 10, 11), ("heun", 5, 9),
                                              ("euler", 7, 7), ("dpmpp_2m_karras", 6, 6), ("euler_a", 4, 4)])
def test_count_nfe(name, steps, nfe):
    assert count_nfe(name, steps, Schedule(ScheduleConfig(timesteps=1000))) == nfe


def test_steps_for_nfe():
    schedule = Schedule(ScheduleConfig(timesteps=1000))
    assert steps_for_nfe("ddim", 50, schedule) == (50, 50)
    assert steps_for_nfe("ddim", 15, schedule) == (14, 15)  # uniform spacing: 15 steps visit 16 timesteps
    assert steps_for_nfe("plms", 5, schedule) == (4, 5)
    assert steps_for_nfe("heun", 5, schedule) == (3, 5)
    assert steps_for_nfe("heun", 10, schedule) == (5, 9)  # 2N - 1 is odd: the closer (smaller) one
    small = Schedule(ScheduleConfig(timesteps=20))
    assert steps_for_nfe("ddpm", 5, small) == (20, 20)  # DDPM runs all T steps
