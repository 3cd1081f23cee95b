"""Fused GroupNorm + SiLU and GEGLU gate, GroupNorm32: the same values and gradients as the unfused layers, less
kept for backward, and half-precision inputs (autocast, bf16 models) that the original's casts broke on CPU."""
import pytest
import torch
import torch.nn.functional as F

from ldmkit.nn.blocks import GroupNorm32
from ldmkit.nn.fused import gated_gelu, gated_gelu_linear, group_norm_silu

pytestmark = pytest.mark.usefixtures("one_thread")


def norm(channels=32, groups=8, dtype=torch.float32):
    torch.manual_seed(0)
    gn = GroupNorm32(groups, channels)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    return gn.to(dtype)


def value_and_grads(fn, gn, x, g):
    x = x.detach().requires_grad_()
    out = fn(gn, x)
    return (out, *torch.autograd.grad(out, (x, gn.weight, gn.bias), g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16 input, float32 weights = autocast
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_matches_unfused(dtype, channels_last):
    gn = norm()
    x = (torch.randn(2, 32, 6, 5) * 3 + 1).to(dtype)
    g = torch.randn(2, 32, 6, 5).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fused = value_and_grads(group_norm_silu, gn, x, g)
    unfused = value_and_grads(lambda m, x: F.silu(m(x)), gn, x, g)
    assert fused[0].dtype == dtype
    for a, b in zip(fused, unfused):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6 if dtype == torch.float32 else 0)


def saved_bytes(fn, x, gn):
    """Bytes autograd keeps for backward while running fn(gn, x), each storage counted once."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(gn, x)
    return sum(storages.values())


def test_fused_keeps_one_activation_less_for_backward():
    gn, x = norm(), torch.randn(4, 32, 16, 16, requires_grad=True)
    act = x.numel() * 4
    unfused = saved_bytes(lambda m, x: F.silu(m(x)), x, gn)
    fused = saved_bytes(group_norm_silu, x, gn)
    # unfused: the GroupNorm input and output (SiLU's input); fused: the input only (+ per-group statistics)
    assert unfused >= 2 * act and fused < 1.1 * act


def test_inference_runs_silu_in_place_and_matches():
    gn, x = norm(), torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(group_norm_silu(gn, x), F.silu(gn(x)), rtol=0, atol=0)


def test_groupnorm32_half_precision():
    gn, x = norm(), torch.randn(2, 32, 4, 4) * 4 + 2
    # autocast on CPU: bf16 input, float32 weights -> bf16 output with float32 statistics (the original's casts)
    ref = F.group_norm(x.bfloat16().float(), 8, gn.weight, gn.bias, gn.eps).bfloat16()
    out = gn(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-2)
    assert (out != ref).float().mean() < 0.01  # at most a last-bit rounding difference on a few values
    # a model cast to bf16 (weights bf16 too) used to fail on CPU ("mixed dtype") with the float32 input cast
    out = norm(dtype=torch.bfloat16)(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.group_norm(x, 8, gn.weight, gn.bias, gn.eps), rtol=0, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_gated_gelu_matches_and_keeps_less(dtype):
    torch.manual_seed(0)
    proj = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    g = torch.randn(3, 5, 8, dtype=dtype)

    def unfused(p):
        value, gate = p.chunk(2, dim=-1)
        return value * F.gelu(gate)

    out = gated_gelu(proj)
    (grad,) = torch.autograd.grad(out, proj, g)
    ref = unfused(proj)
    (ref_grad,) = torch.autograd.grad(ref, proj, g)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12 if dtype == torch.float64 else 0)
    x = torch.randn(4, 64, 32, requires_grad=True)
    # unfused keeps the halves (one storage, proj) and gelu(gate); fused keeps proj only
    assert saved_bytes(lambda _, p: gated_gelu(p), x, None) == x.numel() * 4
    assert saved_bytes(lambda _, p: unfused(p), x, None) >= 1.5 * x.numel() * 4


@pytest.mark.parametrize("autocast", [False, True])
def test_gated_gelu_linear_matches_and_keeps_less(autocast):
    """The feed-forward's gate + output Linear: values and all three gradients as the unfused layers (float64
    exactly to rounding; bf16 autocast as autocast's own casts), without keeping the gated product."""
    torch.manual_seed(0)
    dtype = torch.float32 if autocast else torch.float64
    lin = torch.nn.Linear(8, 6).to(dtype)
    proj = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    g = torch.randn(3, 5, 6, dtype=dtype)

    def run(fn):
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            p = proj.bfloat16() if autocast else proj  # autocast: a bf16 activation from the Linear before
            out = fn(p)
        return (out, *torch.autograd.grad(out, (proj, lin.weight, lin.bias), g.to(out.dtype)))

    fused = run(lambda p: gated_gelu_linear(p, lin.weight, lin.bias))
    ref = run(lambda p: lin(gated_gelu(p)))
    for a, b in zip(fused, ref):
        assert a.dtype == b.dtype
        tol = 1e-12 if not autocast else 0.02 * b.abs().max().item()
        torch.testing.assert_close(a, b, rtol=0, atol=tol)
    x = torch.randn(4, 64, 32, requires_grad=True)
    w = torch.randn(7, 16, requires_grad=True)
    # fused keeps proj (and the weight, a parameter that exists anyway); unfused also keeps the (4, 64, 16) product
    assert saved_bytes(lambda _, p: gated_gelu_linear(p, w, None), x, None) == (x.numel() + w.numel()) * 4
    assert saved_bytes(lambda _, p: F.linear(gated_gelu(p), w), x, None) >= (x.numel() + w.numel() + 4 * 64 * 16) * 4


def test_feed_forward_fused_path_is_the_module():
    """FeedForward takes the fused path (no dropout): same output and parameter gradients as running net."""
    from ldmkit.nn.attention import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(8, mult=2).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    out = ff(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *ff.parameters()])
    ref = ff.net(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *ff.parameters()])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
