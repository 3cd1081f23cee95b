"""Pixel-space diffusion (``first_stage=identity``, the original's IdentityFirstStage): config, train, sample."""
import pytest
import torch

from ldmkit.autoencoder import Autoencoder, AutoencoderConfig, IdentityFirstStage, build_autoencoder
from ldmkit.config import ConfigError, load_config
from ldmkit.pipeline import Pipeline
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig
from ldmkit.training.ldm_loop import LDMRunConfig, cache_latents, train_ldm


def test_identity_config_is_factor_one_with_the_image_channels():
    cfg = AutoencoderConfig(kind="identity", in_channels=1, resolution=32, ch_mult=(1, 2, 4), embed_dim=4)
    assert cfg.downsample_factor == 1 and cfg.latent_shape == (1, 32, 32)
    ae = build_autoencoder(cfg)
    assert isinstance(ae, IdentityFirstStage) and list(ae.parameters()) == []
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    mean, std = ae.encode_moments(x)
    assert torch.equal(ae.decode(ae.encode_latents(x)), x) and torch.equal(mean, x) and not std.any()
    with pytest.raises(ValueError, match="identity"):
        Autoencoder(cfg)


def pixel_cfg(out, steps=2, *extra):
    return load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={out}", "first_stage=identity",
                                                  f"train.steps={steps}", "train.sample_every=100", *extra])


def test_pixel_space_trains_and_samples(tmp_path, one_thread):
    release = train_ldm(pixel_cfg(tmp_path / "px"))
    pipe = Pipeline.load(release)
    assert pipe.cfg.autoencoder.kind == "identity" and pipe.cfg.scale_factor == 1.0
    assert pipe.cfg.latent_shape == (3, 16, 16)  # the tiny preset's shapes images
    assert not (tmp_path / "latent_cache").exists() and not list(tmp_path.rglob("index.json"))
    z = pipe(class_labels=[0, 5], num_inference_steps=2, seeds=[3, 4], output_type="latent")
    images = pipe(class_labels=[0, 5], num_inference_steps=2, seeds=[3, 4], output_type="pt")
    assert z.shape == (2, 3, 16, 16)
    torch.testing.assert_close(images, z.clamp(-1, 1))  # decoding is the identity
    assert pipe.encode_latents(images).equal(images)


def test_pixel_space_refusals(tmp_path):
    with pytest.raises(ConfigError, match="unet.in_channels"):
        train_ldm(pixel_cfg(tmp_path / "a", 1, "unet.in_channels=4"))
    with pytest.raises(ConfigError, match="first_stage: identity"):
        cache_latents(pixel_cfg(tmp_path / "b"))
    with pytest.raises(ConfigError, match="model.kind"):
        load_config(AutoencoderRunConfig, "tiny/autoencoder", ["model.kind=identity"])


def test_pixel_space_pipeline_is_refused_by_the_diffusers_export(tmp_path):
    from ldmkit.convert import convert_any
    from ldmkit.nn import UNetConfig
    from ldmkit.pipeline import PipelineConfig

    unet = UNetConfig(in_channels=1, out_channels=1, model_channels=8, channel_mult=(1,), num_res_blocks=1,
                      attention_resolutions=(), num_heads=1)
    pipe = Pipeline(PipelineConfig(autoencoder=AutoencoderConfig(kind="identity", in_channels=1, resolution=8),
                                   unet=unet))
    pipe.save(tmp_path / "p.safetensors")
    with pytest.raises(ConfigError, match="pixel-space"):
        convert_any(tmp_path / "p.safetensors", tmp_path / "out", to="diffusers")
    assert not (tmp_path / "out").exists()
