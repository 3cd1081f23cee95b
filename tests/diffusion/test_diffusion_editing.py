"""Inpainting with any model: the known region is re-imposed at every call, for every sampler."""
from __future__ import annotations

import pytest
import torch

from ldmkit.diffusion import abar_at, get_sampler, paste_known, reimpose_known


def setup(gen):
    x_known = torch.randn(2, 1, 4, 4, generator=gen(0))
    noise = torch.randn(2, 1, 4, 4, generator=gen(1))
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :, 2:] = 1  # fill the right half
    return x_known, noise, mask


@pytest.mark.parametrize("name, options", [("ddim", {}), ("plms", {}), ("euler", {"karras": True}),
                                           ("dpmpp_2m", {}), ("heun", {"karras": True}), ("euler_a", {})])
def test_every_model_call_sees_the_noised_known_region(name, options, gen, sd_schedule):
    x_known, noise, mask = setup(gen)
    calls = []

    def model(x, t):
        calls.append((x.clone(), t.clone()))
        return 0.5 * x + 0.1 * x.flip(-1)  # mixes the halves, so the fill depends on the known region

    fn = reimpose_known(model, sd_schedule, x_known, noise, mask)
    out = get_sampler(name)(fn, noise, sd_schedule, steps=6, generator=gen(2), **options)
    assert len(calls) >= 6
    for x, t in calls:
        a = abar_at(sd_schedule, t).float().reshape(-1, 1, 1, 1)
        torch.testing.assert_close(x[..., :2], (a.sqrt() * x_known + (1 - a).sqrt() * noise)[..., :2],
                                   rtol=0, atol=1e-5)
    if options.get("karras"):
        assert any(torch.is_floating_point(t) for _, t in calls)  # fractional timesteps are handled
    result = paste_known(out, x_known, mask)
    assert torch.equal(result[..., :2], x_known[..., :2])
    other = get_sampler(name)(reimpose_known(model, sd_schedule, -x_known, noise, mask), noise, sd_schedule,
                              steps=6, generator=gen(2), **options)
    assert (other[..., 2:] - out[..., 2:]).abs().max() > 1e-3  # the fill follows the known region


def test_an_elementwise_model_fills_as_if_unmasked(gen, sd_schedule):
    """With no interaction between pixels the fill region's trajectory is the unmasked one: re-imposing
    in the model input changes nothing but the known region."""
    x_known, noise, mask = setup(gen)
    model = lambda x, t: 0.7 * x  # noqa: E731
    plain = get_sampler("dpmpp_2m")(model, noise, sd_schedule, steps=8)
    masked = get_sampler("dpmpp_2m")(reimpose_known(model, sd_schedule, x_known, noise, mask), noise, sd_schedule,
                                     steps=8)
    torch.testing.assert_close(masked[..., 2:], plain[..., 2:], rtol=0, atol=1e-6)
