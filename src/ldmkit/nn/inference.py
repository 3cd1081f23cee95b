"""Inference precision: cast a network for half-precision inference, in the memory format its convolutions want.

On a CPU, oneDNN runs bf16 convolutions in channels-last (NHWC) layout; given NCHW tensors it reorders every
input and output of every convolution (`aten::copy_`: ~40 % of a bf16 kl-f4 decode at 256x256). With the
weights in channels-last, activations stay NHWC from the first convolution on and the reorders vanish: the same
decode 1.15 s -> 0.50 s, a bf16 UNet forward ~1.2x faster (2 threads; docs/performance.md). Training keeps
NCHW by default (channels-last GroupNorm backward is slow on CPUs; `train.channels_last` opts in), and so does
float32 inference, where the layout change does not pay reliably.
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


def prepare_inference(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` in eval mode, cast to ``dtype``; channels-last weights for half precision on a CPU (see above)."""
    module = module.eval().to(dtype)
    device = next(module.parameters(), torch.empty(0)).device
    if dtype in (torch.bfloat16, torch.float16) and device.type == "cpu":
        module = module.to(memory_format=torch.channels_last)
    return module
