"""End-to-end training throughput of `ldmkit train-ldm`: with and without the latent cache, fp32 and bf16.

Each case is one `ldmkit train-ldm` subprocess (no shared allocator, thread pool or kernel caches) that runs
``--warmup`` + ``--steps`` steps with ``train.log_every=1``. Its img/s is read from its events.jsonl: steps x
batch over the logger's time between step ``warmup`` and step ``warmup + steps``, so start-up (imports, data
set, model), the first steps' one-off costs and the final sample grid are left out; the process is stopped
once that event is written. Cases, per preset:

    cache fp32    latents looked up in the latent cache (built first by `ldmkit cache-latents`, timed apart)
    encode fp32   train.cache_latents=false: the frozen first stage encodes every batch, as without a cache
    cache bf16    the cache, train.precision=bf16 (autocast; weights and optimiser stay fp32)

Presets are ``LDM_PRESET=AUTOENCODER_PRESET`` pairs: an untrained autoencoder of the second preset's
architecture is saved (with the project's release function) under ``--out`` and serves as first stage:
throughput does not depend on the weights. The defaults are the paper's 256x256 KL-f8 setting
(ldm/photos-256-bench, scikit-image crops) and the demo (ldm/fmnist-class, Fashion-MNIST):

    python benchmarks/train_throughput.py --out runs/bench-throughput
    python benchmarks/train_throughput.py --presets tiny/ldm=tiny/autoencoder --steps 2 --warmup 1   # a check

Prints a markdown table (and writes it with the raw numbers to ``--out``/results.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from ldmkit.autoencoder import Autoencoder
from ldmkit.config import load_config
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, release_autoencoder
from ldmkit.training.ldm_loop import LDMRunConfig

DEFAULT_PRESETS = "ldm/photos-256-bench=autoencoder/kl-f8-256,ldm/fmnist-class=autoencoder/kl-f4-fmnist"
CASES = {  # name -> overrides; the first is every preset's baseline
    "cache fp32": ["train.cache_latents=true", "train.precision=fp32"],
    "encode fp32": ["train.cache_latents=false", "train.precision=fp32"],
    "cache bf16": ["train.cache_latents=true", "train.precision=bf16"],
}
NEVER = 10**9  # sample / checkpoint / eval intervals the timed steps never reach


def slug(preset: str) -> str:
    return preset.replace("/", "-")


def untrained_first_stage(ae_preset: str, out: Path) -> Path:
    """An untrained autoencoder of ``ae_preset``'s architecture (seed 0), saved once as a release."""
    path = out / slug(ae_preset) / "autoencoder.safetensors"
    if not path.is_file():
        cfg = load_config(AutoencoderRunConfig, ae_preset, ["data.root=unused"])  # the data is the LDM preset's
        torch.manual_seed(0)
        release_autoencoder(path, Autoencoder(cfg.model), cfg.model, 0.18215, {"untrained": True})
    return path


def ldmkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "ldmkit", *args]


def img_per_s(events: Path, warmup: int, steps: int, batch: int) -> tuple[float, float]:
    """(img/s, s/step) over steps warmup+1 .. warmup+steps, from the logger's clock in ``events``."""
    times = {}
    for line in events.read_text().splitlines():
        event = json.loads(line)
        times[event["step"]] = event["time"]
    span = times[warmup + steps] - times[warmup] if warmup else times[steps]
    return steps * batch / span, span / steps


def run_case(preset: str, first_stage: Path, overrides: list[str], run: Path, warmup: int, steps: int,
             timeout: float) -> None:
    """``train-ldm`` in a subprocess until the event of step warmup+steps is written, then stop it."""
    events = run / "events.jsonl"
    cmd = ldmkit("train-ldm", preset, f"first_stage={first_stage}", f"train.out_dir={run}",
                 f"train.steps={warmup + steps}", "train.log_every=1", f"train.sample_every={NEVER}",
                 f"train.ckpt_every={NEVER}", "train.eval_every=0", "train.max_minutes=0", *overrides, "--no-resume")
    run.parent.mkdir(parents=True, exist_ok=True)
    log = (run.parent / f"{run.name}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if events.is_file() and any(json.loads(line)["step"] == warmup + steps
                                        for line in events.read_text().splitlines()):
                return  # the final checkpoint, release and sample grid are not part of the measurement
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd)} did not reach step {warmup + steps} in {timeout:.0f} s")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=DEFAULT_PRESETS, help="comma list of LDM_PRESET=AUTOENCODER_PRESET")
    ap.add_argument("--batch", default="ldm/photos-256-bench=4,ldm/fmnist-class=32",
                    help="comma list of LDM_PRESET=batch size (others: the preset's)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--threads", type=int, default=0, help="train.num_threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], help="extra override for every run, e.g. data.shapes_size=32")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case before giving up")
    ap.add_argument("--out", default="runs/bench-throughput")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = dict(item.split("=") for item in args.batch.split(",") if item)
    common = [f"train.device={args.device}", *([f"train.num_threads={args.threads}"] if args.threads else []),
              *args.set]
    rows = []
    for pair in args.presets.split(","):
        preset, ae_preset = pair.split("=")
        first_stage = untrained_first_stage(ae_preset, out)
        extra = common + ([f"train.batch_size={batches[preset]}"] if preset in batches else [])
        cfg = load_config(LDMRunConfig, preset, [f"first_stage={first_stage}", *extra])
        batch = cfg.train.batch_size
        t0 = time.perf_counter()
        subprocess.run(ldmkit("cache-latents", preset, f"first_stage={first_stage}", *extra), check=True,
                       stdout=subprocess.DEVNULL)
        cache_s = time.perf_counter() - t0
        print(f"{preset}: latent cache ready in {cache_s:.1f} s (built once, not timed below)", file=sys.stderr)
        base = None
        for name, overrides in CASES.items():
            run = out / slug(preset) / name.replace(" ", "-")
            run_case(preset, first_stage, [*overrides, *extra], run, args.warmup, args.steps, args.timeout)
            rate, step_s = img_per_s(run / "events.jsonl", args.warmup, args.steps, batch)
            base = base or rate
            rows.append({"preset": preset, "case": name, "batch": batch, "s_per_step": step_s, "img_per_s": rate,
                         "vs_baseline": rate / base, "cache_build_s": cache_s})
            print(f"{preset} {name}: {rate:.2f} img/s", file=sys.stderr)

    device = torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else \
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    lines = [f"Training throughput, {args.steps} steps after {args.warmup} warm-up, torch {torch.__version__}, "
             f"{device}", "",
             "| preset | case | batch | s/step | img/s | vs cache fp32 |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['preset']} | {r['case']} | {r['batch']} | {r['s_per_step']:.3f} | {r['img_per_s']:.2f} | "
              f"{r['vs_baseline']:.2f}x |" for r in rows]
    table = "\n".join(lines)
    print(table)
    (out / "results.json").write_text(json.dumps({"rows": rows, "table": table, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
