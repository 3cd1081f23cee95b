import pytest

from ldmkit.autoencoder import AutoencoderConfig, AutoencoderLossConfig
from ldmkit.config import ConfigError, from_dict


def test_resolution_not_divisible_by_f_names_resolution():
    with pytest.raises(ConfigError, match=r"^resolution: 30 is not divisible by the downsampling factor 4"):
        AutoencoderConfig(resolution=30, ch_mult=(1, 2, 4))
    with pytest.raises(ConfigError, match=r"^model\.resolution: 30 is not divisible"):
        from_dict(AutoencoderConfig, {"resolution": 30}, prefix="model")


@pytest.mark.parametrize("levels, f", [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 32)])
def test_downsample_factor_and_latent_shape(levels, f):
    cfg = AutoencoderConfig(ch_mult=(1,) * levels, resolution=64, embed_dim=4)
    assert cfg.downsample_factor == f
    assert cfg.latent_shape == (4, 64 // f, 64 // f)


def test_invalid_values_raise_config_error():
    with pytest.raises(ConfigError, match="ch_mult"):
        AutoencoderConfig(ch_mult=(1,) * 7, resolution=128)
    with pytest.raises(ConfigError, match="^ch_mult"):
        AutoencoderConfig(ch_mult=())
    with pytest.raises(ConfigError, match="^z_channels"):
        AutoencoderConfig(z_channels=0)
    with pytest.raises(ConfigError, match="^kind"):
        AutoencoderConfig(kind="ae")
    with pytest.raises(ConfigError, match="^disc_num_layers"):
        AutoencoderLossConfig(disc_num_layers=0)
    with pytest.raises(ConfigError, match="^kl_weight"):
        AutoencoderLossConfig(kl_weight=-1.0)


def test_from_dict_coerces_lists_to_tuples():
    cfg = from_dict(AutoencoderConfig, {"ch_mult": [1, 2], "attn_resolutions": [16], "resolution": 32})
    assert cfg.ch_mult == (1, 2) and cfg.attn_resolutions == (16,)


def test_at_resolution_scales_the_attention_sizes_and_keeps_the_network():
    from ldmkit.autoencoder import build_autoencoder

    cfg = AutoencoderConfig(resolution=32, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))
    big = cfg.at_resolution(64)
    assert big.resolution == 64 and big.attn_resolutions == (16,) and big.latent_shape == (3, 16, 16)
    small, large = build_autoencoder(cfg).state_dict(), build_autoencoder(big).state_dict()
    assert {k: v.shape for k, v in small.items()} == {k: v.shape for k, v in large.items()}
    assert cfg.at_resolution(32) is cfg
    # a listed size below the last level (never reached) may not scale to a whole size
    odd = AutoencoderConfig(resolution=32, ch_mult=(1, 2, 2), attn_resolutions=(2,))
    with pytest.raises(ConfigError, match=r"data.image_size: 36: the first stage's attention sizes \(2,\)"):
        odd.at_resolution(36)
    with pytest.raises(ConfigError, match=r"data.image_size: 34 is not divisible by the first stage's factor 4"):
        cfg.at_resolution(34)
