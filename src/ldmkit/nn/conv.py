"""Conv2d whose weight gradient, on small bf16 CPU problems, is one matmul over an im2col view.

On a CPU, PyTorch's bf16 convolutions run oneDNN. Its weight-gradient kernel is slow when the reduction over
batch and output pixels is short: the UNet's lowest levels at training batch sizes (8x8 maps, batch 8, 256-1024
channels) run 1.5-2.6x slower than the same product as a matmul, while oneDNN's forward and input-gradient
kernels are fine there (``benchmarks/conv_weight_grad.py``; tables in docs/results.md, session 6). So ``Conv2d``
keeps PyTorch's forward and input gradient and computes the weight gradient as

    dW (O, C*kh*kw) = grad_out (O, N*Ho*Wo) @ im2col(x)^T (N*Ho*Wo, C*kh*kw)

where im2col is one stack of the kh*kw shifted slices of the zero-padded input (nothing extra is kept for
backward: x is what the convolution keeps anyway), and the bias gradient as a sum: asked for the bias gradient,
oneDNN's backward runs its weight-gradient kernel even when the weight's is not wanted (input + bias 19 ms, input
alone 6 ms at 8x8x512). The im2col copy costs C*9 per row and the product O*C*9, so the matmul pays only with many
output channels and a short reduction: it applies to training in bf16 (autocast, or bf16 weights and input) on a CPU,
groups 1, dilation 1, kernel > 1x1, N*Ho*Wo <= ``MATMUL_WGRAD_MAX_ROWS`` and O >= ``MATMUL_WGRAD_MIN_OUT_CHANNELS``
(measured: N*Ho*Wo = 4096 is parity at 256-512 channels and 16384 loses 2x; 64 output channels lose at any
batch). Everywhere else this is ``nn.Conv2d``, bitwise. State-dict keys are those of ``nn.Conv2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Where the matmul weight gradient is used (MAX_ROWS = 0 turns it off): the reduction length N * Ho * Wo at most
# MAX_ROWS and at least MIN_OUT_CHANNELS output channels (measured per shape in docs/results.md, session 6).
MATMUL_WGRAD_MAX_ROWS = 1024
MATMUL_WGRAD_MIN_OUT_CHANNELS = 256


def conv2d_weight_grad(x: Tensor, grad: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                       padding: tuple[int, int]) -> Tensor:
    """Weight gradient (O, C, kh, kw) of ``conv2d(x, w, stride=stride, padding=padding)`` (groups 1, dilation 1)
    given x (N, C, H, W) and the output's gradient (N, O, Ho, Wo), as one matmul over im2col(x)."""
    o, ho, wo = grad.shape[1:]
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = F.pad(x, (pw, pw, ph, ph)).transpose(0, 1)  # (C, N, H + 2ph, W + 2pw), zeros around
    # cols[c, a, b, n, i, j] = xp[c, n, i*sh + a, j*sw + b], rows in the (C, kh, kw) order of the weight so the
    # product is laid out as the gradient. Slices and one stack (one copy), not as_strided: torch.compile may lay
    # the padded tensor out differently, and as_strided would then read the wrong elements.
    taps = [xp[:, :, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw] for a in range(kh) for b in range(kw)]
    cols = torch.stack(taps, dim=1).reshape(xp.shape[0] * kh * kw, -1)  # (C*kh*kw, N*Ho*Wo)
    g = grad.transpose(0, 1).reshape(o, -1)  # (O, N*Ho*Wo)
    return (g @ cols.t()).view(o, -1, kh, kw)  # (O, C, kh, kw)


class _MatmulWeightGradConv2d(torch.autograd.Function):
    """conv2d(x, weight, bias) with PyTorch's forward and input / bias gradients and ``conv2d_weight_grad``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding)
        return F.conv2d(x, weight, bias, stride, padding)  # (N, O, Ho, Wo)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad = grad.contiguous()
        gx = gb = gw = None
        if need_x:  # without the bias: asked for it, oneDNN also runs its (slow) weight-gradient kernel
            gx = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if need_b:
            gb = grad.sum((0, 2, 3))  # (O,)
        if need_w:
            gw = conv2d_weight_grad(x, grad, tuple(weight.shape[2:]), stride, padding)
        return gx, gw, gb, None, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with the matmul weight gradient of this module's docstring where it pays."""

    def _compute_dtype(self, x: Tensor, weight: Tensor) -> torch.dtype | None:
        """The dtype F.conv2d would compute in: autocast's, or the tensors' own when they agree."""
        if torch.is_autocast_enabled("cpu"):
            return torch.get_autocast_dtype("cpu")
        return x.dtype if x.dtype == weight.dtype else None

    def _matmul_wgrad(self, x: Tensor, weight: Tensor) -> bool:
        if not (torch.is_grad_enabled() and weight.requires_grad and x.device.type == "cpu" and x.dim() == 4):
            return False
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        if self.kernel_size == (1, 1) or self.out_channels < MATMUL_WGRAD_MIN_OUT_CHANNELS:
            return False
        if self._compute_dtype(x, weight) != torch.bfloat16:
            return False
        ho = (x.shape[2] + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        wo = (x.shape[3] + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        return x.shape[0] * ho * wo <= MATMUL_WGRAD_MAX_ROWS

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not self._matmul_wgrad(x, weight):
            return super()._conv_forward(x, weight, bias)
        dtype = torch.bfloat16  # cast as autocast would (input, weight and bias), then run without it
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return _MatmulWeightGradConv2d.apply(x.to(dtype), weight.to(dtype), bias, self.stride, self.padding)
