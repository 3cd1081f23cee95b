"""LPIPS perceptual distance (Zhang et al. 2018), VGG16 variant, without torchvision.

Key names follow taming-transformers' ``loss.perceptual_loss.*`` layout minus that prefix:
``scaling_layer.{shift,scale}``, ``net.slice{1..5}.{idx}.{weight,bias}`` (idx = torchvision's
``features.{idx}``) and ``lin{0..4}.model.1.weight``. Weights are never downloaded: pass a file.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

# torchvision vgg16 ``features``: widths of the 13 convs, "M" = max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Slice k covers features[start:end]; ends are right after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_CHANNELS = (64, 128, 256, 512, 512)
_EXPECTED = "a state dict with `net.slice1..5.*` + `lin0..4.model.1.weight` keys, or 'vgg16.pth,vgg.pth'"


def _vgg16_features() -> list[nn.Module]:
    layers: list[nn.Module] = []
    c_in = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.ReLU(inplace=False)]
            c_in = item
    return layers


class ScalingLayer(nn.Module):
    """Maps [-1, 1] inputs to the ImageNet statistics the VGG was trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """1x1 conv to one channel, no bias. Index 0 is a (p=0) dropout so the conv keeps key ``model.1``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(0.0), nn.Conv2d(channels, 1, 1, bias=False))


class VGG16Slices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        feats = _vgg16_features()
        for k, (start, end) in enumerate(_SLICES, 1):
            named = OrderedDict((str(i), feats[i]) for i in range(start, end))
            self.add_module(f"slice{k}", nn.Sequential(named))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for k in range(1, 6):
            x = getattr(self, f"slice{k}")(x)
            outs.append(x)
        return outs  # relu1_2 .. relu5_3


def _unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def _short(keys: list[str], n: int = 8) -> str:
    """The first ``n`` keys for an error message, with a count of the rest."""
    if not keys:
        return "none"
    more = f" ... (+{len(keys) - n})" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _load(path: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"LPIPS weights {path}: file not found (expected {_EXPECTED})")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    sd = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"LPIPS weights {path}: expected a state dict, got {type(sd).__name__}")
    return sd


def _from_torchvision(vgg: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``features.N.*`` -> ``net.sliceK.N.*``; the classifier head is not part of LPIPS."""
    out = {}
    for key, value in vgg.items():
        if key.startswith("classifier."):
            continue
        parts = key.split(".")
        if parts[0] == "features" and len(parts) == 3 and parts[1].isdigit():
            idx = int(parts[1])
            k = next((k for k, (s, e) in enumerate(_SLICES, 1) if s <= idx < e), None)
            if k is not None:
                out[f"net.slice{k}.{idx}.{parts[2]}"] = value
                continue
        out[key] = value  # left for the key check to report
    return out


class LPIPS(nn.Module):
    """Frozen perceptual distance; ``forward(x, y)`` -> (B,) for images in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Slices()
        for k, c in enumerate(_CHANNELS):
            self.add_module(f"lin{k}", NetLinLayer(c))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # Always frozen: a parent's .train() must not switch it (or its dropout) into training mode.
        return super().train(False)

    @classmethod
    def from_file(cls, path: str | Path) -> LPIPS:
        """One state dict (safetensors or torch), or ``"vgg16.pth,vgg.pth"``: a torchvision VGG16
        state dict plus the lpips package's linear-head file."""
        path = str(path)
        if "," in path:
            vgg_path, lin_path = (s.strip() for s in path.split(",", 1))
            sd = {**_from_torchvision(_load(vgg_path)), **_load(lin_path)}
        else:
            sd = _load(path)
        model = cls()
        expected = set(model.state_dict())
        optional = {k for k in expected if k.startswith("scaling_layer.")}  # constants, may be absent
        missing = sorted(expected - set(sd) - optional)
        unexpected = sorted(set(sd) - expected)
        if missing or unexpected:
            raise ValueError(f"LPIPS weights {path}: missing keys {_short(missing)}, "
                             f"unexpected keys {_short(unexpected)} (expected {_EXPECTED})")
        model.load_state_dict(sd, strict=False)
        return model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grayscale: the VGG expects RGB
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        fx = self.net(self.scaling_layer(x))
        fy = self.net(self.scaling_layer(y))
        dist = x.new_zeros(x.shape[0])
        for k, (a, b) in enumerate(zip(fx, fy)):
            diff = (_unit_normalize(a) - _unit_normalize(b)).pow(2)  # (B, C_k, H_k, W_k)
            dist = dist + getattr(self, f"lin{k}").model(diff).mean(dim=(1, 2, 3))  # spatial mean -> (B,)
        return dist
