"""Markdown tables of a benchmarks/perf_vs_diffusers.py result, with the issue's targets checked."""
from __future__ import annotations

from typing import Any

# (case name prefix, precision) -> minimum speed-up (diffusers time / ldmkit time)
SPEED_TARGETS = {("train step", "fp32"): 1.0, ("train step", "bf16"): 1.25,
                 ("DDIM", "fp32"): 1.0, ("DDIM", "bf16"): 1.15,
                 ("kl-f4 decode 256", "fp32"): 1.0, ("kl-f4 decode 256", "bf16"): 1.15,
                 ("kl-f8 decode 256", "fp32"): 1.0, ("kl-f8 decode 256", "bf16"): 1.15}
MFU_TARGETS = {("train step", "bf16"): 0.70}
PSNR_TARGET_DB = 40.0
MEMORY_TARGETS = {False: 0.9, True: 0.5}  # ldmkit / diffusers without checkpointing, by ldmkit's checkpointing


def _check(value: float, target: float | None, at_least: bool) -> str:
    if target is None:
        return ""
    ok = value >= target if at_least else value <= target
    return f"{'>=' if at_least else '<='} {target:g}: {'met' if ok else 'NOT met'}"


def _target(targets: dict, name: str, precision: str) -> float | None:
    return next((v for (prefix, p), v in targets.items() if name.startswith(prefix) and p == precision), None)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    peaks = result["matmul_peak_flops_per_s"]
    lines = [f"ldmkit vs diffusers {m['diffusers']}, torch {m['torch']}, {m['device']}, {m['threads']} threads"
             + (" (--tiny smoke test: not a measurement)" if m["tiny"] else ""),
             "", "Matmul peak (measured): " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()), ""]
    if result["cases"]:
        lines += ["| case | precision | ldmkit s | diffusers s | speed-up | target | GFLOP | ldmkit GFLOP/s "
                  "| MFU ldmkit | MFU diffusers | max abs diff |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["cases"]:
            name, p = r["case"], r["precision"]
            checks = [_check(r["speedup"], _target(SPEED_TARGETS, name, p), True)]
            if "step_median_seconds" in r:
                st = r["step_median_seconds"]
                checks.append(f"median step: {st['ldmkit']:.3f} s vs {st['diffusers']:.3f} s, "
                              f"{st['diffusers'] / st['ldmkit']:.3f}x")
            if "lockstep_seconds" in r:
                ls = r["lockstep_seconds"]
                checks.append(f"steps alternating (lockstep): {ls['ldmkit']:.2f} s vs {ls['diffusers']:.2f} s, "
                              f"{r['lockstep_speedup']:.3f}x " + _check(r["lockstep_speedup"],
                                                                         _target(SPEED_TARGETS, name, p), True))
            if "compile_seconds" in r:
                c = r["compile_seconds"]
                checks.append(f"first call (compile): {c['ldmkit']:.0f} s vs {c['diffusers']:.0f} s")
            mfu_target = _target(MFU_TARGETS, name, p)
            if mfu_target is not None:
                checks.append("MFU " + _check(r["mfu"]["ldmkit"], mfu_target, True))
            if "psnr_bf16_vs_fp32_db" in r:
                checks.append(f"PSNR {r['psnr_bf16_vs_fp32_db']:.1f} dB " + _check(r["psnr_bf16_vs_fp32_db"],
                                                                                PSNR_TARGET_DB, True))
            diff = "" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
            lines.append(f"| {name} | {p} | {r['seconds']['ldmkit']:.4f} | {r['seconds']['diffusers']:.4f} | "
                         f"{r['speedup']:.3f} | {'; '.join(c for c in checks if c)} | {r['flops']['ldmkit'] / 1e9:.1f} | "
                         f"{r['flops_per_s']['ldmkit'] / 1e9:.1f} | {r['mfu']['ldmkit']:.1%} | "
                         f"{r['mfu']['diffusers']:.1%} | {diff} |")
        lines += ["", "speed-up = diffusers time / ldmkit time (median of the repetitions, sides interleaved); "
                  "MFU = counted FLOPs (matmuls, convolutions, attention) / time / the measured matmul peak of the "
                  "precision (the higher of two measurements, before and after the cases); \"train step\": each "
                  "library's AdamW as its trainer builds it (ldmkit: fused kernel; diffusers' examples: "
                  "torch.optim.AdamW, a per-parameter loop on a CPU); \"same-optimizer train step\": ldmkit's on both "
                  "sides; max abs diff = |ldmkit - diffusers| of the outputs (same weights).", ""]
    if result["memory"]:
        lines += ["| training step memory | precision | ldmkit MiB | diffusers MiB | ldmkit / diffusers | target |",
                  "|---|---|---|---|---|---|"]
        mem = {(r["side"], r["precision"], r["checkpointing"]): r for r in result["memory"]}
        for p in dict.fromkeys(r["precision"] for r in result["memory"]):
            for ours_ckpt, theirs_ckpt in ((False, False), (True, False), (True, True)):
                a, b = mem.get(("ldmkit", p, ours_ckpt)), mem.get(("diffusers", p, theirs_ckpt))
                if a is None or b is None:
                    continue
                ratio = a["step_mib"] / b["step_mib"]
                target = MEMORY_TARGETS[ours_ckpt] if not theirs_ckpt else None
                label = {(False, False): "plain", (True, False): "ldmkit checkpointing vs diffusers plain",
                         (True, True): "both checkpointing"}[(ours_ckpt, theirs_ckpt)]
                lines.append(f"| {label} | {p} | {a['step_mib']:.0f} | {b['step_mib']:.0f} | {ratio:.3f} | "
                             f"{_check(ratio, target, False)} |")
        method = result["memory"][0]["method"]
        lines += ["", f"memory = what one training step adds to the process ({method} after the step minus the "
                  "resident memory before it, after returning freed heap memory to the OS with malloc_trim; model, "
                  "gradients, AdamW state and inputs exist already): activations "
                  "kept for backward and temporaries (and, in bf16, autocast's weight copies); one fresh process per "
                  "cell.", ""]
    return "\n".join(lines)
