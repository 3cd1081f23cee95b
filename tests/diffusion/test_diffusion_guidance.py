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
