"""Convolution weight gradients: oneDNN (PyTorch's CPU kernel) against ``ldmkit.nn.conv.conv2d_weight_grad`` (one
matmul over an im2col view), per shape of the benchmark UNet (batch 8), and the UNet's 8x8 level forward + backward
with and without the matmul path, and other batch sizes and widths: where ``ldmkit.nn.conv`` takes the matmul
(``MATMUL_WGRAD_MAX_ROWS``, ``MATMUL_WGRAD_MIN_OUT_CHANNELS``; docs/results.md, session 6).

    PYTHONPATH=src python benchmarks/conv_weight_grad.py                    # bf16, per shape + 8x8 level
    PYTHONPATH=src python benchmarks/conv_weight_grad.py --precision fp32   # float32 (no gain there)
    PYTHONPATH=src python benchmarks/conv_weight_grad.py --tiny             # smoke test

The two sides of each comparison alternate (``perf_measure.time_interleaved``), so a slow phase of a shared
machine hits both; speed-up = oneDNN time / matmul time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_measure import matmul_peak, median, time_interleaved  # noqa: E402

from ldmkit.nn import conv as conv_mod  # noqa: E402
from ldmkit.nn.blocks import Downsample, ResBlock  # noqa: E402

# (batch, output side, in channels, out channels, stride): the benchmark UNet's 3x3 convolutions at its training
# batch (latent 32, 128 * (1, 2, 4)), then other batches and widths (where the rule of ldmkit.nn.conv comes from)
SHAPES = [(8, 32, 128, 128, 1), (8, 32, 256, 128, 1), (8, 32, 384, 128, 1), (8, 16, 128, 256, 1),
          (8, 16, 256, 256, 1), (8, 16, 512, 256, 1), (8, 16, 512, 512, 1), (8, 8, 256, 256, 2), (8, 8, 256, 512, 1),
          (8, 8, 512, 512, 1), (8, 8, 1024, 512, 1), (8, 8, 768, 512, 1),
          (1, 8, 512, 512, 1), (1, 8, 128, 128, 1), (8, 8, 64, 64, 1), (8, 8, 192, 192, 1), (16, 8, 320, 320, 1),
          (32, 4, 512, 512, 1), (64, 4, 128, 128, 1), (64, 4, 256, 256, 1), (64, 8, 64, 64, 1), (64, 8, 128, 256, 1),
          (64, 8, 256, 256, 1), (64, 8, 512, 512, 1), (128, 8, 192, 192, 1), (256, 8, 128, 128, 1),
          (256, 8, 256, 256, 1)]
# the 8x8 level: ResBlocks (in, out) of the encoder, middle and decoder, and the 16 -> 8 downsample before it
LEVEL_8 = [(256, 512), (512, 512), (512, 512), (512, 512), (1024, 512), (1024, 512), (768, 512)]


def per_shape(dtype: torch.dtype, reps: int, scale: int) -> None:
    print("| batch, output, C -> O, stride | rows N*Ho*Wo | oneDNN ms | matmul ms | GFLOP/s oneDNN / matmul "
          "| speed-up |\n|---|---:|---:|---:|---|---:|")
    for batch, side, c, o, s in SHAPES:
        c, o = max(4, c // scale), max(4, o // scale)
        x = torch.randn(batch, c, side * s, side * s, dtype=dtype)
        w = torch.randn(o, c, 3, 3, dtype=dtype) * 0.05
        grad = torch.randn(batch, o, side, side, dtype=dtype)
        fns = {"onednn": lambda: torch.ops.aten.convolution_backward(
                   grad, x, w, None, [s, s], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]),
               "matmul": lambda: conv_mod.conv2d_weight_grad(x, grad, (3, 3), (s, s), (1, 1))}
        t = {k: median(v) for k, v in time_interleaved(fns, warmup=2, reps=reps).items()}
        flop = 2 * batch * side * side * o * c * 9
        print(f"| {batch}, {side}x{side}, {c} -> {o}, {s} | {batch * side * side} | {t['onednn'] * 1e3:.2f} | "
              f"{t['matmul'] * 1e3:.2f} | {flop / t['onednn'] / 1e9:.0f} / {flop / t['matmul'] / 1e9:.0f} | "
              f"{t['onednn'] / t['matmul']:.2f} |")


def level_8(dtype: torch.dtype, batch: int, reps: int, scale: int) -> None:
    """Forward + backward of the 8x8 level's blocks under autocast (bf16) or in float32, matmul path on / off."""
    torch.manual_seed(0)
    blocks = [ResBlock(i // scale, 512 // scale, o // scale) for i, o in LEVEL_8]
    down = Downsample(256 // scale, True)
    params = [p for b in blocks + [down] for p in b.parameters()]
    for p in params:
        p.data.normal_(0, 0.02)  # the zero-initialised output convs would make the gradients trivial
    xs = [torch.randn(batch, i // scale, 8, 8) for i, _ in LEVEL_8]
    emb, xd = torch.randn(batch, 512 // scale), torch.randn(batch, 256 // scale, 16, 16)

    def run(rows: int):
        def fn() -> None:
            conv_mod.MATMUL_WGRAD_MAX_ROWS = rows
            with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = sum(b(x, emb).float().square().mean() for b, x in zip(blocks, xs))
                loss = loss + down(xd).float().square().mean()
            loss.backward()
            for p in params:
                p.grad = None
        return fn

    default = conv_mod.MATMUL_WGRAD_MAX_ROWS
    try:
        times = time_interleaved({"matmul": run(default), "onednn": run(0)}, warmup=2, reps=reps)
    finally:
        conv_mod.MATMUL_WGRAD_MAX_ROWS = default
    paired = sorted(a / b for a, b in zip(times["onednn"], times["matmul"]))
    q = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
    print(f"\n8x8 level forward + backward ({len(LEVEL_8)} ResBlocks + downsample, batch {batch}): oneDNN "
          f"{median(times['onednn']) * 1e3:.1f} ms, matmul path {median(times['matmul']) * 1e3:.1f} ms; paired ratio "
          f"median {median(paired):.3f} (IQR {q[0]:.3f}-{q[2]:.3f}, {reps} reps)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--level-reps", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="channels / 16, 3 reps: a smoke test")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    scale, reps, level_reps = (16, 3, 3) if args.tiny else (1, args.reps, args.level_reps)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.precision}, matmul peak "
          f"{matmul_peak(dtype, 1024 if args.tiny else 4096, 3, torch.device('cpu')) / 1e9:.0f} GFLOP/s\n")
    per_shape(dtype, reps, scale)
    level_8(dtype, 8, level_reps, scale)


if __name__ == "__main__":
    main()
