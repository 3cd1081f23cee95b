"""A noise-aware classifier p(y | x_t, t) on a pipeline's latents, for classifier guidance.

The network is the UNet's encoder half (Dhariwal & Nichol 2021, "Diffusion models beat GANs", sec. 4;
the original ``EncoderUNetModel`` / ``NoisyLatentImageClassifier``): the same ResBlocks conditioned on
the timestep embedding, downsampling between levels, then GroupNorm + SiLU + global average pooling and
a linear head. Timesteps may be fractional (sigma-space samplers), as for the UNet.

Release file: ``.safetensors`` with ``kind: noisy_classifier``, the network config, and what the
classifier was trained on (the pipeline's noise schedule, latent scale factor, class names, held-out
accuracy per timestep), so a mismatched pipeline is refused at sampling time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.config import ConfigError, from_dict, require, to_dict
from ldmkit.nn.blocks import Downsample, ResBlock, normalization
from ldmkit.nn.embeddings import timestep_embedding
from ldmkit.weights import load_release, save_release

KIND = "noisy_classifier"


@dataclass
class NoisyClassifierConfig:
    """Sizes of the encoder: ``channel_mult`` levels of ``num_res_blocks`` ResBlocks each, halving the
    resolution between levels, one more ResBlock at the bottom."""

    in_channels: int = 4
    num_classes: int = 10
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    dropout: float = 0.0
    use_scale_shift_norm: bool = True  # ADM's classifier uses FiLM time conditioning

    def __post_init__(self) -> None:
        for key in ("in_channels", "model_channels", "num_res_blocks"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.num_classes >= 2, "num_classes", f"must be >= 2, got {self.num_classes}")
        require(len(self.channel_mult) >= 1 and all(m >= 1 for m in self.channel_mult), "channel_mult",
                f"must be a non-empty list of integers >= 1, got {list(self.channel_mult)}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


class NoisyClassifier(nn.Module):
    """``logits = clf(x_t, t)``: x_t (B, in_channels, h, w) noisy latents, t (B,) timesteps -> (B, num_classes).

    ``trained_on`` holds the release metadata (schedule, scale factor, ...) once loaded from a file.
    """

    def __init__(self, cfg: NoisyClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.trained_on: dict[str, Any] = {}
        mc, emb = cfg.model_channels, 4 * cfg.model_channels
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)
        blocks: list[nn.Module] = []
        ch = mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, emb, mult * mc, cfg.dropout, cfg.use_scale_shift_norm))
                ch = mult * mc
            if level != len(cfg.channel_mult) - 1:
                blocks.append(Downsample(ch, use_conv=True))
        blocks.append(ResBlock(ch, emb, ch, cfg.dropout, cfg.use_scale_shift_norm))  # the bottom block
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(normalization(ch), nn.SiLU())
        self.head = nn.Linear(ch, cfg.num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"NoisyClassifier: expected x of shape (B, {self.cfg.in_channels}, h, w), "
                             f"got {tuple(x.shape)}")
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))  # (B, 4mc)
        h = self.conv_in(x)  # (B, mc, h, w)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)  # (B, ch, ~h/ds, ~w/ds)
        h = self.out(h).mean(dim=(-2, -1))  # (B, ch): global average pooling
        return self.head(h)  # (B, num_classes)


def save_noisy_classifier(path: str | Path, model: NoisyClassifier, trained_on: dict[str, Any]) -> None:
    """Release weights (atomic): the tensors, ``kind``, the network config and ``trained_on``."""
    save_release(Path(path), model.state_dict(), {"kind": KIND, "config": to_dict(model.cfg), **trained_on})


def load_noisy_classifier(path: str | Path, device: str | torch.device = "cpu") -> NoisyClassifier:
    """A ``train-classifier`` release -> the classifier in eval mode, frozen, ``trained_on`` filled in."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier {path}: file not found (train one with `ldmkit train-classifier`)")
    try:
        tensors, meta = load_release(path)
    except Exception as e:  # a truncated or foreign file: one line, naming it
        raise ConfigError(f"classifier {path}: not a readable safetensors file ({type(e).__name__})") from None
    if meta.get("kind") != KIND:
        raise ConfigError(f"classifier {path}: not an ldmkit noisy classifier (kind={meta.get('kind')!r}); "
                          "train one with `ldmkit train-classifier PIPELINE`")
    model = NoisyClassifier(from_dict(NoisyClassifierConfig, meta["config"]))
    model.load_state_dict(tensors)
    model.trained_on = {k: v for k, v in meta.items() if k not in ("kind", "config")}
    return model.to(device).eval().requires_grad_(False)
