"""Spatial conditioning maps for concat conditioning (semantic synthesis, layouts as maps).

The original semantic-synthesis models feed a one-hot segmentation (182 classes) through a
trainable ``SpatialRescaler``: two bilinear halvings to the latent size, then a 1x1 conv to 3
channels, concatenated to the noisy latent. The module here keeps the original's state-dict
key (``channel_mapper.weight``) and its defaults, so those weights load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The original also accepts linear / trilinear, which cannot resize (B, C, H, W) maps; left out.
METHODS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "area")


class SpatialRescaler(nn.Module):
    """Resize ``n_stages`` times by ``multiplier``, then optionally remap channels with a 1x1 conv.

    As the original: each stage is ``F.interpolate(x, scale_factor=multiplier, mode=method)``
    (no antialiasing, so a bilinear halving of even sizes is an exact 2x2 average), and the
    conv has no bias unless ``bias=True``. ``out_channels=None`` keeps the channels as they are.
    """

    def __init__(self, n_stages: int = 1, method: str = "bilinear", multiplier: float = 0.5,
                 in_channels: int = 3, out_channels: int | None = None, bias: bool = False) -> None:
        super().__init__()
        if n_stages < 0:
            raise ValueError(f"SpatialRescaler: n_stages must be >= 0, got {n_stages}")
        if method not in METHODS:
            raise ValueError(f"SpatialRescaler: method must be one of {', '.join(METHODS)}, got {method!r}")
        if multiplier <= 0:
            raise ValueError(f"SpatialRescaler: multiplier must be > 0, got {multiplier}")
        self.n_stages = n_stages
        self.method = method
        self.multiplier = multiplier
        self.in_channels = in_channels
        self.remap_output = out_channels is not None
        self.out_channels = out_channels if out_channels is not None else in_channels
        if self.remap_output:
            self.channel_mapper = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        # x: (B, in_channels, H, W)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"SpatialRescaler: expected {self.in_channels} channels, got shape {tuple(x.shape)}")
        # align_corners=False is interpolate's behaviour when left unset, spelled out for the linear modes
        kwargs = {"align_corners": False} if self.method in ("bilinear", "bicubic") else {}
        for _ in range(self.n_stages):
            x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method, **kwargs)
        if self.remap_output:
            x = self.channel_mapper(x)
        return x  # (B, out_channels, H * m^n, W * m^n), sizes floored per stage

    def encode(self, x: Tensor) -> Tensor:
        """The original's conditioner interface (``cond_stage_model.encode``)."""
        return self(x)


def one_hot_map(seg: Tensor, num_classes: int) -> Tensor:
    """Integer map (B, H, W) -> float one-hot (B, num_classes, H, W); ids must lie in [0, num_classes)."""
    if seg.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"one_hot_map: expected an integer class map, got {seg.dtype}")
    if seg.ndim != 3:
        raise ValueError(f"one_hot_map: expected (B, H, W), got shape {tuple(seg.shape)}")
    if seg.numel() and (int(seg.min()) < 0 or int(seg.max()) >= num_classes):
        raise ValueError(f"one_hot_map: class ids must be in [0, {num_classes}), "
                         f"got [{int(seg.min())}, {int(seg.max())}]")
    onehot = F.one_hot(seg.long(), num_classes)  # (B, H, W, K)
    return onehot.permute(0, 3, 1, 2).float().contiguous()  # (B, K, H, W)


def box_map(boxes: Tensor, num_classes: int, height: int, width: int) -> Tensor:
    """Layout (B, M, 5) rows [class_id, x0, y0, x1, y1] (normalised; class_id < 0 = padding) -> (B, K, H, W) map:
    channel c is 1 on the pixels whose centre lies in a box of class c, channel 0 (background) where none does.
    The pixels of overlapping boxes are 1 in each of their classes."""
    if boxes.ndim != 3 or boxes.shape[-1] != 5:
        raise ValueError(f"box_map: expected boxes of shape (B, M, 5), got {tuple(boxes.shape)}")
    cls = torch.round(boxes[..., 0]).long()  # (B, M)
    if bool((cls >= num_classes).any()):
        raise ValueError(f"box_map: class ids must be < num_classes {num_classes}, got {int(cls.max())}")
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height  # pixel centres
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(1, 5))  # (B, M, 1, 1)
    inside = (xs >= x0) & (xs < x1) & (ys[:, None] >= y0) & (ys[:, None] < y1) & (cls >= 1)[..., None, None]
    onehot = F.one_hot(cls.clamp(min=0), num_classes).to(boxes.dtype)  # (B, M, K)
    out = torch.einsum("bmk,bmhw->bkhw", onehot, inside.to(boxes.dtype)).clamp(max=1.0)  # (B, K, H, W)
    out[:, 0] = 1.0 - inside.any(dim=1).to(boxes.dtype)
    return out
