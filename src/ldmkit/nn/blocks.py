"""Convolutional UNet building blocks: float32 GroupNorm, ResBlock, Downsample, Upsample.

Attribute names (``in_layers``, ``emb_layers``, ``out_layers``, ``skip_connection``, ``op``, ``conv``) and
Sequential indices are those of the original ``openaimodel`` so that its checkpoints load 1:1.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.nn.conv import Conv2d
from ldmkit.nn.fused import group_norm_silu, native_group_norm_ok


def _num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of ``channels`` that is <= 32.

    The original always uses 32 groups, which needs channels % 32 == 0 (true for every real
    config, where this returns 32). Tiny test models (e.g. 8 or 24 channels) would otherwise be
    impossible to build, so they fall back to the largest group count that divides evenly.
    """
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics for half-precision input, output in the input's dtype.

    The original casts the input to float32 and back. PyTorch's CPU and CUDA kernels already accumulate bf16 /
    fp16 input in float32 (and the CPU one takes bf16 input with float32 weights, as under autocast), so there the
    input goes in as it is: the two casts cost a full read and write of the activation each way, forward and
    backward (~180 extra copies per SD-sized training step), for the same statistics. Elsewhere, or for a dtype
    mix no kernel takes, it casts as the original.
    """

    def forward(self, x: Tensor) -> Tensor:
        if native_group_norm_ok(x, self.weight):
            return super().forward(x)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).type(x.dtype)


def normalization(channels: int, eps: float = 1e-5) -> GroupNorm32:
    """The UNet's norm layer: 32 groups (see ``_num_groups``), eps 1e-5 unless a module says otherwise."""
    return GroupNorm32(_num_groups(channels), channels, eps=eps)


class Downsample(nn.Module):
    """Halve H and W: 3x3 conv with stride 2 (``op``), or 2x2 average pooling when ``use_conv`` is False.

    Odd sizes round up in both variants (the conv by its padding, the pool by ``ceil_mode``), so a
    7x7 map becomes 4x4 and no level can shrink to zero; for even sizes ceil_mode changes nothing.
    """

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # (B, C, ceil(H/2), ceil(W/2))


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to ``size`` (default 2x), then an optional 3x3 ``conv``.

    The UNet passes the spatial size of the skip connection that will be concatenated next. For even
    sizes that is exactly 2x (bit-identical to ``scale_factor=2``); for odd latents (7x7 -> 4x4 after
    the stride-2 downsample) a plain 2x would give 8x8 and the concat with the 7x7 skip would fail.
    """

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        size = tuple(size) if size is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        x = F.interpolate(x, size=size, mode="nearest")  # (B, C, *size)
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block conditioned on the (time [+ label]) embedding, optionally resampling.

    ``use_scale_shift_norm`` applies the embedding as FiLM, ``GN(h) * (1 + scale) + shift``; otherwise it is
    added to the features. With ``up``/``down`` the block resamples both branches without a conv (the
    ``resblock_updown`` variant), so it adds no state_dict keys beyond a plain ResBlock.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out = out_channels or channels
        self.up = up
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), Conv2d(channels, out, 3, padding=1))
        self.resample = Upsample(channels, False) if up else Downsample(channels, False) if down else None
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out if use_scale_shift_norm else out))
        # out_layers.3 is zero-initialised by UNetModel._init_weights: the block starts as its skip path.
        self.out_layers = nn.Sequential(normalization(out), nn.SiLU(), nn.Dropout(dropout), Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == channels else nn.Conv2d(channels, out, 1)

    def _resample(self, x: Tensor, size: tuple[int, int] | None) -> Tensor:
        return self.resample(x, size) if self.up else self.resample(x)

    def forward(self, x: Tensor, emb: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """x (B, C, H, W), emb (B, E); ``size`` is the output size of an ``up`` block (see Upsample)."""
        # in_layers / out_layers keep the original's modules (and keys); their GroupNorm + SiLU run fused
        h = group_norm_silu(self.in_layers[0], x)  # (B, C, H, W)
        if self.resample is not None:
            # Resample between the activation and the conv, as the original (norm statistics at input size).
            h = self._resample(h, size)  # (B, C, H', W')
            x = self._resample(x, size)  # (B, C, H', W')
        h = self.in_layers[2](h)  # (B, out, H', W')
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]  # (B, out or 2*out, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)  # (B, out, H', W')
        else:
            h = self.out_layers[3](self.out_layers[2](group_norm_silu(self.out_layers[0], h + emb_out)))  # (B, out, H', W')
        return self.skip_connection(x) + h
