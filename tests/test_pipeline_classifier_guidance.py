"""Classifier guidance through ``Pipeline.__call__``: every registered sampler, on top of classifier-free
guidance, with mismatched classifiers refused; a tiny random pipeline and classifier (no training)."""
from __future__ import annotations

import pytest
import torch

from ldmkit.autoencoder import AutoencoderConfig
from ldmkit.config import ConfigError, to_dict
from ldmkit.diffusion import SAMPLERS, ScheduleConfig, cfg_denoise
from ldmkit.nn import ConditionerConfig, NoisyClassifier, NoisyClassifierConfig, UNetConfig, save_noisy_classifier
from ldmkit.pipeline import Pipeline, PipelineConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster


def tiny_config(kind: str = "class") -> PipelineConfig:
    return PipelineConfig(
        autoencoder=AutoencoderConfig(kind="kl", resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                      z_channels=3, embed_dim=3),
        unet=UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(2,), num_heads=2, context_dim=16 if kind == "class" else None),
        conditioner=ConditionerConfig(kind=kind, num_classes=5, embed_dim=16),
        diffusion=ScheduleConfig(timesteps=100), scale_factor=0.5)


def randomize(module, seed: int = 0, std: float = 0.2):
    """Random everywhere (zero-initialised output layers would make the model and classifier trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * std)
    return module.eval()


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return randomize(Pipeline(tiny_config()))


@pytest.fixture(scope="module")
def clf() -> NoisyClassifier:
    return randomize(NoisyClassifier(NoisyClassifierConfig(in_channels=3, num_classes=5, model_channels=16)), 1)


class LinearClassifier(torch.nn.Module):
    """logits_k = <V_k, x_t>: a classifier whose gradient is large and never vanishes."""

    def __init__(self, shape=(3, 8, 8), classes: int = 5):
        super().__init__()
        self.v = torch.nn.Parameter(torch.randn(classes, *shape, generator=torch.Generator().manual_seed(2)))

    def forward(self, x, t):
        return torch.einsum("bchw,kchw->bk", x, self.v)


def log_p(clf, z, labels):
    return torch.log_softmax(clf(z, torch.zeros(len(z), dtype=torch.long)), -1)[torch.arange(len(z)), labels]


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_is_guided_and_scale_0_is_unguided(pipe, sampler):
    clf = LinearClassifier().eval()
    labels = [0, 3]
    # UniPC-bh1 (B(h) = -h, the paper's choice for unguided sampling) extrapolates 4 steps of this random UNet
    # past where the classifier's push shows; it is guided at 8
    steps = {"ddpm": 100, "unipc_bh1": 8}.get(sampler, 4)
    kw = dict(num_inference_steps=steps, guidance_scale=2.0, sampler=sampler,
              seeds=[5, 6], output_type="latent")
    plain = pipe(labels, **kw)
    assert torch.equal(pipe(labels, classifier=clf, classifier_scale=0.0, **kw), plain)
    calls = []
    handle = clf.register_forward_pre_hook(lambda m, args: calls.append(args[1].clone()))
    unet_calls = []
    unet_handle = pipe.unet.register_forward_pre_hook(lambda m, args: unet_calls.append(args[1].clone()))
    guided = pipe(labels, classifier=clf, classifier_scale=0.05, **kw)
    handle.remove(), unet_handle.remove()
    # one classifier pass per model call, at the model's timesteps (the cfg call sees [uncond; cond])
    assert len(calls) == len(unet_calls) and all(torch.equal(c, u[:2]) for c, u in zip(calls, unet_calls))
    target = torch.tensor(labels)
    with torch.no_grad():
        assert (log_p(clf, guided, target) > log_p(clf, plain, target)).all()


def test_guided_fn_is_the_cfg_eps_minus_the_scaled_classifier_gradient(pipe, clf):
    labels = torch.tensor([1, 4])
    cond, uncond = pipe.condition(labels), pipe.uncondition(2)
    x, t = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([20, 80])
    with torch.no_grad():
        out = pipe.guided_fn(cond, uncond, 3.0, clf, labels, 2.0)(x, t)
        eps = cfg_denoise(pipe.model_fn, cond, uncond, 3.0)(x, t)
    x_in = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_p_at(clf, x_in, t, labels).sum(), x_in)
    a = pipe.schedule.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out, eps - 2.0 * (1 - a).sqrt() * grad, rtol=1e-5, atol=1e-6)


def log_p_at(clf, x, t, labels):
    return torch.log_softmax(clf(x, t), -1)[torch.arange(len(x)), labels]


def test_a_classifier_file_is_accepted_and_a_mismatched_one_refused(pipe, clf, tmp_path):
    kw = dict(num_inference_steps=2, guidance_scale=1.0, seeds=[0], output_type="latent")
    path = tmp_path / "c.safetensors"
    save_noisy_classifier(path, clf, {"diffusion": to_dict(pipe.cfg.diffusion), "scale_factor": 0.5})
    torch.testing.assert_close(pipe([2], classifier=str(path), classifier_scale=3.0, **kw),
                               pipe([2], classifier=clf, classifier_scale=3.0, **kw), rtol=0, atol=0)
    save_noisy_classifier(path, clf, {"diffusion": to_dict(ScheduleConfig(timesteps=1000)), "scale_factor": 0.5})
    with pytest.raises(ConfigError, match="classifier: trained on the noise schedule"):
        pipe([2], classifier=str(path), **kw)
    save_noisy_classifier(path, clf, {"scale_factor": 0.18215})
    with pytest.raises(ConfigError, match="classifier: trained on latents scaled by 0.18215"):
        pipe([2], classifier=str(path), **kw)
    wrong = NoisyClassifier(NoisyClassifierConfig(in_channels=3, num_classes=7, model_channels=16))
    with pytest.raises(ConfigError, match="classifier: has 7 classes, the pipeline 5"):
        pipe([2], classifier=wrong, **kw)
    with pytest.raises(FileNotFoundError, match="nope.safetensors: file not found"):
        pipe([2], classifier=str(tmp_path / "nope.safetensors"), **kw)
    unconditional = Pipeline(tiny_config("none")).eval()
    with pytest.raises(ValueError, match="classifier guidance needs a class-conditional pipeline"):
        unconditional(num_images=1, classifier=clf, **kw)
