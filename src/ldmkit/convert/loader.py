"""One entry point for every checkpoint format ldmkit reads, and the ``ldmkit convert`` dispatch.

Formats, told apart by what is on disk (never by trying loaders in turn):

- ldmkit release: ``.safetensors`` whose metadata says ``kind`` (pipeline / autoencoder);
- original CompVis: ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` (or a ``.safetensors`` without ldmkit metadata) plus
  its YAML (``--config``, default: the checkpoint's name with ``.yaml``); a full LatentDiffusion or, for
  autoencoders, a first-stage-only checkpoint (``model.target`` AutoencoderKL / VQModel);
- diffusers: a folder with ``model_index.json``, or (autoencoders) a VAE folder with ``config.json``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from ..autoencoder import Autoencoder, AutoencoderConfig, load_autoencoder
from ..config import ConfigError, load_yaml
from ..device import release_free_memory
from ..diffusion import Schedule
from ..nn.inference import inference_dtype
from ..pipeline import Pipeline
from .diffusers import CONFIG, MODEL_INDEX, export_diffusers, load_diffusers, load_diffusers_autoencoder, load_into
from .original import IGNORED_PREFIXES, export_original, load_original, with_text_options
from .original_config import _autoencoder
from .safe_load import PICKLE_SUFFIXES, check_not_a_pointer, load_state_dict_file
from .sd_infer import VAE, infer_sd_config

Target = Literal["ldmkit", "diffusers", "original"]


def release_kind(path: Path) -> str | None:
    """``kind`` from an ldmkit release's metadata; None for any other safetensors file."""
    check_not_a_pointer(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("kind")
    except Exception as e:  # safetensors' own errors (truncated, bad header): one line naming the file
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt "
                         f"({' '.join(str(e).split())})") from None
    try:
        return json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        return None


def _original_yaml(path: Path, config: str | Path | None) -> Path:
    yaml_path = Path(config) if config is not None else path.with_suffix(".yaml")
    if not yaml_path.is_file():
        raise FileNotFoundError(f"{yaml_path}: original config not found (pass --config)")
    return yaml_path


def load_pipeline_any(path: str | Path, device: str | torch.device = "cpu", config: str | Path | None = None,
                      precision: str = "fp32", prediction: str | None = None,
                      text_options: dict[str, Any] | None = None) -> Pipeline:
    """An ldmkit ``pipeline.safetensors``, an original checkpoint (+ YAML ``config``; a Stable Diffusion file
    needs none) or a diffusers folder -> Pipeline on ``device`` in eval mode, in ``precision`` (fp32 / bf16 /
    fp16: original files and diffusers folders are cast while they load, never held twice).
    ``prediction`` (eps / v) overrides what an original SD file's name suggests; ``text_options``
    (clip_skip, tokenizer) apply to a CLIP text encoder."""
    path = Path(path)
    dtype = inference_dtype(precision)
    if prediction not in (None, "eps", "v"):
        raise ConfigError(f"--prediction: expected eps or v, got {prediction!r}")
    if path.is_dir():
        if not (path / MODEL_INDEX).is_file():
            raise ConfigError(f"{path}: a folder without {MODEL_INDEX} is not a diffusers pipeline")
        pipe = load_diffusers(path, device, dtype)
        if prediction is not None:
            pipe = _with_prediction(pipe, prediction)
        return _finish(with_text_options_pipe(pipe, text_options, str(path)), precision)
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found")
        if path.suffix != ".safetensors":
            raise ConfigError(f"{path}: unknown checkpoint format (pipeline.safetensors, an original .ckpt / "
                              f".safetensors, or a diffusers folder)")
        kind = release_kind(path)
        if kind == "pipeline":
            pipe = Pipeline.load(path, device=device)
            if prediction is not None:
                pipe = _with_prediction(pipe, prediction)
            return _finish(with_text_options_pipe(pipe, text_options, str(path)), precision)
        if kind is not None:
            raise ConfigError(f"{path}: an ldmkit {kind} file, not a pipeline")
    # load_original names a missing YAML before a missing .ckpt
    pipe = load_original(path, config, dtype=dtype, prediction=prediction, text_options=text_options)
    return _finish(pipe.to(device), precision)


def _finish(pipe: Pipeline, precision: str) -> Pipeline:
    """Eval mode in the inference layout of set_precision (weights already cast; on a CPU the first stage goes
    channels-last, which also lowers a 512x512 decode's peak memory: +1010 -> +730 MiB at SD 1.x size); the
    read buffers and layout copies the load freed go back to the OS."""
    pipe = pipe.eval().set_precision(precision)
    release_free_memory(pipe.device)
    return pipe


def _with_prediction(pipe: Pipeline, prediction: str) -> Pipeline:
    cfg = dataclasses.replace(pipe.cfg, diffusion=dataclasses.replace(pipe.cfg.diffusion, parameterization=prediction))
    pipe.cfg, pipe.schedule = cfg, Schedule(cfg.diffusion)
    return pipe


def with_text_options_pipe(pipe: Pipeline, options: dict[str, Any] | None, where: str) -> Pipeline:
    """Apply clip_skip / tokenizer options to a loaded pipeline's CLIP conditioner."""
    if not options:
        return pipe
    pipe.cfg = with_text_options(pipe.cfg, options, where)
    c = pipe.conditioner
    c.clip_skip = pipe.cfg.conditioner.clip_skip
    if "tokenizer" in options:
        c.tokenizer_source, c._tokenizer[:] = pipe.cfg.conditioner.tokenizer, []
    return pipe


def _sd_autoencoder(path: Path) -> tuple[Autoencoder, AutoencoderConfig, float]:
    """The VAE of a Stable Diffusion single file without a YAML: only its ``first_stage_model.*`` tensors are read."""
    sd = load_state_dict_file(path, lazy=True)
    cfg = infer_sd_config(sd, path)
    vae = {k[len(VAE):]: sd[k] for k in sd if k.startswith(VAE) and not k.startswith(IGNORED_PREFIXES)}
    model = Autoencoder(cfg.autoencoder)
    load_into(model, vae, str(path))
    return model.eval().requires_grad_(False), cfg.autoencoder, cfg.scale_factor


def _original_autoencoder(path: Path, config: str | Path | None) -> tuple[Autoencoder, AutoencoderConfig, float]:
    if config is None and not path.with_suffix(".yaml").is_file() and path.is_file():
        return _sd_autoencoder(path)
    yaml_path = _original_yaml(path, config)
    model_cfg = load_yaml(yaml_path).get("model")
    target = str(model_cfg.get("target", "")) if isinstance(model_cfg, dict) else ""
    if target.endswith("LatentDiffusion"):
        pipe = load_original(path, yaml_path)
        return pipe.autoencoder, pipe.cfg.autoencoder, pipe.cfg.scale_factor
    # a first-stage-only checkpoint: the autoencoder's own keys (no prefix) and its training loss
    cfg = _autoencoder(model_cfg)
    sd = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith(IGNORED_PREFIXES)}
    model = Autoencoder(cfg)
    load_into(model, sd, str(path))
    # a bare first stage has no LatentDiffusion scale_factor: 1.0 until one is fitted
    return model.eval().requires_grad_(False), cfg, 1.0


def load_autoencoder_any(path: str | Path, device: str | torch.device = "cpu",
                         config: str | Path | None = None) -> tuple[Autoencoder, AutoencoderConfig, float]:
    """(frozen Autoencoder, its config, scale_factor) from an ldmkit ``autoencoder.safetensors`` or
    ``pipeline.safetensors``, an original checkpoint (+ YAML), or a diffusers pipeline / VAE folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / MODEL_INDEX).is_file() and not (path / CONFIG).is_file():
            raise ConfigError(f"{path}: neither a diffusers pipeline ({MODEL_INDEX}) nor a VAE folder ({CONFIG})")
        model, cfg, scale = load_diffusers_autoencoder(path)
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        model, cfg, scale = _original_autoencoder(path, config)
    elif path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found")
        kind = release_kind(path)
        if kind == "autoencoder":
            return load_autoencoder(path, device)
        if kind == "pipeline":
            pipe = Pipeline.load(path)
            model, cfg, scale = pipe.autoencoder, pipe.cfg.autoencoder, pipe.cfg.scale_factor
        elif kind is None:
            model, cfg, scale = _original_autoencoder(path, config)
        else:
            raise ConfigError(f"{path}: an ldmkit {kind} file, not an autoencoder")
    else:
        raise ConfigError(f"{path}: unknown autoencoder format (autoencoder.safetensors, an original .ckpt, "
                          "or a diffusers folder)")
    return model.to(device).eval().requires_grad_(False), cfg, scale


def infer_target(dst: str | Path) -> Target:
    """The format ``ldmkit convert`` writes to ``dst``: a folder (existing, ending in '/', or without a
    suffix) is diffusers, ``.ckpt`` is original, ``.safetensors`` is ldmkit."""
    text, path = str(dst), Path(dst)
    if text.endswith(("/", "\\")) or path.is_dir() or path.suffix == "":
        return "diffusers"
    if path.suffix == ".ckpt":
        return "original"
    if path.suffix == ".safetensors":
        return "ldmkit"
    raise ConfigError(f"{dst}: cannot tell the output format from the name: use .safetensors (ldmkit), "
                      ".ckpt (original, + .yaml) or a folder (diffusers), or pass --to")


def convert_any(src: str | Path, dst: str | Path, config: str | Path | None = None,
                to: Target | None = None, precision: str = "fp32", prediction: str | None = None) -> list[Path]:
    """The ``ldmkit convert`` command: any readable pipeline -> ldmkit / diffusers / original, its weights in
    ``precision``. Returns the written paths."""
    target = check_target(dst, to)
    pipe = load_pipeline_any(src, config=config, precision=precision, prediction=prediction)
    return write_pipeline(pipe, dst, target, {"converted_from": Path(src).name})


def check_target(dst: str | Path, to: Target | None) -> Target:
    """The output format of ``dst`` (``to`` or its name), checked before anything is loaded."""
    target = to or infer_target(dst)
    if target not in ("ldmkit", "diffusers", "original"):
        raise ConfigError(f"--to: expected ldmkit, diffusers or original, got {target!r}")
    if target == "original" and Path(dst).suffix != ".ckpt":
        raise ConfigError(f"{dst}: an original checkpoint must end in .ckpt")
    if target == "ldmkit" and Path(dst).suffix != ".safetensors":
        raise ConfigError(f"{dst}: an ldmkit pipeline must end in .safetensors")
    return target


def write_pipeline(pipe: Pipeline, dst: str | Path, target: Target, extra: dict[str, Any]) -> list[Path]:
    """``pipe`` as an ldmkit file, a diffusers folder or an original .ckpt (+ .yaml); returns the written paths."""
    if target == "diffusers":
        return [export_diffusers(pipe, dst)]
    if target == "original":
        return list(export_original(pipe, dst))
    pipe.save(Path(dst), extra)
    return [Path(dst)]
