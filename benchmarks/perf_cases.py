"""The cases of benchmarks/perf_vs_diffusers.py. Each builder returns a ``Case``: one zero-argument function per
side ("ldmkit", "diffusers") doing the same work on the same inputs and weights, and the FLOPs of one call.

Precision: training is fp32, or bf16 autocast with fp32 weights and AdamW state (how ldmkit and diffusers train);
inference (forward, sampling, VAE) is fp32, or weights and inputs cast to bf16 (how diffusers pipelines run with
``torch_dtype=torch.bfloat16``).
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perf_measure import Lockstep, count_flops, sync
from perf_models import Sizes, unet_fn, vae_decode_fn, vae_encode_fn
from ldmkit.autoencoder import Autoencoder
from ldmkit.convert.diffusers_config import schedule_config_to_diffusers
from ldmkit.diffusion import Schedule, ScheduleConfig, cfg_denoise, sample_ddim
from ldmkit.evaluation.reconstruction import psnr
from ldmkit.nn import reuse_context_kv
from ldmkit.nn.inference import prepare_inference
from ldmkit.training.optim import adam

SIDES = ("ldmkit", "diffusers")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Case:
    name: str
    precision: str
    fns: dict[str, Callable[[], Any]]
    flops: dict[str, int]
    outputs: dict[str, Tensor] = field(default_factory=dict)  # last output of each side (parity check)
    info: dict[str, Any] = field(default_factory=dict)


def _keep(case_outputs: dict[str, Tensor], side: str, fn: Callable[[], Tensor], device: torch.device):
    """``fn`` that also stores its output for the parity check and waits for the device (honest timings)."""
    def run() -> None:
        case_outputs[side] = fn()
        sync(device)
    return run


def unet_inputs(s: Sizes, batch: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, s.unet.in_channels, s.latent, s.latent, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ctx = torch.randn(batch, s.context_len, s.unet.context_dim, generator=g)
    return x.to(device), t.to(device), ctx.to(device)


def _cast(models: dict[str, nn.Module], precision: str) -> dict[str, nn.Module]:
    """Inference copies in ``precision``: ldmkit through its own ``prepare_inference`` (what
    ``Pipeline.set_precision`` / ``ldmkit sample --precision`` do), diffusers cast as its pipelines do."""
    return {k: prepare_inference(copy.deepcopy(m), DTYPES[precision], first_stage=isinstance(m, Autoencoder))
            if k == "ldmkit"
            else copy.deepcopy(m).to(DTYPES[precision]).eval() for k, m in models.items()}


# ------------------------------------------------------------------------------------------------ UNet
def optimizer(side: str, model: nn.Module, same: bool) -> torch.optim.Optimizer:
    """Each library's AdamW as its trainer builds it: ldmkit's ``training.optim.adam`` (fused kernel where PyTorch
    has one), diffusers' training examples' plain ``torch.optim.AdamW`` (a per-parameter loop on a CPU).
    ``same``: ldmkit's on both sides, so the difference is the forward and backward alone."""
    if side == "ldmkit" or same:
        return adam(model.parameters(), lr=1e-4, weight_decay=1e-2)
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)


def train_step(side: str, model: nn.Module, precision: str, device: torch.device, inputs: tuple[Tensor, ...],
               target: Tensor, same_optimizer: bool = False, set_to_none: bool = True):
    """(step, fwd_bwd, optimizer) of one training step of ``model`` (in train mode) on ``inputs`` = (x, t, ctx):
    forward (bf16 autocast for "bf16"), MSE to ``target``, backward; ``step`` adds zero_grad and the side's AdamW
    (``optimizer``). Both return the loss."""
    fn, opt = unet_fn(model), optimizer(side, model, same_optimizer)

    def fwd_bwd() -> Tensor:
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            out = fn(*inputs)  # (B, C, H, W)
        loss = F.mse_loss(out.float(), target)
        loss.backward()
        return loss.detach()

    def step() -> Tensor:
        opt.zero_grad(set_to_none=set_to_none)
        loss = fwd_bwd()
        opt.step()
        return loss

    return step, fwd_bwd, opt


def train_case(models: dict[str, nn.Module], s: Sizes, precision: str, device: torch.device,
               same_optimizer: bool = False) -> Case:
    """Forward + MSE to the noise + backward + AdamW at batch ``s.train_batch``; copies, so the inference cases
    keep the shared weights."""
    x, t, ctx = unet_inputs(s, s.train_batch, device)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    case = Case("same-optimizer train step" if same_optimizer else "train step", precision, {}, {})
    for side, model in models.items():
        step, fwd_bwd, opt = train_step(side, copy.deepcopy(model).train(), precision, device, (x, t, ctx), noise,
                                        same_optimizer)
        case.flops[side] = count_flops(fwd_bwd)  # also the first (untimed) forward and backward
        opt.step()  # ... and AdamW's state, so the first timed step does not allocate it
        case.fns[side] = _keep(case.outputs, side, step, device)
    return case


def infer_case(models: dict[str, nn.Module], s: Sizes, precision: str, device: torch.device) -> Case:
    """One UNet forward at the guided sampler's batch (2 x sample_batch)."""
    x, t, ctx = unet_inputs(s, 2 * s.sample_batch, device)
    dtype = DTYPES[precision]
    x, ctx = x.to(dtype), ctx.to(dtype)
    case = Case("UNet forward", precision, {}, {})
    for side, model in _cast(models, precision).items():
        fn = unet_fn(model)

        def fwd(fn=fn) -> Tensor:
            with torch.inference_mode():
                return fn(x, t, ctx)

        case.flops[side] = count_flops(fwd)
        case.fns[side] = _keep(case.outputs, side, fwd, device)
    return case


def compiled_infer_case(models: dict[str, nn.Module], s: Sizes, precision: str, device: torch.device) -> Case:
    """``infer_case`` with each side's UNet under ``torch.compile`` (default inductor settings); the first call
    (compilation + one run) is reported as ``compile_seconds``."""
    x, t, ctx = unet_inputs(s, 2 * s.sample_batch, device)
    dtype = DTYPES[precision]
    x, ctx = x.to(dtype), ctx.to(dtype)
    case = Case("UNet forward, torch.compile", precision, {}, {}, info={"compile_seconds": {}})
    for side, model in _cast(models, precision).items():
        case.flops[side] = count_flops(lambda fn=unet_fn(model): fn(x, t, ctx))  # eager: same maths
        fn = unet_fn(torch.compile(model))

        def fwd(fn=fn) -> Tensor:
            with torch.inference_mode():
                return fn(x, t, ctx)

        t0 = time.perf_counter()
        fwd()
        case.info["compile_seconds"][side] = time.perf_counter() - t0
        case.fns[side] = _keep(case.outputs, side, fwd, device)
    return case


def sample_case(models: dict[str, nn.Module], s: Sizes, precision: str, device: torch.device, steps: int,
                guidance: float = 7.5) -> Case:
    """DDIM (eta 0), ``steps`` steps, classifier-free guidance with one batched [uncond; cond] UNet call per step.
    ldmkit: ``sample_ddim`` + ``cfg_denoise`` inside ``reuse_context_kv``, as its pipeline samples; diffusers: its
    DDIMScheduler loop as in its pipelines, with the scheduler config ldmkit exports (the two give the same samples,
    checked in the parity column). FLOPs: ``steps`` full UNet calls on both sides (the keys and values ldmkit
    reuses are counted as work done)."""
    from diffusers import DDIMScheduler

    dtype = DTYPES[precision]
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(s.sample_batch, s.unet.in_channels, s.latent, s.latent, generator=g).to(device, dtype)
    cond = torch.randn(s.sample_batch, s.context_len, s.unet.context_dim, generator=g).to(device, dtype)
    uncond = torch.zeros_like(cond)
    schedule = Schedule(ScheduleConfig())  # float64 tables on the CPU, gathered onto x's device
    scheduler = DDIMScheduler.from_config(schedule_config_to_diffusers(ScheduleConfig()))
    m = _cast(models, precision)
    ours, theirs = unet_fn(m["ldmkit"]), unet_fn(m["diffusers"])
    stamps: dict[str, list[float]] = {"ldmkit": [], "diffusers": []}  # end time of every step of the last run
    lock: list[Lockstep] = []  # set while lockstep() runs

    def stamp(side: str) -> None:
        sync(device)
        stamps[side].append(time.perf_counter())
        if lock:
            lock[0].turn(side)

    def ldmkit_sample(n: int = steps) -> Tensor:
        stamps["ldmkit"] = [time.perf_counter()]
        # reuse_context_kv: as Pipeline.sample_latents runs its samplers (the prompt's keys and values once)
        with torch.inference_mode(), reuse_context_kv(m["ldmkit"]):
            return sample_ddim(cfg_denoise(ours, cond, uncond, guidance), x_T, schedule, steps=n,
                               callback=lambda *_: stamp("ldmkit"))

    def diffusers_sample(n: int = steps) -> Tensor:
        stamps["diffusers"] = [time.perf_counter()]
        with torch.inference_mode():
            scheduler.set_timesteps(n, device=device)
            latents = x_T * scheduler.init_noise_sigma
            context = torch.cat([uncond, cond])
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                eps_u, eps_c = theirs(model_in, t, context).chunk(2)
                latents = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, latents, return_dict=False)[0]
                stamp("diffusers")
            return latents

    x, t, ctx = unet_inputs(s, 2 * s.sample_batch, device)
    x, ctx = x.to(dtype), ctx.to(dtype)
    case = Case(f"DDIM {steps} steps + CFG", precision, {}, {})
    for side, sample in (("ldmkit", ldmkit_sample), ("diffusers", diffusers_sample)):
        fn = ours if side == "ldmkit" else theirs
        with torch.inference_mode():
            case.flops[side] = steps * count_flops(lambda fn=fn: fn(x, t, ctx))  # one guided step's UNet call
            sample(2)  # warm-up: a short run (a 50-step one would double the cost of this case)
        case.fns[side] = _keep(case.outputs, side, sample, device)
    case.info["step_stamps"] = stamps  # read by step_medians after timing

    def lockstep(reps: int) -> list[dict[str, float]]:
        """Whole samples with the two sides' steps alternating (``Lockstep``), who starts alternating too."""
        runs = []
        for r in range(reps):
            order = list(SIDES) if r % 2 == 0 else list(SIDES)[::-1]
            lock[:] = [Lockstep(order)]
            try:
                runs.append(lock[0].run({"ldmkit": ldmkit_sample, "diffusers": diffusers_sample}))
            finally:
                lock.clear()
        return runs

    case.info["lockstep_fn"] = lockstep  # run by lockstep_times after the interleaved timing
    return case


def lockstep_times(case: Case, reps: int) -> None:
    """The sampling case again, its sides' steps alternating: the sample time least moved by a shared machine."""
    fn = case.info.pop("lockstep_fn", None)
    if fn is not None:
        runs = fn(reps)
        med = {k: statistics.median(r[k] for r in runs) for k in SIDES}
        case.info["lockstep_seconds"] = med
        case.info["lockstep_runs"] = runs
        case.info["lockstep_speedup"] = med["diffusers"] / med["ldmkit"]


def step_medians(case: Case) -> None:
    """Median seconds per sampler step of each side's last run: 50 repetitions inside one sample, steadier than
    a few whole samples on a shared machine."""
    stamps = case.info.pop("step_stamps", None)
    if stamps:
        case.info["step_median_seconds"] = {k: statistics.median(b - a for a, b in zip(v, v[1:]))
                                            for k, v in stamps.items() if len(v) > 1}


# ------------------------------------------------------------------------------------------------ VAE
def vae_cases(name: str, models: dict[str, nn.Module], s: Sizes, precision: str, device: torch.device,
              reference: dict[str, Tensor]) -> list[Case]:
    """Encode (image -> posterior moments) and decode (latent -> image) at every size of ``s.vae_sizes``.
    ``reference`` holds the fp32 decodes (see ``decode_psnr``); a bf16-only run computes them here."""
    m = _cast(models, precision)
    dtype = DTYPES[precision]
    cases = []
    for size in s.vae_sizes:
        g = torch.Generator().manual_seed(size)
        cfg = m["ldmkit"].cfg
        image = (torch.rand(s.vae_batch, cfg.in_channels, size, size, generator=g) * 2 - 1).to(device, dtype)
        side = size // cfg.downsample_factor
        z = torch.randn(s.vae_batch, cfg.embed_dim, side, side, generator=g).to(device, dtype)
        for op, arg, make in (("encode", image, vae_encode_fn), ("decode", z, vae_decode_fn)):
            case = Case(f"{name} {op} {size}", precision, {}, {})
            for k, model in m.items():
                fn = make(model)

                def call(fn=fn, arg=arg) -> Tensor:
                    with torch.inference_mode():
                        return fn(arg)

                case.flops[k] = count_flops(call)
                case.fns[k] = _keep(case.outputs, k, call, device)
            cases.append(case)
            if op == "decode" and precision != "fp32" and case.name not in reference:
                with torch.inference_mode():
                    reference[case.name] = vae_decode_fn(models["ldmkit"])(z.float()).clamp(-1, 1)
    return cases


def decode_psnr(case: Case, reference: dict[str, Tensor]) -> None:
    """After timing: keep an fp32 decode as the reference, or give a bf16 one its PSNR against it."""
    out = case.outputs.get("ldmkit")
    if out is None or "decode" not in case.name:
        return
    if case.precision == "fp32":
        reference[case.name] = out.float().clamp(-1, 1)
    elif case.name in reference:
        case.info["psnr_bf16_vs_fp32_db"] = psnr(out.float().clamp(-1, 1), reference[case.name]).min().item()


def parity(case: Case) -> float | None:
    """Largest |ldmkit - diffusers| of the two outputs (identical weights, so only rounding may differ)."""
    a, b = case.outputs.get("ldmkit"), case.outputs.get("diffusers")
    if a is None or b is None:
        return None
    return (a.float() - b.float()).abs().max().item()
