"""ldmkit <-> diffusers: explicit key maps, config mapping, output parity with diffusers' own classes, DDIM
parity with DDIMScheduler, diffusers' single-file converter on the original layout, loaders and the CLI."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from ldmkit.autoencoder import Autoencoder, AutoencoderConfig
from ldmkit.cli.main import main
from ldmkit.config import ConfigError
from ldmkit.convert import (
    export_diffusers,
    export_original,
    load_autoencoder_any,
    load_diffusers,
    load_diffusers_unet,
    load_pipeline_any,
    pipeline_config_to_original_config,
)
from ldmkit.convert.diffusers_config import (
    autoencoder_config_to_diffusers,
    schedule_config_from_diffusers,
    schedule_config_to_diffusers,
    unet_config_to_diffusers,
)
from ldmkit.convert.diffusers_keys import autoencoder_key_map, to_diffusers, unet_key_map
from ldmkit.diffusion import ScheduleConfig
from ldmkit.diffusion.samplers import sample_ddim
from ldmkit.nn import ConditionerConfig, UNetConfig, UNetModel
from ldmkit.pipeline import Pipeline, PipelineConfig

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster
# three UNet layouts: cross-attention (+ ADM labels), self-attention-only transformer, legacy AttentionBlock
UNETS = {
    "context": dict(attention_resolutions=(2,), num_heads=2, context_dim=16),
    "no_context": dict(attention_resolutions=(1,), num_head_channels=16),
    # SD 2.x: Linear proj_in / proj_out, 16-wide heads (diffusers' per-level head counts), upcast attention
    "linear": dict(attention_resolutions=(1, 2), num_head_channels=16, context_dim=16, use_linear_in_transformer=True,
                   upcast_attention=True),
    "legacy": dict(attention_resolutions=(1, 2), num_head_channels=16, use_spatial_transformer=False,
                   num_classes=4, use_scale_shift_norm=True),
}


def tiny_config(unet="context", kind="kl", parameterization="eps", ae_attn=True):
    # widths are multiples of 32: diffusers has one GroupNorm group count (32) for every layer
    u = UNETS[unet]
    return PipelineConfig(
        autoencoder=AutoencoderConfig(kind=kind, resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                      attn_resolutions=(8,) if kind == "kl" and ae_attn else (), z_channels=3,
                                      embed_dim=3, n_embed=16 if kind == "vq" else 8192),
        unet=UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, **u),
        conditioner=ConditionerConfig(kind="class", num_classes=5, embed_dim=16) if u.get("context_dim")
        else ConditionerConfig(),
        diffusion=ScheduleConfig(parameterization=parameterization), scale_factor=0.5,
        class_names=["a", "b", "c", "d", "e"] if u.get("context_dim") else [])


def randomize(module, seed=0):
    """Random everywhere (zero-initialised layers would hide mapping mistakes), small enough for O(1) outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return module.eval()


def tiny_pipeline(unet="context", kind="kl", **kw):
    return randomize(Pipeline(tiny_config(unet, kind, **kw)))


def assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def unet_inputs(cfg, seed=1):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(2, cfg.in_channels, 8, 8, generator=g), torch.tensor([3, 700])
    ctx = torch.randn(2, 1, cfg.context_dim, generator=g) if cfg.context_dim else None
    y = torch.tensor([1, cfg.num_classes - 1]) if cfg.num_classes else None
    return x, t, ctx, y


def diffusers_unet_out(model, x, t, ctx, y):
    if type(model).__name__ == "UNet2DModel":
        return model(x, t, class_labels=y).sample
    return model(x, t, encoder_hidden_states=ctx, class_labels=y).sample


def max_diff(a, b):
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------------ key maps
def test_key_maps_cover_every_key_sd_v1_counts():
    """Generated maps name every ldmkit key once; SD v1 sizes give diffusers' 686 UNet and 248 VAE tensors."""
    for name in UNETS:
        cfg = tiny_config(name)
        with torch.device("meta"):
            pipe = Pipeline(cfg)
        for keys, module in ((unet_key_map(cfg.unet), pipe.unet),
                             (autoencoder_key_map(cfg.autoencoder), pipe.autoencoder)):
            assert sorted(p.ours for p in keys) == sorted(module.state_dict())
    sd1 = UNetConfig(in_channels=4, out_channels=4, model_channels=320, attention_resolutions=(4, 2, 1),
                     num_res_blocks=2, channel_mult=(1, 2, 4, 4), num_heads=8, context_dim=768)
    theirs = {k: p for p in unet_key_map(sd1) for k in p.theirs}
    assert len(theirs) == 686
    assert theirs["up_blocks.1.upsamplers.0.conv.weight"].ours == "output_blocks.5.2.conv.weight"
    assert theirs["up_blocks.0.upsamplers.0.conv.weight"].ours == "output_blocks.2.1.conv.weight"
    assert theirs["down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight"].ours == \
        "input_blocks.8.1.transformer_blocks.0.attn2.to_k.weight"
    kl_f8 = AutoencoderConfig(resolution=256, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, embed_dim=4)
    vae = {k: p.ours for p in autoencoder_key_map(kl_f8) for k in p.theirs}
    assert len(vae) == 248
    assert vae["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"] == "decoder.up.0.block.0.nin_shortcut.weight"


def test_legacy_qkv_split_is_per_head():
    """The ADM qkv layout [q_0, k_0, v_0, q_1, ...] becomes contiguous to_q / to_k / to_v, and back."""
    cfg = UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                     attention_resolutions=(1,), num_head_channels=16, use_spatial_transformer=False)
    unet = UNetModel(cfg)
    sd = unet.state_dict()
    qkv = torch.arange(96.0)  # 2 heads x [q | k | v] x 16 channels
    sd["middle_block.1.qkv.bias"] = qkv
    out = to_diffusers(sd, unet_key_map(cfg))
    assert torch.equal(out["mid_block.attentions.0.to_q.bias"], torch.cat([qkv[0:16], qkv[48:64]]))
    assert torch.equal(out["mid_block.attentions.0.to_v.bias"], torch.cat([qkv[32:48], qkv[80:96]]))
    assert out["mid_block.attentions.0.to_q.weight"].shape == (32, 32)


# ------------------------------------------------------------------------------------------------ configs
def test_config_mapping_and_refusals():
    assert schedule_config_to_diffusers(ScheduleConfig())["beta_schedule"] == "scaled_linear"
    for schedule, name in (("linear", "scaled_linear"), ("sqrt_linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        for param, pred in (("eps", "epsilon"), ("v", "v_prediction"), ("x0", "sample")):
            cfg = ScheduleConfig(timesteps=500, beta_schedule=schedule, parameterization=param, linear_end=0.012)
            d = schedule_config_to_diffusers(cfg)
            assert (d["beta_schedule"], d["prediction_type"], d["steps_offset"], d["set_alpha_to_one"]) == \
                (name, pred, 1, False)
            assert schedule_config_from_diffusers(d) == cfg
    with pytest.raises(ConfigError, match="beta_schedule"):
        schedule_config_to_diffusers(ScheduleConfig(beta_schedule="sqrt"))
    with pytest.raises(ConfigError, match="trained_betas"):
        schedule_config_from_diffusers({"trained_betas": [0.1, 0.2]})
    d = unet_config_to_diffusers(tiny_config("context").unet, 8)
    assert (d["_class_name"], d["attention_head_dim"], d["cross_attention_dim"], d["num_class_embeds"]) == \
        ("UNet2DConditionModel", 2, 16, None)
    assert unet_config_to_diffusers(tiny_config("legacy").unet, 8)["num_class_embeds"] == 4
    assert d["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert d["up_block_types"] == ["CrossAttnUpBlock2D", "UpBlock2D"]
    assert unet_config_to_diffusers(tiny_config("no_context").unet, 8)["cross_attention_dim"] == [32, 64]
    with pytest.raises(ConfigError, match="channel_mult"):
        unet_config_to_diffusers(UNetConfig(channel_mult=(2, 4), model_channels=32, num_heads=1), 8)
    with pytest.raises(ConfigError, match="GroupNorm"):  # widths 16 / 32 need 16 and 32 groups
        unet_config_to_diffusers(UNetConfig(model_channels=16, channel_mult=(1, 2), num_heads=1), 8)
    with pytest.raises(ConfigError, match="embed_dim"):
        autoencoder_config_to_diffusers(AutoencoderConfig(ch=32, z_channels=4, embed_dim=3), 1.0)


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("unet, kind", [("context", "kl"), ("no_context", "kl"), ("linear", "kl"), ("legacy", "vq")])
def test_export_matches_diffusers_from_pretrained(tmp_path, unet, kind):
    diffusers = pytest.importorskip("diffusers")
    pipe = tiny_pipeline(unet, kind)
    folder = export_diffusers(pipe, tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    vae_name, vae_cls = ("vae", "AutoencoderKL") if kind == "kl" else ("vqvae", "VQModel")
    assert index[vae_name] == ["diffusers", vae_cls] and ("conditioner" in index) == ("context_dim" in UNETS[unet])
    cls = diffusers.UNet2DModel if unet == "legacy" else diffusers.UNet2DConditionModel
    theirs = cls.from_pretrained(folder / "unet", low_cpu_mem_usage=False).eval()
    x, t, ctx, y = unet_inputs(pipe.cfg.unet)
    with torch.no_grad():
        assert max_diff(pipe.unet(x, t, context=ctx, y=y), diffusers_unet_out(theirs, x, t, ctx, y)) <= TOL
        vae = getattr(diffusers, vae_cls).from_pretrained(folder / vae_name, low_cpu_mem_usage=False).eval()
        img, z = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)
        ours_enc = pipe.autoencoder.encode_moments(img)[0]  # KL: posterior mean; VQ: pre-quantisation latent
        their_enc = vae.encode(img).latent_dist.mean if kind == "kl" else vae.encode(img).latents
        assert max_diff(ours_enc, their_enc) <= TOL
        assert max_diff(pipe.autoencoder.decode(z), vae.decode(z).sample) <= TOL
    assert vae.config.scaling_factor == 0.5
    back = load_diffusers(folder)  # and the way back is lossless
    assert back.cfg == pipe.cfg
    assert_same(pipe, back)


def test_diffusers_save_pretrained_imports(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    # a cross-attention UNet with per-level head counts and class embeddings, as diffusers writes it
    unet = randomize(diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
        cross_attention_dim=16, num_class_embeds=3, transformer_layers_per_block=2), 1)
    unet.save_pretrained(tmp_path / "unet")
    ours, cfg = load_diffusers_unet(tmp_path / "unet")
    assert (cfg.num_head_channels, cfg.transformer_depth, cfg.num_classes) == (16, 2, 3)
    x, t, ctx, y = unet_inputs(cfg)
    with torch.no_grad():
        assert max_diff(ours(x, t, context=ctx, y=y), diffusers_unet_out(unet, x, t, ctx, y)) <= TOL
    # a whole diffusers pipeline folder: LDMPipeline = VQModel + UNet2DModel + DDIMScheduler
    vq = randomize(diffusers.VQModel(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                                     down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                                     up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=3,
                                     num_vq_embeddings=16, sample_size=16, scaling_factor=1.0), 2)
    plain = randomize(diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                            layers_per_block=1, down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                                            up_block_types=("UpBlock2D", "AttnUpBlock2D"), attention_head_dim=16), 3)
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                                        num_train_timesteps=1000, clip_sample=False)
    diffusers.LDMPipeline(vqvae=vq, unet=plain, scheduler=scheduler).save_pretrained(tmp_path / "ldm")
    pipe = load_pipeline_any(tmp_path / "ldm")
    assert pipe.cfg.diffusion == ScheduleConfig(beta_schedule="linear", linear_start=0.0015, linear_end=0.0195)
    assert pipe.cfg.autoencoder.attn_resolutions == (8,) and pipe.cfg.scale_factor == 1.0
    x, t, _, _ = unet_inputs(pipe.cfg.unet)
    img, z = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert max_diff(pipe.unet(x, t), plain(x, t).sample) <= TOL
        assert max_diff(pipe.autoencoder.encode(img), vq.encode(img).latents) <= TOL
        assert max_diff(pipe.decode_latents(z), vq.decode(z).sample) <= TOL
    # a lone AutoencoderKL folder
    kl = randomize(diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=3,
                                           down_block_types=("DownEncoderBlock2D",) * 2,
                                           up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16), 4)
    kl.save_pretrained(tmp_path / "vae")
    model, ae_cfg, scale = load_autoencoder_any(tmp_path / "vae")
    assert scale == pytest.approx(0.18215) and ae_cfg.z_channels == 3
    with torch.no_grad():
        assert max_diff(model.encode_moments(img)[0], kl.encode(img).latent_dist.mean) <= TOL
        assert max_diff(model.decode(z), kl.decode(z).sample) <= TOL


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_ddim_20_steps_match_ddim_scheduler(tmp_path, parameterization):
    """sample_ddim (original timesteps arange(0, T, T // n) + 1) == DDIMScheduler with the exported config."""
    diffusers = pytest.importorskip("diffusers")
    pipe = tiny_pipeline("context", parameterization=parameterization)
    folder = export_diffusers(pipe, tmp_path / "pipe")
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler")
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False).eval()
    ctx = pipe.conditioner(torch.tensor([0, 4]))
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    # eps: a raw random UNet's eps has nothing to do with x_t, which drives x0 and the latents to |x| ~ 100
    # where float32 spacing alone is ~1e-5; "x_t + 0.1 * UNet" behaves like a trained eps model (latents O(1))
    out = (lambda x, o: x + 0.1 * o) if parameterization == "eps" else (lambda x, o: o)
    seen = []
    with torch.no_grad():
        ours = sample_ddim(lambda x, t: out(x, pipe.unet(x, t, context=ctx)), noise, pipe.schedule, steps=20,
                           callback=lambda i, t, x, x0: seen.append(t))
        scheduler.set_timesteps(20)
        assert scheduler.timesteps.tolist() == seen == list(range(951, 0, -50))
        x = noise.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(out(x, unet(x, t, encoder_hidden_states=ctx).sample), t, x).prev_sample
    assert ours.abs().max() > 0.5 and max_diff(ours, x) <= TOL


@pytest.mark.filterwarnings("ignore:`image_size` is deprecated:FutureWarning")  # the tiny model needs it given
def test_original_layout_through_diffusers_single_file_converter(tmp_path):
    """export_original -> diffusers' own LDM single-file conversion gives the same models (and keys) as ours."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    pipe = tiny_pipeline("context", ae_attn=False)  # the converter knows only the middle's VAE attention
    ckpt, yml = export_original(pipe, tmp_path / "model.ckpt")
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    original = yaml.safe_load(yml.read_text())
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(original, sd, image_size=16)
    unet_sd = sfu.convert_ldm_unet_checkpoint(sd, unet_cfg)
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(original, sd, image_size=16)
    vae_sd = sfu.convert_ldm_vae_checkpoint(sd, vae_cfg)
    # diffusers' converter and ldmkit's key maps agree tensor for tensor
    ours_unet = to_diffusers(pipe.unet.state_dict(), unet_key_map(pipe.cfg.unet))
    assert ours_unet.keys() == unet_sd.keys() and all(torch.equal(ours_unet[k], unet_sd[k]) for k in unet_sd)
    ours_vae = to_diffusers(pipe.autoencoder.state_dict(), autoencoder_key_map(pipe.cfg.autoencoder))
    assert ours_vae.keys() == vae_sd.keys() and all(torch.equal(ours_vae[k], vae_sd[k]) for k in vae_sd)
    unet = UNet2DConditionModel(**unet_cfg).eval()
    unet.load_state_dict(unet_sd)
    vae = AutoencoderKL(**vae_cfg).eval()
    vae.load_state_dict(vae_sd)
    x, t, ctx, _ = unet_inputs(pipe.cfg.unet)
    img, z = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert max_diff(pipe.unet(x, t, context=ctx), unet(x, t, encoder_hidden_states=ctx).sample) <= TOL
        assert max_diff(pipe.autoencoder.encode_moments(img)[0], vae.encode(img).latent_dist.mean) <= TOL
        assert max_diff(pipe.autoencoder.decode(z), vae.decode(z).sample) <= TOL


# ------------------------------------------------------------------------------------------------ errors
def test_missing_unexpected_and_unknown_are_named(tmp_path):
    pipe = tiny_pipeline("no_context")
    folder = export_diffusers(pipe, tmp_path / "pipe")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    del sd["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    sd["mid_block.extra.weight"] = torch.zeros(1)
    save_file(sd, str(weights))
    with pytest.raises(ConfigError, match=r"missing keys: mid_block\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k"
                                          r"\.weight; unexpected keys: mid_block\.extra\.weight"):
        load_diffusers(folder)
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps(config | {"shift_factor": 0.1}))
    with pytest.raises(ConfigError, match="shift_factor=0.1"):
        load_autoencoder_any(folder)
    (folder / "vae" / "config.json").write_text(json.dumps(config | {"new_knob": 1}))
    with pytest.raises(ConfigError, match="unknown keys new_knob"):
        load_autoencoder_any(folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"controlnet": ["diffusers", "ControlNetModel"],
                                                                  "safety_checker": [None, None]}))
    with pytest.raises(ConfigError, match=r"controlnet \(diffusers ControlNetModel\) not converted"):
        load_diffusers(folder)
    # a text encoder is read (test_convert_sd.py), but not without its folder or its tokenizer
    (folder / "model_index.json").write_text(json.dumps(index | {"text_encoder": ["transformers", "CLIPTextModel"]}))
    with pytest.raises(ConfigError, match="a text_encoder needs its tokenizer"):
        load_diffusers(folder)
    index |= {"text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="text_encoder/config.json: not found"):
        load_diffusers(folder)


def test_edited_folder_ignores_a_stale_ldmkit_hint(tmp_path):
    pipe = tiny_pipeline("legacy", "vq")
    folder = export_diffusers(pipe, tmp_path / "pipe")
    cfg_path = folder / "unet" / "config.json"
    config = json.loads(cfg_path.read_text())
    config["dropout"] = 0.25  # a diffusers-side edit the _ldmkit copy does not know about
    cfg_path.write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="_ldmkit config does not match"):
        back = load_diffusers(folder)
    assert back.cfg.unet.dropout == 0.25


# ------------------------------------------------------------------------------------------------ loaders / CLI
def test_loaders_dispatch_on_every_format(tmp_path):
    pipe = tiny_pipeline("context")
    pipe.save(tmp_path / "pipeline.safetensors")
    export_original(pipe, tmp_path / "orig.ckpt")
    export_diffusers(pipe, tmp_path / "diff")
    for src in ("pipeline.safetensors", "orig.ckpt", "diff"):
        loaded = load_pipeline_any(tmp_path / src)
        assert loaded.cfg.unet == pipe.cfg.unet
        assert_same(pipe, loaded)
        model, cfg, scale = load_autoencoder_any(tmp_path / src)
        assert isinstance(model, Autoencoder) and cfg == pipe.cfg.autoencoder and scale == 0.5
        assert_same(pipe.autoencoder, model)
    model, _, _ = load_autoencoder_any(tmp_path / "diff" / "vae")
    assert_same(pipe.autoencoder, model)
    # a first-stage-only original checkpoint (as the released kl-f8 / vq-f4 model.ckpt): own keys + loss.*
    vq = tiny_pipeline("legacy", "vq").autoencoder
    first = pipeline_config_to_original_config(tiny_config("legacy", "vq"))["model"]["params"]["first_stage_config"]
    (tmp_path / "vq.yaml").write_text(yaml.safe_dump({"model": {**first, "target": "ldm.models.autoencoder.VQModel"}}))
    torch.save({"state_dict": vq.state_dict() | {"loss.logvar": torch.zeros(())}}, tmp_path / "vq.ckpt")
    model, cfg, scale = load_autoencoder_any(tmp_path / "vq.ckpt")
    assert cfg.kind == "vq" and scale == 1.0
    assert_same(vq, model)
    with pytest.raises(ConfigError, match="not a diffusers pipeline"):
        load_pipeline_any(tmp_path / "diff" / "vae")


def test_cli_round_trip_is_bit_identical_and_sample_runs_on_a_folder(tmp_path, capsys):
    pipe = tiny_pipeline("context")
    pipe.save(tmp_path / "a.safetensors")
    assert main(["convert", str(tmp_path / "a.safetensors"), str(tmp_path / "diff") + "/"]) == 0
    assert (tmp_path / "diff" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert main(["convert", str(tmp_path / "diff"), str(tmp_path / "b.safetensors")]) == 0
    back = Pipeline.load(tmp_path / "b.safetensors")
    assert back.cfg == pipe.cfg
    assert_same(pipe, back)
    assert main(["convert", str(tmp_path / "b.safetensors"), str(tmp_path / "c.bundle"), "--to", "diffusers"]) == 0
    assert (tmp_path / "c.bundle" / "model_index.json").is_file()
    assert main(["convert", str(tmp_path / "diff"), str(tmp_path / "x.bin")]) == 2
    assert "--to" in capsys.readouterr().err
    out = tmp_path / "samples"
    assert main(["sample", str(tmp_path / "diff"), "--class", "1", "--n", "2", "--steps", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    assert len(list(out.glob("0000*_seed*.png"))) == 2
