"""LoRA adapters on ldmkit networks, through ``peft`` (its LoRA layers, never hand-written ones).

``add_lora`` wraps the chosen ``nn.Linear`` / ``nn.Conv2d`` layers of a UNet or a CLIP text tower in peft's LoRA
layers (``peft.inject_adapter_in_model``): W x + (alpha / r) * scale * B A x, with B zero-initialised, so a fresh
adapter changes nothing. Several named adapters may sit on one network, each with its own scale; ``merge_lora``
folds the active ones into the weights and removes the wrappers. The file layouts live in convert/lora_file.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..config import ConfigError, require

# the attention projections of every SpatialTransformer block (SD's LoRA default), and the feed-forward
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD_TARGETS = ("ff.net.0.proj", "ff.net.2")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIPTextModel attention (transformers' names)


@dataclass
class LoraSpec:
    """What to adapt and how: rank r, alpha (the update is scaled by alpha / r), dropout on the adapter's input."""

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    feed_forward: bool = False   # also the UNet's feed-forward layers (GEGLU in, Linear out)
    text_encoder: bool = False   # also the CLIP text tower's attention projections

    def __post_init__(self) -> None:
        require(self.rank >= 1, "lora.rank", f"must be >= 1, got {self.rank}")
        require(self.alpha > 0, "lora.alpha", f"must be > 0, got {self.alpha}")
        require(0 <= self.dropout < 1, "lora.dropout", f"must be in [0, 1), got {self.dropout}")

    def unet_targets(self) -> tuple[str, ...]:
        return ATTENTION_TARGETS + (FEED_FORWARD_TARGETS if self.feed_forward else ())


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("LoRA needs the peft package (pip install peft)") from None
    return peft


def _suffix_pattern(targets: tuple[str, ...]) -> str:
    """A regex peft matches against whole module names: any name ending in one of ``targets``."""
    return r".*\.(" + "|".join(re.escape(t) for t in targets) + ")$"


def inject(module: nn.Module, name: str, targets: str | list[str], rank: int | dict[str, int],
           alpha: float | dict[str, float], dropout: float = 0.0) -> None:
    """peft LoRA layers named ``name`` on ``module``'s ``targets`` (a regex over module names, or exact names);
    ``rank`` / ``alpha`` per module name when dicts (a file's adapters need not share one rank)."""
    peft = _peft()
    ranks = rank if isinstance(rank, dict) else {}
    alphas = alpha if isinstance(alpha, dict) else {}
    default_r = rank if isinstance(rank, int) else next(iter(ranks.values()), 4)
    default_a = alpha if not isinstance(alpha, dict) else next(iter(alphas.values()), default_r)
    config = peft.LoraConfig(r=default_r, lora_alpha=default_a, lora_dropout=dropout, target_modules=targets,
                             rank_pattern={f"^{re.escape(k)}$": v for k, v in ranks.items()},
                             alpha_pattern={f"^{re.escape(k)}$": v for k, v in alphas.items()})
    before = {p for p, _ in module.named_parameters()}
    peft.inject_adapter_in_model(config, module, adapter_name=name)
    # every adapter stays active: peft activates the latest one only
    for layer in lora_layers(module).values():
        layer.set_adapter(list(layer.lora_A.keys()))
    for p_name, p in module.named_parameters():  # the base stays frozen; peft froze it, earlier adapters stay as set
        if p_name in before and ".lora_" not in p_name:
            p.requires_grad_(False)


def add_lora(module: nn.Module, spec: LoraSpec, targets: tuple[str, ...], name: str = "default") -> int:
    """Wrap ``module``'s layers whose names end in ``targets`` with a trainable LoRA ``name``; returns the number of
    trainable adapter parameters. Raises ConfigError when no layer matches."""
    if not any(re.match(_suffix_pattern(targets), n) for n, _ in module.named_modules()):
        raise ConfigError(f"lora: no layer of {type(module).__name__} is named like {', '.join(targets)}")
    inject(module, name, _suffix_pattern(targets), spec.rank, spec.alpha, spec.dropout)
    return sum(p.numel() for n, p in module.named_parameters() if f".lora_" in n and f".{name}." in n)


def lora_layers(module: nn.Module) -> dict[str, Any]:
    """{module name: peft LoRA layer} of ``module`` (names as before the wrapping)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer)}


def adapter_tensors(module: nn.Module, name: str) -> dict[str, tuple[Tensor, Tensor, float]]:
    """{module name: (A (r, in[, 1, 1]), B (out, r[, 1, 1]), alpha)} of adapter ``name``."""
    out = {}
    for path, layer in lora_layers(module).items():
        if name in layer.lora_A:
            out[path] = (layer.lora_A[name].weight.detach(), layer.lora_B[name].weight.detach(),
                         float(layer.lora_alpha[name]))
    return out


def set_lora_scale(module: nn.Module, name: str, scale: float) -> None:
    for layer in lora_layers(module).values():
        layer.set_scale(name, scale)


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every active adapter into its base weights and put the plain layers back."""
    for path, layer in lora_layers(module).items():
        layer.merge(adapter_names=list(layer.active_adapters))
        parent_name, _, leaf = path.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, leaf, layer.get_base_layer())
    return module
