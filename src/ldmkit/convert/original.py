"""Convert between ldmkit pipelines and the original LDM checkpoints (``.ckpt`` + target/params YAML).

ldmkit modules already use the original's parameter names, so the state_dict mapping is a prefix table; the YAML
half (target/params <-> PipelineConfig) is in ``original_config.py``.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from ..config import load_yaml
from ..nn import ConditionerConfig
from ..pipeline import Pipeline, PipelineConfig
from ..weights import atomic_write
from .assign import cast, empty_pipeline, fill_pipeline
from .clip_keys import POSITION_IDS, ldmkit_to_openclip, openclip_plan
from .original_config import (openclip_layer, original_config_to_pipeline_config,
                              pipeline_config_to_original_config, prefixes)
from .safe_load import load_state_dict_file, shape_of
from .sd_infer import OPENCLIP, clip_conditioner

SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")
# keys the original may hold that carry nothing ldmkit needs (training-only or recomputed from the config)
IGNORED_KEYS = {*SCHEDULE_BUFFERS, "scale_factor", "lvlb_weights", "logvar", "model_ema.decay", "model_ema.num_updates",
                "cond_stage_model." + POSITION_IDS, "cond_stage_model.transformer.embeddings.position_ids"}  # SD 1.x carries CLIP's position ids (0..76, rebuilt)
IGNORED_PREFIXES = ("first_stage_model.loss.", "loss.")
EMA_PREFIX = "model_ema."
VQ_CODEBOOK = "first_stage_model.quantize.embedding.weight"

# ------------------------------------------------------------------------------------------- state_dict
def ema_name(unet_key: str) -> str:
    """The original LitEma buffer name of UNet parameter ``unet_key`` (dots stripped)."""
    return EMA_PREFIX + ("diffusion_model." + unet_key).replace(".", "")


def pipeline_to_original_state_dict(pipe: Pipeline) -> dict[str, Tensor]:
    """Pipeline -> the original LatentDiffusion state_dict (EMA-only style: no ``model_ema.*`` keys)."""
    sd: dict[str, Tensor] = {}
    for prefix, attr in prefixes(pipe.cfg).items():
        module = getattr(pipe, attr)
        if module is not None:
            sd |= {prefix + k: v.detach() for k, v in module.state_dict().items()}
    kind = pipe.cfg.conditioner.kind
    if kind == "clip":  # SD 1.x files carry CLIP's position ids; transformers no longer saves them
        sd["cond_stage_model." + POSITION_IDS] = torch.arange(pipe.cfg.conditioner.max_length)[None]
    elif kind == "openclip":
        tower = {k[len("cond_stage_model."):]: sd.pop(k) for k in list(sd) if k.startswith("cond_stage_model.")}
        sd |= {OPENCLIP + k: v for k, v in ldmkit_to_openclip(tower).items()}
    # the original registers its schedule as float32 buffers; they are recomputed, never read back
    sd |= {name: getattr(pipe.schedule, name).to(torch.float32) for name in SCHEDULE_BUFFERS}
    sd["scale_factor"] = torch.tensor(pipe.cfg.scale_factor, dtype=torch.float32)
    return sd


def _short(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" (and {len(names) - 8} more)" if len(names) > 8 else "")


def float32_value(t: Tensor) -> float:
    """The shortest decimal that is this float32 scalar (0.18215 stored as float32 reads back as 0.18215)."""
    return float(np.format_float_positional(np.float32(float(t)), unique=True))


def _plan(sd: Mapping[str, Tensor], targets: dict[str, dict[str, tuple[int, ...]]], cfg: PipelineConfig,
          use_ema: bool) -> tuple[dict[str, dict[str, tuple[str, int | None]]], list[str], list[str]]:
    """Where each target tensor comes from: {prefix: {local name: (checkpoint key, q/k/v part or None)}}, the keys
    the checkpoint lacks and the keys it has that fit nowhere. Only names are looked at, no tensor is read."""
    unet = "model.diffusion_model."
    ema_keys = [k for k in sd if k.startswith(EMA_PREFIX) and k not in IGNORED_KEYS]
    take_ema = use_ema and bool(ema_keys) and unet in targets
    plan: dict[str, dict[str, tuple[str, int | None]]] = {prefix: {} for prefix in targets}
    unexpected, consumed = [], set()
    if cfg.conditioner.kind == "openclip":  # open_clip names, fused q/k/v
        theirs = [k[len(OPENCLIP):] for k in sd if k.startswith(OPENCLIP)]
        oc, dropped, unknown = openclip_plan(theirs, cfg.conditioner.n_layer)
        plan["cond_stage_model."] = {k: (OPENCLIP + v, j) for k, (v, j) in oc.items()}
        consumed = {OPENCLIP + k for k in theirs}
        unexpected += [OPENCLIP + k for k in unknown]
    for key in sd:
        if key in consumed or key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES) or key.startswith(EMA_PREFIX):
            continue
        prefix = next((p for p in targets if key.startswith(p)), None)
        local = None if prefix is None else key[len(prefix):]
        if local is not None and prefix == "cond_stage_model." and cfg.conditioner.kind == "clip" and \
                local.startswith("transformer.") and not local.startswith("transformer.text_model."):
            local = "transformer.text_model." + local[len("transformer."):]  # transformers < 4.22 had no text_model
        if local is not None and local in targets[prefix]:
            if not (take_ema and prefix == unet):  # with EMA weights taken, the raw UNet weights go unused
                plan[prefix][local] = (key, None)
        else:
            unexpected.append(key)
    if take_ema:
        by_ema = {ema_name(k): k for k in targets[unet]}
        if len(by_ema) != len(targets[unet]):
            raise ValueError("original checkpoint: dot-stripped EMA names of this UNet collide")
        unexpected += [k for k in ema_keys if k not in by_ema]
        plan[unet] = {by_ema[k]: (k, None) for k in ema_keys if k in by_ema}
    missing = [p + k for p, t in targets.items() for k in t if k not in plan[p]]
    if take_ema:  # name missing EMA weights as the checkpoint would spell them
        missing = [ema_name(k[len(unet):]) if k.startswith(unet) else k for k in missing]
    return plan, missing, unexpected


def original_state_dict_to_pipeline(sd: Mapping[str, Tensor], cfg: PipelineConfig, use_ema: bool = True,
                                    dtype: torch.dtype = torch.float32) -> Pipeline:
    """Original LatentDiffusion state_dict (a dict or a lazy file) + config -> Pipeline, its weights in ``dtype``.
    With ``use_ema`` and ``model_ema.*`` present, the UNet gets the EMA weights. Missing, unexpected and
    mis-shaped keys raise ValueError before any tensor is read; each tensor is then read once, cast and kept as
    the parameter itself (the networks are built on the meta device), so the weights are held once."""
    if "scale_factor" in sd:  # scale_by_std checkpoints store the fitted factor, which wins over the YAML
        cfg = dataclasses.replace(cfg, scale_factor=float32_value(sd["scale_factor"]))
    pipe = empty_pipeline(cfg)
    attrs = {prefix: attr for prefix, attr in prefixes(cfg).items() if getattr(pipe, attr) is not None}
    targets = {prefix: {k: tuple(v.shape) for k, v in getattr(pipe, attr).state_dict().items()}
               for prefix, attr in attrs.items()}
    plan, missing, unexpected = _plan(sd, targets, cfg, use_ema)
    fresh: dict[str, Tensor] = {}
    if VQ_CODEBOOK in missing:  # some released LDM checkpoints lack it (CompVis/stable-diffusion#284)
        missing.remove(VQ_CODEBOOK)
        warnings.warn(f"original checkpoint has no {VQ_CODEBOOK}; the VQ codebook stays randomly initialised")
        n, d = targets["first_stage_model."]["quantize.embedding.weight"]
        fresh["quantize.embedding.weight"] = torch.empty(n, d).uniform_(-1 / n, 1 / n)  # nn.Embedding's range
    if missing or unexpected:
        parts = ([f"missing keys: {_short(missing)}"] if missing else []) + \
                ([f"unexpected keys: {_short(unexpected)}"] if unexpected else [])
        raise ValueError("original checkpoint: " + "; ".join(parts))

    def shape(key: str, part: int | None) -> tuple[int, ...]:
        s = shape_of(sd, key)
        return s if part is None else (s[0] // 3, *s[1:])

    bad = [f"{p}{k} {shape(*src)} != {targets[p][k]}" for p, t in plan.items() for k, src in t.items()
           if shape(*src) != targets[p][k]]
    if bad:
        raise ValueError(f"original checkpoint: shapes do not fit the config: {_short(bad)}")
    fused: dict[str, list[Tensor]] = {}  # open_clip's q/k/v rows, read once for the three parts

    def fetcher(prefix: str):
        def fetch(name: str) -> Tensor:
            if name not in plan[prefix]:
                return cast(fresh[name], dtype)
            key, part = plan[prefix][name]
            if part is None:
                return cast(sd[key], dtype)
            if key not in fused:
                fused[key] = [cast(c, dtype).clone() for c in sd[key].chunk(3, dim=0)]
            return fused[key][part] if part < 2 else fused.pop(key)[part]
        return fetch

    return fill_pipeline(pipe, {attr: fetcher(prefix) for prefix, attr in attrs.items()}, "original checkpoint")


# ------------------------------------------------------------------------------------------- files
def export_original(pipe: Pipeline, path_ckpt: str | Path) -> tuple[Path, Path]:
    """Write ``{"state_dict": ...}`` to ``path_ckpt`` and its original YAML next to it; returns both paths."""
    path_ckpt = Path(path_ckpt)
    path_yaml = path_ckpt.with_suffix(".yaml")
    sd = {k: v.contiguous().cpu() for k, v in pipeline_to_original_state_dict(pipe).items()}
    text = yaml.safe_dump(pipeline_config_to_original_config(pipe.cfg), sort_keys=False)
    atomic_write(path_ckpt, lambda tmp: torch.save({"state_dict": sd}, tmp))
    atomic_write(path_yaml, lambda tmp: Path(tmp).write_text(text))
    return path_ckpt, path_yaml


def with_text_options(cfg: PipelineConfig, options: dict[str, Any] | None, where: str) -> PipelineConfig:
    """``cfg`` with ConditionerConfig fields (clip_skip, tokenizer, ...) replaced; only for CLIP text encoders."""
    if not options:
        return cfg
    if cfg.conditioner.kind not in ("clip", "openclip"):
        raise ValueError(f"{where}: {', '.join(options)} apply to CLIP text encoders; this model's conditioner is "
                         f"{cfg.conditioner.kind!r}")
    return dataclasses.replace(cfg, conditioner=dataclasses.replace(cfg.conditioner, **options))


def load_original(ckpt_path: str | Path, yaml_path: str | Path | None = None, use_ema: bool = True,
                  dtype: torch.dtype = torch.float32, prediction: str | None = None,
                  text_options: dict[str, Any] | None = None) -> Pipeline:
    """An original checkpoint and its YAML (default: the checkpoint's name with ``.yaml``) -> Pipeline, weights in
    ``dtype``. Without a YAML beside it (and ``yaml_path`` None), a Stable Diffusion file's architecture is read off
    its keys and shapes (sd_infer.py; ``prediction`` overrides the eps / v guess). ``text_options``: ConditionerConfig
    fields (clip_skip, tokenizer) for an SD text encoder."""
    from .sd_infer import infer_sd_config  # sd_infer imports this module's neighbours only

    ckpt_path = Path(ckpt_path)
    guess = yaml_path is None and not ckpt_path.with_suffix(".yaml").is_file()
    yaml_path = Path(yaml_path) if yaml_path is not None else ckpt_path.with_suffix(".yaml")
    if not guess and not yaml_path.is_file():
        raise FileNotFoundError(f"{yaml_path}: original config not found (pass --config)")
    sd = load_state_dict_file(ckpt_path, lazy=True)
    if guess:
        cfg = infer_sd_config(sd, ckpt_path, prediction)
    else:
        yaml_dict = load_yaml(yaml_path)
        cfg = original_config_to_pipeline_config(yaml_dict)
        kind = cfg.conditioner.kind
        if kind in ("clip", "openclip"):  # the YAML names the tower, the weights give its sizes
            cfg = dataclasses.replace(cfg, conditioner=clip_conditioner(
                sd, kind, openclip_layer(yaml_dict), cfg.conditioner, str(ckpt_path)))
        if prediction is not None:
            cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, parameterization=prediction))
    cfg = with_text_options(cfg, text_options, str(ckpt_path))
    return original_state_dict_to_pipeline(sd, cfg, use_ema=use_ema, dtype=dtype)


def convert_file(src: str | Path, dst: str | Path, config: str | Path | None = None) -> list[Path]:
    """The ``ldmkit convert`` command: ``pipeline.safetensors`` -> original ``.ckpt`` (+ ``.yaml``),
    or an original checkpoint (+ YAML) -> ``pipeline.safetensors``. Returns the written paths."""
    src, dst = Path(src), Path(dst)
    if src.suffix == ".safetensors":
        if dst.suffix != ".ckpt":
            raise ValueError(f"{dst}: an original checkpoint must end in .ckpt")
        return list(export_original(Pipeline.load(src), dst))
    if dst.suffix != ".safetensors":
        raise ValueError(f"{dst}: an ldmkit pipeline must end in .safetensors")
    load_original(src, config).save(dst, {"converted_from": src.name})
    return [dst]
