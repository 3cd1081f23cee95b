"""Stable Diffusion files: single-file loading with and without the YAML (architecture read off the shapes), the
OpenCLIP layout, diffusers folders both ways, parity with diffusers' StableDiffusion(Inpaint)Pipeline, round
trips, and the one-line errors of bad files."""
from __future__ import annotations

import dataclasses
import json
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from PIL import Image
from torch import nn

from ldmkit.cli.main import main
from ldmkit.config import ConfigError
from ldmkit.convert import export_diffusers, export_original, load_autoencoder_any, load_pipeline_any
from ldmkit.convert.clip_keys import ldmkit_to_openclip
from ldmkit.convert.original import pipeline_to_original_state_dict
from ldmkit.convert.sd_infer import guess_prediction
from ldmkit.nn.clip import ClipTextConditioner

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster

NAMES = {"1": "tiny-v1-5-pruned.safetensors", "2": "tiny-v2-1_768-ema-pruned.safetensors",
         "2-base": "tiny-v2-1_512-ema-pruned.safetensors"}
PROMPT = ["a photo of an astronaut riding a horse on mars"]


def _same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not bad, bad[:5]


def _model_fields(cfg):
    """The config without what names a file on disk or spells a default out (tokenizer path, pad / activation)."""
    c = dataclasses.replace(cfg.conditioner, tokenizer="", pad_token="", hidden_act="")
    return dataclasses.replace(cfg, conditioner=c)


def _write_original(pipe, path, extra=None):
    sd = pipeline_to_original_state_dict(pipe) | (extra or {})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return sd


@pytest.mark.parametrize("version,inpaint", [("1", False), ("2", False), ("2-base", True)])
def test_single_file_without_yaml_infers_the_architecture(tiny_sd, tmp_path, version, inpaint):
    pipe = tiny_sd(version, inpaint)
    path = tmp_path / NAMES[version].replace("pruned", "inpainting" if inpaint else "pruned")
    _write_original(pipe, path)
    back = load_pipeline_any(path)
    assert back.cfg == pipe.cfg  # every size, the heads rule, v vs eps, the 9-channel inpainting layout
    _same_weights(back, pipe)
    # with its exported YAML instead (FrozenCLIPEmbedder / FrozenOpenCLIPEmbedder, LatentInpaintDiffusion)
    ckpt, yaml_path = export_original(back, tmp_path / "exported.ckpt")
    again = load_pipeline_any(ckpt, config=yaml_path)
    assert again.cfg == pipe.cfg
    _same_weights(again, pipe)
    # a .ckpt (restricted unpickler) without a YAML beside it: inferred as well
    bare = tmp_path / path.with_suffix(".ckpt").name
    bare.write_bytes(ckpt.read_bytes())
    _same_weights(load_pipeline_any(bare), pipe)
    # the first stage alone, for eval-autoencoder / cache-latents
    vae, vae_cfg, scale = load_autoencoder_any(path)
    assert vae_cfg == pipe.cfg.autoencoder and scale == pytest.approx(0.18215)
    _same_weights(vae, pipe.autoencoder)


def test_editing_features_work_on_sd_models(tiny_sd):
    """img2img, inpaint-any-model, a size beyond the default and tiled decoding on an SD pipeline."""
    pipe = tiny_sd("1")
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, 32:] = 1
    kw = dict(prompt=PROMPT, num_inference_steps=4, output_type="pt", seeds=[0], negative_prompt=["blurry"])
    img2img = pipe(image=image, strength=0.5, **kw)
    repaint = pipe(image=image, mask=mask, **kw)
    assert img2img.shape == repaint.shape == (1, 3, 64, 64)
    torch.testing.assert_close(repaint[..., :32], image[..., :32])  # the known half is kept exactly
    wide = pipe(height=64, width=128, decode_tile=4, **kw)
    assert wide.shape == (1, 3, 64, 128) and torch.isfinite(wide).all()


def test_prediction_guess_and_override(tiny_sd, tmp_path):
    assert guess_prediction("v2-1_768-ema-pruned.safetensors", "openclip") == "v"
    assert guess_prediction("768-v-ema.ckpt", "openclip") == "v"
    for name in ("v2-1_512-ema-pruned.ckpt", "512-base-ema.ckpt", "512-inpainting-ema.ckpt"):
        assert guess_prediction(name, "openclip") == "eps"
    assert guess_prediction("v1-5-pruned-768.ckpt", "clip") == "eps"  # SD 1.x is always eps
    path = tmp_path / NAMES["2"]
    _write_original(tiny_sd("2"), path)
    assert load_pipeline_any(path, prediction="eps").cfg.diffusion.parameterization == "eps"
    with pytest.raises(ConfigError, match="--prediction: expected eps or v"):
        load_pipeline_any(path, prediction="x0")


def test_precision_casts_while_loading(tiny_sd, tmp_path):
    pipe = tiny_sd("1")
    path = tmp_path / NAMES["1"]
    _write_original(pipe, path)
    half = load_pipeline_any(path, precision="bf16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    ref = pipe.state_dict()
    assert all(torch.equal(v, ref[k].to(torch.bfloat16)) for k, v in half.state_dict().items())
    out = half(prompt=PROMPT, height=64, num_inference_steps=2, output_type="latent", seeds=[0])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_diffusers_folder_loads_one_tensor_at_a_time(tiny_sd, tmp_path, monkeypatch):
    """An fp16 folder read at bf16: every file tensor is read once, cast, and let go before the next is read, so
    the file's copy of the weights is never held whole beside the module's; the result equals the eager cast."""
    import weakref

    from ldmkit.convert import safe_load

    pipe = tiny_sd("2")
    folder = export_diffusers(pipe.to(torch.float16), tmp_path / "sd2")
    reads, alive, peak = [], weakref.WeakSet(), [0]
    original = safe_load.SafetensorsFile.__getitem__

    def tracked(self, name):
        t = original(self, name)
        reads.append((self.path.parent.name, name))
        alive.add(t)
        peak[0] = max(peak[0], len(alive))
        return t

    monkeypatch.setattr(safe_load.SafetensorsFile, "__getitem__", tracked)
    loaded = load_pipeline_any(folder, precision="bf16")
    n_file = sum(len(load_file(str(f))) for f in folder.rglob("*.safetensors"))
    assert len(reads) == len(set(reads)) == n_file  # each tensor of the folder read once
    assert peak[0] <= 3  # a fused qkv reads three tensors at once; never the whole file
    ref = pipe.state_dict()
    assert all(torch.equal(v, ref[k].to(torch.bfloat16)) for k, v in loaded.state_dict().items()
               if v.is_floating_point())


def _torch_openclip_reference(tower: dict[str, torch.Tensor], ids: torch.Tensor, n_layer: int, heads: int):
    """open_clip's text transformer rebuilt from torch's own nn.MultiheadAttention (whose fused in_proj layout
    open_clip stores), run to ``n_layer`` blocks, then ln_final: what FrozenOpenCLIPEmbedder returns."""
    width = tower["token_embedding.weight"].shape[1]
    x = tower["token_embedding.weight"][ids] + tower["positional_embedding"]
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    for i in range(n_layer):
        p = {k.split(f"resblocks.{i}.", 1)[1]: v for k, v in tower.items() if f"resblocks.{i}." in k}
        attn = nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict({"in_proj_weight": p["attn.in_proj_weight"], "in_proj_bias": p["attn.in_proj_bias"],
                              "out_proj.weight": p["attn.out_proj.weight"], "out_proj.bias": p["attn.out_proj.bias"]})
        h = nn.functional.layer_norm(x, (width,), p["ln_1.weight"], p["ln_1.bias"])
        x = x + attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = nn.functional.layer_norm(x, (width,), p["ln_2.weight"], p["ln_2.bias"])
        h = nn.functional.gelu(nn.functional.linear(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"]))
        x = x + nn.functional.linear(h, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    return nn.functional.layer_norm(x, (width,), tower["ln_final.weight"], tower["ln_final.bias"])


def test_openclip_layout_penultimate_layer(tiny_sd, tmp_path):
    """A released SD 2.x file holds the whole open_clip tower (one more block, text_projection, logit_scale);
    SD reads the penultimate block's output through ln_final."""
    pipe = tiny_sd("2")
    full = ClipTextConditioner(dataclasses.replace(pipe.cfg.conditioner, n_layer=3))  # the tower + its top block
    with torch.no_grad():
        for p in full.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    tower = ldmkit_to_openclip(full.state_dict())
    extra = {"text_projection": torch.randn(64, 32), "logit_scale": torch.tensor(4.6)}
    sd = {k: v for k, v in pipeline_to_original_state_dict(pipe).items() if not k.startswith("cond_stage_model.")}
    path = tmp_path / NAMES["2"]
    save_file({**sd, **{f"cond_stage_model.model.{k}": v.contiguous() for k, v in (tower | extra).items()}}, str(path))
    back = load_pipeline_any(path)
    assert back.cfg.conditioner.n_layer == 2
    ids = back.conditioner.tokenizer(PROMPT + [""])
    ours = back.conditioner.encode_ids(ids)
    ref = _torch_openclip_reference(tower, ids, n_layer=2, heads=1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    assert ids[1, 2:].eq(0).all()  # SD 2.x pads with "!" (id 0)


# ---------------------------------------------------------------------------------------------- diffusers parity
def _diffusers_pipe(folder, inpaint: bool):
    cls = diffusers.StableDiffusionInpaintPipeline if inpaint else diffusers.StableDiffusionPipeline
    return cls.from_pretrained(str(folder)).to(torch.float32)


def _inpaint_inputs(dpipe):
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 8:40] = 1
    sf = dpipe.vae.config.scaling_factor
    masked = dpipe.vae.encode(image * (mask < 0.5)).latent_dist.mode() * sf  # ldmkit uses the posterior mode
    return dict(image=image, mask=mask), dict(image=image, mask_image=mask, masked_image_latents=masked)


def _skipped_embeds(dpipe, prompts, clip_skip):
    """diffusers' clip_skip formula (hidden_states[-(k + 1)] through final_layer_norm), written out: its own
    encode_prompt reaches for ``text_encoder.text_model``, which transformers 5's CLIPTextModel no longer has."""
    ids = dpipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    out = dpipe.text_encoder(ids, output_hidden_states=True)
    tower = getattr(dpipe.text_encoder, "text_model", dpipe.text_encoder)
    return tower.final_layer_norm(out.hidden_states[-(clip_skip + 1)])


def _parity(pipe, dpipe, inpaint: bool, clip_skip: int = 0):
    ours_text = pipe.conditioner.encode_ids(pipe.conditioner.tokenizer(PROMPT))
    if clip_skip:
        text_kw = dict(prompt_embeds=_skipped_embeds(dpipe, PROMPT, clip_skip),
                       negative_prompt_embeds=_skipped_embeds(dpipe, [""], clip_skip))
        theirs_text = text_kw["prompt_embeds"]
    else:
        text_kw = dict(prompt=PROMPT)
        theirs_text = dpipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
    torch.testing.assert_close(ours_text, theirs_text, rtol=0, atol=1e-5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, pipe.cfg.unet.in_channels, 8, 8, generator=g)
    t = torch.tensor([999, 321])
    ctx = torch.randn(2, 77, 64, generator=g)
    torch.testing.assert_close(pipe.unet(x, t, context=ctx), dpipe.unet(x, t, encoder_hidden_states=ctx).sample,
                               rtol=0, atol=1e-5)
    noise = torch.randn(1, 4, 8, 8, generator=g)
    ours_kw, theirs_kw = _inpaint_inputs(dpipe) if inpaint else ({}, {})
    spread = []
    ddim = dict(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    for sampler, options, sched, kw in (
            ("ddim", {}, diffusers.DDIMScheduler, ddim),  # the original DDIM's timesteps
            ("dpmpp_2m", {"spacing": "trailing"}, diffusers.DPMSolverMultistepScheduler, dict(timestep_spacing="trailing"))):
        dpipe.scheduler = sched.from_config(dpipe.scheduler.config, **kw)
        ours = pipe(prompt=PROMPT, latents=noise, num_inference_steps=20, guidance_scale=7.5, sampler=sampler,
                    height=64, output_type="latent", **ours_kw, **options)
        theirs = dpipe(**text_kw, latents=noise, num_inference_steps=20, guidance_scale=7.5, height=64,
                       width=64, output_type="latent", **theirs_kw).images
        # 1e-4 at SD's latent scale (|z| up to ~4); float32 rounding grows with |z|, which random tiny eps
        # models at guidance 7.5 drive to ~40 (measured: 1.2e-5 at |z| 4.3 for SD 2.x, 7e-5 at |z| 39 for SD 1.x)
        scale = max(1.0, float(theirs.abs().max()) / 4)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4 * scale)
        spread.append(float((ours - noise).abs().max()))
    assert min(spread) > 0.1  # the trajectories moved: a no-op sampler would not pass


@pytest.mark.parametrize("version,inpaint", [("1", False), ("2", False), ("1", True)])
def test_parity_with_diffusers_pipelines(tiny_sd, tmp_path, version, inpaint):
    """ldmkit's export read by StableDiffusion(Inpaint)Pipeline.from_pretrained: text embeddings and UNet
    outputs to 1e-5, 20-step DDIM and DPM++ 2M latents at guidance 7.5 to 1e-4 (SD 2.x: v-prediction)."""
    pipe = tiny_sd(version, inpaint)
    dpipe = _diffusers_pipe(export_diffusers(pipe, tmp_path / "sd"), inpaint)
    _parity(pipe, dpipe, inpaint)


def test_clip_skip_matches_diffusers(tiny_sd, tmp_path):
    pipe = tiny_sd("1")
    dpipe = _diffusers_pipe(export_diffusers(pipe, tmp_path / "sd"), False)
    skipped = load_pipeline_any(tmp_path / "sd", text_options={"clip_skip": 1})
    _parity(skipped, dpipe, False, clip_skip=1)
    with pytest.raises(ConfigError, match="clip_skip"):
        load_pipeline_any(tmp_path / "sd", text_options={"clip_skip": 2})  # the tower has 2 layers


def test_reads_a_folder_diffusers_wrote(tiny_sd, tmp_path):
    """A pipeline built and saved by diffusers itself (PNDM scheduler, SD's model_index with null safety checker)."""
    folder = export_diffusers(tiny_sd("2"), tmp_path / "ours")
    dpipe = _diffusers_pipe(folder, False)
    with torch.no_grad():
        for p in dpipe.unet.parameters():
            p.mul_(1.01)
    dpipe.scheduler = diffusers.PNDMScheduler.from_config(dpipe.scheduler.config, skip_prk_steps=True)
    dpipe.save_pretrained(str(tmp_path / "theirs"))
    pipe = load_pipeline_any(tmp_path / "theirs")
    assert pipe.cfg.diffusion.parameterization == "v"
    _parity(pipe, _diffusers_pipe(tmp_path / "theirs", False), False)


def test_round_trip_original_diffusers_original_is_bit_identical(tiny_sd, tmp_path):
    """original -> ldmkit -> diffusers -> ldmkit -> original: every tensor equal, SD 1.x's position ids included."""
    path = tmp_path / NAMES["1"]
    first = _write_original(tiny_sd("1"), path)
    folder = export_diffusers(load_pipeline_any(path), tmp_path / "diffusers")
    last = pipeline_to_original_state_dict(load_pipeline_any(folder))
    assert set(first) == set(last)
    assert [k for k in first if not torch.equal(first[k], last[k])] == []
    assert first["cond_stage_model.transformer.text_model.embeddings.position_ids"].tolist() == [list(range(77))]


# ---------------------------------------------------------------------------------------------- bad input
def test_unknown_architecture_names_the_file(tmp_path):
    path = tmp_path / "mystery.safetensors"
    save_file({"model.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ConfigError, match=r"mystery.safetensors: cannot infer the architecture .*pass --config"):
        load_pipeline_any(path)


def test_truncated_file_is_one_line(tiny_sd, tmp_path, capsys):
    path = tmp_path / NAMES["1"]
    _write_original(tiny_sd("1"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert main(["sample", str(path), "--prompt", "a cat", "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert "truncated" in err and str(path) in err and "\n" not in err and "Traceback" not in err


def test_text_width_must_fit_the_unet(tiny_sd, tmp_path):
    pipe = tiny_sd("1")
    sd = pipeline_to_original_state_dict(pipe)
    narrow = ClipTextConditioner(dataclasses.replace(pipe.cfg.conditioner, embed_dim=32, intermediate_size=64))
    sd = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.transformer.")}
    sd |= {"cond_stage_model." + k: v for k, v in narrow.state_dict().items()}
    path = tmp_path / NAMES["1"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ConfigError, match="text encoder's width 32 is not the UNet's context width 64"):
        load_pipeline_any(path)
    folder = export_diffusers(pipe, tmp_path / "sd")
    cfg_path = folder / "text_encoder" / "config.json"
    cfg_path.write_text(json.dumps(json.loads(cfg_path.read_text()) | {"hidden_size": 32}))
    with pytest.raises(ConfigError, match=r"text encoder's width 32 .* cross_attention_dim 64"):
        load_pipeline_any(folder)


def test_tokenizer_folder_missing_a_file(tiny_sd, tmp_path, capsys):
    folder = export_diffusers(tiny_sd("1"), tmp_path / "sd")
    (folder / "tokenizer" / "merges.txt").unlink()
    assert main(["sample", str(folder), "--prompt", "a cat", "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert "merges.txt not found" in err and "\n" not in err


def test_cli_convert_to_an_fp16_diffusers_folder(tiny_sd, tmp_path, caplog):
    path = tmp_path / NAMES["2"]
    _write_original(tiny_sd("2"), path)
    out = tmp_path / "sd2-fp16"
    assert main(["convert", str(path), str(out), "--precision", "fp16"]) == 0
    for f in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/model.safetensors"):
        assert {v.dtype for v in load_file(str(out / f)).values()} == {torch.float16}, f
    dpipe = diffusers.StableDiffusionPipeline.from_pretrained(str(out), torch_dtype=torch.float16)
    assert dpipe.scheduler.config.prediction_type == "v_prediction"
    assert "v-prediction model (from its name" in caplog.text  # the guess from the name is said, not silent


def test_cli_samples_a_single_file(tiny_sd, tmp_path):
    path = tmp_path / NAMES["2"]
    _write_original(tiny_sd("2"), path)
    out = tmp_path / "out"
    assert main(["sample", str(path), "--prompt", "a red cube", "--n", "1", "--size", "64", "--steps", "3",
                 "--sampler", "dpmpp_2m", "--guidance", "7.5", "--precision", "bf16", "--clip-skip", "1",
                 "--out", str(out)]) == 0
    image = np.asarray(Image.open(out / "00000_seed0.png"))
    assert image.shape == (64, 64, 3) and image.std() > 1  # decoded, not a blank frame
    meta = json.loads(Image.open(out / "00000_seed0.png").text["ldmkit"])
    assert meta["prompt"] == "a red cube" and meta["precision"] == "bf16" and meta["clip_skip"] == 1
