"""Seeded noise with per-sample generators."""
from __future__ import annotations

import pytest
import torch

from ldmkit.diffusion import randint, randn


def test_per_sample_generators_are_position_independent(gen):
    batch = randn((3, 2, 5), [gen(7), gen(8), gen(9)])
    single = randn((1, 2, 5), [gen(8)])
    torch.testing.assert_close(batch[1:2], single, rtol=0, atol=0)
    torch.testing.assert_close(batch[1], torch.randn(2, 5, generator=gen(8)), rtol=0, atol=0)


def test_single_generator_dtype_and_device(gen):
    x = randn((2, 3), gen(0), device="cpu", dtype=torch.float64)
    assert x.dtype == torch.float64 and x.device.type == "cpu"
    torch.testing.assert_close(x, torch.randn(2, 3, generator=gen(0)).double())


def test_randint_and_length_check(gen):
    t = randint(10, 4, [gen(i) for i in range(4)])
    assert t.dtype == torch.long and t.shape == (4,) and int(t.max()) < 10
    with pytest.raises(ValueError, match="one per sample"):
        randn((3, 2), [gen(0), gen(1)])
