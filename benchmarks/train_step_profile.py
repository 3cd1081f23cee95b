"""Where the time of one UNet training step goes, by operator: seconds, FLOPs and achieved FLOP/s of each, set
against this machine's matmul peak. It explains the MFU column of benchmarks/perf_vs_diffusers.py: which kernels
run far from the matmul peak, and how much of the step does no FLOPs at all (norms, activations, casts, AdamW).

    PYTHONPATH=src python benchmarks/perf_vs_diffusers.py ...        # the side-by-side ratios
    PYTHONPATH=src python benchmarks/train_step_profile.py --precision bf16 --side ldmkit

Same model, inputs and step as the "train step" case of perf_vs_diffusers.py (batch 8, AdamW of each library);
the profile is of the median of ``--reps`` profiled steps (by total time); times are the operators' own (self)
times under the profiler, which adds a little per operator. FLOPs are counted once with
``torch.utils.flop_counter`` (as the benchmark's MFU: convolutions forward and backward, matmuls, attention).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_cases import DTYPES, train_step, unet_inputs  # noqa: E402
from perf_measure import flops_by_op, matmul_peak  # noqa: E402
from perf_models import sizes, unet_pair  # noqa: E402

GROUPS = {"convolution forward": ("aten::mkldnn_convolution", "aten::convolution_overrideable"),
          "convolution backward": ("aten::convolution_backward",),
          "matmul (linear, attention)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
          "fused attention kernel": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                     "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
          "AdamW": ("aten::_fused_adamw_", "aten::lerp_", "aten::addcdiv_", "aten::addcmul_", "aten::sqrt",
                    "aten::_foreach_lerp_", "aten::_foreach_addcdiv_"),
          "casts and copies": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")}


OTHER = "other (norms, activations, softmax, adds, autograd)"
# FlopCounterMode's operators -> the group their kernels' time is booked under
FLOP_GROUPS = {"convolution": "convolution forward", "convolution_backward": "convolution backward",
               "mm": "matmul (linear, attention)", "addmm": "matmul (linear, attention)",
               "bmm": "matmul (linear, attention)", "baddbmm": "matmul (linear, attention)",
               "_scaled_dot_product_flash_attention_for_cpu": "fused attention kernel",
               "_scaled_dot_product_flash_attention_for_cpu_backward": "fused attention kernel"}


def group_of(name: str) -> str:
    return next((g for g, names in GROUPS.items() if name in names), OTHER)


def flops_by_group(step) -> dict[str, int]:
    out: dict[str, int] = collections.Counter()
    for op, n in flops_by_op(step).items():
        out[FLOP_GROUPS.get(op, OTHER)] += n
    return out


def profile_step(side: str, precision: str, reps: int) -> dict:
    s = sizes(False)
    model = dict(zip(("ldmkit", "diffusers"), unet_pair(s.unet, s.latent)))[side].train()
    cpu = torch.device("cpu")
    x, t, ctx = unet_inputs(s, s.train_batch, cpu)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    step, _, _ = train_step(side, model, precision, cpu, (x, t, ctx), noise)

    flops = flops_by_group(step)  # also AdamW's state
    step()  # allocator warm
    runs = []
    for _ in range(reps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        groups: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        top: dict[str, float] = collections.Counter()
        for e in prof.key_averages():
            groups[group_of(e.key)][0] += e.self_cpu_time_total / 1e6
            top[e.key] += e.self_cpu_time_total / 1e6
        for g, n in flops.items():
            groups[g][1] += n
        runs.append({"total_s": sum(v[0] for v in groups.values()), "groups": dict(groups),
                     "top_ops_s": dict(sorted(top.items(), key=lambda kv: -kv[1])[:15])})
    return sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]


def markdown(run: dict, peak: float, side: str, precision: str) -> str:
    total, flops = run["total_s"], sum(v[1] for v in run["groups"].values())
    lines = [f"{side} training step, {precision}, batch 8: {total:.3f} s (profiled), {flops / 1e9:.0f} GFLOP counted, "
             f"matmul peak {peak / 1e9:.0f} GFLOP/s -> MFU {flops / total / peak:.1%}", "",
             "| operators | seconds | share | GFLOP | GFLOP/s | of the matmul peak |", "|---|---:|---:|---:|---:|---:|"]
    for name, (sec, fl) in sorted(run["groups"].items(), key=lambda kv: -kv[1][0]):
        rate = f"{fl / sec / 1e9:.0f}" if fl else "-"
        frac = f"{fl / sec / peak:.0%}" if fl else "-"
        lines.append(f"| {name} | {sec:.3f} | {sec / total:.0%} | {fl / 1e9:.0f} | {rate} | {frac} |")
    lines += ["", "Largest operators (self seconds): " + ", ".join(f"{k} {v:.3f}" for k, v in run["top_ops_s"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", default="bf16", choices=tuple(DTYPES))
    ap.add_argument("--side", default="ldmkit", choices=("ldmkit", "diffusers"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    peak = matmul_peak(DTYPES[args.precision], 4096, 5, torch.device("cpu"))
    run = profile_step(args.side, args.precision, args.reps)
    # again after: a shared machine's speed drifts, and a peak measured in a slow phase would inflate the MFU
    peak = max(peak, matmul_peak(DTYPES[args.precision], 4096, 5, torch.device("cpu")))
    table = markdown(run, peak, args.side, args.precision)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"peak": peak, **run}, indent=1) + "\n")
        out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
