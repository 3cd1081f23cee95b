import math

import pytest
import torch
import torch.nn.functional as F

from ldmkit.autoencoder import Autoencoder, AutoencoderConfig, Decoder, Encoder
from ldmkit.autoencoder.blocks import AttnBlock, Downsample, num_groups


def tiny(**kw) -> AutoencoderConfig:
    base = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, resolution=16, z_channels=3, embed_dim=3, n_embed=16)
    base.update(kw)
    return AutoencoderConfig(**base)


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5, 6])
def test_encoder_decoder_shapes_for_every_f(levels):
    torch.manual_seed(0)
    cfg = tiny(ch_mult=(1,) * levels, resolution=64, attn_resolutions=(4,))
    f = cfg.downsample_factor
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        h = Encoder(cfg, double_z=True)(x)
        assert h.shape == (1, 6, 64 // f, 64 // f)
        assert Decoder(cfg)(h[:, :3]).shape == x.shape


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_autoencoder_roundtrip_shapes(kind):
    torch.manual_seed(0)
    model = Autoencoder(tiny(kind=kind, attn_resolutions=(8,)))
    x = torch.randn(2, 3, 16, 16)
    xrec, reg, info = model(x)
    assert xrec.shape == x.shape and reg.dim() == 0
    z = model.encode_latents(x)
    assert z.shape == (2, *model.cfg.latent_shape)
    assert model.decode(z).shape == x.shape
    assert model.last_layer is model.decoder.conv_out.weight


def test_kl_encode_latents_mode_and_seeded_sample():
    torch.manual_seed(0)
    model = Autoencoder(tiny(kind="kl"))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        mean = model.encode(x)[:, :3]
        assert torch.equal(model.encode_latents(x, sample=False), mean)
        a = model.encode_latents(x, generator=torch.Generator().manual_seed(1))
        b = model.encode_latents(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, mean)


def test_vq_encode_latents_are_pre_quant_and_decode_quantizes():
    torch.manual_seed(0)
    model = Autoencoder(tiny(kind="vq"))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        h = model.encode_latents(x)
        assert torch.equal(h, model.quant_conv(model.encoder(x)))
        zq = model.quantize(h)[0]
        assert not torch.equal(h, zq)
        assert torch.allclose(model.decode(h), model.decoder(model.post_quant_conv(zq)))


def test_state_dict_keys_follow_original_grammar():
    cfg = tiny(kind="kl", ch_mult=(1, 2, 2), num_res_blocks=2, resolution=32, attn_resolutions=(16,),
               z_channels=4, embed_dim=4)
    sd = Autoencoder(cfg).state_dict()
    for key in ["encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.0.block.1.conv2.bias",
                "encoder.down.1.block.0.nin_shortcut.weight", "encoder.down.1.attn.1.proj_out.weight",
                "encoder.down.0.downsample.conv.weight", "encoder.down.1.downsample.conv.weight",
                "encoder.mid.block_1.conv1.weight", "encoder.mid.block_2.norm2.bias", "encoder.norm_out.weight",
                "encoder.conv_out.weight", "decoder.conv_in.weight", "decoder.mid.attn_1.v.weight",
                "decoder.up.0.block.2.conv2.weight", "decoder.up.0.block.0.nin_shortcut.weight",
                "decoder.up.1.attn.2.k.weight", "decoder.up.1.upsample.conv.weight",
                "decoder.up.2.upsample.conv.weight",
                "decoder.norm_out.bias", "decoder.conv_out.weight", "post_quant_conv.weight"]:
        assert key in sd, key
    absent = ("encoder.down.2.downsample", "decoder.up.0.upsample", "decoder.up.0.block.3")
    assert not any(k.startswith(absent) for k in sd)
    assert not any(k.startswith("encoder.down.0.attn") for k in sd)  # 32 px is not in attn_resolutions
    assert sd["encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert sd["quant_conv.weight"].shape == (8, 8, 1, 1)  # [2*embed_dim, 2*z_channels, 1, 1]
    assert sd["post_quant_conv.weight"].shape == (4, 4, 1, 1)
    assert "decoder.conv_out.weight" in sd and sd["decoder.conv_out.weight"].shape[0] == 3
    assert not any("regularizer" in k for k in sd)

    vq = Autoencoder(tiny(kind="vq", n_embed=32, embed_dim=5, z_channels=4)).state_dict()
    assert vq["quantize.embedding.weight"].shape == (32, 5)
    assert vq["quant_conv.weight"].shape == (5, 4, 1, 1)


def test_kl_f8_layout_matches_sd_vae_tensor_count():
    # SD v1 VAE (kl-f8): 248 tensors and nin_shortcuts exactly at these four blocks.
    with torch.device("meta"):
        model = Autoencoder(AutoencoderConfig(ch=128, ch_mult=(1, 2, 4, 4), resolution=256, z_channels=4, embed_dim=4))
    sd = model.state_dict()
    assert len(sd) == 248
    assert sorted(k.rsplit(".", 2)[0] for k in sd if k.endswith("nin_shortcut.weight")) == [
        "decoder.up.0.block.0", "decoder.up.1.block.0", "encoder.down.1.block.0", "encoder.down.2.block.0"]


def test_no_mid_attn_has_no_keys():
    sd = Autoencoder(tiny(mid_attn=False)).state_dict()
    assert not any("attn_1" in k for k in sd)


def test_group_count_fallback_for_small_widths():
    assert [num_groups(c) for c in (3, 8, 48, 64, 128, 320)] == [3, 8, 24, 32, 32, 32]


def test_attn_block_matches_explicit_softmax():
    torch.manual_seed(0)
    block = AttnBlock(8)
    x = torch.randn(2, 8, 4, 4)
    y = block.norm(x)
    q, k, v = (p(y).flatten(2) for p in (block.q, block.k, block.v))  # (B, C, HW)
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(8), dim=-1)  # (B, HW_q, HW_k)
    out = (v @ w.transpose(1, 2)).view(2, 8, 4, 4)
    assert torch.allclose(block(x), x + block.proj_out(out), atol=1e-5)


def test_downsample_pads_right_and_bottom_only():
    down = Downsample(1)
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.bias.zero_()
        down.conv.weight[0, 0, 0, 0] = 1.0  # top-left tap: picks x[2i, 2j]
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(down(x), x[:, :, ::2, ::2])
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.weight[0, 0, 2, 2] = 1.0  # bottom-right tap: reaches the zero pad at the last row/col
    assert torch.equal(down(x), F.pad(x, (0, 1, 0, 1))[:, :, 2::2, 2::2])
