"""ldmkit <-> original LDM checkpoints: key layout, EMA, tolerated / rejected keys, YAML mapping, CLI."""
import copy

import pytest
import torch
import yaml

from ldmkit.autoencoder import AutoencoderConfig
from ldmkit.cli.main import main
from ldmkit.convert import (
    export_original,
    load_original,
    load_state_dict_file,
    original_config_to_pipeline_config,
    original_state_dict_to_pipeline,
    pipeline_config_to_original_config,
    pipeline_to_original_state_dict,
)
from ldmkit.convert.original import SCHEDULE_BUFFERS, ema_name
from ldmkit.diffusion import ScheduleConfig
from ldmkit.nn import ConditionerConfig, UNetConfig
from ldmkit.pipeline import Pipeline, PipelineConfig


def tiny_config(kind="kl", classes=True):
    return PipelineConfig(
        autoencoder=AutoencoderConfig(kind=kind, resolution=16, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                      z_channels=3, embed_dim=3, n_embed=16 if kind == "vq" else 8192),
        unet=UNetConfig(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), num_head_channels=8, context_dim=16 if classes else None,
                        use_spatial_transformer=classes),
        conditioner=ConditionerConfig(kind="class", num_classes=5, embed_dim=16) if classes else ConditionerConfig(),
        diffusion=ScheduleConfig(timesteps=100), scale_factor=0.5)


def tiny_pipeline(seed=0, **kw):
    torch.manual_seed(seed)
    pipe = Pipeline(tiny_config(**kw))
    with torch.no_grad():  # random everywhere: the zero-initialised output layers would hide mistakes
        for t in pipe.state_dict().values():
            t.copy_(torch.randn_like(t))
    return pipe.eval()


def assert_same_pipelines(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kind, classes", [("kl", True), ("vq", False)])
def test_round_trip_is_bit_identical(tmp_path, kind, classes):
    pipe = tiny_pipeline(kind=kind, classes=classes)
    ckpt, yml = export_original(pipe, tmp_path / "model.ckpt")
    assert yml == tmp_path / "model.yaml"
    back = load_original(ckpt)
    assert back.cfg == pipe.cfg
    assert_same_pipelines(pipe, back)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 70])
    cond = pipe.condition(torch.tensor([0, 4])) if classes else None
    cond_b = back.condition(torch.tensor([0, 4])) if classes else None
    with torch.no_grad():
        assert torch.equal(pipe.model_fn(x, t, cond), back.model_fn(x, t, cond_b))
    z = torch.randn(2, 3, 8, 8)
    assert torch.equal(pipe.decode_latents(z), back.decode_latents(z))


def test_export_layout():
    pipe = tiny_pipeline()
    sd = pipeline_to_original_state_dict(pipe)
    assert sd["scale_factor"].ndim == 0 and sd["scale_factor"].item() == 0.5
    for name in SCHEDULE_BUFFERS:
        assert sd[name].dtype == torch.float32 and sd[name].shape == (100,)
    assert torch.equal(sd["cond_stage_model.embedding.weight"], pipe.conditioner.embedding.weight)
    assert sd["cond_stage_model.embedding.weight"].shape[0] == 6  # 5 classes + the null class
    assert not any(k.startswith("model_ema.") for k in sd)


def test_sd_v1_and_kl_f8_key_counts():
    with torch.device("meta"):
        pipe = Pipeline(PipelineConfig(
            autoencoder=AutoencoderConfig(kind="kl", resolution=256, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2,
                                          z_channels=4, embed_dim=4),
            unet=UNetConfig(in_channels=4, out_channels=4, model_channels=320, attention_resolutions=(4, 2, 1),
                            num_res_blocks=2, channel_mult=(1, 2, 4, 4), num_heads=8, use_spatial_transformer=True,
                            transformer_depth=1, context_dim=768, legacy=False),
            conditioner=ConditionerConfig(kind="none")))
    sd = pipeline_to_original_state_dict(pipe)
    assert sum(k.startswith("model.diffusion_model.") for k in sd) == 686
    assert sum(k.startswith("first_stage_model.") for k in sd) == 248
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in sd
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in sd
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in sd


def test_ema_weights_are_preferred():
    pipe = tiny_pipeline()
    sd = pipeline_to_original_state_dict(pipe)
    ema = {ema_name(k): v + 1.0 for k, v in pipe.unet.state_dict().items()}
    assert "model_ema.diffusion_modelinput_blocks00weight" in ema
    sd |= ema | {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(5)}
    with_ema = original_state_dict_to_pipeline(sd, pipe.cfg)
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(with_ema.unet.state_dict()[k], v + 1.0), k
    assert_same_pipelines(pipe, original_state_dict_to_pipeline(sd, pipe.cfg, use_ema=False))
    del sd["model_ema.diffusion_modelout2weight"]
    with pytest.raises(ValueError, match="missing keys: model_ema.diffusion_modelout2weight"):
        original_state_dict_to_pipeline(sd, pipe.cfg)


def test_unexpected_and_missing_keys_are_named():
    pipe = tiny_pipeline()
    sd = pipeline_to_original_state_dict(pipe)
    with pytest.raises(ValueError, match="unexpected keys: model.diffusion_model.extra.weight"):
        original_state_dict_to_pipeline(sd | {"model.diffusion_model.extra.weight": torch.zeros(1)}, pipe.cfg)
    with pytest.raises(ValueError, match="unexpected keys: something_else"):
        original_state_dict_to_pipeline(sd | {"something_else": torch.zeros(1)}, pipe.cfg)
    del sd["first_stage_model.decoder.conv_out.bias"]
    with pytest.raises(ValueError, match="missing keys: first_stage_model.decoder.conv_out.bias"):
        original_state_dict_to_pipeline(sd, pipe.cfg)


def test_shape_mismatch_is_named():
    pipe = tiny_pipeline()
    sd = pipeline_to_original_state_dict(pipe)
    sd["cond_stage_model.embedding.weight"] = torch.zeros(5, 16)
    with pytest.raises(ValueError, match="shapes do not fit.*cond_stage_model.embedding.weight"):
        original_state_dict_to_pipeline(sd, pipe.cfg)


def test_tolerated_keys():
    pipe = tiny_pipeline()
    sd = pipeline_to_original_state_dict(pipe)
    sd |= {"first_stage_model.loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(2),
           "lvlb_weights": torch.zeros(100), "logvar": torch.zeros(100)}
    del sd["scale_factor"]  # only scale_by_std checkpoints store it: the config's value is kept
    assert_same_pipelines(pipe, original_state_dict_to_pipeline(sd, pipe.cfg))


def test_missing_vq_codebook_warns():
    pipe = tiny_pipeline(kind="vq", classes=False)
    sd = pipeline_to_original_state_dict(pipe)
    del sd["first_stage_model.quantize.embedding.weight"]
    with pytest.warns(UserWarning, match="quantize.embedding.weight"):
        original_state_dict_to_pipeline(sd, pipe.cfg)


def test_stored_scale_factor_wins():
    pipe = tiny_pipeline()
    sd = pipeline_to_original_state_dict(pipe)
    sd["scale_factor"] = torch.tensor(0.18215)
    assert original_state_dict_to_pipeline(sd, pipe.cfg).cfg.scale_factor == pytest.approx(0.18215)


@pytest.mark.parametrize("kind, classes", [("kl", True), ("vq", False)])
def test_yaml_config_round_trip(kind, classes):
    cfg = tiny_config(kind, classes)
    original = pipeline_config_to_original_config(cfg)
    assert yaml.safe_load(yaml.safe_dump(original)) == original
    assert original_config_to_pipeline_config(original) == cfg


def test_class_count_mapping():
    """cin256-v2: ``n_classes: 1001`` with class 1000 unconditional == ldmkit ``num_classes: 1000``."""
    original = pipeline_config_to_original_config(tiny_config())
    assert original["model"]["params"]["cond_stage_config"]["params"]["n_classes"] == 6
    original["model"]["params"]["cond_stage_config"]["params"]["n_classes"] = 1001
    cfg = original_config_to_pipeline_config(original)
    assert cfg.conditioner.num_classes == 1000 and Pipeline(cfg).conditioner.null_class == 1000


def test_config_errors_name_the_key():
    original = pipeline_config_to_original_config(tiny_config())
    bad = copy.deepcopy(original)
    del bad["model"]["params"]["unet_config"]["params"]["model_channels"]
    with pytest.raises(ValueError, match="unet_config.params.model_channels"):
        original_config_to_pipeline_config(bad)
    bad = copy.deepcopy(original)
    bad["model"]["params"]["cond_stage_config"] = {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                                                   "params": {"layer": "hidden"}}
    with pytest.raises(ValueError, match="layer='hidden' is not supported for .*FrozenCLIPEmbedder"):
        original_config_to_pipeline_config(bad)
    bad = copy.deepcopy(original)
    bad["model"]["params"]["first_stage_config"]["target"] = "ldm.models.autoencoder.VQModel2"
    with pytest.raises(ValueError, match="VQModel2"):
        original_config_to_pipeline_config(bad)
    bad = copy.deepcopy(original)
    bad["model"]["params"]["unet_config"]["params"]["use_new_attention_order"] = True
    with pytest.raises(ValueError, match="use_new_attention_order"):
        original_config_to_pipeline_config(bad)


def test_cli_convert_both_directions(tmp_path, capsys):
    pipe = tiny_pipeline()
    pipe.save(tmp_path / "pipeline.safetensors")
    assert main(["convert", str(tmp_path / "pipeline.safetensors"), str(tmp_path / "orig.ckpt")]) == 0
    assert (tmp_path / "orig.yaml").is_file()
    assert "refusing" not in capsys.readouterr().err
    (tmp_path / "orig.yaml").rename(tmp_path / "other.yaml")
    assert main(["convert", str(tmp_path / "orig.ckpt"), str(tmp_path / "back.safetensors"),
                 "--config", str(tmp_path / "other.yaml")]) == 0
    assert_same_pipelines(pipe, Pipeline.load(tmp_path / "back.safetensors"))
    assert set(load_state_dict_file(tmp_path / "orig.ckpt")) == set(pipeline_to_original_state_dict(pipe))


def test_cli_convert_errors_are_one_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.ckpt"), str(tmp_path / "p.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.ckpt: file not found" in err[0]  # without a YAML, an SD file would need none
    assert main(["convert", str(tmp_path / "p.safetensors"), str(tmp_path / "x.bin")]) == 2
    assert ".ckpt" in capsys.readouterr().err


@pytest.mark.parametrize("concat, in_ch, cond_key, cond_stage", [
    (dict(kind="low_res", factor=2), 6, "LR_image", "torch.nn.Identity"),
    (dict(kind="inpaint"), 7, "masked_image", "__is_first_stage__"),
    (dict(kind="semantic", num_classes=5, n_stages=1, out_channels=3), 6, "segmentation", "SpatialRescaler")])
def test_concat_models_round_trip_through_the_original_layout(tmp_path, concat, in_ch, cond_key, cond_stage):
    import dataclasses

    from ldmkit.nn.concat import ConcatConfig

    cfg = tiny_config(classes=False)
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, in_channels=in_ch), concat=ConcatConfig(**concat))
    torch.manual_seed(0)
    pipe = Pipeline(cfg).eval()
    with torch.no_grad():
        for t in pipe.state_dict().values():
            t.copy_(torch.randn_like(t))
    ckpt, yml = export_original(pipe, tmp_path / "model.ckpt")
    params = yaml.safe_load(yml.read_text())["model"]["params"]
    assert params["conditioning_key"] == "concat" and params["cond_stage_key"] == cond_key
    stage = params["cond_stage_config"]
    assert (stage if isinstance(stage, str) else stage["target"]).endswith(cond_stage)
    sd = load_state_dict_file(ckpt)
    assert ("cond_stage_model.channel_mapper.weight" in sd) == (concat["kind"] == "semantic")
    back = load_original(ckpt)
    assert back.cfg == pipe.cfg
    assert_same_pipelines(pipe, back)


def test_hybrid_models_have_no_original_layout(tmp_path):
    import dataclasses

    from ldmkit.nn.concat import ConcatConfig

    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, in_channels=6),
                              concat=ConcatConfig(kind="low_res", factor=2))
    with pytest.raises(ValueError, match="hybrid"):
        export_original(Pipeline(cfg), tmp_path / "m.ckpt")
