"""Shared test fixtures."""
from __future__ import annotations

import pytest
import torch

from ldmkit.autoencoder import AutoencoderConfig
from ldmkit.diffusion import ScheduleConfig
from ldmkit.nn import ConditionerConfig, UNetConfig
from ldmkit.nn.concat import ConcatConfig
from ldmkit.pipeline import Pipeline, PipelineConfig


@pytest.fixture
def one_thread():
    """Tiny models: on a shared, loaded CPU a second intra-op thread makes each forward up to ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Tiny Stable Diffusion pipelines: the released structure (4 UNet levels, attention on the first three, one
# transformer block, 8 heads for SD 1.x / 64-channel heads and Linear projections for SD 2.x, a 4-level KL VAE,
# a CLIP text tower with the real 49408-token vocabulary) at widths a CPU runs in milliseconds.
SD_SCHEDULE = dict(timesteps=1000, beta_schedule="linear", linear_start=0.00085, linear_end=0.012)


def tiny_sd_config(version: str = "1", inpaint: bool = False) -> PipelineConfig:
    """version "1" (CLIP, eps, 8 heads), "2" (OpenCLIP, v, 64-channel heads, linear projections), "2-base" (eps)."""
    sd2 = version.startswith("2")
    v = version == "2"
    text = ConditionerConfig(kind="openclip" if sd2 else "clip", embed_dim=64, n_layer=2, n_head=1,
                             intermediate_size=128, max_length=77)
    unet = UNetConfig(in_channels=9 if inpaint else 4, out_channels=4, model_channels=64 if sd2 else 32,
                      channel_mult=(1, 2, 2, 2) if sd2 else (1, 2, 4, 4), num_res_blocks=1,
                      attention_resolutions=(1, 2, 4), use_spatial_transformer=True, transformer_depth=1,
                      context_dim=64, legacy=False, use_linear_in_transformer=sd2, upcast_attention=sd2,
                      **(dict(num_head_channels=64) if sd2 else dict(num_heads=8)))
    vae = AutoencoderConfig(kind="kl", in_channels=3, resolution=768 if v else 512, ch=32, ch_mult=(1, 2, 2, 2),
                            num_res_blocks=1, attn_resolutions=(), mid_attn=True, z_channels=4, embed_dim=4)
    concat = ConcatConfig(kind="inpaint", inpaint_layout="sd", paste_known=False) if inpaint else ConcatConfig()
    return PipelineConfig(autoencoder=vae, unet=unet, conditioner=text, scale_factor=0.18215, concat=concat,
                          diffusion=ScheduleConfig(**SD_SCHEDULE, parameterization="v" if v else "eps"))


def randomise(pipe: Pipeline, seed: int = 0) -> Pipeline:
    """Every weight moved off its initialisation (zero-initialised output layers would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pipe.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return pipe.eval()


@pytest.fixture
def tiny_sd():
    def make(version: str = "1", inpaint: bool = False, seed: int = 0) -> Pipeline:
        torch.manual_seed(seed)
        return randomise(Pipeline(tiny_sd_config(version, inpaint)), seed)
    return make


@pytest.fixture
def randomised():
    """:func:`randomise`, for fixtures of other folders (a conftest is not importable by name)."""
    return randomise
