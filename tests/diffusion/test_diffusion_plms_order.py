"""PLMS's ``order`` cap: Adams-Bashforth of order k reproduces a polynomial eps history of degree k - 2 exactly
(its weights integrate the degree-(k - 1) interpolant), so on an eps that is a polynomial in t, orders that are
both exact for it give the same sample and a lower order that is not exact differs."""
import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.diffusion import Schedule, ScheduleConfig, sample_plms

SCHEDULE = Schedule(ScheduleConfig(timesteps=1000, linear_start=0.0015, linear_end=0.0195))


def eps_poly(degree: int):
    # eps depends on t only (uniform steps: a polynomial in the step index of the same degree)
    def fn(x, t):
        s = (t.double() / 1000).view(-1, 1, 1, 1)
        return (0.3 + 0.5 * s + 0.4 * s ** 2 * (degree >= 2) - 0.6 * s ** 3 * (degree >= 3)).expand_as(x).to(x.dtype)
    return fn


def run(degree: int, order: int) -> torch.Tensor:
    x_T = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return sample_plms(eps_poly(degree), x_T, SCHEDULE, steps=25, order=order)


def test_orders_agree_where_both_are_exact_and_differ_where_one_is_not():
    # linear eps: the extrapolated slope e_t + d / 2 is the same for AB2, AB3, AB4
    torch.testing.assert_close(run(1, 2), run(1, 4), rtol=0, atol=1e-12)
    # quadratic: AB3 and AB4 agree, AB2 does not
    torch.testing.assert_close(run(2, 3), run(2, 4), rtol=0, atol=1e-12)
    assert (run(2, 2) - run(2, 4)).abs().max() > 1e-6
    # cubic: only AB4 is exact
    assert (run(3, 3) - run(3, 4)).abs().max() > 1e-7


def test_default_is_the_original_fourth_order():
    x_T = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(sample_plms(eps_poly(3), x_T, SCHEDULE, steps=25),
                               sample_plms(eps_poly(3), x_T, SCHEDULE, steps=25, order=4), rtol=0, atol=0)


@pytest.mark.parametrize("order", [1, 5, 2.5])
def test_bad_order_is_refused(order):
    with pytest.raises(ConfigError, match="order: PLMS takes 2, 3 or 4"):
        run(1, order)
