"""Every YAML preset under configs/ parses into its run config and is consistent with its first stage.

Config parsing only: UNets and autoencoders are built on the meta device (no memory, no compute), so the
paper-sized presets are checked in well under a second each, and their parameter counts are compared with
the original CompVis models' published counts (../shared/reference/original-ldm.md, section 2).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ldmkit.autoencoder import Autoencoder
from ldmkit.config import ConfigError, load_config, load_yaml
from ldmkit.nn.unet import UNetModel
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig
from ldmkit.training.ldm_loop import LDMRunConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))

# UNet parameter counts of the original models each paper preset follows, in millions, 2 decimals as published.
ORIGINAL_UNET_M = {
    "ldm/paper/text2img-kl8.yaml": 872.30,   # txt2img-1p4B (LDM-KL-8-G)
    "ldm/paper/class-cin-kl8.yaml": 394.98,  # cin-ldm-vq-f8 (cin256)
    "ldm/paper/layout-vq4.yaml": 246.28,     # layout2img-openimages256
    "ldm/paper/semantic-kl8.yaml": 215.23,   # semantic_synthesis256 (+1,152 for the 4th latent channel)
    "ldm/paper/sr-bsr-vq4.yaml": 113.62,     # bsr_sr
    "ldm/paper/inpaint-vq4.yaml": 387.25,    # inpainting_big
}
# First-stage parameter counts of the original zoo models (encoder, decoder, quant convs; loss excluded), in
# millions as published (compared at the published number of decimals).
ORIGINAL_AE_M = {"autoencoder/kl-f8-256.yaml": "83.65", "autoencoder/kl-f4-256.yaml": "55.3"}


def run_config_class(rel: str) -> type:
    """Which dataclass a preset is for, from its folder; an unknown folder fails loudly."""
    if rel.startswith("autoencoder/") or rel.startswith("tiny/autoencoder"):
        return AutoencoderRunConfig
    if rel.startswith("ldm/") or rel.startswith("tiny/ldm"):
        return LDMRunConfig
    raise AssertionError(f"configs/{rel}: no rule maps this folder to a run config; extend run_config_class")


def load_preset(rel: str):
    """The preset as its run config; image_folder presets get a root (users must pass data.root=...)."""
    raw = load_yaml(CONFIGS / rel)
    overrides = ["data.root=/tmp/x"] if raw.get("data", {}).get("name") == "image_folder" else []
    return load_config(run_config_class(rel), str(CONFIGS / rel), overrides)


def first_stage_preset(first_stage: str) -> str:
    """``runs/<X>/autoencoder.safetensors`` -> ``<X>.yaml``: the preset whose run writes that release."""
    path = Path(first_stage)
    assert path.parts[0] == "runs" and path.name == "autoencoder.safetensors", first_stage
    return Path(*path.parts[1:-1]).as_posix() + ".yaml"


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_presets_found():
    # The folders the rules above cover, so a rename does not silently leave presets untested.
    assert {p.split("/")[0] for p in PRESETS} == {"autoencoder", "ldm", "tiny"}
    assert set(ORIGINAL_UNET_M) <= set(PRESETS) and set(ORIGINAL_AE_M) <= set(PRESETS)


@pytest.mark.parametrize("rel", PRESETS)
def test_preset_loads(rel):
    cfg = load_preset(rel)
    assert isinstance(cfg, run_config_class(rel))


@pytest.mark.parametrize("rel", [p for p in PRESETS if run_config_class(p) is LDMRunConfig])
def test_ldm_preset_matches_first_stage_and_builds(rel):
    cfg = load_preset(rel)
    ae_rel = first_stage_preset(cfg.first_stage)
    assert ae_rel in PRESETS, f"{rel}: first_stage {cfg.first_stage} is written by no preset (expected configs/{ae_rel})"
    ae = load_preset(ae_rel)
    assert Path(cfg.first_stage).parent.as_posix() == ae.train.out_dir
    z, f = ae.model.embed_dim, ae.model.downsample_factor
    # What build_pipeline checks at training time, checked here without trained weights.
    assert cfg.unet.in_channels == z + cfg.concat.channels(z, cfg.data.channels)
    assert cfg.unet.out_channels == z
    assert cfg.data.image_size == ae.model.resolution and cfg.data.channels == ae.model.in_channels
    # Concat maps arrive at exactly the latent size: no resampling of the condition.
    if cfg.concat.kind == "semantic":
        assert 2 ** cfg.concat.n_stages == f
    if cfg.concat.kind == "low_res":
        assert cfg.concat.factor == f
    with torch.device("meta"):
        n = params(UNetModel(cfg.unet))
    print(f"{rel}: UNet {n / 1e6:.2f}M parameters")
    assert 1e4 < n < 2e9
    if rel in ORIGINAL_UNET_M:
        assert round(n / 1e6, 2) == ORIGINAL_UNET_M[rel]


@pytest.mark.parametrize("rel", sorted(ORIGINAL_AE_M))
def test_paper_autoencoder_matches_original_size(rel):
    cfg = load_preset(rel)
    with torch.device("meta"):
        n = params(Autoencoder(cfg.model))
    published = ORIGINAL_AE_M[rel]
    assert f"{n / 1e6:.{len(published.split('.')[1])}f}" == published


def test_paper_presets_latent_shapes():
    # The paper's first stages: KL-f8 -> 32x32x4 and VQ-f4 -> 64x64x3 at 256 px.
    kl, vq = load_preset("autoencoder/kl-f8-256.yaml"), load_preset("autoencoder/vq-f4-256.yaml")
    assert kl.model.latent_shape == (4, 32, 32) and vq.model.latent_shape == (3, 64, 64)
    assert (kl.model.kind, vq.model.kind, vq.model.n_embed) == ("kl", "vq", 8192)
    for rel in ORIGINAL_UNET_M:
        assert load_preset(rel).train.precision == "bf16" and load_preset(rel).train.max_minutes == 0


def test_image_folder_preset_needs_root():
    # Without the placeholder (or the user's data.root) the error names the key, in one line.
    with pytest.raises(ConfigError, match=r"^data\.root: required for name=image_folder"):
        load_config(LDMRunConfig, str(CONFIGS / "ldm/paper/text2img-kl8.yaml"), ["data.root=null"])


def test_paper_learning_rates_are_base_lr_times_batch():
    # The original scales lr = base_learning_rate x batch (one GPU, no accumulation); text2img uses its
    # released base_learning_rate as is (that config has no batch size).
    base = {"ldm/paper/class-cin-kl8.yaml": 1e-6, "ldm/paper/layout-vq4.yaml": 2e-6,
            "ldm/paper/semantic-kl8.yaml": 1e-6, "ldm/paper/sr-bsr-vq4.yaml": 1e-6,
            "ldm/paper/inpaint-vq4.yaml": 1e-6, "autoencoder/kl-f8-256.yaml": 4.5e-6,
            "autoencoder/vq-f4-256.yaml": 4.5e-6}
    for rel, b in base.items():
        tc = load_preset(rel).train
        assert math.isclose(tc.lr, b * tc.batch_size, rel_tol=1e-9), rel
