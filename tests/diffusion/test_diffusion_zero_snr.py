"""Zero-terminal-SNR schedules (Lin et al. 2024; diffusers' ``rescale_betas_zero_snr``): the betas, and every
sampler diffusers runs on them, at identical inputs (final latents within 1e-5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from ldmkit.config import ConfigError  # noqa: E402
from ldmkit.convert.diffusers_config import schedule_config_from_diffusers, schedule_config_to_diffusers  # noqa: E402
from ldmkit.diffusion import Schedule, ScheduleConfig, get_sampler  # noqa: E402
from ldmkit.diffusion.losses import min_snr_weight  # noqa: E402
from test_diffusion_parity import BETA, SHAPE, T, TOL, noise_and_gen, run_diffusers, vp_noise, _sigma_max  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def zero_snr_schedule(**kw) -> Schedule:
    return Schedule(ScheduleConfig(timesteps=T, linear_start=BETA["beta_start"], linear_end=BETA["beta_end"],
                                   parameterization="v", zero_terminal_snr=True, **kw))


def v_model(schedule: Schedule, seed: int = 0):
    """A smooth v(x, t) defined at zero signal too: x0_hat is the N(0, 0.5^2) posterior mean plus a random linear
    part, eps_hat follows from x_t, v = sqrt(a) eps - sqrt(1 - a) x0 (abar interpolated linearly in t)."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(3, 3, generator=g) * 0.2, torch.randn(3, generator=g) * 0.1
    abar = schedule.alphas_cumprod

    def model(x, t):
        t = t.double().reshape(-1)
        low = t.floor().long().clamp(max=T - 2)
        a = ((1 - (t - low)) * abar[low] + (t - low) * abar[low + 1]).to(x.dtype).reshape(-1, 1, 1, 1)
        tf = (t / T).to(x.dtype).reshape(-1, 1, 1, 1)
        x0 = 0.25 * a.sqrt() * x / (0.25 * a + 1 - a)
        x0 = x0 + torch.einsum("oc,bchw->bohw", w.to(x), x) * torch.cos(3 * tf) * a.sqrt() + b.to(x).view(1, -1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    return model


def test_betas_match_diffusers_and_end_at_zero_snr():
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    for kind, name in (("linear", "scaled_linear"), ("sqrt_linear", "linear")):
        sched = getattr(diffusers, "DDIMScheduler")(num_train_timesteps=T, beta_schedule=name, **BETA,
                                                     rescale_betas_zero_snr=True)
        ours = Schedule(ScheduleConfig(timesteps=T, beta_schedule=kind, linear_start=BETA["beta_start"],
                                       linear_end=BETA["beta_end"], parameterization="v", zero_terminal_snr=True))
        # diffusers rescales in float32 (root - last loses ~4 digits); its function on float64 betas is exact
        np.testing.assert_allclose(ours.betas.numpy(), sched.betas.double().numpy(), rtol=1e-3)
        plain = Schedule(ScheduleConfig(timesteps=T, beta_schedule=kind, linear_start=BETA["beta_start"],
                                        linear_end=BETA["beta_end"]))
        np.testing.assert_allclose(ours.betas.numpy(), rescale_zero_terminal_snr(plain.betas).numpy(), rtol=1e-10)
        assert ours.alphas_cumprod[-1] == 0 and ours.betas[-1] == 1
        # Algorithm 1 keeps sqrt(abar_0) and moves only the end
        assert torch.isclose(ours.sqrt_alphas_cumprod[0], plain.sqrt_alphas_cumprod[0], rtol=0, atol=1e-15)


CASES = [
    # (ldmkit name, options, diffusers class, diffusers config, diffusers starts at noise * sigma_max)
    ("ddim", dict(spacing="trailing"), "DDIMScheduler", dict(timestep_spacing="trailing"), False),
    # (eta 0.5, not 1: at eta 1 the first step's direction coefficient sqrt(1 - a_prev - sigma^2) is exactly 0, which
    # diffusers computes in float32 as sqrt(round-off) ~ 1e-4)
    ("ddim", dict(spacing="trailing", eta=0.5), "DDIMScheduler", dict(timestep_spacing="trailing"), False),
    ("euler", dict(spacing="trailing"), "EulerDiscreteScheduler", dict(timestep_spacing="trailing"), True),
    ("euler_a", dict(spacing="trailing"), "EulerAncestralDiscreteScheduler", dict(timestep_spacing="trailing"), True),
    ("dpmpp_2m", dict(spacing="trailing"), "DPMSolverMultistepScheduler", dict(timestep_spacing="trailing"), False),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{'-'.join(map(str, c[1].values()))}" for c in CASES])
def test_samplers_match_diffusers_on_zero_snr(case):
    name, options, cls_name, config, rescale = case
    schedule = zero_snr_schedule()
    model = v_model(schedule)
    extra = dict(clip_sample=False, set_alpha_to_one=False) if cls_name == "DDIMScheduler" else {}
    # the same betas on both sides (diffusers' own float32 rescale differs by ~2e-4 relative, tested above); its
    # rescale of an already zero-SNR schedule is the identity, and the flag turns on its sigma-space clamp
    sched = getattr(diffusers, cls_name)(num_train_timesteps=T, trained_betas=schedule.betas.numpy(),
                                         prediction_type="v_prediction", rescale_betas_zero_snr=True, **extra, **config)
    stochastic = name == "euler_a" or options.get("eta")
    step_kw = ({"generator": torch.Generator().manual_seed(5)} if stochastic else {}) | (
        {"eta": options["eta"]} if options.get("eta") else {})
    # deterministic runs in float64 on both sides: the sigma-space samplers start at sigma ~ 4096, where float32
    # round-off of either side alone reaches ~3e-5 in the result; stochastic ones in float32, where both draw alike
    noise = noise_and_gen() if stochastic else noise_and_gen().double()
    steps = 10
    ref = run_diffusers(sched, model, noise, steps, **step_kw)
    start = vp_noise(noise, _sigma_max(sched, steps)) if rescale else noise
    gen = torch.Generator().manual_seed(5) if stochastic else None
    out = get_sampler(name)(model, start, schedule, steps=steps, generator=gen, **options)
    assert torch.isfinite(out).all() and out.dtype == noise.dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL)
    assert ref.abs().max() > 0.1


def test_plms_refuses_to_start_at_zero_signal_and_runs_below_it():
    schedule = zero_snr_schedule()
    model, noise = v_model(schedule), noise_and_gen()
    with pytest.raises(ConfigError, match="plms: the run starts at t = 999"):
        get_sampler("plms")(model, noise, schedule, steps=10, spacing="trailing")
    assert torch.isfinite(get_sampler("plms")(model, noise, schedule, steps=10)).all()  # "uniform" starts at 901


def test_config_checks_round_trip_and_loss_weight():
    with pytest.raises(ConfigError, match="zero_terminal_snr: needs parameterization v"):
        ScheduleConfig(zero_terminal_snr=True)
    cfg = zero_snr_schedule().config
    d = schedule_config_to_diffusers(cfg)
    assert d["rescale_betas_zero_snr"] is True
    assert schedule_config_from_diffusers(d) == cfg
    # the Min-SNR weights stay finite at the last timestep (SNR = 0): 0 for min_snr, 1 for min(SNR + 1, g)
    t = torch.tensor([0, T - 1])
    for plus_one, last in ((False, 0.0), (True, 1.0)):
        w = min_snr_weight(zero_snr_schedule(), t, 5.0, plus_one=plus_one)
        assert torch.isfinite(w).all() and float(w[1]) == last


def test_a_zero_snr_pipeline_trains_saves_and_samples():
    import sys
    from dataclasses import replace
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_pipeline_sampling import randomize, tiny_config

    from ldmkit.config import from_dict, to_dict
    from ldmkit.diffusion.losses import diffusion_loss
    from ldmkit.pipeline import Pipeline, PipelineConfig

    cfg = tiny_config()
    cfg = replace(cfg, diffusion=replace(cfg.diffusion, parameterization="v", zero_terminal_snr=True))
    assert from_dict(PipelineConfig, to_dict(cfg)) == cfg  # the flag travels with the model
    pipe = randomize(Pipeline(cfg))
    # the loss at the last timestep (pure noise in, -x_0 the v target) is finite, with Min-SNR weighting too
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fn = lambda x, t: pipe.unet(x, t, context=torch.zeros(2, 1, 16))  # noqa: E731
    for gamma in (None, 5.0):
        loss, _ = diffusion_loss(pipe.schedule, fn, z, t=torch.full((2,), 99), snr_gamma=gamma,
                                 snr_weighting="min_snr_plus_one")
        assert torch.isfinite(loss).all()
    for sampler in ("ddim", "euler", "euler_a", "dpmpp_2m", "heun", "ddpm"):
        steps = None if sampler == "ddpm" else 4
        options = {} if sampler == "ddpm" else {"spacing": "trailing"}
        out = pipe([0, 1], seeds=[1, 2], num_inference_steps=steps, sampler=sampler, output_type="latent", **options)
        assert torch.isfinite(out).all(), sampler
