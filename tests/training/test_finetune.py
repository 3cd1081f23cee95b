"""train-ldm on released weights: a first stage from another format, and fine-tuning a released pipeline."""
import pytest
import torch

from ldmkit.config import ConfigError, load_config
from ldmkit.convert.diffusers import export_diffusers
from ldmkit.pipeline import Pipeline
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.ldm_loop import LDMRunConfig, train_ldm


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    ae = train_autoencoder(load_config(AutoencoderRunConfig, "tiny/autoencoder", [f"train.out_dir={root / 'ae'}", "train.steps=2",
                                                                           "model.ch=32"]))
    pipe = train_ldm(load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={root / 'ldm'}", f"first_stage={ae}", "train.steps=2",
                                                          "unet.model_channels=32"]))  # diffusers: widths % 32 == 0
    folder = export_diffusers(Pipeline.load(pipe), root / "diffusers")
    return pipe, folder


def test_finetune_starts_from_the_released_weights(released, tmp_path):
    pipe, folder = released
    # the preset's UNet is replaced by the release's architecture; a tiny lr keeps the weights where they were
    cfg = load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={tmp_path}", "first_stage=", f"init_from={folder}",
                                                 "unet.model_channels=8", "train.steps=1", "train.lr=1e-12"])
    tuned, original = Pipeline.load(train_ldm(cfg)), Pipeline.load(pipe)
    assert tuned.cfg.unet == original.cfg.unet
    for name in ("unet", "conditioner", "autoencoder"):
        a, b = getattr(tuned, name).state_dict(), getattr(original, name).state_dict()
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name


def test_first_stage_from_a_diffusers_folder(released, tmp_path):
    _, folder = released
    cfg = load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={tmp_path}", f"first_stage={folder / 'vae'}",
                                                 "train.steps=1"])
    out = Pipeline.load(train_ldm(cfg))
    ref = Pipeline.load(released[0])
    assert all(torch.equal(v, ref.autoencoder.state_dict()[k]) for k, v in out.autoencoder.state_dict().items())


def test_missing_first_stage_is_named(tmp_path):
    cfg = load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={tmp_path}", f"first_stage={tmp_path / 'none'}"])
    with pytest.raises(ConfigError, match="first_stage: .* not found"):
        train_ldm(cfg)


def test_trainable_patterns_fine_tune_only_the_matching_weights(released, tmp_path):
    pipe, folder = released
    cfg = load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={tmp_path}", "first_stage=", f"init_from={folder}",
                                                 "unet.model_channels=8", "train.steps=2", "train.lr=1e-2",
                                                 "train.ema_decay=0.5", "train.trainable=[attn2]"])
    tuned, original = Pipeline.load(train_ldm(cfg)), Pipeline.load(pipe)
    a, b = tuned.unet.state_dict(), original.unet.state_dict()
    changed = {k for k in a if not torch.allclose(a[k], b[k], atol=1e-7)}
    assert changed and all("attn2" in k for k in changed), sorted(changed)[:5]
    with pytest.raises(ConfigError, match=r"train.trainable: no parameter name contains any of \['nope'\]"):
        train_ldm(load_config(LDMRunConfig, "tiny/ldm", [f"train.out_dir={tmp_path / 'b'}", "first_stage=",
                                                         f"init_from={folder}", "train.trainable=[nope]"]))
    with pytest.raises(ConfigError, match="trainable: selects weights of a full fine-tune"):
        load_config(LDMRunConfig, "tiny/ldm", ["train.trainable=[attn2]", "train.lora_rank=4"])
