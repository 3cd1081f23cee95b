"""Peak memory of one UNet training step, measured in a fresh process per (side, precision, checkpointing), so no
allocator cache or earlier peak of another measurement is counted.

CPU: the kernel's resident-set high-water mark (VmHWM) is reset to the current RSS right before the step (Linux
/proc/self/clear_refs), and the step's figure is the high-water mark after it minus that RSS; without clear_refs the
getrusage ru_maxrss delta is used (the JSON says which). Accelerators: torch.accelerator's peak allocated memory.
The step is the second one: model, AdamW state, gradients (zeroed, not freed) and inputs exist before it, so the
figure is what the implementation adds: activations kept for backward, temporaries, and under autocast the bf16
copies of the weights (the same for both sides). Gradients are excluded on purpose: they are the same 4 bytes per
parameter on both sides, and a freed gradient's memory stays in the C heap, so with set_to_none its reallocation
would count or not by chance. ``peak_mib`` is the process's absolute peak (diffusers' import included).
"""
from __future__ import annotations

import ctypes
import gc
import time
from dataclasses import replace

import torch

from perf_cases import train_step, unet_inputs
from perf_measure import peak_rss_mib, reset_peak_rss, rss_mib, sync
from perf_models import Sizes
from ldmkit.convert.diffusers_config import unet_config_to_diffusers
from ldmkit.nn import UNetModel

# (side, activation checkpointing): ldmkit's use_checkpoint (per UNet block), diffusers' gradient checkpointing
MEMORY_RUNS = (("ldmkit", False), ("diffusers", False), ("ldmkit", True), ("diffusers", True))


def _model(side: str, s: Sizes, ckpt: bool) -> torch.nn.Module:
    if side == "ldmkit":
        return UNetModel(replace(s.unet, use_checkpoint=ckpt))
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_config(unet_config_to_diffusers(s.unet, s.latent))
    if ckpt:
        model.enable_gradient_checkpointing()
    return model


def release_free_heap() -> None:
    """Hand freed C-heap memory back to the OS (glibc ``malloc_trim``), so the resident set before the step is
    the live memory: otherwise memory the first step freed but glibc kept would be reused by the second step
    uncounted, and the figure would depend on what the first step happened to free (it moved by 40 MiB when
    only the optimizer's temporaries changed)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure keeps that caveat
        pass


def memory_child(spec: str, s: Sizes, device: torch.device) -> dict:
    """``spec`` = SIDE:PRECISION:CKPT (CKPT 0 or 1). Weights are the default initialisation: memory does not
    depend on their values."""
    side, precision, ckpt = spec.split(":")
    model = _model(side, s, ckpt == "1").to(device).train()
    x, t, ctx = unet_inputs(s, s.train_batch, device)
    # set_to_none=False: the gradients exist before the measured step (see the module docstring)
    train, _, _ = train_step(side, model, precision, device, (x, t, ctx), x, set_to_none=False)

    def step() -> None:
        train()
        sync(device)

    step()  # creates the gradients and the AdamW state
    gc.collect()
    release_free_heap()
    if device.type == "cpu":
        method = reset_peak_rss()
        base = rss_mib() if method == "VmHWM" else peak_rss_mib(method)
    else:
        method, base = "max_memory_allocated", torch.accelerator.memory_allocated() / 2**20
        torch.accelerator.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    peak = peak_rss_mib(method) if device.type == "cpu" else torch.accelerator.max_memory_allocated() / 2**20
    return {"side": side, "precision": precision, "checkpointing": ckpt == "1", "method": method,
            "before_mib": base, "peak_mib": peak, "step_mib": peak - base, "seconds": seconds}
