"""Fused ops that keep less for backward: GroupNorm + SiLU, GEGLU's gate, and the gate with the Linear after it.

GroupNorm + SiLU opens every residual branch (UNet ResBlock, autoencoder ResnetBlock) and the output heads.
Unfused, autograd stores the GroupNorm input (for its backward), the GroupNorm output (for SiLU's backward) and
the SiLU output (for the next convolution's backward). ``GroupNormSiLU`` stores only the input and the per-group
statistics and recomputes the GroupNorm output in backward (one elementwise pass, ~1 % of a training step): on the
benchmark UNet (batch 8, fp32) 843 -> 741 MiB kept for backward, and 677 MiB with ``GatedGELU``. Outside
autograd (inference) the SiLU runs in place on the GroupNorm output, saving an allocation and a pass per pair.
Results are bitwise those of ``silu(group_norm(x))``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def native_group_norm_ok(x: Tensor, weight: Tensor) -> bool:
    """Whether PyTorch's group_norm kernel takes ``x`` with ``weight`` as they are and keeps float32 statistics:
    same dtype on CPU / CUDA (half-precision input is accumulated in float32), or bf16 input with float32 weights
    on CPU (autocast)."""
    if x.dtype == weight.dtype:
        return x.dtype == torch.float32 or x.device.type in ("cpu", "cuda")
    return x.device.type == "cpu" and x.dtype == torch.bfloat16 and weight.dtype == torch.float32


def _memory_format(x: Tensor) -> torch.memory_format:
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


class GroupNormSiLU(torch.autograd.Function):
    """silu(group_norm(x, groups, weight, bias, eps)); backward recomputes the GroupNorm output from x."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float) -> Tensor:
        n, c = x.shape[:2]
        hw = x.numel() // max(1, n * c)
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, hw, groups, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.shape = (n, c, hw, groups, eps)
        return F.silu(y, inplace=True)  # (B, C, ...)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        n, c, hw, groups, eps = ctx.shape
        y = torch.native_group_norm(x, weight, bias, n, c, hw, groups, eps)[0]  # recomputed, not stored
        # the kernels assume gradient and input share a memory format (channels-last or not)
        grad_y = torch.ops.aten.silu_backward(grad.contiguous(memory_format=_memory_format(x)), y)
        mask = [bool(m) for m in ctx.needs_input_grad[:3]]
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(grad_y, x, mean, rstd, weight, n, c, hw, groups, mask)
        return gx, gw, gb, None, None


def group_norm_silu(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """``silu(norm(x))`` for an affine ``nn.GroupNorm`` (or GroupNorm32), in ``x``'s dtype."""
    w, b = norm.weight, norm.bias
    if not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)):
        return F.silu(norm(x), inplace=True)  # inference: norm(x) is a fresh tensor
    if native_group_norm_ok(x, w):
        return GroupNormSiLU.apply(x, w, b, norm.num_groups, norm.eps)
    # a dtype mix the kernel does not take: float32 as the original GroupNorm32
    return GroupNormSiLU.apply(x.float(), w.float(), b.float(), norm.num_groups, norm.eps).type(x.dtype)


def _gated(proj: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(value * gelu(gate), value, gelu(gate)) for [value | gate] = proj's last dim in halves."""
    value, gate = proj.chunk(2, dim=-1)  # each (..., D)
    gelu_gate = F.gelu(gate)
    return value * gelu_gate, value, gelu_gate


def _gated_backward(grad: Tensor, proj: Tensor, gelu_gate: Tensor) -> Tensor:
    """Gradient of value * gelu(gate) with respect to proj = [value | gate], given the output's gradient."""
    value, gate = proj.chunk(2, dim=-1)
    grad_gate = torch.ops.aten.gelu_backward(grad * value, gate)
    return torch.cat([grad * gelu_gate, grad_gate], dim=-1)  # (..., 2D)


class GatedGELU(torch.autograd.Function):
    """value * gelu(gate) for [value | gate] = the last dim of ``proj`` split in two halves (the GEGLU of the
    transformer feed-forward). Keeps only ``proj`` for backward (the output of the Linear before, which nothing
    else keeps) and recomputes gelu(gate) there, instead of also storing gelu(gate): a third less of GEGLU's
    activations (64 MiB of a batch-8 training step of the benchmark UNet in fp32)."""

    @staticmethod
    def forward(ctx, proj: Tensor) -> Tensor:
        ctx.save_for_backward(proj)
        return _gated(proj)[0]  # (..., D)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (proj,) = ctx.saved_tensors
        return _gated_backward(grad, proj, F.gelu(proj.chunk(2, dim=-1)[1]))  # (..., 2D)


def gated_gelu(proj: Tensor) -> Tensor:
    """value * gelu(gate), [value | gate] = proj's last dim in halves; see ``GatedGELU``."""
    if torch.is_grad_enabled() and proj.requires_grad:
        return GatedGELU.apply(proj)
    return _gated(proj)[0]


class GatedGELULinear(torch.autograd.Function):
    """linear(value * gelu(gate), weight, bias): the transformer feed-forward after its first Linear. Keeps only
    ``proj`` (and the parameters) for backward and recomputes the gated product there, instead of also keeping it
    for the Linear's weight gradient: on the benchmark UNet (batch 8, bf16 autocast) 32 of 531 MiB kept for
    backward. The weight is cast to ``proj``'s dtype as autocast would, so results match the unfused layers."""

    @staticmethod
    def forward(ctx, proj: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        with torch.autocast(proj.device.type, enabled=False):  # dtypes are set here, as autocast would set them
            out = F.linear(_gated(proj)[0], weight.to(proj.dtype), None if bias is None else bias.to(proj.dtype))
        ctx.save_for_backward(proj, weight, bias)
        return out  # (..., out_features)

    @staticmethod
    def backward(ctx, grad: Tensor):
        proj, weight, bias = ctx.saved_tensors
        with torch.autocast(proj.device.type, enabled=False):
            h, _, gelu_gate = _gated(proj)  # recomputed, not stored
            grad = grad.to(proj.dtype).reshape(-1, grad.shape[-1])  # (N, out)
            grad_h = (grad @ weight.to(proj.dtype)).reshape(h.shape)  # (..., D)
            grad_w = grad.t() @ h.reshape(-1, h.shape[-1]) if ctx.needs_input_grad[1] else None  # (out, D)
            grad_b = grad.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
            # autograd casts the parameters' gradients to their own dtype (float32 under autocast)
            return _gated_backward(grad_h, proj, gelu_gate), grad_w, grad_b


def gated_gelu_linear(proj: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(gated_gelu(proj), weight, bias)``; see ``GatedGELULinear``."""
    if torch.is_grad_enabled() and (proj.requires_grad or weight.requires_grad):
        return GatedGELULinear.apply(proj, weight, bias)
    return F.linear(gated_gelu(proj), weight, bias)
