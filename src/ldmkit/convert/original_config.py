"""The original LDM's target/params YAML <-> ldmkit's PipelineConfig (the config half of ``convert/original.py``).

The YAML's ``target`` strings are only compared as text, never imported. Class labels: ldmkit's ClassEmbedder has
``num_classes + 1`` rows, the last being the null class used for guidance; the original's cin256-v2 ClassEmbedder has
``n_classes: 1001`` rows with class 1000 as the unconditional label. So original ``n_classes = N + 1`` <-> ldmkit
``num_classes = N``.
"""
from __future__ import annotations

import dataclasses
from typing import Any


from ..autoencoder import AutoencoderConfig
from ..config import to_dict
from ..diffusion import ScheduleConfig
from ..nn import ConditionerConfig, UNetConfig
from ..nn.bert_embedder import BERT_VOCAB_SIZE
from ..nn.concat import ConcatConfig
from ..pipeline import PipelineConfig


# original state_dict prefix -> Pipeline attribute (the cond stage is the semantic map's rescaler when it has one)
PREFIXES = {"model.diffusion_model.": "unet", "first_stage_model.": "autoencoder", "cond_stage_model.": "conditioner"}


def prefixes(cfg: PipelineConfig) -> dict[str, str]:
    """PREFIXES for ``cfg``: the original has one cond stage, either the context encoder or the concat rescaler
    (SD inpainting takes its concat map from the first stage, so its cond stage is the text encoder)."""
    if is_hybrid(cfg) and (cfg.concat.kind != "inpaint" or cfg.concat.inpaint_layout != "sd"):
        raise ValueError("original layout: a context conditioner with a concat map (hybrid) exists only as SD "
                         "inpainting (concat kind inpaint, inpaint_layout sd)")
    return PREFIXES | ({"cond_stage_model.": "spatial"} if cfg.concat.kind == "semantic" else {})


def is_hybrid(cfg: PipelineConfig) -> bool:
    """A text encoder plus the masked image's latent and mask: SD's LatentInpaintDiffusion (conditioning "hybrid")."""
    return cfg.conditioner.kind != "none" and cfg.concat.kind != "none"


# released text-tower sizes, used until the checkpoint's shapes say otherwise (clip_conditioner)
TEXT_SIZES = {"clip": dict(embed_dim=768, n_layer=12, n_head=12, intermediate_size=3072, max_length=77),
              "openclip": dict(embed_dim=1024, n_layer=23, n_head=16, intermediate_size=4096, max_length=77)}

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
