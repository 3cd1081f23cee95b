"""The LDM denoising UNet (the original ``openaimodel.UNetModel``), with identical state_dict keys.

Conditioning enters in three ways: channel concat (the caller concatenates onto ``x``; ``in_channels``
counts those channels), cross-attention ``context`` (B, T, context_dim) in every SpatialTransformer, and
ADM-style class labels ``y`` whose embedding ``label_emb`` is added to the time embedding.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

from ldmkit.config import require
from ldmkit.nn.attention import AttentionBlock, SpatialTransformer
from ldmkit.nn.blocks import Downsample, ResBlock, Upsample, normalization
from ldmkit.nn.conv import Conv2d
from ldmkit.nn.embeddings import timestep_embedding
from ldmkit.nn.fused import group_norm_silu


def _attention_ops() -> list:
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    return [getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)]


# Selective activation checkpointing: outputs of these ops are stored in forward and reused in the recompute
# (SD's 64x64 self-attention: ~8 % of a LoRA step recomputed otherwise; its output is the size of its input)
_keep_attention = functools.partial(create_selective_checkpoint_contexts, _attention_ops())


@dataclass
class UNetConfig:
    """UNet hyper-parameters, named as in the original configs.

    ``attention_resolutions`` are downsampling factors ``ds`` (1 = full latent resolution), not pixel sizes.
    ``legacy`` is the original's flag choosing its head-dim rule for the SpatialTransformer. Because
    ``num_heads`` / ``num_head_channels`` are required to divide every attention width, the legacy and
    non-legacy rules give the same (heads, dim_head) here; the field exists so original configs (SD v1 sets
    ``legacy: false``) translate field for field.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (2, 4)
    num_heads: int = 8
    num_head_channels: int = -1  # if != -1 it overrides num_heads: heads = ch // num_head_channels
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    use_spatial_transformer: bool = True  # False -> plain AttentionBlock (unconditional models)
    transformer_depth: int = 1
    context_dim: int | None = None  # cross-attention dim; None -> self-attention only
    num_classes: int | None = None  # ADM-style label embedding added to the time embedding
    legacy: bool = True
    use_linear_in_transformer: bool = False  # SD 2.x: Linear proj_in / proj_out in every SpatialTransformer
    upcast_attention: bool = False  # attend in float32 when the UNet runs in half precision (SD 2.x)
    use_checkpoint: bool = False  # activation checkpointing per UNet block while training
    # "sincos": every SpatialTransformer adds a fixed code of each cell's normalised position to its tokens
    # (not in the original; no parameters). Layout and spatial-relation text need it at small UNet sizes.
    attention_position: str = "none"

    def __post_init__(self) -> None:
        for key in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "transformer_depth"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(len(self.channel_mult) >= 1 and all(m >= 1 for m in self.channel_mult), "channel_mult",
                f"must be a non-empty list of integers >= 1, got {list(self.channel_mult)}")
        require(all(ds >= 1 for ds in self.attention_resolutions), "attention_resolutions",
                f"downsampling factors must be >= 1, got {list(self.attention_resolutions)}")
        require(self.num_head_channels == -1 or self.num_head_channels >= 1, "num_head_channels",
                f"must be -1 (use num_heads) or >= 1, got {self.num_head_channels}")
        require(self.num_heads >= 1 or self.num_head_channels != -1, "num_heads", f"must be >= 1, got {self.num_heads}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.context_dim is None or self.context_dim >= 1, "context_dim", f"must be >= 1, got {self.context_dim}")
        require(self.context_dim is None or self.use_spatial_transformer, "context_dim",
                "cross-attention needs use_spatial_transformer: true (AttentionBlock takes no context)")
        require(self.attention_position in ("none", "sincos"), "attention_position",
                f"must be none or sincos, got {self.attention_position!r}")
        require(self.attention_position == "none" or self.use_spatial_transformer, "attention_position",
                "needs use_spatial_transformer: true")
        require(self.num_classes is None or self.num_classes >= 1, "num_classes", f"must be >= 1, got {self.num_classes}")
        for ch in self.attention_widths():
            self.heads(ch)  # raises if the heads do not divide this width

    def require_original_layout(self, target: str) -> None:
        """Refuse an export to ``target`` (a format without ldmkit's extensions) that would drop a setting."""
        require(self.attention_position == "none", "unet.attention_position",
                f"{self.attention_position!r} has no equivalent in the {target} format; only 'none' can be exported")

    def attention_widths(self) -> list[int]:
        """Channel counts of every attention layer: levels with ds in attention_resolutions, plus the middle."""
        widths = {self.model_channels * m for i, m in enumerate(self.channel_mult) if 2**i in self.attention_resolutions}
        return sorted(widths | {self.model_channels * self.channel_mult[-1]})

    def heads(self, ch: int) -> tuple[int, int]:
        """(num_heads, dim_head) of the attention layer at width ``ch``."""
        if self.num_head_channels != -1:
            require(ch % self.num_head_channels == 0, "num_head_channels", f"{self.num_head_channels} does not divide {ch}")
            return ch // self.num_head_channels, self.num_head_channels
        require(ch % self.num_heads == 0, "num_heads", f"{self.num_heads} does not divide {ch}")
        return self.num_heads, ch // self.num_heads


class EmbedSequential(nn.Sequential):
    """One UNet block; routes the time embedding to ResBlocks, ``context`` to SpatialTransformers and the
    target ``size`` to the upsampling layer (see ``Upsample`` for why the size is needed)."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, size if layer.up else None)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """Noise-prediction UNet ``eps(x, t, context, y)``; state_dict keys match the original 1:1."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        self.emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, self.emb_dim), nn.SiLU(), nn.Linear(self.emb_dim, self.emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes, self.emb_dim) if cfg.num_classes is not None else None

        self.input_blocks = nn.ModuleList([EmbedSequential(Conv2d(cfg.in_channels, mc, 3, padding=1))])
        ch, ds, skip_channels = self._build_encoder()
        self.middle_block = EmbedSequential(self._res(ch, ch), self._attention(ch), self._res(ch, ch))
        self.output_blocks = nn.ModuleList()
        self._build_decoder(ch, ds, skip_channels)
        self.out = nn.Sequential(normalization(mc), nn.SiLU(), Conv2d(mc, cfg.out_channels, 3, padding=1))
        self._init_weights()

    # ----------------------------------------------------------------------------------- construction
    def _res(self, ch_in: int, ch_out: int, up: bool = False, down: bool = False) -> ResBlock:
        c = self.cfg
        return ResBlock(ch_in, self.emb_dim, ch_out, c.dropout, c.use_scale_shift_norm, up=up, down=down)

    def _attention(self, ch: int) -> nn.Module:
        heads, dim_head = self.cfg.heads(ch)
        if self.cfg.use_spatial_transformer:
            return SpatialTransformer(ch, heads, dim_head, self.cfg.transformer_depth, self.cfg.context_dim,
                                      position=self.cfg.attention_position == "sincos",
                                      linear=self.cfg.use_linear_in_transformer, upcast=self.cfg.upcast_attention)
        return AttentionBlock(ch, heads)

    def _build_encoder(self) -> tuple[int, int, list[int]]:
        """Append the input blocks; return (width, ds) at the bottom and the width of every skip output."""
        c = self.cfg
        ch, ds, skip_channels = c.model_channels, 1, [c.model_channels]
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [self._res(ch, mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in c.attention_resolutions:
                    layers.append(self._attention(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                down = self._res(ch, ch, down=True) if c.resblock_updown else Downsample(ch, c.conv_resample)
                self.input_blocks.append(EmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2
        return ch, ds, skip_channels

    def _build_decoder(self, ch: int, ds: int, skip_channels: list[int]) -> None:
        """Append the output blocks: num_res_blocks + 1 per level, each eating one skip, upsampling at level ends."""
        c = self.cfg
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers: list[nn.Module] = [self._res(ch + skip_channels.pop(), mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in c.attention_resolutions:
                    layers.append(self._attention(ch))
                if level and i == c.num_res_blocks:
                    layers.append(self._res(ch, ch, up=True) if c.resblock_updown else Upsample(ch, c.conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

    def _init_weights(self) -> None:
        """The only non-default initialisation (as the original): zero the last layer of every residual
        branch (ResBlock ``out_layers.3``, attention ``proj_out``) so each block starts as the identity,
        and the output conv ``out.2`` so the untrained UNet predicts exactly 0."""
        zero: list[nn.Module] = [self.out[2]]
        for m in self.modules():
            if isinstance(m, ResBlock):
                zero.append(m.out_layers[3])
            elif isinstance(m, (AttentionBlock, SpatialTransformer)):
                zero.append(m.proj_out)
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ----------------------------------------------------------------------------------- forward
    def _check_inputs(self, x: Tensor, context: Tensor | None, y: Tensor | None) -> None:
        c = self.cfg
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"UNetModel: expected x of shape (B, {c.in_channels}, H, W), got {tuple(x.shape)}")
        if (context is None) != (c.context_dim is None):
            raise ValueError(f"UNetModel: context_dim is {c.context_dim} but context is {'None' if context is None else 'given'}")
        if (y is None) != (c.num_classes is None):
            raise ValueError(f"UNetModel: num_classes is {c.num_classes} but y is {'None' if y is None else 'given'}")

    def _run(self, block: EmbedSequential, h: Tensor, emb: Tensor, context: Tensor | None, size: tuple[int, int] | None = None) -> Tensor:
        if self.cfg.use_checkpoint and self.training and torch.is_grad_enabled():
            # Recompute the block's activations in backward instead of storing them (memory for compute),
            # except the fused attention kernels' outputs: the costliest op to recompute and the cheapest to keep
            return checkpoint(block, h, emb, context, size, use_reentrant=False, context_fn=_keep_attention)
        return block(h, emb, context, size)

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """x (B, in_channels, H, W), any H and W; t (B,) float or integer timesteps (a 0-d t is broadcast);
        context (B, T, context_dim) iff context_dim is set; y (B,) long iff num_classes is set."""
        self._check_inputs(x, context, y)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        t_emb = timestep_embedding(t, self.cfg.model_channels).to(self.time_embed[0].weight.dtype)  # (B, mc)
        emb = self.time_embed(t_emb)  # (B, 4mc)
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)  # (B, 4mc)

        h, skips = x, []
        for block in self.input_blocks:
            h = self._run(block, h, emb, context)  # (B, ch, ~H/ds, ~W/ds)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, context)  # (B, ch_bottom, ~H/ds_max, ~W/ds_max)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, ch + skip_ch, h, w)
            # An upsampling block must land on the size of the skip it is concatenated with next.
            h = self._run(block, h, emb, context, skips[-1].shape[-2:] if skips else None)  # (B, ch, h', w')
        return self.out[2](group_norm_silu(self.out[0], h))  # (B, out_channels, H, W)
