"""ldmkit.nn.conv: the im2col-matmul weight gradient, and when Conv2d takes it."""
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.nn import conv as conv_mod
from ldmkit.nn.conv import Conv2d, conv2d_weight_grad
from ldmkit.nn.unet import UNetConfig, UNetModel


@pytest.mark.parametrize(
    "shape,kernel,stride,padding",
    [
        ((2, 3, 8, 8), (3, 3), (1, 1), (1, 1)),
        ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1)),  # odd sizes, stride 2: the last rows / columns partly unused
        ((1, 4, 8, 6), (3, 3), (2, 2), (1, 1)),
        ((2, 2, 6, 5), (5, 5), (1, 1), (2, 2)),
        ((2, 3, 6, 7), (3, 1), (1, 2), (1, 0)),
        ((1, 3, 6, 6), (3, 3), (1, 1), (0, 0)),
    ],
)
def test_weight_grad_equals_autograd_of_conv2d(shape, kernel, stride, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    w = torch.randn(5, shape[1], *kernel, generator=g, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, w, None, stride, padding)
    grad = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (expected,) = torch.autograd.grad(y, w, grad)
    got = conv2d_weight_grad(x, grad, kernel, stride, padding)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _pair(cin=16, cout=256, stride=1, seed=0):
    torch.manual_seed(seed)
    ours = Conv2d(cin, cout, 3, stride=stride, padding=1)
    ref = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _step(module, x, autocast):
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = module(x)
    y.float().square().mean().backward()
    return y, x.grad, module.weight.grad, module.bias.grad


@pytest.fixture
def wgrad_calls(monkeypatch):
    """Records each call of the matmul weight gradient (which still runs)."""
    calls = []
    monkeypatch.setattr(conv_mod, "conv2d_weight_grad", lambda *a: calls.append(1) or conv2d_weight_grad(*a))
    return calls


@pytest.mark.parametrize("stride", [1, 2])
def test_bf16_autocast_training_takes_the_matmul_weight_grad(wgrad_calls, stride):
    ours, ref = _pair(stride=stride)
    x = torch.randn(4, 16, 8 * stride, 8 * stride)
    y, gx, gw, gb = _step(ours, x, autocast=True)
    y_ref, gx_ref, gw_ref, gb_ref = _step(ref, x, autocast=True)
    assert wgrad_calls == [1]
    assert y.dtype == y_ref.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    assert gw.dtype == torch.float32 and gb.dtype == torch.float32  # parameters' own dtype, as under autocast
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)
    torch.testing.assert_close(gb, gb_ref, rtol=0, atol=0)
    # same products summed in another order, rounded to bf16: within a bf16 ulp of the largest entry
    assert (gw - gw_ref).abs().max() <= 2 ** -7 * gw_ref.abs().max()
    assert torch.nn.functional.cosine_similarity(gw.flatten(), gw_ref.flatten(), dim=0) > 0.9999


def test_bf16_weights_without_autocast_take_it_too(wgrad_calls):
    ours, _ = _pair()
    ours.to(torch.bfloat16)
    _step(ours, torch.randn(2, 16, 8, 8, dtype=torch.bfloat16), autocast=False)
    assert wgrad_calls == [1] and ours.weight.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("case", ["fp32", "inference", "long reduction", "few output channels", "disabled"])
def test_elsewhere_it_is_nn_conv2d_bitwise(monkeypatch, case):
    def fail(*a):
        raise AssertionError("matmul weight gradient taken")

    monkeypatch.setattr(conv_mod, "conv2d_weight_grad", fail)
    if case == "disabled":
        monkeypatch.setattr(conv_mod, "MATMUL_WGRAD_MAX_ROWS", 0)
    ours, ref = _pair(cout=24 if case == "few output channels" else 256)
    side = 16 if case == "long reduction" else 8  # 5 * 16 * 16 = 1280 rows > 1024; 5 * 8 * 8 = 320
    x = torch.randn(5, 16, side, side)
    if case == "inference":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(ours(x), ref(x))
        return
    got, expected = _step(ours, x, case != "fp32"), _step(ref, x, case != "fp32")
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_mixed_dtypes_without_autocast_still_fail_as_nn_conv2d():
    ours, _ = _pair()
    x = torch.randn(1, 16, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(RuntimeError):
        ours(x)


def test_unet_bf16_training_step_matches_the_plain_convolutions(monkeypatch):
    cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_heads=2)
    torch.manual_seed(0)
    model = UNetModel(cfg)
    for p in model.parameters():  # the zero-initialised output convs would leave most gradients zero
        p.data.add_(torch.randn_like(p) * 0.02)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])

    def grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x, t).float().square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    monkeypatch.setattr(conv_mod, "MATMUL_WGRAD_MIN_OUT_CHANNELS", 1)  # this small UNet's 8x8 level has 64
    got = grads()
    monkeypatch.setattr(conv_mod, "MATMUL_WGRAD_MAX_ROWS", 0)
    expected = grads()
    assert got.keys() == expected.keys()
    # the 8x8 level's conv weights took the matmul path (and differ by rounding only); the rest are the same kernels
    changed = [n for n in got if not torch.equal(got[n], expected[n])]
    assert any("input_blocks.3" in n or "middle_block" in n for n in changed)
    for n in got:
        err = (got[n] - expected[n]).norm() / expected[n].norm().clamp_min(1e-12)
        assert err < 2e-2, (n, err.item())


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler")
def test_weight_grad_is_right_under_torch_compile():
    # an as_strided im2col read the wrong elements once inductor laid the padded input out its own way
    ours, ref = _pair(cin=8, cout=256)
    x = torch.randn(2, 8, 8, 8)

    def loss(module):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module(x).float().square().mean()

    loss(ref).backward()
    torch.compile(loss)(ours).backward()
    err = (ours.weight.grad - ref.weight.grad).norm() / ref.weight.grad.norm()
    # bf16 rounding (eps 7.8e-3): under 1e-3 on earlier machines, 2.1e-3 on this one (the same code at e9cdc00):
    # the bug this guards against was 123 %
    assert err < 1e-2
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=0, atol=0)
