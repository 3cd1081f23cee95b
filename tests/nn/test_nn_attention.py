import math

import torch

from ldmkit.nn import AttentionBlock, CrossAttention, SpatialTransformer
from ldmkit.nn.attention import MatmulAttention, attention


def naive_attention(q, k, v):
    """softmax(Q K^T / sqrt(d)) V on (..., N, d) tensors."""
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v


def test_cross_attention_matches_naive():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=12, context_dim=7, heads=3, dim_head=4)
    x, ctx = torch.randn(2, 5, 12), torch.randn(2, 6, 7)
    split = lambda t: t.reshape(2, -1, 3, 4).transpose(1, 2)  # (B, heads, N, d)
    out = naive_attention(split(attn.to_q(x)), split(attn.to_k(ctx)), split(attn.to_v(ctx)))
    expected = attn.to_out(out.transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x, ctx), expected, atol=1e-5, rtol=1e-5)


def test_cross_attention_without_context_is_self_attention():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=8, heads=2, dim_head=4)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(attn(x), attn(x, x))


def test_attention_block_matches_naive_legacy_head_layout():
    torch.manual_seed(0)
    c, heads = 8, 2
    block = AttentionBlock(c, heads)
    x = torch.randn(2, c, 3, 5)
    qkv = block.qkv(block.norm(x.reshape(2, c, -1)))  # (B, 3C, T)
    d = c // heads
    # Legacy layout: per head, channels [q_h | k_h | v_h].
    per_head = qkv.reshape(2, heads, 3 * d, -1)
    q, k, v = (per_head[:, :, i * d:(i + 1) * d].transpose(-1, -2) for i in range(3))  # (B, heads, T, d)
    h = naive_attention(q, k, v).transpose(-1, -2).reshape(2, c, -1)
    expected = (x.reshape(2, c, -1) + block.proj_out(h)).reshape(x.shape)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_spatial_transformer_shapes_and_norm_eps():
    st = SpatialTransformer(16, heads=2, dim_head=4, depth=2, context_dim=6)
    assert st.norm.eps == 1e-6 and st.proj_in.weight.shape == (8, 16, 1, 1)
    assert st.transformer_blocks[1].attn2.to_k.weight.shape == (8, 6)
    assert st.transformer_blocks[0].ff.net[0].proj.weight.shape == (64, 8)
    out = st(torch.randn(2, 16, 3, 5), torch.randn(2, 4, 6))
    assert out.shape == (2, 16, 3, 5)


def test_matmul_attention_gradients_are_exact():
    # bf16 training on a CPU takes MatmulAttention (probabilities recomputed in backward); float64 checks the maths
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 4, dtype=torch.float64, requires_grad=True) for n in (5, 7, 7))
    g = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    out = MatmulAttention.apply(q, k, v, 0.5)
    ref = torch.softmax(q @ k.transpose(-1, -2) * 0.5, -1) @ v
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_attention_bf16_training_path_matches_sdpa_and_keeps_no_probabilities():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 8).bfloat16().requires_grad_() for n in (16, 9, 9))
    out = attention(q, k, v)
    assert out.grad_fn is not None and "MatmulAttention" in type(out.grad_fn).__name__
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=0.03)  # bf16 rounding of the probabilities
    saved = {t.untyped_storage().data_ptr() for t in out.grad_fn.saved_tensors}
    assert saved == {t.untyped_storage().data_ptr() for t in (q, k, v)}  # no (N, M) tensor kept
    with torch.no_grad():  # inference keeps SDPA
        torch.testing.assert_close(attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_attention_bf16_training_long_self_attention_goes_to_sdpa():
    # SD's 64x64 latents: 4096 x 4096 scores, where SDPA's fused kernel is faster than two matmuls; short keys
    # (cross-attention to 77 tokens) keep the matmul path at any query count
    q = torch.randn(1, 2, 512, 8).bfloat16().requires_grad_()
    self_out = attention(q, q, q)
    assert "MatmulAttention" not in type(self_out.grad_fn).__name__
    ctx = torch.randn(1, 2, 77, 8).bfloat16().requires_grad_()
    cross_out = attention(q, ctx, ctx)
    assert "MatmulAttention" in type(cross_out.grad_fn).__name__
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), ctx.float(), ctx.float())
    torch.testing.assert_close(cross_out.float(), ref, rtol=0, atol=0.03)


def test_spatial_transformer_position_code_adds_closed_form_code_and_no_parameters():
    torch.manual_seed(0)
    plain = SpatialTransformer(16, heads=2, dim_head=8, context_dim=6)
    with_pos = SpatialTransformer(16, heads=2, dim_head=8, context_dim=6, position=True)
    assert plain.state_dict().keys() == with_pos.state_dict().keys()
    # Closed form at a 2x4 grid: cell centres x = (j + 0.5) / 4, y = (i + 0.5) / 2; frequency 0 is pi / 2.
    code = SpatialTransformer.position_code(2, 4, 16, torch.device("cpu"))  # (8, 16)
    x = (torch.arange(4) + 0.5) / 4
    torch.testing.assert_close(code[:4, 0], 0.5 * torch.sin(torch.pi / 2 * x))  # row 0: sin x, k = 0
    y = torch.tensor([0.25, 0.75])
    k = 16 // 4  # frequencies at dim 16
    torch.testing.assert_close(code[::4, 2 * k], 0.5 * torch.sin(torch.pi / 2 * y))  # sin y, k = 0
    # Every cell gets a distinct code, so a query can tell where it is.
    assert torch.cdist(code, code).add(torch.eye(8) * 10).min() > 0.05
    # With the same weights, the position code changes the output (and the plain block ignores position).
    with_pos.load_state_dict(plain.state_dict())
    torch.nn.init.normal_(plain.proj_out.weight)
    with_pos.load_state_dict(plain.state_dict())
    x_in, ctx = torch.randn(1, 16, 2, 4), torch.randn(1, 3, 6)
    assert not torch.allclose(plain(x_in, ctx), with_pos(x_in, ctx))


def _counting_unet():
    from ldmkit.nn import UNetConfig, UNetModel

    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_heads=2, context_dim=16)
    unet = UNetModel(cfg).eval()
    calls = []
    for m in unet.modules():
        if isinstance(m, CrossAttention):
            m.to_k.register_forward_hook(lambda *a: calls.append(1))
    return unet, calls


def test_reuse_context_kv_is_exact_and_computes_keys_once_per_context():
    from ldmkit.nn import reuse_context_kv

    unet, calls = _counting_unet()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    ctx, other = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with torch.no_grad():
        ref = [unet(x, t, context=c) for c in (ctx, ctx, other, ctx)]
        plain_calls = len(calls)  # every call: self- and cross-attention keys of each layer
        calls.clear()
        with reuse_context_kv(unet):
            out = [unet(x, t, context=c) for c in (ctx, ctx, other, ctx)]
            with reuse_context_kv(unet):  # nested: shares the outer cache, leaves it in place
                out.append(unet(x, t, context=ctx))
            out.append(unet(x, t, context=ctx))
    for a, b in zip(out, ref + [ref[0], ref[0]]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    layers = sum(isinstance(m, CrossAttention) for m in unet.modules()) // 2  # attn1 (self) + attn2 (cross)
    # self-attention keys every call (6 calls); cross keys only when the context tensor changes (3 times)
    assert len(calls) == 6 * layers + 3 * layers
    assert plain_calls == 4 * 2 * layers
    assert all(m.kv_cache is None for m in unet.modules() if isinstance(m, CrossAttention))  # cleared on exit


def test_reuse_context_kv_is_not_used_with_gradients():
    from ldmkit.nn import reuse_context_kv

    unet, calls = _counting_unet()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 16)
    with reuse_context_kv(unet):
        for _ in range(2):
            unet(x, t, context=ctx).sum().backward()
    layers = sum(isinstance(m, CrossAttention) for m in unet.modules())
    assert len(calls) == 2 * layers
