"""Condition encoders that turn a batch's conditioning into UNet inputs (cross-attention context)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ldmkit.config import require


class ClassEmbedder(nn.Module):
    """Class label -> one-token cross-attention context, with a learned NULL class for classifier-free guidance.

    The table has ``num_classes + 1`` rows; row ``num_classes`` is the null class (as cin256-v2's 1001-row
    table with class 1000 = unconditional). The key is ``embedding.weight``, as the original ClassEmbedder.
    """

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.null_class = num_classes
        self.embedding = nn.Embedding(num_classes + 1, embed_dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding(labels)[:, None, :]  # (B, 1, embed_dim)

    def unconditional(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """Labels (batch,) all equal to the null class: the unconditional input for guidance."""
        return torch.full((batch,), self.null_class, dtype=torch.long, device=device)

    def drop(self, labels: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
        """Replace each label by the null class with probability ``p`` (conditioning dropout for CFG training).

        ``generator`` must live on ``labels.device``; p=0 keeps every label, p=1 replaces all.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"ClassEmbedder.drop: p must be in [0, 1], got {p}")
        mask = torch.rand(labels.shape, generator=generator, device=labels.device) < p  # rand in [0, 1)
        return torch.where(mask, torch.full_like(labels, self.null_class), labels)


@dataclass
class ConditionerConfig:
    """Which condition encoder to build; kinds for text, layout and concat conditioning come later."""

    kind: Literal["none", "class"] = "none"
    num_classes: int = 10
    embed_dim: int = 64

    def __post_init__(self) -> None:
        require(self.kind in ("none", "class"), "kind", f"expected one of ['none', 'class'], got {self.kind!r}")
        require(self.num_classes >= 1, "num_classes", f"must be >= 1, got {self.num_classes}")
        require(self.embed_dim >= 1, "embed_dim", f"must be >= 1, got {self.embed_dim}")


def build_conditioner(cfg: ConditionerConfig) -> nn.Module | None:
    """The encoder for ``cfg.kind``, or None for unconditional models."""
    if cfg.kind == "class":
        return ClassEmbedder(cfg.num_classes, cfg.embed_dim)
    return None
