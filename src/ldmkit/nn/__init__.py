"""Neural network modules: the LDM UNet, its blocks, and condition encoders.

Layering: nothing here knows about noise schedules (``ldmkit.diffusion``); ``t`` is just a tensor to embed.
"""
from ldmkit.nn.attention import AttentionBlock, CrossAttention, SpatialTransformer, reuse_context_kv
from ldmkit.nn.blocks import Downsample, GroupNorm32, ResBlock, Upsample, normalization
from ldmkit.nn.conditioner_base import Conditioner
from ldmkit.nn.conditioners import ClassEmbedder, ConditionerConfig, build_conditioner
from ldmkit.nn.embeddings import timestep_embedding
from ldmkit.nn.layout import LayoutConditioner
from ldmkit.nn.noisy_classifier import (NoisyClassifier, NoisyClassifierConfig, load_noisy_classifier,
                                        save_noisy_classifier)
from ldmkit.nn.text import (FrozenTextConditioner, TextConditioner, TextTransformer, TransformerEncoder,
                            WordPieceTokenizer, find_bert_vocab)
from ldmkit.nn.unet import UNetConfig, UNetModel

__all__ = [
    "AttentionBlock",
    "ClassEmbedder",
    "Conditioner",
    "ConditionerConfig",
    "CrossAttention",
    "Downsample",
    "FrozenTextConditioner",
    "GroupNorm32",
    "reuse_context_kv",
    "LayoutConditioner",
    "NoisyClassifier",
    "NoisyClassifierConfig",
    "ResBlock",
    "SpatialTransformer",
    "TextConditioner",
    "TextTransformer",
    "TransformerEncoder",
    "UNetConfig",
    "UNetModel",
    "Upsample",
    "WordPieceTokenizer",
    "build_conditioner",
    "find_bert_vocab",
    "load_noisy_classifier",
    "normalization",
    "save_noisy_classifier",
    "timestep_embedding",
]
