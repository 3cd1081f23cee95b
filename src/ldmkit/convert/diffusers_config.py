"""ldmkit configs <-> diffusers ``config.json`` dicts (UNet, VAE, scheduler), without importing diffusers.

Export refuses (ConfigError naming the field) what the diffusers classes cannot express. Import reads the
keys that map onto ldmkit, requires every other known key to sit at a value ldmkit implements, and names
any key it does not know: an unknown key could change the architecture, so it is never silently dropped.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..autoencoder import Autoencoder, AutoencoderConfig
from ..config import ConfigError
from ..diffusion import ScheduleConfig
from ..nn import UNetConfig, UNetModel

UNET_COND, UNET_PLAIN, VAE_KL, VAE_VQ = "UNet2DConditionModel", "UNet2DModel", "AutoencoderKL", "VQModel"

# Keys at fixed values: {key: allowed values}; the first value is the one diffusers assumes when it is absent.
# Keys that only change numerics or unused code paths accept any value (ANY).
ANY = object()
UNET_COMMON_FIXED = {"center_input_sample": (False,), "flip_sin_to_cos": (True,), "freq_shift": (0,),
                     "downsample_padding": (1,), "mid_block_scale_factor": (1, 1.0), "act_fn": ("silu",),
                     "norm_eps": (1e-5,), "time_embedding_type": ("positional",), "time_embedding_dim": (None,),
                     "class_embed_type": (None,), "sample_size": ANY}
UNET_COND_FIXED = UNET_COMMON_FIXED | {
    "mid_block_type": ("UNetMidBlock2DCrossAttn",), "only_cross_attention": (False,),
    "reverse_transformer_layers_per_block": (None,), "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,),
    "num_attention_heads": (None,), "dual_cross_attention": (False,),
    "addition_embed_type": (None,), "addition_time_embed_dim": (None,),
    "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1.0, 1), "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,), "time_cond_proj_dim": (None,), "conv_in_kernel": (3,), "conv_out_kernel": (3,),
    "projection_class_embeddings_input_dim": (None,), "attention_type": ("default",),
    "class_embeddings_concat": (False,), "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,), "addition_embed_type_num_heads": ANY}
UNET_PLAIN_FIXED = UNET_COMMON_FIXED | {"mid_block_type": ("UNetMidBlock2D",), "downsample_type": ("conv",),
                                        "upsample_type": ("conv",), "add_attention": (True,),
                                        "num_train_timesteps": ANY, "attn_norm_num_groups": ANY}
# mapped keys and the value diffusers uses when a config omits them
UNET_COND_MAPPED = {"in_channels": 4, "out_channels": 4, "block_out_channels": None, "down_block_types": None,
                    "up_block_types": None, "layers_per_block": 2, "dropout": 0.0, "norm_num_groups": 32,
                    "cross_attention_dim": 1280, "transformer_layers_per_block": 1, "attention_head_dim": 8,
                    "num_class_embeds": None, "resnet_time_scale_shift": "default",
                    "use_linear_projection": False, "upcast_attention": False}
UNET_PLAIN_MAPPED = {"in_channels": 3, "out_channels": 3, "block_out_channels": None, "down_block_types": None,
                     "up_block_types": None, "layers_per_block": 2, "dropout": 0.0, "norm_num_groups": 32,
                     "attention_head_dim": 8, "num_class_embeds": None, "resnet_time_scale_shift": "default"}
VAE_COMMON_FIXED = {"act_fn": ("silu",), "force_upcast": ANY}
VAE_KL_FIXED = VAE_COMMON_FIXED | {"shift_factor": (None, 0, 0.0), "latents_mean": (None,), "latents_std": (None,),
                                   "use_quant_conv": (True,), "use_post_quant_conv": (True,)}
VAE_VQ_FIXED = VAE_COMMON_FIXED | {"norm_type": ("group",), "lookup_from_codebook": ANY}
VAE_COMMON_MAPPED = {"in_channels": 3, "out_channels": 3, "down_block_types": None, "up_block_types": None,
                     "block_out_channels": None, "layers_per_block": 1, "norm_num_groups": 32, "sample_size": 32,
                     "scaling_factor": 0.18215, "mid_block_add_attention": True}
VAE_KL_MAPPED = VAE_COMMON_MAPPED | {"latent_channels": 4}
VAE_VQ_MAPPED = VAE_COMMON_MAPPED | {"latent_channels": 3, "num_vq_embeddings": 256, "vq_embed_dim": None}
SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def _check_keys(where: str, d: dict[str, Any], fixed: dict[str, Any], mapped: dict[str, Any]) -> dict[str, Any]:
    """Validate ``d`` and return the mapped keys with diffusers' defaults filled in."""
    unknown = [k for k in d if not k.startswith("_") and k not in fixed and k not in mapped]
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))} (ldmkit cannot tell what they change)")
    for key, allowed in fixed.items():
        if allowed is not ANY and d.get(key, allowed[0]) not in allowed:
            raise ConfigError(f"{where}: {key}={d[key]!r} is not supported (ldmkit implements {allowed[0]!r})")
    missing = [k for k, v in mapped.items() if v is None and k not in d]
    if missing:
        raise ConfigError(f"{where}: missing keys {', '.join(missing)}")
    return {k: d.get(k, v) for k, v in mapped.items()}


def group_count(module: nn.Module, field: str) -> int:
    """The one GroupNorm group count of ``module``: diffusers has a single ``norm_num_groups`` while
    ldmkit picks the largest divisor <= 32 per width (32 for every width that is a multiple of 32)."""
    groups = sorted({m.num_groups for m in module.modules() if isinstance(m, nn.GroupNorm)})
    if len(groups) != 1:
        raise ConfigError(f"{field}: diffusers uses one GroupNorm group count, but these widths need {groups} "
                          "(use widths that are multiples of 32)")
    return groups[0]


def _levels(block_out: list[int], field: str) -> tuple[int, tuple[int, ...]]:
    """block_out_channels -> (base width, multipliers); diffusers' first level has the base width."""
    base = block_out[0]
    if any(c % base for c in block_out):
        raise ConfigError(f"{field}: block_out_channels {block_out} are not multiples of the first one")
    return base, tuple(c // base for c in block_out)


def _uniform(value: Any, n: int, field: str) -> Any:
    """An int, or a per-block list whose entries are all equal (ldmkit has one value for every level)."""
    if isinstance(value, (list, tuple)):
        if len(set(map(str, value))) != 1 or len(value) != n:
            raise ConfigError(f"{field}: per-block values {list(value)} are not supported (one value for all blocks)")
        return value[0]
    return value


def _square(size: Any, field: str) -> int:
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ConfigError(f"{field}: sample_size {list(size)} is not square")
        return int(size[0])
    return int(size)


def _attention_levels(d: dict[str, Any], names: tuple[str, str, str, str], field: str) -> list[bool]:
    """Which levels (0 = full resolution) carry attention. ``names``: (down with attention, down without,
    up with, up without); diffusers lists up blocks from the lowest resolution, so they are reversed."""
    down, up = list(d["down_block_types"]), list(reversed(d["up_block_types"]))
    if len(down) != len(up) or len(down) != len(d["block_out_channels"]):
        raise ConfigError(f"{field}: down_block_types, up_block_types and block_out_channels differ in length")
    for name in down + up:
        if name not in names:
            raise ConfigError(f"{field}: block type {name!r} is not supported ({', '.join(names)})")
    levels = [name == names[0] for name in down]
    if levels != [name == names[2] for name in up]:
        raise ConfigError(f"{field}: attention levels differ between down_block_types and up_block_types")
    return levels


# ------------------------------------------------------------------------------------------------ UNet
def unet_config_to_diffusers(cfg: UNetConfig, sample_size: int) -> dict[str, Any]:
    """UNetConfig -> UNet2DConditionModel (SpatialTransformer) or UNet2DModel (AttentionBlock) config.json."""
    if cfg.channel_mult[0] != 1:
        raise ConfigError("unet.channel_mult: diffusers needs the first multiplier to be 1 "
                          f"(conv_in has block_out_channels[0] channels), got {list(cfg.channel_mult)}")
    if not cfg.conv_resample or cfg.resblock_updown:
        raise ConfigError("unet.conv_resample / resblock_updown: diffusers export needs conv_resample: true "
                          "and resblock_updown: false")
    cfg.require_original_layout("diffusers")
    with torch.device("meta"):
        groups = group_count(UNetModel(cfg), "unet.model_channels")
    mc = cfg.model_channels
    widths = [mc * m for m in cfg.channel_mult]
    attn = [2**i in cfg.attention_resolutions for i in range(len(widths))]
    d: dict[str, Any] = {"sample_size": sample_size, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
                         "block_out_channels": widths, "layers_per_block": cfg.num_res_blocks,
                         "dropout": cfg.dropout, "norm_num_groups": groups, "norm_eps": 1e-5, "act_fn": "silu",
                         "num_class_embeds": cfg.num_classes, "flip_sin_to_cos": True, "freq_shift": 0,
                         "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
                         "downsample_padding": 1, "center_input_sample": False}
    if cfg.use_spatial_transformer:
        # diffusers' "attention_head_dim" of this class is the number of heads (its issue #2011); the middle
        # block uses the last level's entry, which is also the width of ldmkit's middle block
        if cfg.num_head_channels == -1:
            heads: int | list[int] = cfg.num_heads
        else:  # levels without attention (never the last: the middle uses it) get a placeholder 1
            heads = [cfg.heads(w)[0] if a or i == len(widths) - 1 else 1 for i, (w, a) in enumerate(zip(widths, attn))]
        d |= {"_class_name": UNET_COND, "mid_block_type": "UNetMidBlock2DCrossAttn",
              "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
              "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
              "attention_head_dim": heads,
              "transformer_layers_per_block": cfg.transformer_depth,
              "use_linear_projection": cfg.use_linear_in_transformer, "upcast_attention": cfg.upcast_attention,
              # no context: attn2 attends to the tokens themselves, so its key width is the block width
              "cross_attention_dim": cfg.context_dim if cfg.context_dim is not None else widths}
    else:
        dims = {cfg.heads(w)[1] for w in cfg.attention_widths()}
        if len(dims) != 1:
            raise ConfigError(f"unet.num_heads: UNet2DModel has one head width, these attention layers need "
                              f"{sorted(dims)} (set num_head_channels instead)")
        d |= {"_class_name": UNET_PLAIN, "mid_block_type": "UNetMidBlock2D", "add_attention": True,
              "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
              "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
              "attention_head_dim": dims.pop(), "attn_norm_num_groups": groups,
              "downsample_type": "conv", "upsample_type": "conv"}
    return d


def unet_config_from_diffusers(d: dict[str, Any], where: str = "unet/config.json") -> UNetConfig:
    """A UNet2DConditionModel / UNet2DModel config.json -> UNetConfig (``legacy`` and ``use_checkpoint``
    have no diffusers counterpart and keep their defaults)."""
    cls = d.get("_class_name")
    if cls not in (UNET_COND, UNET_PLAIN):
        raise ConfigError(f"{where}: _class_name {cls!r} is not supported ({UNET_COND} or {UNET_PLAIN})")
    cond = cls == UNET_COND
    m = _check_keys(where, d, *((UNET_COND_FIXED, UNET_COND_MAPPED) if cond else (UNET_PLAIN_FIXED, UNET_PLAIN_MAPPED)))
    mc, mult = _levels(list(m["block_out_channels"]), where)
    n = len(mult)
    attn = _attention_levels(m, ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D") if cond
                             else ("AttnDownBlock2D", "DownBlock2D", "AttnUpBlock2D", "UpBlock2D"), where)
    if m["resnet_time_scale_shift"] not in ("default", "scale_shift"):
        raise ConfigError(f"{where}: resnet_time_scale_shift={m['resnet_time_scale_shift']!r} is not supported")
    kw: dict[str, Any] = dict(
        in_channels=m["in_channels"], out_channels=m["out_channels"], model_channels=mc, channel_mult=mult,
        num_res_blocks=_uniform(m["layers_per_block"], n, f"{where}: layers_per_block"),
        attention_resolutions=tuple(2**i for i in range(n) if attn[i]), dropout=float(m["dropout"]),
        use_scale_shift_norm=m["resnet_time_scale_shift"] == "scale_shift", num_classes=m["num_class_embeds"],
        use_spatial_transformer=cond)
    widths = [mc * k for k in mult]
    if cond:
        heads_per_level = m["attention_head_dim"] if isinstance(m["attention_head_dim"], (list, tuple)) \
            else [m["attention_head_dim"]] * n
        # only the levels with attention and the middle (= the last level's entry) matter
        used = [(w, h) for w, h, a in zip(widths, heads_per_level, attn) if a] + [(widths[-1], heads_per_level[-1])]
        kw |= _heads(used, where)
        kw |= {"use_linear_in_transformer": bool(m["use_linear_projection"]),
               "upcast_attention": bool(m["upcast_attention"])}
        kw["transformer_depth"] = _uniform(m["transformer_layers_per_block"], n,
                                           f"{where}: transformer_layers_per_block")
        ctx = m["cross_attention_dim"]
        if isinstance(ctx, (list, tuple)) and list(ctx) == widths:
            kw["context_dim"] = None  # self-attention-only transformer (what export writes for no context)
        else:
            kw["context_dim"] = _uniform(ctx, n, f"{where}: cross_attention_dim")
    else:
        attn_groups = d.get("attn_norm_num_groups")
        if attn_groups is None and m["resnet_time_scale_shift"] == "default":
            attn_groups = m["norm_num_groups"]  # diffusers' fallback; with scale_shift its middle attention has no norm
        if attn_groups != m["norm_num_groups"]:
            raise ConfigError(f"{where}: attn_norm_num_groups must equal norm_num_groups ({m['norm_num_groups']})")
        dim = m["attention_head_dim"]
        kw |= {"num_head_channels": dim} if dim is not None else {"num_heads": 1}
    cfg = _build(UNetConfig, kw, where)
    with torch.device("meta"):
        _same_groups(group_count(UNetModel(cfg), f"{where}: block_out_channels"), m["norm_num_groups"], where)
    return cfg


def _heads(pairs: list[tuple[int, int]], where: str) -> dict[str, int]:
    """(width, heads) of every attention layer -> num_heads (one count everywhere) or num_head_channels
    (one head width); ldmkit derives the heads from the width alone."""
    used: dict[int, int] = {}
    for w, h in pairs:
        if used.setdefault(w, h) != h:
            raise ConfigError(f"{where}: attention_head_dim: two blocks of width {w} have {used[w]} and {h} heads")
    if any(h < 1 or w % h for w, h in used.items()):
        raise ConfigError(f"{where}: attention_head_dim (heads per block) {sorted(used.values())} "
                          "do not divide the widths")
    if len(set(used.values())) == 1:
        return {"num_heads": next(iter(used.values())), "num_head_channels": -1}
    dims = {w // h for w, h in used.items()}
    if len(dims) == 1:
        return {"num_head_channels": dims.pop()}
    raise ConfigError(f"{where}: attention_head_dim: heads {used} are neither constant nor of one head width")


def _same_groups(ours: int, theirs: int, where: str) -> None:
    if ours != theirs:
        raise ConfigError(f"{where}: norm_num_groups={theirs} but ldmkit uses {ours} groups at these widths")


def _build(cls: type, kw: dict[str, Any], where: str) -> Any:
    try:
        return cls(**kw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


# ------------------------------------------------------------------------------------------------ VAE
def autoencoder_config_to_diffusers(cfg: AutoencoderConfig, scale_factor: float) -> dict[str, Any]:
    """AutoencoderConfig -> AutoencoderKL / VQModel config.json (``dropout`` and ``beta`` are training-only)."""
    if cfg.ch_mult[0] != 1:
        raise ConfigError(f"autoencoder.ch_mult: diffusers needs the first multiplier to be 1, got {list(cfg.ch_mult)}")
    if cfg.kind == "kl" and cfg.embed_dim != cfg.z_channels:
        raise ConfigError(f"autoencoder.embed_dim: AutoencoderKL needs embed_dim == z_channels ({cfg.z_channels}), "
                          f"got {cfg.embed_dim}")
    with torch.device("meta"):
        groups = group_count(Autoencoder(cfg), "autoencoder.ch")
    n = len(cfg.ch_mult)
    attn = [cfg.resolution // 2**i in cfg.attn_resolutions for i in range(n)]
    d: dict[str, Any] = {
        "_class_name": VAE_KL if cfg.kind == "kl" else VAE_VQ, "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels,
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn)],
        "block_out_channels": [cfg.ch * k for k in cfg.ch_mult], "layers_per_block": cfg.num_res_blocks,
        "act_fn": "silu", "latent_channels": cfg.z_channels, "norm_num_groups": groups,
        "sample_size": cfg.resolution, "scaling_factor": scale_factor, "mid_block_add_attention": cfg.mid_attn}
    if cfg.kind == "kl":
        d |= {"shift_factor": None, "latents_mean": None, "latents_std": None,
              "use_quant_conv": True, "use_post_quant_conv": True}
    else:
        d |= {"num_vq_embeddings": cfg.n_embed, "vq_embed_dim": cfg.embed_dim, "norm_type": "group",
              "lookup_from_codebook": False}
    return d


def autoencoder_config_from_diffusers(d: dict[str, Any],
                                      where: str = "vae/config.json") -> tuple[AutoencoderConfig, float]:
    """An AutoencoderKL / VQModel config.json -> (AutoencoderConfig, scale_factor)."""
    cls = d.get("_class_name")
    if cls not in (VAE_KL, VAE_VQ):
        raise ConfigError(f"{where}: _class_name {cls!r} is not supported ({VAE_KL} or {VAE_VQ})")
    kl = cls == VAE_KL
    m = _check_keys(where, d, VAE_KL_FIXED if kl else VAE_VQ_FIXED, VAE_KL_MAPPED if kl else VAE_VQ_MAPPED)
    if m["in_channels"] != m["out_channels"]:
        raise ConfigError(f"{where}: in_channels != out_channels is not supported")
    ch, mult = _levels(list(m["block_out_channels"]), where)
    resolution = _square(m["sample_size"], where)
    attn = _attention_levels(m, ("AttnDownEncoderBlock2D", "DownEncoderBlock2D", "AttnUpDecoderBlock2D",
                                 "UpDecoderBlock2D"), where)
    z = m["latent_channels"]
    kw: dict[str, Any] = dict(
        kind="kl" if kl else "vq", in_channels=m["in_channels"], resolution=resolution, ch=ch, ch_mult=mult,
        num_res_blocks=m["layers_per_block"], mid_attn=bool(m["mid_block_add_attention"]),
        attn_resolutions=tuple(resolution // 2**i for i in range(len(mult)) if attn[i]), z_channels=z, embed_dim=z)
    if not kl:
        kw |= {"n_embed": m["num_vq_embeddings"], "embed_dim": m["vq_embed_dim"] or z}
    cfg = _build(AutoencoderConfig, kw, where)
    with torch.device("meta"):
        _same_groups(group_count(Autoencoder(cfg), f"{where}: block_out_channels"), m["norm_num_groups"], where)
    return cfg, float(m["scaling_factor"])


# ------------------------------------------------------------------------------------------------ scheduler
def schedule_config_to_diffusers(cfg: ScheduleConfig) -> dict[str, Any]:
    """ScheduleConfig -> a DDIMScheduler config that reproduces ldmkit's ``sample_ddim`` (eta 0): the
    original's timesteps ``arange(0, T, T // steps) + 1`` are diffusers' "leading" spacing with
    steps_offset 1, and the last step's previous alpha-bar is alpha-bar[0] (set_alpha_to_one False)."""
    if cfg.beta_schedule not in SCHEDULES:
        raise ConfigError(f"diffusion.beta_schedule: {cfg.beta_schedule!r} has no diffusers equivalent "
                          f"(supported: {', '.join(SCHEDULES)})")
    if cfg.beta_schedule == "cosine" and not math.isclose(cfg.cosine_s, 8e-3):
        raise ConfigError(f"diffusion.cosine_s: diffusers' squaredcos_cap_v2 fixes s = 0.008, got {cfg.cosine_s}")
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": cfg.timesteps, "beta_start": cfg.linear_start,
            "beta_end": cfg.linear_end, "beta_schedule": SCHEDULES[cfg.beta_schedule], "trained_betas": None,
            "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading",
            "prediction_type": PREDICTIONS[cfg.parameterization], "thresholding": False,
            "rescale_betas_zero_snr": cfg.zero_terminal_snr}


def schedule_config_from_diffusers(d: dict[str, Any], where: str = "scheduler/scheduler_config.json") -> ScheduleConfig:
    """Any diffusers scheduler config (DDIM, DDPM, PNDM, ...) -> the forward process it was trained with.
    Sampling settings (clip_sample, steps_offset, spacing) do not belong to the model and are not read."""
    if d.get("trained_betas") is not None:
        raise ConfigError(f"{where}: trained_betas are not supported (name a beta_schedule)")
    by_name = {v: k for k, v in SCHEDULES.items()}
    schedule = d.get("beta_schedule", "linear")
    if schedule not in by_name:
        raise ConfigError(f"{where}: beta_schedule {schedule!r} is not supported ({', '.join(by_name)})")
    pred = {v: k for k, v in PREDICTIONS.items()}
    prediction = d.get("prediction_type", "epsilon")
    if prediction not in pred:
        raise ConfigError(f"{where}: prediction_type {prediction!r} is not supported ({', '.join(pred)})")
    return _build(ScheduleConfig, dict(
        timesteps=int(d.get("num_train_timesteps", 1000)), beta_schedule=by_name[schedule],
        linear_start=float(d.get("beta_start", 1e-4)), linear_end=float(d.get("beta_end", 2e-2)),
        parameterization=pred[prediction], zero_terminal_snr=bool(d.get("rescale_betas_zero_snr", False))), where)
