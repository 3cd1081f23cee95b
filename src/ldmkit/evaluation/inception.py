"""Inception-v3 in the FID convention, without torchvision.

FID (Heusel et al. 2017) and Inception Score (Salimans et al. 2016) are only comparable across papers when they
use the *TensorFlow* Inception graph ``inception-2015-12-05``. pytorch-fid ships that graph's weights ported to
PyTorch (``pt_inception-2015-12-05-6726825d.pth``) together with four patched blocks; this module rebuilds the
same network from scratch so that the file loads as-is:

- state-dict keys and shapes equal the file's: ``Conv2d_1a_3x3.conv.weight``, ``Conv2d_1a_3x3.bn.{weight,bias,
  running_mean,running_var}``, ``Mixed_5b.branch1x1.*`` ... ``Mixed_7c.*``, ``fc.weight`` (1008, 2048), ``fc.bias``
  (94 conv layers x 5 tensors + 2 = 472 entries; no ``num_batches_tracked``, no auxiliary classifier);
- batch norm with eps 0.001 (TensorFlow's), always in inference mode;
- the average-pool branches of Mixed_5b..5d, 6b..6e and 7b exclude the zero padding from the mean
  (``count_include_pad=False``, TensorFlow's behaviour), and Mixed_7c's pool branch is a *max* pool (a quirk of
  that graph, kept because the weights were trained with it).

Weights are never downloaded: pass the file (see :data:`FID_WEIGHTS_URL`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, require

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
# torch.hub names a file after the first 8 hex digits of its sha256: a file whose digest starts with this is the
# official one, and only numbers from it may be called "FID".
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
NUM_CLASSES = 1008  # the TF graph's 1000 ImageNet classes + 8 unused ones

Resize = Literal["bilinear", "bilinear-antialias", "bicubic", "bicubic-antialias", "nearest"]
RESIZE_METHODS: tuple[str, ...] = ("bilinear", "bilinear-antialias", "bicubic", "bicubic-antialias", "nearest")


def resize_images(x: torch.Tensor, size: int, method: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size). ``bilinear`` is pytorch-fid's (align_corners=False, no antialiasing)."""
    if x.shape[-2:] == (size, size):
        return x  # every method is the identity at scale 1
    mode, _, aa = method.partition("-")
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=aa == "antialias")


class _BatchNorm(nn.Module):
    """Inference-only batch norm with exactly the four tensors the ported file holds (no num_batches_tracked)."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = _BatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow averages over the valid (unpadded) pixels only, so border means are not pulled towards 0.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """Mixed_5b/5c/5d (35x35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1; out 224 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class BlockB(nn.Module):
    """Mixed_6a, grid reduction 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2; out 384 + 96 + cin."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class BlockC(nn.Module):
    """Mixed_6b..6e (17x17), factorised 7x7 convolutions (1x7 and 7x1); out 4 x 192 = 768."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))], 1)


class BlockD(nn.Module):
    """Mixed_7a, grid reduction 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2; out 320 + 192 + cin."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class BlockE(nn.Module):
    """Mixed_7b/7c (8x8), expanded filter bank: 1x3 and 3x1 side by side; out 320 + 768 + 768 + 192 = 2048.

    ``max_pool`` selects Mixed_7c's max-pool branch (the TF graph's quirk); Mixed_7b averages (without padding).
    """

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


def _short(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more if keys else "none"


class InceptionV3(nn.Module):
    """FID Inception-v3: images (B, 1 or 3, H, W) in [-1, 1] -> pool3 features (B, 2048).

    Inputs are resized to 299x299 with ``resize`` (default ``bilinear``, align_corners=False: pytorch-fid's
    choice; the method is recorded as ``self.resize`` so reports can state it). Resizing is linear, so resizing
    [-1, 1] images equals pytorch-fid's resize-then-rescale of [0, 1] images. Always in inference mode.
    """

    def __init__(self, resize: str = "bilinear") -> None:
        super().__init__()
        require(resize in RESIZE_METHODS, "resize", f"expected one of {', '.join(RESIZE_METHODS)}, got {resize!r}")
        self.resize = resize
        self.resolution = INPUT_SIZE
        self.weights_sha256: str | None = None  # set by from_file
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, NUM_CLASSES)
        self.requires_grad_(False)
        self.eval()

    @property
    def official_weights(self) -> bool:
        """Whether the loaded file is pytorch-fid's release (its sha256 starts with the name's hash)."""
        return bool(self.weights_sha256 and self.weights_sha256.startswith(FID_WEIGHTS_SHA256_PREFIX))

    @classmethod
    def from_file(cls, path: str | Path, resize: str = "bilinear") -> InceptionV3:
        """Load ``pt_inception-2015-12-05-6726825d.pth`` (or the same tensors as .safetensors), never executing
        pickled code. Missing file or wrong keys -> ConfigError (one line)."""
        from ..convert.safe_load import load_state_dict_file
        from ..weights import file_digest

        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"Inception weights {path}: file not found (download {FID_WEIGHTS_URL} on a "
                              "connected machine, copy it here and pass its path as the Inception weights file, e.g. "
                              "build_extractor('inception', weights=PATH))")
        try:
            sd = load_state_dict_file(p)
        except ValueError as e:
            raise ConfigError(f"Inception weights {path}: {e}") from None
        # a copy re-saved from a torchvision-style model may carry batch-norm step counters: harmless, dropped
        sd = {k: v for k, v in sd.items() if not k.endswith(".num_batches_tracked")}
        model = cls(resize=resize)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        if missing or unexpected:
            raise ConfigError(f"Inception weights {path}: not the FID Inception state dict: missing keys "
                              f"{_short(missing)}; unexpected keys {_short(unexpected)}")
        wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
                 for k, v in expected.items() if sd[k].shape != v.shape]
        if wrong:
            raise ConfigError(f"Inception weights {path}: wrong shapes: {_short(wrong, 3)}")
        model.load_state_dict(sd)
        model.weights_sha256 = file_digest(p)
        return model

    def train(self, mode: bool = True) -> InceptionV3:
        # A frozen measuring instrument: a parent's .train() must not change it.
        return super().train(False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"InceptionV3: expected images (B, 1 or 3, H, W), got shape {tuple(images.shape)}")
        x = images.to(device=self.fc.weight.device, dtype=self.fc.weight.dtype)
        if x.shape[1] == 1:  # grayscale: the network was trained on RGB
            x = x.expand(-1, 3, -1, -1)
        return resize_images(x, INPUT_SIZE, self.resize)  # (B, 3, 299, 299)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._prepare(images)  # (B, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
        x = self.Mixed_6a(x)  # (B, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 17)
        x = self.Mixed_7a(x)  # (B, 1280, 8, 8)
        x = self.Mixed_7c(self.Mixed_7b(x))  # (B, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # pool3: (B, 2048)

    def logits(self, images: torch.Tensor, bias: bool = False) -> torch.Tensor:
        """(B, 1008) class logits for the Inception Score.

        The original Inception Score code multiplies pool3 by the softmax weights *without* the bias (as does
        torch-fidelity's ``logits_unbiased``), hence ``bias=False`` by default; ``bias=True`` is the graph's
        full fc layer.
        """
        f = self(images)  # (B, 2048)
        return F.linear(f, self.fc.weight, self.fc.bias if bias else None)
