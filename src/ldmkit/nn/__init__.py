"""Neural network modules: the LDM UNet, its blocks, and condition encoders.

Layering: nothing here knows about noise schedules (``ldmkit.diffusion``); ``t`` is just a tensor to embed.
"""
from ldmkit.nn.attention import AttentionBlock, CrossAttention, SpatialTransformer
from ldmkit.nn.blocks import Downsample, GroupNorm32, ResBlock, Upsample, normalization
from ldmkit.nn.conditioners import ClassEmbedder, ConditionerConfig, build_conditioner
from ldmkit.nn.embeddings import timestep_embedding
from ldmkit.nn.unet import UNetConfig, UNetModel

__all__ = [
    "AttentionBlock",
    "ClassEmbedder",
    "ConditionerConfig",
    "CrossAttention",
    "Downsample",
    "GroupNorm32",
    "ResBlock",
    "SpatialTransformer",
    "UNetConfig",
    "UNetModel",
    "Upsample",
    "build_conditioner",
    "normalization",
    "timestep_embedding",
]
