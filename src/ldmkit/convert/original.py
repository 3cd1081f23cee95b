"""Convert between ldmkit pipelines and the original LDM checkpoints (``.ckpt`` + target/params YAML).

ldmkit modules already use the original's parameter names, so the state_dict mapping is a prefix table.
The YAML's ``target`` strings are only compared as text, never imported.

Class labels: ldmkit's ClassEmbedder has ``num_classes + 1`` rows, the last being the null class used for
guidance; the original's cin256-v2 ClassEmbedder has ``n_classes: 1001`` rows with class 1000 as the
unconditional label. So original ``n_classes = N + 1`` <-> ldmkit ``num_classes = N``.
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

from ..autoencoder import AutoencoderConfig
from ..config import load_yaml, to_dict
from ..diffusion import ScheduleConfig
from ..nn import ConditionerConfig, UNetConfig
from ..nn.bert_embedder import BERT_VOCAB_SIZE
from ..nn.concat import ConcatConfig
from ..pipeline import Pipeline, PipelineConfig
from ..weights import atomic_write
from .assign import cast, empty_pipeline, fill_pipeline
from .clip_keys import POSITION_IDS, ldmkit_to_openclip, openclip_plan
from .safe_load import load_state_dict_file, shape_of
from .sd_infer import OPENCLIP, clip_conditioner

# original state_dict prefix -> Pipeline attribute (the cond stage is the semantic map's rescaler when it has one)
PREFIXES = {"model.diffusion_model.": "unet", "first_stage_model.": "autoencoder", "cond_stage_model.": "conditioner"}


def is_hybrid(cfg: PipelineConfig) -> bool:
    """A text encoder plus the masked image's latent and mask: SD's LatentInpaintDiffusion (conditioning "hybrid")."""
    return cfg.conditioner.kind != "none" and cfg.concat.kind != "none"


def prefixes(cfg: PipelineConfig) -> dict[str, str]:
    """PREFIXES for ``cfg``: the original has one cond stage, either the context encoder or the concat rescaler
    (SD inpainting takes its concat map from the first stage, so its cond stage is the text encoder)."""
    if is_hybrid(cfg) and (cfg.concat.kind != "inpaint" or cfg.concat.inpaint_layout != "sd"):
        raise ValueError("original layout: a context conditioner with a concat map (hybrid) exists only as SD "
                         "inpainting (concat kind inpaint, inpaint_layout sd)")
    return PREFIXES | ({"cond_stage_model.": "spatial"} if cfg.concat.kind == "semantic" else {})
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")
# keys the original may hold that carry nothing ldmkit needs (training-only or recomputed from the config)
IGNORED_KEYS = {*SCHEDULE_BUFFERS, "scale_factor", "lvlb_weights", "logvar", "model_ema.decay", "model_ema.num_updates",
                "cond_stage_model." + POSITION_IDS, "cond_stage_model.transformer.embeddings.position_ids"}  # SD 1.x carries CLIP's position ids (0..76, rebuilt)
# released text-tower sizes, used until the checkpoint's shapes say otherwise (clip_conditioner)
TEXT_SIZES = {"clip": dict(embed_dim=768, n_layer=12, n_head=12, intermediate_size=3072, max_length=77),
              "openclip": dict(embed_dim=1024, n_layer=23, n_head=16, intermediate_size=4096, max_length=77)}
IGNORED_PREFIXES = ("first_stage_model.loss.", "loss.")
EMA_PREFIX = "model_ema."
VQ_CODEBOOK = "first_stage_model.quantize.embedding.weight"

TARGETS = {
    "ldm": "ldm.models.diffusion.ddpm.LatentDiffusion",
    "sd_inpaint": "ldm.models.diffusion.ddpm.LatentInpaintDiffusion",
    "clip": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
    "openclip": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
    "unet": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "kl": "ldm.models.autoencoder.AutoencoderKL",
    "vq": "ldm.models.autoencoder.VQModelInterface",
    "class": "ldm.modules.encoders.modules.ClassEmbedder",
    "bert": "ldm.modules.encoders.modules.BERTEmbedder",
    "semantic": "ldm.modules.encoders.modules.SpatialRescaler",
    "identity": "torch.nn.Identity",
}
# ldmkit concat kind -> the original's cond_stage_key (what the batch entry is called)
CONCAT_KEYS = {"low_res": "LR_image", "inpaint": "masked_image", "semantic": "segmentation"}
# original UNet params ldmkit does not implement: allowed only at their (no-op) defaults
UNET_FIXED = {"dims": 2, "num_heads_upsample": -1, "use_new_attention_order": False, "n_embed": None}
UNET_REQUIRED = ("in_channels", "out_channels", "model_channels", "attention_resolutions", "num_res_blocks")
UNET_OPTIONAL = {"channel_mult": (1, 2, 4, 8), "num_heads": -1, "num_head_channels": -1, "dropout": 0.0,
                 "use_scale_shift_norm": False, "resblock_updown": False, "conv_resample": True,
                 "use_spatial_transformer": False, "transformer_depth": 1, "context_dim": None,
                 "num_classes": None, "legacy": True, "use_linear_in_transformer": False}
DDCONFIG_REQUIRED = ("double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
                     "num_res_blocks", "attn_resolutions")


def _need(d: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"original config: {where} must be a mapping")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"original config: missing {', '.join(f'{where}.{k}' for k in missing)}")


# ------------------------------------------------------------------------------------------- YAML config
def _unet(p: dict[str, Any]) -> UNetConfig:
    _need(p, UNET_REQUIRED, "unet_config.params")
    for k, default in UNET_FIXED.items():
        if p.get(k, default) != default:
            raise ValueError(f"original config: unet_config.params.{k}={p[k]!r} is not supported (only {default!r})")
    kw = {k: p[k] for k in UNET_REQUIRED} | {k: p.get(k, v) for k, v in UNET_OPTIONAL.items()}
    return UNetConfig(**kw | {"channel_mult": tuple(kw["channel_mult"]),
                              "attention_resolutions": tuple(kw["attention_resolutions"])})


def _autoencoder(fs: dict[str, Any]) -> AutoencoderConfig:
    _need(fs, ("target", "params"), "first_stage_config")
    target, p = str(fs["target"]), fs["params"]
    # VQModel is the target of first-stage-only configs, VQModelInterface of the LDM's first_stage_config
    kind = "kl" if target.endswith("AutoencoderKL") else "vq" if target.endswith(("VQModelInterface", "VQModel")) \
        else None
    if kind is None:
        raise ValueError(f"original config: first_stage_config.target {target!r} is not supported "
                         "(AutoencoderKL, VQModelInterface or VQModel)")
    _need(p, ("embed_dim", "ddconfig") + (("n_embed",) if kind == "vq" else ()), "first_stage_config.params")
    dd = p["ddconfig"]
    _need(dd, DDCONFIG_REQUIRED, "first_stage_config.params.ddconfig")
    if bool(dd["double_z"]) != (kind == "kl"):
        raise ValueError(f"original config: ddconfig.double_z={dd['double_z']} does not fit a {kind} first stage")
    if dd["out_ch"] != dd["in_channels"]:
        raise ValueError("original config: ddconfig.out_ch != in_channels is not supported")
    attn_type = dd.get("attn_type", "vanilla")
    if attn_type not in ("vanilla", "none"):
        raise ValueError(f"original config: ddconfig.attn_type {attn_type!r} is not supported (vanilla or none)")
    if p.get("remap") is not None:
        raise ValueError("original config: first_stage_config.params.remap is not supported")
    return AutoencoderConfig(kind=kind, in_channels=dd["in_channels"], resolution=dd["resolution"], ch=dd["ch"],
                             ch_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
                             attn_resolutions=tuple(dd["attn_resolutions"]), mid_attn=attn_type == "vanilla",
                             dropout=dd.get("dropout", 0.0), z_channels=dd["z_channels"], embed_dim=p["embed_dim"],
                             **({"n_embed": p["n_embed"]} if kind == "vq" else {}))


def _concat(cs: Any, f: int) -> ConcatConfig:
    """The concat cond stages: LR image (Identity), masked image (the first stage), SpatialRescaler."""
    if cs == "__is_first_stage__":
        return ConcatConfig(kind="inpaint")
    target = str(cs.get("target")) if isinstance(cs, dict) else str(cs)
    if target.endswith("Identity"):
        return ConcatConfig(kind="low_res", factor=f)  # the LR image has the latent's size
    if target.endswith("SpatialRescaler"):
        p = cs.get("params") or {}
        if p.get("method", "bilinear") != "bilinear" or p.get("multiplier", 0.5) != 0.5 or p.get("bias", False):
            raise ValueError("original config: SpatialRescaler is supported with method bilinear, multiplier 0.5, "
                             "bias false")
        return ConcatConfig(kind="semantic", num_classes=p.get("in_channels", 3), n_stages=p.get("n_stages", 1),
                            out_channels=p.get("out_channels") or 0)
    raise ValueError(f"original config: concat cond stage {target!r} is not supported "
                     "(torch.nn.Identity, __is_first_stage__ or SpatialRescaler)")


def _frozen_text(cs: Any, conditioning_key: Any) -> ConditionerConfig:
    """SD's FrozenCLIPEmbedder (1.x: last layer) / FrozenOpenCLIPEmbedder (2.x: "penultimate" or "last")."""
    target = str(cs.get("target")) if isinstance(cs, dict) else str(cs)
    kind = "clip" if target.endswith("FrozenCLIPEmbedder") else "openclip"
    if conditioning_key not in ("crossattn", "hybrid"):
        raise ValueError(f"original config: {target.rsplit('.', 1)[-1]} with conditioning_key {conditioning_key!r} "
                         "is not supported (crossattn, or hybrid for inpainting)")
    p = (cs.get("params") if isinstance(cs, dict) else None) or {}
    layer = p.get("layer", "last")
    if layer not in (("last",) if kind == "clip" else ("last", "penultimate")):
        raise ValueError(f"original config: cond_stage_config.params.layer={layer!r} is not supported for {target} "
                         "(clip: last; openclip: last or penultimate)")
    sizes = TEXT_SIZES[kind] | {"max_length": p.get("max_length", 77)}
    if kind == "openclip" and layer == "last":
        sizes["n_layer"] = 24
    return ConditionerConfig(kind=kind, **sizes)


def openclip_layer(yaml_dict: dict[str, Any]) -> str:
    """The open_clip layer an original YAML reads ("last", FrozenOpenCLIPEmbedder's default, or "penultimate")."""
    cs = yaml_dict.get("model", {}).get("params", {}).get("cond_stage_config")
    return str(((cs.get("params") if isinstance(cs, dict) else None) or {}).get("layer", "last"))


def _conditioner(cs: Any, conditioning_key: Any, f: int) -> tuple[ConditionerConfig, ConcatConfig]:
    target = str(cs.get("target")) if isinstance(cs, dict) else str(cs)
    if target.endswith(("FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder")):
        concat = ConcatConfig(kind="inpaint", inpaint_layout="sd", paste_known=False) \
            if conditioning_key == "hybrid" else ConcatConfig()
        return _frozen_text(cs, conditioning_key), concat
    if conditioning_key == "hybrid":
        raise ValueError(f"original config: conditioning_key hybrid is supported with SD's text encoders only, "
                         f"not {target!r}")
    if cs == "__is_unconditional__":
        if conditioning_key is not None:
            raise ValueError(f"original config: conditioning_key {conditioning_key!r} needs a cond stage")
        return ConditionerConfig(kind="none"), ConcatConfig()
    if conditioning_key == "concat":
        return ConditionerConfig(kind="none"), _concat(cs, f)
    if target.endswith("BERTEmbedder"):
        return _bert(cs, conditioning_key), ConcatConfig()
    if not target.endswith("ClassEmbedder"):
        raise ValueError(f"original config: cond_stage_config {target!r} with conditioning_key "
                         f"{conditioning_key!r} is not supported yet (ClassEmbedder or BERTEmbedder with "
                         "crossattn, or a concat cond stage)")
    if conditioning_key != "crossattn":
        raise ValueError(f"original config: ClassEmbedder with conditioning_key {conditioning_key!r} is not "
                         "supported (crossattn)")
    _need(cs.get("params"), ("embed_dim",), "cond_stage_config.params")
    p = cs["params"]
    # the original's default of 1000 rows would hold 999 classes + the null class
    return ConditionerConfig(kind="class", num_classes=p.get("n_classes", 1000) - 1, embed_dim=p["embed_dim"]), \
        ConcatConfig()


def _bert(cs: dict[str, Any], conditioning_key: Any) -> ConditionerConfig:
    """BERTEmbedder (text2img256, txt2img-1p4B): the bert-base-uncased tokenizer + a TransformerWrapper."""
    if conditioning_key != "crossattn":
        raise ValueError(f"original config: BERTEmbedder with conditioning_key {conditioning_key!r} is not "
                         "supported (crossattn)")
    _need(cs.get("params"), ("n_embed", "n_layer"), "cond_stage_config.params")
    p = cs["params"]
    if not p.get("use_tokenizer", True):
        raise ValueError("original config: BERTEmbedder with use_tokenizer false (layout-to-image bbox tokens) "
                         "is not supported: the bbox token builder is not mapped")
    if p.get("vocab_size", BERT_VOCAB_SIZE) != BERT_VOCAB_SIZE:
        raise ValueError(f"original config: BERTEmbedder vocab_size {p['vocab_size']} with use_tokenizer true is "
                         f"not supported (the bert-base-uncased tokenizer has {BERT_VOCAB_SIZE} tokens)")
    # embedding_dropout (default 0) acts only while training the cond stage; it has no field here
    return ConditionerConfig(kind="bert", embed_dim=p["n_embed"], n_layer=p["n_layer"],
                             max_length=p.get("max_seq_len", 77))


def original_config_to_pipeline_config(yaml_dict: dict[str, Any]) -> PipelineConfig:
    """The original LatentDiffusion YAML (``model.target`` / ``model.params``) -> PipelineConfig."""
    _need(yaml_dict, ("model",), "<top level>")
    _need(yaml_dict["model"], ("params",), "model")
    p = yaml_dict["model"]["params"]
    _need(p, ("unet_config", "first_stage_config", "cond_stage_config"), "model.params")
    _need(p["unet_config"], ("params",), "unet_config")
    # LatentDiffusion's own defaults apply to omitted schedule keys
    diffusion = ScheduleConfig(timesteps=p.get("timesteps", 1000), beta_schedule=p.get("beta_schedule", "linear"),
                               linear_start=p.get("linear_start", 1e-4), linear_end=p.get("linear_end", 2e-2),
                               cosine_s=p.get("cosine_s", 8e-3), parameterization=p.get("parameterization", "eps"),
                               v_posterior=p.get("v_posterior", 0.0))
    ae = _autoencoder(p["first_stage_config"])
    # LatentDiffusion's default: conditioning_key None means concat when concat_mode (default True) is set
    key = p.get("conditioning_key") or ("concat" if p.get("concat_mode", True) and
                                        p["cond_stage_config"] != "__is_unconditional__" else None)
    conditioner, concat = _conditioner(p["cond_stage_config"], key, ae.downsample_factor)
    model_target = str(yaml_dict["model"].get("target", ""))
    if (key == "hybrid") != model_target.endswith("LatentInpaintDiffusion"):
        raise ValueError(f"original config: model.target {model_target!r} with conditioning_key {key!r} is not "
                         "supported (hybrid goes with LatentInpaintDiffusion)")
    unet = _unet(p["unet_config"]["params"])
    if conditioner.kind == "openclip":  # SD 2.x's attention always runs in float32 (its ATTN_PRECISION default)
        unet = dataclasses.replace(unet, upcast_attention=True)
    return PipelineConfig(autoencoder=ae, unet=unet, conditioner=conditioner,
                          diffusion=diffusion, scale_factor=float(p.get("scale_factor", 1.0)), concat=concat)


def pipeline_config_to_original_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The inverse of :func:`original_config_to_pipeline_config`, in the original target/params schema."""
    ae, u, d, c = cfg.autoencoder, cfg.unet, cfg.diffusion, cfg.conditioner
    if ae.kind == "identity":
        raise ValueError("original export: pixel-space pipelines (identity first stage) are not mapped to "
                         "IdentityFirstStage yet")
    u.require_original_layout("original LDM")
    side = ae.latent_shape[1]
    unet = {"image_size": side, **{k: getattr(u, k) for k in (*UNET_REQUIRED, *UNET_OPTIONAL)}}
    ddconfig = {"double_z": ae.kind == "kl", "z_channels": ae.z_channels, "resolution": ae.resolution,
                "in_channels": ae.in_channels, "out_ch": ae.in_channels, "ch": ae.ch, "ch_mult": ae.ch_mult,
                "num_res_blocks": ae.num_res_blocks, "attn_resolutions": ae.attn_resolutions,
                "dropout": ae.dropout, "attn_type": "vanilla" if ae.mid_attn else "none"}
    first = {"embed_dim": ae.embed_dim, **({"n_embed": ae.n_embed} if ae.kind == "vq" else {}),
             "ddconfig": ddconfig, "lossconfig": {"target": "torch.nn.Identity"}}
    prefixes(cfg)  # refuses hybrids
    cond: Any = "__is_unconditional__"
    key, cond_key, trainable = None, "class_label", False
    if c.kind == "class":
        cond = {"target": TARGETS["class"], "params": {"embed_dim": c.embed_dim, "n_classes": c.num_classes + 1,
                                                       "key": "class_label"}}
        key, trainable = "crossattn", True
    elif c.kind == "bert":
        cond = {"target": TARGETS["bert"], "params": {"n_embed": c.embed_dim, "n_layer": c.n_layer,
                                                      "vocab_size": BERT_VOCAB_SIZE, "max_seq_len": c.max_length,
                                                      "use_tokenizer": True}}
        key, cond_key, trainable = "crossattn", "caption", True
    elif c.kind in ("clip", "openclip"):
        if c.clip_skip:
            raise ValueError(f"original layout: conditioner.clip_skip={c.clip_skip} has no original equivalent "
                             "(it is a sampling option: export with clip_skip 0)")
        # SD 1.x's FrozenCLIPEmbedder takes no layer; the cut open_clip tower is read whole by "penultimate"
        # (the original builds the full 24-layer tower and stops one below its top)
        cond = {"target": TARGETS[c.kind]} if c.kind == "clip" else \
            {"target": TARGETS[c.kind], "params": {"arch": "ViT-H-14", "version": "laion2b_s32b_b79k",
                                                   "freeze": True, "layer": "penultimate"}}
        key, cond_key = "crossattn", "txt"
    elif c.kind != "none":
        raise ValueError(f"original layout: conditioner kind {c.kind!r} has no original cond stage mapping yet")
    if is_hybrid(cfg):
        key = "hybrid"
    elif cfg.concat.kind != "none":
        k = cfg.concat
        if k.kind not in CONCAT_KEYS:
            raise ValueError(f"original layout: concat kind {k.kind!r} has no original cond stage")
        key, cond_key, trainable = "concat", CONCAT_KEYS[k.kind], k.kind == "semantic"
        cond = {"low_res": {"target": TARGETS["identity"]}, "inpaint": "__is_first_stage__",
                "semantic": {"target": TARGETS["semantic"], "params": {
                    "n_stages": k.n_stages, "method": "bilinear", "multiplier": 0.5, "in_channels": k.num_classes,
                    "out_channels": k.out_channels or None, "bias": False}}}[k.kind]
    params = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
    params |= {"first_stage_key": "image", "cond_stage_key": cond_key, "image_size": side,
               "channels": ae.embed_dim, "conditioning_key": key, "concat_mode": key == "concat",
               "cond_stage_trainable": trainable, "scale_factor": cfg.scale_factor, "scale_by_std": False,
               # the exported UNet weights are the ones ldmkit samples with; no separate model_ema.* keys
               "use_ema": False,
               "unet_config": {"target": TARGETS["unet"], "params": unet},
               "first_stage_config": {"target": TARGETS[ae.kind], "params": first},
               "cond_stage_config": cond}
    # to_dict turns tuples into lists, which yaml.safe_dump accepts
    return to_dict({"model": {"target": TARGETS["sd_inpaint" if key == "hybrid" else "ldm"], "params": params}})


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
