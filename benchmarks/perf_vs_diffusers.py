"""ldmkit vs diffusers on the same architectures with identical weights (copied through ldmkit's converter):
UNet training step, UNet forward, guided DDIM sampling, and kl-f4 / kl-f8 encode and decode, timed in one process
side by side (interleaved, warm-up + median), with FLOPs, achieved FLOP/s and the fraction of this machine's
measured matmul peak (MFU), and the peak memory of a training step (one fresh subprocess per measurement).

    PYTHONPATH=src python benchmarks/perf_vs_diffusers.py                 # the full run (2 threads)
    PYTHONPATH=src python benchmarks/perf_vs_diffusers.py --tiny          # smoke test (~1 min)
    ... --cases train,mem --precision bf16 --reps 5                       # a subset
    ... --cases infer --compile                                           # + torch.compile (minutes to compile)

Writes <out>.json (every number, raw times included) and <out>.md (the tables), and prints the tables. Speed-up =
diffusers time / ldmkit time (> 1: ldmkit is faster); memory ratio = ldmkit / diffusers (< 1: ldmkit uses less).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_cases import (DTYPES, SIDES, Case, compiled_infer_case, decode_psnr, infer_case,  # noqa: E402
                        lockstep_times, parity, sample_case, step_medians, train_case, vae_cases)
from perf_measure import matmul_peak, median, time_interleaved  # noqa: E402
from perf_memory import MEMORY_RUNS, memory_child  # noqa: E402
from perf_models import autoencoder_config, sizes, unet_pair, vae_pair  # noqa: E402
from perf_report import markdown  # noqa: E402

CASES = ("train", "infer", "sample", "vae", "mem")


def parse_list(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        sys.exit(f"error: {flag}: expected a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return [x for x in allowed if x in items]  # canonical order (fp32 before bf16: bf16 decodes need the fp32 ones)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    ap.add_argument("--precision", default="fp32,bf16", help="subset of fp32,bf16")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per side (median reported)")
    ap.add_argument("--sample-reps", type=int, default=1,
                    help="whole samples per side (each is --steps UNet calls; the median step is reported too)")
    ap.add_argument("--warmup", type=int, default=0, help="extra untimed calls per side (the first call, which "
                    "counts the FLOPs, is always untimed; sampling warms up with a 2-step run)")
    ap.add_argument("--compile", action="store_true", help="also time the UNet forward under torch.compile "
                    "(both sides; compile time reported)")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps of the sampling case")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", help="cpu (the issue's setting) or an accelerator, e.g. cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny models and shapes: a smoke test of the script")
    ap.add_argument("--out", default="runs/benchmarks/perf_vs_diffusers", help="output path without extension")
    ap.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)  # SIDE:PRECISION:CKPT, internal
    args = ap.parse_args(argv)
    for name in ("reps", "sample_reps", "warmup", "steps", "threads"):
        low = 0 if name == "warmup" else 1
        if getattr(args, name) < low:
            sys.exit(f"error: --{name.replace('_', '-')}: must be >= {low}, got {getattr(args, name)}")
    args.cases = parse_list(args.cases, CASES, "--cases")
    args.precision = parse_list(args.precision, tuple(DTYPES), "--precision")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        sys.exit(f"error: --device: not a torch device: {args.device!r}")
    return args


def run_case(case: Case, warmup: int, reps: int, reference: dict) -> dict:
    t0 = time.perf_counter()
    times = time_interleaved(case.fns, warmup, reps)
    decode_psnr(case, reference)
    step_medians(case)
    lockstep_times(case, reps)
    med = {k: median(v) for k, v in times.items()}
    row = {"case": case.name, "precision": case.precision, "seconds": med, "times": times,
           "min_seconds": {k: min(v) for k, v in times.items()},
           "speedup": med["diffusers"] / med["ldmkit"], "flops": case.flops,
           "flops_per_s": {k: case.flops[k] / med[k] for k in SIDES},
           "max_abs_diff": parity(case), **case.info}
    case.outputs.clear()
    steps = row.get("step_median_seconds")
    more = f", median step speed-up {steps['diffusers'] / steps['ldmkit']:.3f}" if steps else ""
    if "lockstep_speedup" in row:
        more += f", lockstep speed-up {row['lockstep_speedup']:.3f}"
    print(f"  {case.name} [{case.precision}]: ldmkit {med['ldmkit']:.4f} s, diffusers {med['diffusers']:.4f} s, "
          f"speed-up {row['speedup']:.3f}{more} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return row


def memory_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for precision in args.precision:
        for side, ckpt in MEMORY_RUNS:
            cmd = [sys.executable, __file__, "--child-memory", f"{side}:{precision}:{int(ckpt)}",
                   "--threads", str(args.threads), "--device", str(args.device)] + (["--tiny"] if args.tiny else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"error: memory measurement {side} {precision} checkpointing={ckpt} failed:\n{proc.stderr[-2000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  memory {side} [{precision}] checkpointing={ckpt}: step {r['step_mib']:.0f} MiB "
                  f"(peak {r['peak_mib']:.0f} MiB, {r['seconds']:.2f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its advice on casting with .to() (the bf16 cases do, on purpose)
    if args.child_memory:
        print(json.dumps(memory_child(args.child_memory, sizes(args.tiny), args.device)))
        return
    t_start = time.perf_counter()
    s = sizes(args.tiny)
    reps, sample_reps = args.reps, args.sample_reps
    n = 256 if args.tiny else 4096
    print(f"matmul peak ({n}^3, best of {max(3, reps)}, {args.threads} threads; measured again at the end):", flush=True)
    peaks = {p: matmul_peak(DTYPES[p], n, max(3, reps), args.device) for p in args.precision}
    for p, v in peaks.items():
        print(f"  {p}: {v / 1e9:.1f} GFLOP/s", flush=True)
    rows, reference = [], {}
    if {"train", "infer", "sample"} & set(args.cases):
        ours, theirs = unet_pair(s.unet, s.latent)
        models = {"ldmkit": ours.to(args.device), "diffusers": theirs.to(args.device)}
        for precision in args.precision:
            if "train" in args.cases:
                for same in (False, True):
                    rows.append(run_case(train_case(models, s, precision, args.device, same), args.warmup, reps,
                                         reference))
            if "infer" in args.cases:
                rows.append(run_case(infer_case(models, s, precision, args.device), args.warmup, reps, reference))
                if args.compile:
                    rows.append(run_case(compiled_infer_case(models, s, precision, args.device), args.warmup, reps,
                                         reference))
            if "sample" in args.cases:
                rows.append(run_case(sample_case(models, s, precision, args.device, args.steps), args.warmup,
                                     sample_reps, reference))
        del models, ours, theirs
    if "vae" in args.cases:
        for name in ("kl-f4", "kl-f8"):
            ours, theirs = vae_pair(autoencoder_config(name, args.tiny))
            models = {"ldmkit": ours.to(args.device), "diffusers": theirs.to(args.device)}
            for precision in args.precision:
                for case in vae_cases(name, models, s, precision, args.device, reference):
                    rows.append(run_case(case, args.warmup, reps, reference))
    # the peak again at the end, keeping the higher: a shared machine's speed drifts, and a peak measured in a slow
    # phase would inflate every MFU
    for p in args.precision:
        peaks[p] = max(peaks[p], matmul_peak(DTYPES[p], n, max(3, reps), args.device))
    for row in rows:
        row["mfu"] = {k: row["flops_per_s"][k] / peaks[row["precision"]] for k in SIDES}
    memory = memory_rows(args) if "mem" in args.cases else []
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "device": str(args.device), "torch": torch.__version__,
                          "diffusers": __import__("diffusers").__version__, "tiny": args.tiny},
              "settings": {"reps": reps, "sample_reps": sample_reps, "warmup": args.warmup, "steps": args.steps,
                           "train_batch": s.train_batch, "sample_batch": s.sample_batch},
              "matmul_peak_flops_per_s": peaks, "cases": rows, "memory": memory,
              "wall_seconds": time.perf_counter() - t_start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print("\n" + table + f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')} "
          f"({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
