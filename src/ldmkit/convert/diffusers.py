"""ldmkit pipelines <-> diffusers folders, read and written with safetensors + JSON only (no diffusers import).

Folder layout (what ``DiffusionPipeline.save_pretrained`` writes)::

    model_index.json                        components, and ``_ldmkit`` extras (class names, concat config)
    unet/config.json + diffusion_pytorch_model.safetensors          UNet2DConditionModel or UNet2DModel
    vae/ (KL: AutoencoderKL) or vqvae/ (VQ: VQModel), same two files
    scheduler/scheduler_config.json                                 DDIMScheduler (diffusers' file name)
    conditioner/conditioner.safetensors     ldmkit condition encoder (class / text / layout) and semantic-map
                                            rescaler, an ldmkit release (diffusers has no such components)
    text_encoder/ + tokenizer/              Stable Diffusion's CLIP / OpenCLIP text tower (transformers'
                                            CLIPTextModel + CLIPTokenizer folders, diffusers_text.py); such a
                                            folder is a StableDiffusion(Inpaint)Pipeline

Each config.json also carries the full ldmkit config under ``_ldmkit`` (diffusers ignores keys starting
with "_"); it restores what diffusers cannot express (``legacy``, ``dropout`` of the VAE, VQ ``beta``...) and is
used only when it describes the same model as the diffusers keys, so an edited folder cannot be misread.
"""
from __future__ import annotations

import json
import warnings
from collections import ChainMap
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import save_file
from torch import Tensor, nn

from .. import __version__
from ..autoencoder import Autoencoder, AutoencoderConfig
from ..config import ConfigError, from_dict, to_dict
from ..diffusion import ScheduleConfig
from ..nn import ConditionerConfig, UNetConfig, UNetModel
from ..nn.clip_tokenizer import find_clip_vocab
from ..nn.concat import ConcatConfig
from ..pipeline import Pipeline, PipelineConfig
from ..weights import atomic_write, load_release, save_release
from .diffusers_config import (
    autoencoder_config_from_diffusers,
    autoencoder_config_to_diffusers,
    schedule_config_from_diffusers,
    schedule_config_to_diffusers,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
)
from .assign import assign_buffers, cast, empty_pipeline
from .diffusers_keys import autoencoder_key_map, check_keys, from_diffusers, to_diffusers, unet_key_map
from .diffusers_text import (
    TEXT_ENCODER,
    TOKENIZER,
    text_config_from_diffusers,
    text_config_to_diffusers,
    text_from_transformers,
    text_to_transformers,
    text_weights_path,
)
from .safe_load import load_state_dict_file

MODEL_INDEX, CONFIG, SCHEDULER_CONFIG = "model_index.json", "config.json", "scheduler_config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
CONDITIONER_FILE = "conditioner.safetensors"
HINT = "_ldmkit"
DIFFUSERS_VERSION = "0.42.1"  # the diffusers release whose from_pretrained the tests check this layout against
COMPONENTS = ("unet", "vae", "vqvae", "scheduler", "conditioner", TEXT_ENCODER, TOKENIZER)
# Stable Diffusion pipeline components that play no part in sampling: accepted and not read
UNUSED = ("safety_checker", "feature_extractor", "image_encoder")
SD_CLASSES = {False: "StableDiffusionPipeline", True: "StableDiffusionInpaintPipeline"}


def _vae_folder(cfg: AutoencoderConfig) -> str:
    return "vae" if cfg.kind == "kl" else "vqvae"


def pipeline_config_to_diffusers(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """The diffusers config dicts of every component: {"unet": ..., "vae" | "vqvae": ..., "scheduler": ...}."""
    if cfg.autoencoder.kind == "identity":
        raise ConfigError("diffusers export: a pixel-space pipeline (identity first stage) has no VAE component")
    return {"unet": unet_config_to_diffusers(cfg.unet, cfg.latent_shape[1]),
            _vae_folder(cfg.autoencoder): autoencoder_config_to_diffusers(cfg.autoencoder, cfg.scale_factor),
            "scheduler": schedule_config_to_diffusers(cfg.diffusion)}


# ------------------------------------------------------------------------------------------------ write
def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _write_weights(path: Path, sd: dict[str, Tensor]) -> None:
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))


def export_diffusers(pipe: Pipeline, folder: str | Path) -> Path:
    """Write ``pipe`` as a diffusers folder (see the module docstring); returns the folder.
    model_index.json is written last, so an interrupted export is not a loadable folder."""
    folder, cfg = Path(folder), pipe.cfg
    configs = pipeline_config_to_diffusers(cfg)  # raises before anything is written
    vae = _vae_folder(cfg.autoencoder)
    version = {"_diffusers_version": DIFFUSERS_VERSION}
    hints = {"unet": cfg.unet, vae: cfg.autoencoder, "scheduler": cfg.diffusion}
    _write_weights(folder / "unet" / WEIGHTS, to_diffusers(pipe.unet.state_dict(), unet_key_map(cfg.unet), "unet"))
    _write_weights(folder / vae / WEIGHTS,
                   to_diffusers(pipe.autoencoder.state_dict(), autoencoder_key_map(cfg.autoencoder), "autoencoder"))
    for name in ("unet", vae):
        _write_json(folder / name / CONFIG, configs[name] | version | {HINT: to_dict(hints[name])})
    _write_json(folder / "scheduler" / SCHEDULER_CONFIG,
                configs["scheduler"] | version | {HINT: to_dict(cfg.diffusion)})
    # diffusers' own LDMPipeline runs unconditional VQ + UNet2DModel models (a component named "vqvae", the UNet
    # called without context or labels); any other layout is loaded per component (UNet2DConditionModel...)
    ldm = vae == "vqvae" and configs["unet"]["_class_name"] == "UNet2DModel" and pipe.conditioner is None \
        and cfg.unet.num_classes is None and cfg.concat.kind == "none"
    index: dict[str, Any] = {
        "_class_name": "LDMPipeline" if ldm else "LDMKitPipeline", **version, "unet": ["diffusers", configs["unet"]["_class_name"]],
        vae: ["diffusers", configs[vae]["_class_name"]], "scheduler": ["diffusers", "DDIMScheduler"]}
    extras = {name: getattr(pipe, name) for name in ("conditioner", "spatial") if getattr(pipe, name) is not None}
    if cfg.conditioner.kind in ("clip", "openclip"):  # Stable Diffusion: transformers' own folders
        _write_json(folder / TEXT_ENCODER / CONFIG, text_config_to_diffusers(cfg.conditioner))
        _write_weights(folder / TEXT_ENCODER / "model.safetensors", text_to_transformers(pipe.conditioner.state_dict()))
        pipe.conditioner.tokenizer.save(folder / TOKENIZER)
        index |= {"_class_name": SD_CLASSES[cfg.concat.kind == "inpaint"], TEXT_ENCODER: ["transformers", "CLIPTextModel"],
                  TOKENIZER: ["transformers", "CLIPTokenizer"], "safety_checker": [None, None],
                  "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False}
        extras = {}
    if extras:  # ldmkit's own condition encoders (class, text, layout) and a semantic map's rescaler
        tensors = {f"{name}.{k}": v for name, module in extras.items() for k, v in module.state_dict().items()}
        save_release(folder / "conditioner" / CONDITIONER_FILE, tensors,
                     {"kind": "conditioner", "config": to_dict(cfg.conditioner)})
        index["conditioner"] = ["ldmkit", type(next(iter(extras.values()))).__name__]
    index[HINT] = {"version": __version__, "class_names": list(cfg.class_names), "concat": to_dict(cfg.concat)}
    _write_json(folder / MODEL_INDEX, index)
    return folder


# ------------------------------------------------------------------------------------------------ read
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def read_weights(sub: Path, lazy: bool = False) -> Mapping[str, Tensor]:
    """A component's weights: ``diffusion_pytorch_model.safetensors``, its sharded index, or a ``.bin``
    (opened with ``torch.load(weights_only=True)``, never executing code). ``lazy``: tensors are read when asked
    for (safetensors) or memory-mapped (zip ``.bin``), see :func:`load_state_dict_file`."""
    single, index = sub / WEIGHTS, sub / (WEIGHTS + ".index.json")
    if single.is_file():
        return load_state_dict_file(single, lazy=lazy)
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        return ChainMap(*(load_state_dict_file(sub / shard, lazy=lazy) for shard in shards))
    if (sub / "diffusion_pytorch_model.bin").is_file():
        return load_state_dict_file(sub / "diffusion_pytorch_model.bin", lazy=lazy)
    raise FileNotFoundError(f"{single}: not found (nor a sharded index or a .bin)")


def _hinted(data: dict[str, Any], cls: type, derived: Any, rederive: Callable[[Any], Any], where: str) -> Any:
    """The ldmkit config stored under ``_ldmkit`` if it describes the same model as the diffusers keys
    (re-deriving its export gives ``derived``); otherwise ``derived`` (with a warning when they disagree)."""
    if HINT not in data:
        return derived
    try:
        hint = from_dict(cls, data[HINT])
        if rederive(hint) == derived:
            return hint
    except (ValueError, TypeError):  # ConfigError included: a malformed copy is as good as none
        pass
    warnings.warn(f"{where}: the _ldmkit config does not match the diffusers keys (edited?); using the diffusers keys")
    return derived


def read_unet_config(sub: Path) -> UNetConfig:
    data = _read_json(sub / CONFIG)
    where = str(sub / CONFIG)
    derived = unet_config_from_diffusers(data, where)
    # sample_size (the latent side) is not read back: the VAE's resolution sets it
    return _hinted(data, UNetConfig, derived,
                   lambda h: unet_config_from_diffusers(unet_config_to_diffusers(h, 1), where), where)


def read_autoencoder_config(sub: Path) -> tuple[AutoencoderConfig, float]:
    data = _read_json(sub / CONFIG)
    where = str(sub / CONFIG)
    derived, scale = autoencoder_config_from_diffusers(data, where)
    cfg = _hinted(data, AutoencoderConfig, derived,
                  lambda h: autoencoder_config_from_diffusers(autoencoder_config_to_diffusers(h, scale), where)[0],
                  where)
    return cfg, scale


def read_schedule_config(sub: Path) -> ScheduleConfig:
    # diffusers names it scheduler_config.json; a hand-made folder may use config.json
    path = sub / SCHEDULER_CONFIG
    if not path.is_file() and (sub / CONFIG).is_file():
        path = sub / CONFIG
    data = _read_json(path)
    derived = schedule_config_from_diffusers(data, str(path))
    return _hinted(data, ScheduleConfig, derived,
                   lambda h: schedule_config_from_diffusers(schedule_config_to_diffusers(h), str(path)), str(path))


def load_into(module: nn.Module, sd: Mapping[str, Tensor], where: str, dtype: Any = None) -> None:
    """Strict load that names missing, unexpected and mis-shaped keys (ConfigError). A meta-built module (assign.py)
    takes the tensors themselves, cast to ``dtype`` (default: the module's own float dtype), read from a lazy
    ``sd`` one at a time: the file's copy is never held whole beside the module's."""
    target = module.state_dict()
    check_keys(where, set(sd), set(target))
    meta = any(v.is_meta for v in target.values())
    out, bad = {}, []
    for k, v in target.items():
        t = sd[k]
        if t.shape != v.shape:
            bad.append(f"{k} {tuple(t.shape)} != {tuple(v.shape)}")
        elif not bad:
            out[k] = cast(t, dtype or v.dtype) if meta else t
    if bad:
        raise ConfigError(f"{where}: shapes do not fit the config: {', '.join(bad[:4])}")
    module.load_state_dict(out, assign=meta)


def _vae_component(index: dict[str, Any], folder: Path) -> str:
    found = [name for name in ("vae", "vqvae") if index.get(name) not in (None, [None, None])]
    if len(found) != 1:
        raise ConfigError(f"{folder / MODEL_INDEX}: expected one of vae / vqvae, found {found or 'none'}")
    return found[0]


def load_diffusers_autoencoder(folder: str | Path) -> tuple[Autoencoder, AutoencoderConfig, float]:
    """A VAE folder (config.json + weights) or a pipeline folder's vae/ | vqvae/ -> (frozen Autoencoder,
    its config, scale_factor = diffusers' scaling_factor)."""
    folder = Path(folder)
    if (folder / MODEL_INDEX).is_file():
        folder = folder / _vae_component(_read_json(folder / MODEL_INDEX), folder)
    cfg, scale = read_autoencoder_config(folder)
    model = Autoencoder(cfg)
    load_into(model, from_diffusers(read_weights(folder), autoencoder_key_map(cfg), str(folder / WEIGHTS)),
              "autoencoder")
    return model.eval().requires_grad_(False), cfg, scale


def load_diffusers_unet(folder: str | Path) -> tuple[UNetModel, UNetConfig]:
    """A UNet folder (config.json + weights) or a pipeline folder's unet/ -> (UNetModel in eval mode, config)."""
    folder = Path(folder)
    if (folder / MODEL_INDEX).is_file():
        folder = folder / "unet"
    cfg = read_unet_config(folder)
    model = UNetModel(cfg)
    load_into(model, from_diffusers(read_weights(folder), unet_key_map(cfg), str(folder / WEIGHTS)), "unet")
    return model.eval(), cfg


def load_diffusers(folder: str | Path, device: str | Any = "cpu", dtype: Any = None) -> Pipeline:
    """A diffusers pipeline folder (unconditional, class-conditional as written by :func:`export_diffusers`, or
    Stable Diffusion with its CLIP text encoder and tokenizer) -> Pipeline, weights in ``dtype`` (default
    float32). Other components are refused by name, never skipped."""
    folder = Path(folder)
    index = _read_json(folder / MODEL_INDEX)
    listed = {k: v for k, v in index.items() if not k.startswith("_") and v not in (None, [None, None])}
    foreign = [f"{k} ({' '.join(map(str, v)) if isinstance(v, list) else v})" for k, v in listed.items()
               if k not in COMPONENTS and k not in UNUSED and k != "requires_safety_checker"]
    if foreign:
        raise ConfigError(f"{folder}: {', '.join(foreign)} not converted: ldmkit reads unconditional, "
                          "class-conditional and Stable Diffusion (CLIP text encoder) pipelines")
    if (TEXT_ENCODER in listed) != (TOKENIZER in listed):
        raise ConfigError(f"{folder / MODEL_INDEX}: a text_encoder needs its tokenizer and the other way round")
    for name in ("unet", "scheduler"):
        if name not in listed:
            raise ConfigError(f"{folder / MODEL_INDEX}: no {name} component")
    vae = _vae_component(index, folder)
    conditioner, extras = ConditionerConfig(kind="none"), {}
    if "conditioner" in listed:
        path = folder / "conditioner" / CONDITIONER_FILE
        tensors, meta = load_release(path)
        if meta.get("kind") != "conditioner":
            raise ConfigError(f"{path}: not an ldmkit conditioner file (kind={meta.get('kind')!r})")
        conditioner = from_dict(ConditionerConfig, meta["config"], prefix="conditioner")
        extras = {name: {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
                  for name in ("conditioner", "spatial")}
        check_keys(str(path), set(tensors), {f"{n}.{k}" for n, sd in extras.items() for k in sd})
    if TEXT_ENCODER in listed:
        conditioner = text_config_from_diffusers(folder)
        find_clip_vocab(folder / TOKENIZER)  # a broken tokenizer folder fails now, not at the first prompt
    unet = read_unet_config(folder / "unet")
    if conditioner.kind in ("clip", "openclip") and unet.context_dim != conditioner.embed_dim:
        raise ConfigError(f"{folder}: the text encoder's width {conditioner.embed_dim} "
                          f"({folder / TEXT_ENCODER / CONFIG}) is not the UNet's cross_attention_dim {unet.context_dim}")
    if (unet.context_dim is not None) != (conditioner.kind != "none"):
        raise ConfigError(f"{folder}: the UNet's cross_attention_dim ({unet.context_dim}) needs a conditioner and "
                          f"the conditioner ({conditioner.kind}) needs cross-attention: the two do not fit")
    autoencoder, scale = read_autoencoder_config(folder / vae)
    hint = index.get(HINT) if isinstance(index.get(HINT), dict) else {}
    concat = from_dict(ConcatConfig, hint.get("concat") or {}, prefix="model_index.json _ldmkit.concat")
    if HINT not in index and TEXT_ENCODER in listed and unet.in_channels == 2 * autoencoder.embed_dim + 1:
        concat = ConcatConfig(kind="inpaint", inpaint_layout="sd", paste_known=False)  # SD inpainting's 9 channels
    cfg = PipelineConfig(autoencoder=autoencoder, unet=unet, conditioner=conditioner,
                         diffusion=read_schedule_config(folder / "scheduler"), scale_factor=scale,
                         class_names=list(hint.get("class_names") or []), concat=concat)
    expected = autoencoder.embed_dim + concat.channels(autoencoder.embed_dim, autoencoder.in_channels)
    if unet.in_channels != expected:
        raise ConfigError(f"{folder / 'unet' / CONFIG}: in_channels={unet.in_channels}, but the latents have "
                          f"{autoencoder.embed_dim} channels (+ {expected - autoencoder.embed_dim} concat)")
    pipe = empty_pipeline(cfg)
    # lazily: each tensor is read, converted and cast as it is assigned (one copy of the weights, not two)
    for module, sub, key_map in ((pipe.unet, "unet", unet_key_map(unet)),
                                 (pipe.autoencoder, vae, autoencoder_key_map(autoencoder))):
        weights = read_weights(folder / sub, lazy=True)
        load_into(module, from_diffusers(weights, key_map, str(folder / sub / WEIGHTS), lazy=True), sub, dtype)
    if TEXT_ENCODER in listed:
        path = text_weights_path(folder)
        load_into(pipe.conditioner, text_from_transformers(load_state_dict_file(path, lazy=True)), str(path), dtype)
        assign_buffers(pipe.conditioner, str(path))
    for name in ("conditioner", "spatial"):
        if name == "conditioner" and TEXT_ENCODER in listed:
            continue
        module = getattr(pipe, name)
        if module is not None or extras.get(name):
            if module is None:
                raise ConfigError(f"{folder / 'conditioner' / CONDITIONER_FILE}: unexpected {name} weights")
            load_into(module, extras.get(name, {}), f"{folder / 'conditioner' / CONDITIONER_FILE} ({name})")
    return pipe.to(device).eval()
