"""LoRA adapters: peft layers on ldmkit's UNet / CLIP tower, kohya files read by diffusers' load_lora_weights,
diffusers / peft files read by ldmkit, scales, several adapters, merging, wrong-base refusal and the CLI."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ldmkit.cli.main import main
from ldmkit.config import ConfigError
from ldmkit.convert import export_diffusers, load_pipeline_any
from ldmkit.convert.lora_file import load_lora, save_lora
from ldmkit.nn.lora import TEXT_TARGETS, LoraSpec, add_lora, lora_layers

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = ["a photo of a corgi wearing sunglasses"]


def _inputs(seed=1, channels=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, 8, 8, generator=g), torch.tensor([900, 250]), torch.randn(2, 77, 64, generator=g)


def _randomise_adapters(module, seed=0):
    """lora_B starts at zero (a fresh adapter is the identity): move every adapter weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _with_lora(pipe, text=False, rank=4, alpha=8.0, seed=0):
    spec = LoraSpec(rank=rank, alpha=alpha, feed_forward=True, text_encoder=text)
    n = add_lora(pipe.unet, spec, spec.unet_targets())
    _randomise_adapters(pipe.unet, seed)
    if text:
        n += add_lora(pipe.conditioner, spec, TEXT_TARGETS)
        _randomise_adapters(pipe.conditioner, seed + 1)
    return n


def test_adapters_train_alone_and_start_as_identity(tiny_sd):
    pipe = tiny_sd("1")
    x, t, ctx = _inputs()
    before = pipe.unet(x, t, context=ctx)
    spec = LoraSpec(rank=4, alpha=4.0)
    n = add_lora(pipe.unet, spec, spec.unet_targets())
    trainable = {name for name, p in pipe.unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    assert n == sum(p.numel() for p in pipe.unet.parameters() if p.requires_grad)
    n_attn = sum(type(m).__name__ == "CrossAttention" for m in pipe.unet.modules())
    assert n_attn == 20 and len(lora_layers(pipe.unet)) == 4 * n_attn  # 10 transformer blocks x (attn1, attn2)
    torch.testing.assert_close(pipe.unet(x, t, context=ctx), before, rtol=0, atol=0)  # B = 0
    with pytest.raises(ConfigError, match="no layer of UNetModel is named like nope"):
        add_lora(pipe.unet, spec, ("nope",))


def test_kohya_file_loads_in_diffusers(tiny_sd, tmp_path):
    """ldmkit's LoRA file (kohya layout, alpha != rank, feed-forward and text encoder included) read by
    diffusers' load_lora_weights on the same base: UNet outputs and text embeddings agree to 1e-5."""
    pipe = tiny_sd("1")
    folder = export_diffusers(pipe, tmp_path / "base")
    _with_lora(pipe, text=True)
    path = save_lora(pipe, tmp_path / "style.safetensors")
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in load_file(str(path)))
    dpipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder))
    dpipe.load_lora_weights(load_file(str(path)))
    x, t, ctx = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, context=ctx), dpipe.unet(x, t, encoder_hidden_states=ctx).sample,
                                   rtol=0, atol=1e-5)
        ours = pipe.conditioner.encode_ids(pipe.conditioner.tokenizer(PROMPT))
        torch.testing.assert_close(ours, dpipe.encode_prompt(PROMPT, "cpu", 1, False)[0], rtol=0, atol=1e-5)
    # and back into a fresh ldmkit pipeline (kohya layout read)
    fresh = load_pipeline_any(folder)
    load_lora(fresh, path)
    torch.testing.assert_close(fresh.unet(x, t, context=ctx), pipe.unet(x, t, context=ctx), rtol=0, atol=1e-5)


def test_diffusers_peft_file_loads_in_ldmkit(tiny_sd, tmp_path):
    """A LoRA that peft trained on diffusers' UNet, saved by save_lora_weights, loads in ldmkit to 1e-5."""
    pipe = tiny_sd("2")  # SD 2.x: linear projections, 64-channel heads
    folder = export_diffusers(pipe, tmp_path / "base")
    dpipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder))
    dpipe.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                           target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"]))
    state = peft.get_peft_model_state_dict(dpipe.unet)
    diffusers.StableDiffusionPipeline.save_lora_weights(str(tmp_path / "lora"), unet_lora_layers=state)
    files = list((tmp_path / "lora").glob("*.safetensors"))
    assert len(files) == 1
    pipe.load_lora(files[0])
    x, t, ctx = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, t, context=ctx), dpipe.unet(x, t, encoder_hidden_states=ctx).sample,
                                   rtol=0, atol=1e-5)


def test_scales_several_adapters_and_merge(tiny_sd, tmp_path):
    base = tiny_sd("1")
    x, t, ctx = _inputs()
    plain = base.unet(x, t, context=ctx)
    files = []
    for seed in (0, 1):
        donor = tiny_sd("1")
        _with_lora(donor, seed=seed)
        files.append(save_lora(donor, tmp_path / f"lora{seed}.safetensors"))
    a = base.load_lora(files[0], scale=0.0)
    torch.testing.assert_close(base.unet(x, t, context=ctx), plain, rtol=0, atol=1e-6)  # scale 0: the base
    base.load_lora(files[1], scale=0.7)
    from ldmkit.nn.lora import set_lora_scale

    set_lora_scale(base.unet, a, 0.5)
    both = base.unet(x, t, context=ctx)
    assert (both - plain).abs().max() > 1e-3
    base.merge_lora()
    assert not lora_layers(base.unet)
    torch.testing.assert_close(base.unet(x, t, context=ctx), both, rtol=0, atol=1e-5)
    assert set(base.unet.state_dict()) == set(tiny_sd("1").unet.state_dict())  # plain layers, savable


def test_lora_for_another_base_is_refused(tiny_sd, tmp_path):
    donor = tiny_sd("1")
    _with_lora(donor)
    path = save_lora(donor, tmp_path / "sd1.safetensors")
    other = tiny_sd("2")
    with pytest.raises(ConfigError, match="another base model"):
        other.load_lora(path)
    assert not lora_layers(other.unet)  # nothing half-loaded
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"model.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(ConfigError, match="not a LoRA file"):
        other.load_lora(bad)


def test_cli_sample_and_merge_lora(tiny_sd, tmp_path):
    pipe = tiny_sd("1")
    base = export_diffusers(pipe, tmp_path / "base")
    _with_lora(pipe)
    lora = save_lora(pipe, tmp_path / "style.safetensors")
    out = tmp_path / "merged.safetensors"
    assert main(["merge-lora", str(base), str(out), "--lora", f"{lora}:1.0"]) == 0
    merged = load_pipeline_any(out)
    x, t, ctx = _inputs()
    torch.testing.assert_close(merged.unet(x, t, context=ctx), pipe.unet(x, t, context=ctx), rtol=0, atol=1e-5)
    assert main(["sample", str(base), "--prompt", "a cat", "--n", "1", "--size", "64", "--steps", "2",
                 "--lora", f"{lora}:0.8", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "00000_seed0.png").is_file()
    assert main(["merge-lora", str(base), str(tmp_path / "m2.safetensors")]) == 2  # no --lora: one-line error
