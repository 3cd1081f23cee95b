"""Attention layers of the UNet: the ADM ``AttentionBlock`` and the LDM ``SpatialTransformer``.

All attention goes through ``attention`` (softmax(QK^T / sqrt(d)) V): ``F.scaled_dot_product_attention``, which
picks a fused kernel where one exists, except for bf16 training on a CPU (see there). Names follow the original
modules so their checkpoints load 1:1.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.nn.blocks import normalization
from ldmkit.nn.embeddings import sincos_2d
from ldmkit.nn.fused import gated_gelu, gated_gelu_linear


class MatmulAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v as two matmuls and a softmax, saving only q, k and v for backward (like SDPA; the
    (..., N, M) probabilities are recomputed there, one matmul and a softmax) instead of the probabilities."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        probs = ((q * scale) @ k.transpose(-1, -2)).softmax(dim=-1)  # (..., N, M), float32 accumulation inside
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale
        return probs @ v  # (..., N, d)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v = ctx.saved_tensors
        qs = q * ctx.scale
        probs = (qs @ k.transpose(-1, -2)).softmax(dim=-1)  # (..., N, M), recomputed
        grad_v = probs.transpose(-1, -2) @ grad  # (..., M, d)
        grad_scores = torch._softmax_backward_data(grad @ v.transpose(-1, -2), probs, -1, probs.dtype)  # (..., N, M)
        grad_q = (grad_scores @ k) * ctx.scale  # (..., N, d)
        grad_k = grad_scores.transpose(-1, -2) @ qs  # (..., M, d)
        return grad_q, grad_k, grad_v, None


def attention(q: Tensor, k: Tensor, v: Tensor, upcast: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q (..., N, d), k and v (..., M, d) -> (..., N, d).

    ``upcast``: half-precision inputs are attended in float32 and the result cast back (SD 2.x's
    ``upcast_attention``: its 768-v UNet's attention logits overflow float16).

    ``F.scaled_dot_product_attention``, except for half-precision training on a CPU (bf16 autocast): there the
    flash kernel's backward is 2-7x slower than matmuls at UNet sizes (8 heads of 32-64 channels, 64-256 queries,
    64-256 or 77 keys, batch 8, 2 threads: fwd + bwd 21 -> 14 ms for a ds-2 self-attention, 19 -> 8 ms for its
    cross-attention, 7-10 -> 2-3 ms at ds 4), ~9 % of a bf16 training step; ``MatmulAttention`` keeps SDPA's memory. Only
    for short keys (cross-attention, M <= 128) or small score matrices (N M <= 2^16): at SD's 64x64 latents the
    4096 x 4096 self-attention is 1.7x faster in SDPA (fwd + bwd, 8 heads of 40, bf16: 503 vs 855 ms). Its probabilities
    are rounded to the input dtype before the second matmul, as the original's einsum under autocast. float32
    training (where SDPA is as fast), inference and accelerators keep SDPA.
    """
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
    n, m = q.shape[-2], k.shape[-2]
    if (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.dtype == k.dtype == v.dtype
            and (m <= 128 or n * m <= 65536)
            and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return MatmulAttention.apply(q, k, v, q.shape[-1] ** -0.5)
    return F.scaled_dot_product_attention(q, k, v)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions of a feature map (used when there is no SpatialTransformer).

    ``qkv`` and ``proj_out`` are 1x1 Conv1d layers (3-D weights) as in the original. Its default, "legacy"
    channel layout groups the 3C qkv channels per head, [q_0, k_0, v_0, q_1, k_1, v_1, ...], not [q, k, v]
    blocks; the reshape in ``forward`` follows that layout so pretrained qkv weights mean the same thing.
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)  # zero-initialised by UNetModel._init_weights

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x_flat = x.reshape(b, c, -1)  # (B, C, T)
        qkv = self.qkv(self.norm(x_flat))  # (B, 3C, T)
        d = c // self.num_heads
        qkv = qkv.reshape(b, self.num_heads, 3 * d, -1).transpose(-1, -2)  # (B, heads, T, 3d): per-head [q|k|v]
        q, k, v = qkv.chunk(3, dim=-1)  # each (B, heads, T, d)
        # The original scales q and k by d^-1/4 each; a scale d^-1/2 on q alone is the same product.
        h = attention(q, k, v)  # (B, heads, T, d)
        h = h.transpose(-1, -2).reshape(b, c, -1)  # (B, C, T)
        return (x_flat + self.proj_out(h)).reshape(b, c, *spatial)  # (B, C, H, W)


class CrossAttention(nn.Module):
    """Multi-head attention from tokens ``x`` to ``context`` (to itself when context is None).

    ``to_q``/``to_k``/``to_v`` carry no bias, as in the original; keys and values read ``context_dim``
    features (``query_dim`` when None). ``to_out`` is [Linear, Dropout] to keep the ``to_out.0`` key.
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0, upcast: bool = False):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.upcast = upcast
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.kv_cache: dict[str, Tensor] | None = None  # a dict while ``reuse_context_kv`` is active

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, -1).transpose(1, 2)  # (B, heads, N, d)

    def _keys_values(self, context: Tensor, external: bool) -> tuple[Tensor, Tensor]:
        """(B, heads, M, d) keys and values of ``context``; reused for the same external context tensor inside
        ``reuse_context_kv`` (inference only)."""
        cache = self.kv_cache
        if cache is not None and external and not torch.is_grad_enabled():
            if cache.get("context") is not context:  # holding the tensor keeps its identity unique
                cache.update(context=context, k=self._split_heads(self.to_k(context)),
                             v=self._split_heads(self.to_v(context)))
            return cache["k"], cache["v"]
        return self._split_heads(self.to_k(context)), self._split_heads(self.to_v(context))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        q = self._split_heads(self.to_q(x))  # (B, heads, N, d)
        k, v = self._keys_values(x if context is None else context, context is not None)  # (B, heads, M, d)
        out = attention(q, k, v, self.upcast)  # (B, heads, N, d)
        out = out.transpose(1, 2).flatten(2)  # (B, N, inner)
        return self.to_out(out)  # (B, N, query_dim)


@contextlib.contextmanager
def reuse_context_kv(module: nn.Module) -> Iterator[None]:
    """Inside the block, each cross-attention layer of ``module`` projects a context tensor to keys and values
    once and reuses them while it is called with that same tensor again: a sampler's steps all attend to the same
    prompt, so every step after the first skips those projections (two Linears on B x 77 tokens per layer: ~3 %
    of a guided step of the benchmark UNet). Results are bitwise the same. The context must not be modified in
    place inside the block; gradient-enabled calls never use the cache; nested blocks share the outer cache."""
    layers = [m for m in module.modules() if isinstance(m, CrossAttention) and m.kv_cache is None]
    for m in layers:
        m.kv_cache = {}
    try:
        yield
    finally:
        for m in layers:
            m.kv_cache = None


class GEGLU(nn.Module):
    """Gated GELU: one Linear produces [value | gate]; output = value * gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return gated_gelu(self.proj(x))  # (..., dim_out): value * gelu(gate) of the two halves


class FeedForward(nn.Module):
    """GEGLU MLP with hidden width ``mult * dim``; keys ``net.0.proj`` and ``net.2``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(dropout), nn.Linear(mult * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        geglu, drop, out = self.net
        # the fused kernel reads out's weight itself: a wrapped out (a LoRA adapter) must run as a module
        if (drop.p and self.training) or type(out) is not nn.Linear:
            return self.net(x)
        return gated_gelu_linear(geglu.proj(x), out.weight, out.bias)  # (..., dim): no dropout between them


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, cross-attention to ``context``, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None, dropout: float = 0.0,
                 upcast: bool = False):
        super().__init__()
        # Construction order follows the original (attn1, ff, attn2, norms) so state_dict order matches too.
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout, upcast)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout, upcast)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = self.attn1(self.norm1(x)) + x  # (B, N, dim)
        x = self.attn2(self.norm2(x), context) + x  # (B, N, dim); self-attention again when context is None
        return self.ff(self.norm3(x)) + x  # (B, N, dim)


class SpatialTransformer(nn.Module):
    """Transformer over the H*W positions of a feature map, with cross-attention to ``context``.

    GroupNorm (eps 1e-6, unlike the UNet's 1e-5), 1x1 conv ``proj_in`` to ``heads * dim_head`` channels,
    ``depth`` BasicTransformerBlocks on the (B, H*W, inner) tokens, 1x1 conv ``proj_out`` back, residual.

    ``linear=True`` (SD 2.x's ``use_linear_in_transformer``): ``proj_in`` / ``proj_out`` are Linear layers on
    the flattened tokens instead of 1x1 convolutions (the same map, stored as 2-D weights).

    ``position=True`` (not in the original) adds ``sincos_2d`` of each cell centre, normalised to [0, 1], to the
    tokens before the blocks: a small UNet's convolutions carry little absolute position, so without it a query
    cannot tell where it is and cross-attention cannot place a layout box or a "left of" relation. Normalised
    coordinates keep the meaning of a position when sampling at a larger size. No parameters are added.
    """

    POSITION_FREQS = 8  # periods 4 ... 1/32 of the image: finer than any latent grid here resolves

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int = 1, context_dim: int | None = None,
                 dropout: float = 0.0, position: bool = False, linear: bool = False, upcast: bool = False):
        super().__init__()
        self.position, self.linear = position, linear
        inner = heads * dim_head
        self.norm = normalization(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, upcast) for _ in range(depth)
        )
        # zero-initialised by UNetModel._init_weights
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        b, _, h, w = x.shape
        z = self.norm(x)  # (B, C, H, W)
        if self.linear:
            z = self.proj_in(z.flatten(2).transpose(1, 2))  # (B, H*W, inner)
        else:  # row-major positions as the original
            z = self.proj_in(z).flatten(2).transpose(1, 2)  # (B, H*W, inner)
        if self.position:
            z = z + self.position_code(h, w, z.shape[-1], z.device).to(z.dtype)  # (B, H*W, inner)
        for block in self.transformer_blocks:
            z = block(z, context)  # (B, H*W, inner)
        if self.linear:
            z = self.proj_out(z).transpose(1, 2).reshape(b, -1, h, w)  # (B, C, H, W)
        else:
            z = self.proj_out(z.transpose(1, 2).reshape(b, -1, h, w))  # (B, C, H, W)
        return x + z  # (B, C, H, W)

    @classmethod
    def position_code(cls, h: int, w: int, dim: int, device: torch.device) -> Tensor:
        """(H*W, dim) code of the cell centres ((j + 0.5) / W, (i + 0.5) / H), row-major."""
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        y, x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
        return sincos_2d(x.reshape(-1), y.reshape(-1), dim, cls.POSITION_FREQS)
