"""Tiled decoding blends overlapping tiles back into exactly the one-shot result for local decoders."""
import pytest
import torch
import torch.nn.functional as F

from ldmkit.autoencoder import Autoencoder, AutoencoderConfig
from ldmkit.autoencoder.tiling import tiled_decode


def pointwise(z):  # a decoder with a 1-pixel receptive field: tiles cannot disagree
    return F.interpolate(torch.tanh(z * 2 + 1), scale_factor=4, mode="nearest")


@pytest.mark.parametrize("h,w,tile,overlap", [(10, 10, 4, 2), (9, 13, 5, 1), (8, 3, 4, 2)])
def test_blending_reproduces_a_pointwise_decoder_exactly(h, w, tile, overlap):
    z = torch.randn(2, 3, h, w)
    torch.testing.assert_close(tiled_decode(pointwise, z, tile, overlap), pointwise(z), atol=1e-6, rtol=0)


def test_one_tile_is_the_plain_decode_and_tiles_cover_a_real_decoder():
    ae = Autoencoder(AutoencoderConfig(in_channels=3, resolution=32, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                       z_channels=3, embed_dim=3)).eval()
    z = torch.randn(1, 3, 16, 16)
    full = ae.decode(z)
    torch.testing.assert_close(tiled_decode(ae.decode, z, 16), full)
    # a real decoder's GroupNorm / attention see only their tile: close to, not equal to, the full decode
    tiled = tiled_decode(ae.decode, z, 8, overlap=4)
    assert tiled.shape == full.shape and torch.isfinite(tiled).all()


def test_tile_must_exceed_overlap():
    with pytest.raises(ValueError, match="tile"):
        tiled_decode(pointwise, torch.zeros(1, 1, 8, 8), 2, 2)
