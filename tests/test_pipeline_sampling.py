"""Pipeline sampling and editing with every sampler: per-sample seeds, img2img, inpainting with any
model, DDIM inversion; a tiny random pipeline (no training)."""
from __future__ import annotations

import math

import pytest
import torch

from ldmkit.autoencoder import AutoencoderConfig
from ldmkit.config import ConfigError, from_dict, to_dict
from ldmkit.diffusion import GuidanceConfig, ScheduleConfig
from ldmkit.nn import ConditionerConfig, UNetConfig
from ldmkit.nn.concat import ConcatConfig
from ldmkit.pipeline import Pipeline, PipelineConfig
from ldmkit.pipeline_inputs import gather_inputs

SAMPLERS = ["ddim", "plms", "euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2m_karras", "ddpm"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster


def tiny_config(concat: str = "none") -> PipelineConfig:
    return PipelineConfig(
        autoencoder=AutoencoderConfig(kind="kl", resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                      z_channels=3, embed_dim=3),
        unet=UNetConfig(in_channels=7 if concat == "inpaint" else 3, out_channels=3, model_channels=32,
                        channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,), num_heads=2,
                        context_dim=16),
        conditioner=ConditionerConfig(kind="class", num_classes=5, embed_dim=16),
        concat=ConcatConfig(kind=concat), diffusion=ScheduleConfig(timesteps=100), scale_factor=0.5)


def randomize(pipe: Pipeline, seed: int = 0) -> Pipeline:
    """Random everywhere (the UNet's zero-initialised output layer would make every sampler trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in pipe.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return pipe.eval()


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return randomize(Pipeline(tiny_config()))


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def first_unet_inputs(pipe):
    """Record (x, t) of every UNet call."""
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: calls.append((args[0].clone(), args[1].clone())))
    return calls, handle


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_image_k_alone_equals_image_k_in_a_batch(pipe, sampler):
    steps = 100 if sampler == "ddpm" else 4
    kw = dict(num_inference_steps=steps, guidance_scale=2.0, sampler=sampler, output_type="latent")
    batch = pipe([0, 1, 2], seeds=[3, 4, 5], **kw)
    alone = pipe([1], seeds=[4], **kw)
    torch.testing.assert_close(alone[0], batch[1], rtol=0, atol=1e-5)
    assert (batch[0] - batch[1]).abs().max() > 1e-3


def test_a_seed_starts_every_sampler_from_the_same_noise(pipe):
    firsts = []
    for sampler in ("ddim", "plms", "euler", "euler_a", "heun", "dpmpp_2m"):
        calls, handle = first_unet_inputs(pipe)
        pipe([2], seeds=[7], num_inference_steps=3, guidance_scale=1.0, sampler=sampler, spacing="trailing",
             output_type="latent")
        handle.remove()
        assert calls[0][1].tolist() == [99]
        firsts.append(calls[0][0])
    for x in firsts[1:]:  # sigma-space samplers see noise * sqrt(1 + sigma^2) / sqrt(1 + sigma^2)
        torch.testing.assert_close(x, firsts[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_img2img_strength_0_returns_the_input_latent(pipe, image, sampler):
    z = pipe([0, 1], image=image, strength=0.0, sampler=sampler, num_inference_steps=5, seeds=[0, 1],
             output_type="latent")
    torch.testing.assert_close(z, pipe.encode_latents(image, sample=False), rtol=0, atol=0)
    x = pipe([0, 1], image=image, strength=0.0, sampler=sampler, num_inference_steps=5, seeds=[0, 1],
             output_type="pt")
    torch.testing.assert_close(x, pipe.decode_latents(z).clamp(-1, 1))  # the first stage's reconstruction


@pytest.mark.parametrize("sampler, first_t", [("ddim", 41), ("plms", 41), ("euler", 44), ("heun", 44)])
def test_img2img_runs_the_last_share_of_the_steps(pipe, image, sampler, first_t):
    calls, handle = first_unet_inputs(pipe)
    z = pipe([0, 1], image=image, strength=0.5, sampler=sampler, num_inference_steps=10, seeds=[0, 1],
             guidance_scale=1.0, output_type="latent")
    handle.remove()
    assert calls[0][1][0].item() == pytest.approx(first_t)  # ddim: ts = 1, 11, ..., 91; euler: linspace(0, 99, 10)
    z0 = pipe.encode_latents(image, sample=False)
    # half the steps from a half-noised start: closer to the input than a fresh sample from the same seeds
    fresh = pipe([0, 1], sampler=sampler, num_inference_steps=10, seeds=[0, 1], guidance_scale=1.0,
                 output_type="latent")
    assert (z - z0).norm() < (fresh - z0).norm()


def test_img2img_errors(pipe, image):
    with pytest.raises(ValueError, match="strength given without image"):
        pipe([0], strength=0.5, num_inference_steps=2)
    with pytest.raises(ConfigError, match="strength: must be in"):
        pipe([0, 1], image=image, strength=1.5, num_inference_steps=2)
    with pytest.raises(ValueError, match="mask given without image"):
        pipe([0], mask=torch.ones(1, 16, 16), num_inference_steps=2)


@pytest.mark.parametrize("sampler", ["ddim", "euler_a", "dpmpp_2m_karras", "plms"])
def test_inpainting_with_a_plain_model_keeps_the_known_region(pipe, image, sampler):
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    kw = dict(image=image, mask=mask, sampler=sampler, num_inference_steps=5, seeds=[0, 1], output_type="pt")
    out = pipe([0, 1], **kw)
    known = mask.expand_as(image) == 0
    assert torch.equal(out[known], image[known])
    assert (out - image)[~known].abs().max() > 0.05  # the hole is generated, not copied
    # the model sees the known region: changing it outside the hole changes the fill
    other = pipe([0, 1], **(kw | {"image": image.flip(-2)}))
    assert (other - out)[:, :, 6:10, 6:10].abs().max() > 1e-3


def test_inpainting_latents_keep_the_known_latents(pipe, image):
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., :, 8:] = 1  # right half: latent columns 4.. are regenerated
    z = pipe([0, 1], image=image, mask=mask, num_inference_steps=4, seeds=[0, 1], output_type="latent")
    z0 = pipe.encode_latents(image, sample=False)
    torch.testing.assert_close(z[..., :4], z0[..., :4], rtol=0, atol=0)
    assert pipe.latent_mask(mask)[0, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_concat_inpainting_models_keep_their_path():
    cfg = tiny_config("inpaint")
    img, mask = torch.zeros(1, 3, 16, 16), torch.ones(1, 1, 16, 16)
    inputs = gather_inputs(cfg, "cpu", class_labels=[0], image=img, mask=mask)
    assert inputs.concat is not None and inputs.repaint_mask is None and inputs.image is not None
    plain = gather_inputs(tiny_config(), "cpu", class_labels=[0], image=img, mask=mask)
    assert plain.concat is None and torch.equal(plain.repaint_mask, mask)
    with pytest.raises(ValueError, match="inpaint map: pass mask, image"):
        gather_inputs(cfg, "cpu", class_labels=[0], image=img)
    pipe = randomize(Pipeline(cfg))
    out = pipe([0], image=torch.rand(1, 3, 16, 16) * 2 - 1, mask=mask, num_inference_steps=2, seeds=[0],
               sampler="euler", output_type="pt")
    assert out.shape == (1, 3, 16, 16)


def test_ddim_inversion_round_trip_reaches_30_db(pipe, image):
    z0 = pipe.encode_latents(image, sample=False)
    x_T = pipe.invert(image, [1, 2], num_inference_steps=50)
    assert x_T.shape == z0.shape and (x_T - z0).abs().mean() > 0.05  # it moved to the noise end
    z = pipe([1, 2], latents=x_T, num_inference_steps=50, guidance_scale=1.0, sampler="ddim", output_type="latent")
    psnr = 10 * math.log10((z0.max() - z0.min()).item() ** 2 / ((z - z0) ** 2).mean().item())
    assert psnr >= 30, psnr


def test_sampler_errors_are_one_line_value_errors(pipe):
    with pytest.raises(ValueError, match="unknown 'lms'.*dpmpp_2m.*EulerDiscreteScheduler"):
        pipe([0], sampler="lms", num_inference_steps=2)
    with pytest.raises(ConfigError, match="sampler heun: no option eta"):
        pipe([0], sampler="heun", eta=0.5, num_inference_steps=2)
    with pytest.raises(ValueError, match="latents: shape"):
        pipe([0], latents=torch.zeros(1, 3, 4, 4), num_inference_steps=2)


def test_the_models_guidance_defaults_are_used_saved_and_overridden(pipe, tmp_path):
    """cfg.guidance (rescale, interval) applies when the caller leaves both at None; explicit values win;
    (0, inf) is plain guidance at every step; the defaults survive save / load."""
    kw = dict(class_labels=[0, 3], seeds=[5, 6], num_inference_steps=4, guidance_scale=4.0, output_type="latent")
    plain = pipe(**kw)
    explicit = pipe(**kw, guidance_rescale=0.7, guidance_interval=(0, 60))
    cfg = tiny_config()
    cfg.guidance = GuidanceConfig(rescale=0.7, interval=(0, 60))
    tuned = Pipeline(cfg)
    tuned.load_state_dict(pipe.state_dict())
    tuned.eval()
    assert not torch.allclose(explicit, plain, atol=1e-4)  # the settings change the result at all
    torch.testing.assert_close(tuned(**kw), explicit, rtol=0, atol=0)
    torch.testing.assert_close(tuned(**kw, guidance_rescale=0.0, guidance_interval=(0, math.inf)), plain,
                               rtol=0, atol=0)
    tuned.save(tmp_path / "p.safetensors")
    back = Pipeline.load(tmp_path / "p.safetensors")
    assert back.cfg.guidance == GuidanceConfig(rescale=0.7, interval=(0.0, 60.0))
    torch.testing.assert_close(back(**kw), explicit, rtol=0, atol=0)


@pytest.mark.parametrize("field, value, message", [
    ("rescale", 1.5, r"guidance.rescale: expected a number in \[0, 1\], got 1.5"),
    ("interval", [700, 100], r"guidance.interval: expected 0 <= lo <= hi, got \(700, 100\)"),
    ("interval", [1, 2, 3], r"guidance.interval: expected 2 values, got 3"),
])
def test_guidance_config_bad_values_name_the_field(field, value, message):
    cfg = to_dict(tiny_config())
    cfg["guidance"][field] = value
    with pytest.raises(ConfigError, match=message):
        from_dict(PipelineConfig, cfg)
