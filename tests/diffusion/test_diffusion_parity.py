"""Parity with diffusers' schedulers (test-only reference): same model, same start noise, same steps ->
the same final latents within 1e-5 in float32.

How ldmkit's options map onto the diffusers configs (beta_schedule "scaled_linear" == ldmkit "linear";
``set_alpha_to_one=False`` == ldmkit's last DDIM / PLMS step landing on abar_0):

    ddim  spacing="uniform" (the original)  DDIMScheduler(timestep_spacing="leading", steps_offset=1)
    ddim  spacing="trailing"                DDIMScheduler(timestep_spacing="trailing")
    plms  spacing="uniform"                 PNDMScheduler(skip_prk_steps=True, "leading", steps_offset=1)
    dpmpp_2m spacing="trailing"             DPMSolverMultistepScheduler(timestep_spacing="trailing")
    dpmpp_2m karras=True, quantize=True     DPMSolverMultistepScheduler(use_karras_sigmas=True) (it rounds t)
    euler / euler_ancestral / heun spacing="leading", steps_offset=1 == their "leading" configs; spacing
          "linspace" (+ karras) == their "linspace" configs, whose start is noise * sigma_max where ldmkit
          starts from noise * sqrt(1 + sigma_max^2) (the DDPM convention), so the noise is rescaled here.

Where the conventions differ (not tested, documented): diffusers' DDIM / PNDM step to t - T // N rather
than to the next timestep, which only agrees when N divides T and the spacing is "leading" or
"trailing"; DPMSolverMultistep's "linspace" / "leading" take N + 1 points and drop the last; diffusers'
Euler interpolates sigma linearly at fractional timesteps where ldmkit (and k-diffusion) interpolate
log sigma (equal on integral grids such as N = 10 for T = 1000); for v models diffusers' PNDM averages
and extrapolates the raw v outputs and converts the result once, where the original PLMS (SD 2.x) and
ldmkit convert each output to eps first (the same sampler only for eps models).
"""
from __future__ import annotations

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from ldmkit.diffusion import Schedule, ScheduleConfig, get_sampler  # noqa: E402

T, BETA = 1000, dict(beta_start=0.00085, beta_end=0.012)
SHAPE = (2, 3, 4, 4)
TOL = 1e-5
DIFFUSERS_PRED = {"eps": "epsilon", "v": "v_prediction"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is faster


def make_model(schedule: Schedule, seed: int = 0):
    """A fixed smooth function of (x, t): the exact eps (or v) for N(0, 0.5^2) data plus a random linear
    part, defined for fractional t too (abar interpolated linearly), computed in x's dtype."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 3, generator=g) * 0.2
    b = torch.randn(3, generator=g) * 0.1
    abar = schedule.alphas_cumprod

    def model(x, t):
        t = t.double().reshape(-1)
        low = t.floor().long().clamp(max=T - 2)
        a = ((1 - (t - low)) * abar[low] + (t - low) * abar[low + 1]).to(x.dtype).reshape(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * x / (a * 0.25 + 1 - a)
        tf = (t / T).to(x.dtype).reshape(-1, 1, 1, 1)
        eps = eps + torch.einsum("oc,bchw->bohw", w.to(x), x) * torch.cos(3 * tf) + b.to(x).view(1, -1, 1, 1) * tf
        if schedule.parameterization == "v":  # v = sqrt(a) eps - sqrt(1 - a) x0, x0 from eps
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            return a.sqrt() * eps - (1 - a).sqrt() * x0
        return eps

    return model


def schedule_for(parameterization: str) -> Schedule:
    return Schedule(ScheduleConfig(timesteps=T, linear_start=BETA["beta_start"], linear_end=BETA["beta_end"],
                                   parameterization=parameterization))


def run_diffusers(sched, model, noise, steps, **step_kw):
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        out = model(sched.scale_model_input(x, t), t.expand(x.shape[0]))
        x = sched.step(out, t, x, **step_kw).prev_sample
    return x


def noise_and_gen(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def vp_noise(noise, sigmas_max: float):
    """ldmkit's start for a diffusers run that starts from noise * sigma_max (linspace / trailing)."""
    return noise * sigmas_max / math.sqrt(1 + sigmas_max**2)


def _sigma_max(sched, steps):
    sched.set_timesteps(steps)
    return float(sched.sigmas.max())


CASES = [
    # (ldmkit name, options, diffusers class, diffusers config, rescale start noise, step kwargs)
    ("ddim", {}, "DDIMScheduler", dict(timestep_spacing="leading", steps_offset=1), False, {}),
    ("ddim", dict(spacing="trailing"), "DDIMScheduler", dict(timestep_spacing="trailing"), False, {}),
    ("ddim", dict(eta=1.0), "DDIMScheduler", dict(timestep_spacing="leading", steps_offset=1), False,
     dict(eta=1.0)),
    ("plms", {}, "PNDMScheduler", dict(skip_prk_steps=True, timestep_spacing="leading", steps_offset=1), False,
     {}),
    ("dpmpp_2m", dict(spacing="trailing"), "DPMSolverMultistepScheduler", dict(timestep_spacing="trailing"),
     False, {}),
    ("dpmpp_2m", dict(karras=True, quantize=True), "DPMSolverMultistepScheduler", dict(use_karras_sigmas=True),
     False, {}),
    ("euler", dict(spacing="leading", steps_offset=1), "EulerDiscreteScheduler",
     dict(timestep_spacing="leading", steps_offset=1), False, {}),
    ("euler", {}, "EulerDiscreteScheduler", dict(timestep_spacing="linspace"), True, {}),
    ("euler", dict(karras=True), "EulerDiscreteScheduler", dict(use_karras_sigmas=True), True, {}),
    ("euler_a", dict(spacing="leading", steps_offset=1), "EulerAncestralDiscreteScheduler",
     dict(timestep_spacing="leading", steps_offset=1), False, {}),
    ("EulerAncestralDiscreteScheduler", {}, "EulerAncestralDiscreteScheduler", dict(timestep_spacing="linspace"),
     True, {}),
    ("heun", {}, "HeunDiscreteScheduler", dict(timestep_spacing="linspace"), True, {}),
    ("heun", dict(karras=True), "HeunDiscreteScheduler", dict(use_karras_sigmas=True), True, {}),
    ("heun", dict(spacing="leading", steps_offset=1), "HeunDiscreteScheduler",
     dict(timestep_spacing="leading", steps_offset=1), False, {}),
    # issue 22: SDE, single-step, UniPC and LCM solvers
    ("dpmpp_2m_sde", dict(spacing="trailing"), "DPMSolverMultistepScheduler",
     dict(timestep_spacing="trailing", algorithm_type="sde-dpmsolver++"), False, {}),
    ("DPM++ 2M SDE", dict(spacing="trailing", solver="heun"), "DPMSolverMultistepScheduler",
     dict(timestep_spacing="trailing", algorithm_type="sde-dpmsolver++", solver_type="heun"), False, {}),
    ("DPM++ 2M SDE Karras", dict(quantize=True), "DPMSolverMultistepScheduler",
     dict(use_karras_sigmas=True, algorithm_type="sde-dpmsolver++"), False, {}),
    ("dpmpp_3m_sde", dict(spacing="trailing", eta=0.0), "DPMSolverMultistepScheduler",  # eta 0: DPM++ 3M (ODE)
     dict(timestep_spacing="trailing", solver_order=3), False, {}),
    ("dpmpp_3m_sde_karras", dict(quantize=True, eta=0.0), "DPMSolverMultistepScheduler",
     dict(use_karras_sigmas=True, solver_order=3), False, {}),
    ("DPMSolverSinglestepScheduler", dict(karras=True, quantize=True), "DPMSolverSinglestepScheduler",
     dict(use_karras_sigmas=True), False, {}),
    ("unipc", dict(spacing="trailing"), "UniPCMultistepScheduler", dict(timestep_spacing="trailing"), False, {}),
    ("UniPC", dict(spacing="trailing", order=3), "UniPCMultistepScheduler",
     dict(timestep_spacing="trailing", solver_order=3), False, {}),
    ("UniPCMultistepScheduler", dict(karras=True, quantize=True), "UniPCMultistepScheduler",
     dict(use_karras_sigmas=True), False, {}),
    ("unipc", dict(spacing="trailing", corrector=False), "UniPCMultistepScheduler",
     dict(timestep_spacing="trailing", disable_corrector=list(range(10))), False, {}),
    ("lcm", {}, "LCMScheduler", {}, False, {}),
]
NEEDS_GENERATOR = {"euler_a", "EulerAncestralDiscreteScheduler", "dpmpp_2m_sde", "DPM++ 2M SDE",
                   "DPM++ 2M SDE Karras", "lcm"}


def _id(case):
    name, options, cls, config, *_ = case
    return f"{name}-{cls}-{'-'.join(f'{k}={v}' for k, v in {**options, **config}.items())}"


@pytest.mark.parametrize("parameterization", ["eps", "v"])
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_matches_diffusers(case, parameterization):
    name, options, cls_name, config, rescale, step_kw = case
    if cls_name == "PNDMScheduler" and parameterization == "v":
        pytest.skip("diffusers' PNDM combines raw v outputs; the original (SD 2.x plms.py) and ldmkit combine eps")
    stochastic = name in NEEDS_GENERATOR or step_kw.get("eta")
    steps = 10
    schedule = schedule_for(parameterization)
    model = make_model(schedule)
    extra = {"DDIMScheduler": dict(clip_sample=False, set_alpha_to_one=False),
             "PNDMScheduler": dict(set_alpha_to_one=False), "LCMScheduler": dict(clip_sample=False)}.get(cls_name, {})
    sched = getattr(diffusers, cls_name)(num_train_timesteps=T, beta_schedule="scaled_linear", **BETA,
                                         prediction_type=DIFFUSERS_PRED[parameterization], **extra, **config)
    noise = noise_and_gen()
    if stochastic:
        step_kw = {**step_kw, "generator": torch.Generator().manual_seed(5)}
    ref = run_diffusers(sched, model, noise, steps, **step_kw)

    start = vp_noise(noise, _sigma_max(sched, steps)) if rescale else noise
    gen = torch.Generator().manual_seed(5) if stochastic else None
    out = get_sampler(name)(model, start, schedule, steps=steps, generator=gen, **options)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL)
    assert ref.abs().max() > 0.1  # a real trajectory, not a collapse to zero


def test_euler_ancestral_depends_on_its_generator():
    schedule = schedule_for("eps")
    model, noise = make_model(schedule), noise_and_gen()
    run = lambda seed: get_sampler("euler_a")(model, noise, schedule, steps=10,  # noqa: E731
                                              generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)
    assert (run(1) - run(2)).abs().max() > 1e-2


def test_trailing_timesteps_match_diffusers_for_every_step_count():
    # ldmkit keeps diffusers' values and drops the stray point near 0 its arange yields for some N
    from ldmkit.diffusion import spaced_timesteps

    sched = diffusers.EulerDiscreteScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    for n in (7, 10, 25, 30, 50, 100):
        sched.set_timesteps(n)
        assert spaced_timesteps(T, n, "trailing")[::-1].tolist() == sched.timesteps.tolist()


def _with_d2_sign_fixed(sched):
    """diffusers' 3rd-order sde-dpmsolver++ update with its D2 coefficient's "- 0.5" read as "+ 0.5" (the exact
    integral of the quadratic term is O(h); theirs tends to -1): their update plus alpha_t * 1.0 * D2."""
    original = sched.multistep_dpm_solver_third_order_update

    def update(model_output_list, *args, sample=None, noise=None, **kw):
        x_t = original(model_output_list, *args, sample=sample, noise=noise, **kw)
        i = sched.step_index
        lam = []
        for sigma in (sched.sigmas[i + 1], sched.sigmas[i], sched.sigmas[i - 1], sched.sigmas[i - 2]):
            alpha, sig = sched._sigma_to_alpha_sigma_t(sigma)
            lam.append(torch.log(alpha) - torch.log(sig))
        alpha_t = sched._sigma_to_alpha_sigma_t(sched.sigmas[i + 1])[0]
        h, h_0, h_1 = lam[0] - lam[1], lam[1] - lam[2], lam[2] - lam[3]
        r0, r1 = h_0 / h, h_1 / h
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d2 = (1.0 / (r0 + r1)) * ((m0 - m1) / r0 - (m1 - m2) / r1)
        return x_t + alpha_t * d2

    sched.multistep_dpm_solver_third_order_update = update
    return sched


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_dpmpp_3m_sde_matches_diffusers_with_its_d2_sign_fixed(parameterization):
    schedule = schedule_for(parameterization)
    model, noise = make_model(schedule), noise_and_gen()
    make = lambda: diffusers.DPMSolverMultistepScheduler(  # noqa: E731
        num_train_timesteps=T, beta_schedule="scaled_linear", **BETA, prediction_type=DIFFUSERS_PRED[parameterization],
        timestep_spacing="trailing", solver_order=3, algorithm_type="sde-dpmsolver++")
    for steps in (10, 20):  # below 15 steps diffusers lowers the second-to-last step's order
        ref = run_diffusers(_with_d2_sign_fixed(make()), model, noise, steps,
                            generator=torch.Generator().manual_seed(5))
        out = get_sampler("dpmpp_3m_sde")(model, noise, schedule, steps=steps, spacing="trailing",
                                          generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(out, ref, rtol=0, atol=TOL)
        unfixed = run_diffusers(make(), model, noise, steps, generator=torch.Generator().manual_seed(5))
        assert (unfixed - ref).abs().max() > 1e-4  # the sign matters: the test sees the D2 term


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_unipc_bh1_matches_diffusers_up_to_its_nan_last_step(parameterization):
    # diffusers' bh1 with final_sigmas_type "zero" multiplies B(h) = -inf by 0 in the last step; the result
    # before it, x = D of the corrected point, is its last model output (what bh2 returns there)
    schedule = schedule_for(parameterization)
    model, noise = make_model(schedule), noise_and_gen()
    for order in (2, 3):
        sched = diffusers.UniPCMultistepScheduler(
            num_train_timesteps=T, beta_schedule="scaled_linear", **BETA, timestep_spacing="trailing",
            prediction_type=DIFFUSERS_PRED[parameterization], solver_type="bh1", solver_order=order)
        last = run_diffusers(sched, model, noise, 10)
        assert torch.isnan(last).all()
        out = get_sampler("unipc_bh1")(model, noise, schedule, steps=10, spacing="trailing", order=order)
        torch.testing.assert_close(out, sched.model_outputs[-1], rtol=0, atol=TOL)


def test_lcm_timesteps_match_diffusers():
    from ldmkit.diffusion.samplers_lcm import lcm_timesteps

    for n, original in ((1, 50), (2, 50), (4, 50), (7, 50), (8, 25), (50, 50)):
        sched = diffusers.LCMScheduler(num_train_timesteps=T, original_inference_steps=original)
        sched.set_timesteps(n)
        assert lcm_timesteps(T, n, original).tolist() == sched.timesteps.tolist()
    sched.set_timesteps(4, strength=0.5)
    assert lcm_timesteps(T, 4, 50, strength=0.5).tolist() == sched.timesteps.tolist()
