"""Inference precision: cast a network for half-precision inference, in the memory format its convolutions want.

On a CPU, oneDNN runs bf16 convolutions in channels-last (NHWC) layout; given NCHW tensors it reorders every
input and output of every convolution (`aten::copy_`: ~40 % of a bf16 kl-f4 decode at 256x256). With the
weights in channels-last, activations stay NHWC from the first convolution on and the reorders vanish: the same
decode 1.15 s -> 0.50 s, a bf16 UNet forward ~1.2x faster (2 threads; docs/performance.md). Training keeps
NCHW by default (channels-last GroupNorm backward is slow on CPUs; `train.channels_last` opts in), and so does
float32 inference of the UNet, where the layout change does not pay reliably; a first stage's float32 decode
does gain (below).
"""
from __future__ import annotations

import torch
from torch import nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def inference_dtype(precision: str) -> torch.dtype:
    """"fp32" / "bf16" / "fp16" -> the torch dtype; anything else is a one-line error naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def prepare_inference(module: nn.Module, dtype: torch.dtype, first_stage: bool = False) -> nn.Module:
    """``module`` in eval mode, cast to ``dtype``; channels-last weights on a CPU for half precision (see above)
    and, for a first stage (``first_stage``), in float32 too: its decoder's 64x64-256x256 maps run float32
    convolutions faster in NHWC as well (kl-f4 / kl-f8 decode at 256, 2 threads: 1.06-1.14x -> 1.11-1.17x the
    speed of diffusers' NCHW decode in paired runs, outputs within 2e-5)."""
    module = module.eval().to(dtype)
    device = next(module.parameters(), torch.empty(0)).device
    if device.type == "cpu" and (dtype in (torch.bfloat16, torch.float16) or first_stage):
        module = module.to(memory_format=torch.channels_last)
    return module
