"""Classifier-free guidance wrapper."""
from __future__ import annotations

import pytest
import torch

from ldmkit.diffusion import cfg_denoise, concat_cond


class CountingModel:
    """model_fn(x, t, cond) = x * cond["context"] + cond["concat"]; records batch sizes."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        assert t.shape == (x.shape[0],) and cond["context"].shape[0] == x.shape[0]
        return x * cond["context"] + cond["concat"]


def _conds():
    cond = {"context": torch.full((2, 1), 3.0), "concat": torch.full((2, 1), 1.0)}
    uncond = {"context": torch.full((2, 1), 1.0), "concat": torch.zeros(2, 1)}
    return cond, uncond


def test_scale_one_is_a_single_conditional_call():
    model = CountingModel()
    cond, uncond = _conds()
    x, t = torch.tensor([[1.0], [2.0]]), torch.tensor([5, 5])
    out = cfg_denoise(model, cond, uncond, 1.0)(x, t)
    assert model.batches == [2]
    torch.testing.assert_close(out, model(x, t, cond), rtol=0, atol=0)


def test_scale_mixes_one_doubled_call():
    model = CountingModel()
    cond, uncond = _conds()
    x, t = torch.tensor([[1.0], [2.0]]), torch.tensor([5, 5])
    out = cfg_denoise(model, cond, uncond, 7.5)(x, t)
    assert model.batches == [4]
    c, u = 3 * x + 1, x
    torch.testing.assert_close(out, u + 7.5 * (c - u))


def test_concat_cond_recurses_and_checks_structure():
    a = {"c": [torch.zeros(1, 2)], "n": None}
    b = {"c": [torch.ones(1, 2)], "n": None}
    out = concat_cond(a, b)
    assert out["n"] is None and out["c"][0].shape == (2, 2)
    assert concat_cond(torch.zeros(1), torch.ones(2)).shape == (3,)
    with pytest.raises(ValueError, match="keys"):
        concat_cond({"a": torch.zeros(1)}, {"b": torch.zeros(1)})
    with pytest.raises(ValueError, match="None"):
        concat_cond(torch.zeros(1), None)


def _guided_pair():
    g = torch.Generator().manual_seed(0)
    out_u, out_c = torch.randn(3, 4, 5, 5, generator=g), 2.0 * torch.randn(3, 4, 5, 5, generator=g)
    return out_u, out_c


@pytest.mark.parametrize("rescale", [0.0, 0.7, 1.0])
def test_guidance_rescale_closed_form(rescale):
    """rescale 1 gives each sample the conditional output's std; 0 is plain guidance; between, the straight mix."""
    from ldmkit.diffusion.guidance import rescale_guided
    out_u, out_c = _guided_pair()
    guided = out_u + 5.0 * (out_c - out_u)
    got = rescale_guided(guided, out_c, rescale)
    fully = guided * out_c.std(dim=(1, 2, 3), keepdim=True) / guided.std(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(got, rescale * fully + (1 - rescale) * guided)
    if rescale == 1.0:
        torch.testing.assert_close(got.std(dim=(1, 2, 3)), out_c.std(dim=(1, 2, 3)))


def test_guidance_rescale_matches_diffusers():
    sd = pytest.importorskip("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    out_u, out_c = _guided_pair()
    model = lambda x, t, cond: out_c if cond["context"][0, 0] > 0 else out_u  # noqa: E731
    cond, uncond = {"context": torch.ones(3, 1)}, {"context": -torch.ones(3, 1)}
    both = lambda x, t, c: torch.cat([model(None, None, {"context": c["context"][:3]}),  # noqa: E731
                                      model(None, None, {"context": c["context"][3:]})])
    got = cfg_denoise(both, cond, uncond, 7.5, rescale=0.7)(torch.zeros(3, 4, 5, 5), torch.zeros(3))
    want = sd.rescale_noise_cfg(out_u + 7.5 * (out_c - out_u), out_c, guidance_rescale=0.7)
    torch.testing.assert_close(got, want)


def test_guidance_rescale_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"guidance_rescale: expected a number in \[0, 1\], got 1.5"):
        cfg_denoise(lambda x, t, c: x, None, None, 3.0, rescale=1.5)


def test_guidance_interval_guides_only_inside_and_skips_the_uncond_half_outside():
    """(lo, hi) inclusive: inside, u + s (c - u) from one doubled call; outside, the conditional output from one
    plain call; a batch with both takes each sample's own branch."""
    cond, uncond = _conds()
    x = torch.tensor([[1.0], [2.0]])
    c, u = 3 * x + 1, x
    cases = {(100, 100): (c, [2]), (200, 200): (u + 4 * (c - u), [4]), (600, 600): (u + 4 * (c - u), [4]),
             (700, 700): (c, [2]), (100, 400): (torch.stack([c[0], u[1] + 4 * (c[1] - u[1])]), [4, 2])}
    for t, (want, batches) in cases.items():
        model = CountingModel()
        out = cfg_denoise(model, cond, uncond, 4.0, interval=(200, 600))(x, torch.tensor(t))
        torch.testing.assert_close(out, want)
        assert model.batches == batches, t


@pytest.mark.parametrize("interval, message", [((5, 1), r"0 <= lo <= hi, got \(5, 1\)"),
                                               ((-1, 3), r"0 <= lo <= hi, got \(-1, 3\)"),
                                               ((1, 2, 3), "two timesteps"), ("ab", "two timesteps")])
def test_guidance_interval_bad_values_are_refused(interval, message):
    with pytest.raises(ValueError, match=r"guidance_interval: expected " + message):
        cfg_denoise(lambda x, t, c: x, None, None, 3.0, interval=interval)
