"""LoRA files in the layouts the ecosystem reads, onto ldmkit pipelines.

Written: kohya's layout, which the web UIs (A1111, ComfyUI) and diffusers' ``load_lora_weights`` read::

    lora_unet_<diffusers module path, dots as underscores>.lora_down.weight   A (r, in[, 1, 1])
    lora_unet_<...>.lora_up.weight                                            B (out, r[, 1, 1])
    lora_unet_<...>.alpha                                                     alpha (the update is B A * alpha / r)
    lora_te_<CLIPTextModel module path>.{lora_down,lora_up}.weight, .alpha    the text encoder's

Read: that layout, and diffusers / peft's (``unet.<path>.lora_A.weight`` / ``lora_B.weight``, ``text_encoder.``;
alpha = r unless the file's metadata says otherwise, as diffusers assumes). Module paths are diffusers' for the
UNet (the converter's key map gives ldmkit's) and transformers' for the text tower. A file whose shapes do not fit
the pipeline (another base model) or that names modules the pipeline lacks is refused in one line.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..config import ConfigError
from ..nn.lora import adapter_tensors, inject, set_lora_scale
from ..pipeline import Pipeline
from ..weights import atomic_write
from .diffusers_keys import unet_key_map
from .safe_load import load_state_dict_file

KOHYA = {"unet": "lora_unet_", "conditioner": "lora_te_"}
DIFFUSERS = {"unet": "unet.", "conditioner": "text_encoder."}
TEXT_PREFIX = "transformer."  # ldmkit's conditioner keeps transformers' tower under transformer.text_model.*


def module_paths(pipe: Pipeline, part: str) -> dict[str, str]:
    """{ecosystem module path: ldmkit module path} of the UNet (diffusers names) or the text tower (transformers')."""
    if part == "unet":
        out = {}
        for pair in unet_key_map(pipe.cfg.unet):
            if pair.kind in ("copy", "linear") and pair.ours.endswith(".weight") and len(pair.theirs) == 1:
                out[pair.theirs[0][:-len(".weight")]] = pair.ours[:-len(".weight")]
        return out
    module = pipe.conditioner
    if module is None or pipe.cfg.conditioner.kind not in ("clip", "openclip"):
        return {}
    # a layer already wrapped by an adapter keeps its name (peft moves the original under .base_layer)
    return {n[len(TEXT_PREFIX):]: n for n, m in module.named_modules() if n.startswith(TEXT_PREFIX + "text_model.")
            and ".base_layer" not in n and ".lora_" not in n
            and isinstance(getattr(m, "base_layer", m), (torch.nn.Linear, torch.nn.Conv2d))}


def save_lora(pipe: Pipeline, path: str | Path, name: str = "default", metadata: dict | None = None) -> Path:
    """Adapter ``name`` of ``pipe`` (UNet and text tower) -> a kohya-layout ``.safetensors``; returns the path."""
    tensors: dict[str, Tensor] = {}
    ranks = set()
    for part, prefix in KOHYA.items():
        module = getattr(pipe, part)
        if module is None:
            continue
        theirs = {v: k for k, v in module_paths(pipe, part).items()}
        for ours, (a, b, alpha) in adapter_tensors(module, name).items():
            if ours not in theirs:
                raise ConfigError(f"lora: {part}.{ours} has no name in the kohya / diffusers layout")
            key = prefix + theirs[ours].replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": a.float().contiguous().cpu(),
                        f"{key}.lora_up.weight": b.float().contiguous().cpu(),
                        f"{key}.alpha": torch.tensor(alpha, dtype=torch.float32)}
            ranks.add(a.shape[0])
    if not tensors:
        raise ConfigError(f"lora: the pipeline has no adapter named {name!r} to save")
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(max(ranks)),
            "ldmkit": json.dumps(metadata or {})}
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def _parse(sd, path: Path) -> dict[str, dict[str, dict[str, Tensor | float]]]:
    """{part: {ecosystem module path (dotted, or kohya's underscored): {"A", "B", "alpha"}}} of a LoRA file."""
    out: dict[str, dict[str, dict]] = {"unet": defaultdict(dict), "conditioner": defaultdict(dict)}
    unknown = []
    for key in sd:
        part = next((p for p, pre in KOHYA.items() if key.startswith(pre)), None)
        if part is not None:
            stem, _, leaf = key[len(KOHYA[part]):].partition(".")
            slot = {"lora_down.weight": "A", "lora_up.weight": "B", "alpha": "alpha"}.get(leaf)
        else:
            part = next((p for p, pre in DIFFUSERS.items() if key.startswith(pre)), None)
            m = re.match(r"(.*)\.lora_([AB])(?:\.default)?\.weight$", key[len(DIFFUSERS[part]):]) if part else None
            stem, slot = (m.group(1), m.group(2)) if m else (None, None)
        if part is None or slot is None:
            unknown.append(key)
            continue
        out[part][stem][slot] = float(sd[key]) if slot == "alpha" else sd[key]
    if unknown:
        raise ConfigError(f"{path}: not a LoRA file ldmkit reads (kohya lora_unet_ / lora_te_, or diffusers unet. / "
                          f"text_encoder. lora_A / lora_B keys): {', '.join(unknown[:3])}")
    return out


def load_lora(pipe: Pipeline, path: str | Path, scale: float = 1.0, name: str | None = None) -> str:
    """A kohya or diffusers LoRA file onto ``pipe`` as adapter ``name`` (default: the file's stem) at ``scale``;
    returns the adapter name. Shapes that do not fit this pipeline's layers are refused in one line."""
    path = Path(path)
    name = name or re.sub(r"\W", "_", path.stem)
    parsed = _parse(load_state_dict_file(path), path)
    plans = []
    for part, entries in parsed.items():
        if not entries:
            continue
        module = getattr(pipe, part)
        paths = module_paths(pipe, part) if module is not None else {}
        by_kohya = {k.replace(".", "_"): v for k, v in paths.items()}
        layers = dict(module.named_modules()) if module is not None else {}
        ranks, alphas, weights = {}, {}, {}
        for stem, e in entries.items():
            ours = paths.get(stem) or by_kohya.get(stem)
            if ours is None or "A" not in e or "B" not in e:
                what = "the pipeline has no such layer" if ours is None else "lora_down/A or lora_up/B is missing"
                raise ConfigError(f"{path}: {part} LoRA entry {stem}: {what} (a LoRA for another model?)")
            layer = layers[ours]
            base = getattr(layer, "base_layer", layer)
            a, b = e["A"], e["B"]
            fits = a.shape[1] == base.weight.shape[1] and b.shape[0] == base.weight.shape[0] and b.shape[1] == a.shape[0]
            if not fits:
                raise ConfigError(f"{path}: {part} layer {stem} is {tuple(base.weight.shape[:2])} in this pipeline, "
                                  f"the LoRA was trained for {(b.shape[0], a.shape[1])} (another base model?)")
            ranks[ours], alphas[ours] = a.shape[0], e.get("alpha", float(a.shape[0]))
            weights[ours] = (a, b)
        plans.append((module, ranks, alphas, weights))
    if not plans:
        raise ConfigError(f"{path}: no LoRA tensors")
    for module, ranks, alphas, weights in plans:
        if any(name in getattr(m, "lora_A", {}) for m in module.modules()):
            raise ConfigError(f"lora: an adapter named {name!r} is already loaded (pass another name)")
        inject(module, name, "^(" + "|".join(re.escape(k) for k in ranks) + ")$", ranks, alphas)
        mods = dict(module.named_modules())
        with torch.no_grad():
            for ours, (a, b) in weights.items():
                layer = mods[ours]
                dtype = layer.get_base_layer().weight.dtype
                layer.lora_A[name].weight.copy_(a.reshape(layer.lora_A[name].weight.shape).to(dtype))
                layer.lora_B[name].weight.copy_(b.reshape(layer.lora_B[name].weight.shape).to(dtype))
        module.requires_grad_(False)
        set_lora_scale(module, name, scale)
    return name
