"""The paper's compression trade-off (Fig. 6 / 7) at small scale: pixel space (f=1) against latent f=2, 4, 8
on Fashion-MNIST 32x32, at EQUAL TRAINING WALL TIME per row.

Each row trains the same class-conditional UNet (model_channels 64, channel_mult (1, 2), one res block,
cross-attention at the lower level and in the middle: 3.98M parameters in every row) on its first stage's
latents, so only the resolution it runs at differs (32x32x1 pixels, 16x16x3, 8x8x3, 4x4x4), as in the paper.
Same recipe everywhere: batch 32, AdamW lr 1e-3 constant after 20 warm-up steps (a constant rate makes every
point of a curve a fair snapshot), Min-SNR-5, EMA 0.999, condition dropout 0.1, the fmnist-class schedule.

Training runs in segments up to fractions of the budget (``--eval-at``); after each, the EMA model is scored
by ``ldmkit eval`` (``FD-fmnist`` + IS, in-project classifier features). Only the training loop's time counts
(evaluation, checkpoints, the latent cache are outside it). The pixel model samples ~17x slower than f=4, so by
default it is scored at 1/3 and at the end only (``--pixel-eval-at``): what the claim needs.

First stages (KL-f2 / f4 / f8, 10-min recipe of docs/results.md) are copied from ``--ae-dir`` (the trained
runs/results/kl-fN), or trained here by the same recipe when absent; their time is reported separately.

    python benchmarks/compression_sweep.py --budget-min 5 --rows 1,2,4,8 --eval-n 500 \\
        --out runs/compression --plot docs/compression.png --guidance-sweep

Resumable: a finished row (row.json) is skipped, an interrupted one continues at its last finished segment
or evaluation. ``--tiny`` is the smoke test (seconds of training, 20 samples, small UNet, no latent cache).
The training loop's own preview grids use 1 sampling step (cheap, not looked at); ``grid.png`` in each row
folder shows 8 of the final evaluation samples per class.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from compression_report import FD, load_rows, render_plot, segment_seconds, tables
from ldmkit.autoencoder import load_autoencoder
from ldmkit.config import ConfigError, load_config, load_yaml
from ldmkit.evaluation.autoencoder_report import evaluate_autoencoder
from ldmkit.evaluation.generation import images_to_tensor
from ldmkit.evaluation.report import evaluate
from ldmkit.imageio import save_grid
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder
from ldmkit.training.checkpoint import load_checkpoint
from ldmkit.training.latents import LatentCache, cache_dir
from ldmkit.training.ldm_loop import IDENTITY, LDMRunConfig, cache_latents, open_latent_cache, train_ldm
from ldmkit.weights import atomic_write, read_release_metadata

LDM_PRESET, AE_PRESET = "ldm/fmnist-class", "autoencoder/kl-f4-fmnist"
# docs/results.md, first table: the same 10-minute recipe at three factors
AE_RECIPES = {2: ["model.ch_mult=[1,2]"], 4: [],
              8: ["model.ch_mult=[1,2,2,4]", "model.z_channels=4", "model.embed_dim=4"]}
UNET = ["unet.model_channels=64", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1", "unet.attention_resolutions=[2]",
        "unet.num_head_channels=32"]
TINY_UNET = ["unet.model_channels=32", "unet.num_head_channels=16"]
NEVER = 10**9  # steps / checkpoints / grids the time budget always cuts first


def parse_fracs(text: str) -> list[float]:
    try:
        fracs = sorted({float(Fraction(t.strip())) for t in text.split(",") if t.strip()})
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"eval points: expected fractions like 1/6,1/3,2/3,1, got {text!r}") from None
    if not fracs or fracs[0] <= 0 or fracs[-1] != 1:
        raise ConfigError(f"eval points: fractions in (0, 1] ending with 1, got {text!r}")
    return fracs


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))


# ------------------------------------------------------------------------------------------- first stages
def first_stage(f: int, args) -> dict:
    """The row's first stage (copied or trained into OUT/ae/kl-fN) with its PSNR and training cost."""
    if f == 1:
        return {"kind": "identity", "path": IDENTITY, "channels": 1, "latent_shape": [1, 32, 32], "psnr": None}
    dst = args.out / "ae" / f"kl-f{f}"
    info_path = dst / "first_stage.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    src = args.ae_dir / f"kl-f{f}"
    weights = dst / "autoencoder.safetensors"
    if (src / "autoencoder.safetensors").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("autoencoder.safetensors", "config.yaml", "events.jsonl"):
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
        info = {"source": str(src / "autoencoder.safetensors")}
        run_dir = src
    else:
        if f not in AE_RECIPES:
            raise ConfigError(f"--rows: no autoencoder for f={f} in {src} and no recipe to train one (f = 2, 4, 8)")
        overrides = AE_RECIPES[f] + [f"train.out_dir={dst}", f"train.max_minutes={args.ae_budget_min}"]
        if args.tiny:
            overrides += ["train.steps=2", "train.batch_size=4", "train.sample_every=1000"]
        print(f"f={f}: training the first stage ({AE_PRESET} {' '.join(AE_RECIPES[f])})", flush=True)
        t0 = time.perf_counter()
        train_autoencoder(load_config(AutoencoderRunConfig, AE_PRESET, overrides))
        info = {"source": "trained by this sweep", "wall_s": time.perf_counter() - t0}
        run_dir = dst
    resolved = load_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    info["budget_min"] = resolved.get("train", {}).get("max_minutes")
    info["steps"] = int(load_checkpoint(run_dir / "checkpoint.pt")["step"]) if (run_dir / "checkpoint.pt").is_file() \
        else None
    report = src / "eval" / "report.json"  # a reused first stage's own evaluation, when it covers enough images
    rec = json.loads(report.read_text()) if report.is_file() and run_dir == src else None
    if rec is None or rec["n_images"] < args.psnr_n:
        rec = evaluate_autoencoder(weights, n=args.psnr_n, out=dst / "eval")
    _, cfg, scale = load_autoencoder(weights)
    info |= {"kind": cfg.kind, "path": str(weights), "channels": cfg.embed_dim, "latent_shape": list(cfg.latent_shape),
             "scale_factor": scale, "psnr": rec["psnr"], "ssim": rec["ssim"], "psnr_images": rec["n_images"]}
    write_json(info_path, info)
    return info


def prepare_cache(cfg: LDMRunConfig, fs: dict, args) -> float | None:
    """Encode the training set once (copying a matching cache from --ae-dir when there is one): seconds taken."""
    path, cache = open_latent_cache(cfg)
    if path is None or cache is not None:
        return None
    source = Path(fs.get("source", ""))
    t0 = time.perf_counter()
    # the copied weights are the same bytes, so a cache the source run made has the same key
    src = cache_dir(source, cfg.data, cfg.train.encode_precision) if source.is_file() else None
    if src is not None and LatentCache.load(src) is not None:
        shutil.copytree(src, path, dirs_exist_ok=True)
    else:
        cache_latents(cfg, batch_size=256)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------- rows
def ldm_config(f: int, fs: dict, args, minutes: float) -> LDMRunConfig:
    c = fs["channels"]
    overrides = [f"first_stage={fs['path']}", f"unet.in_channels={c}", f"unet.out_channels={c}", *UNET,
                 *(TINY_UNET if args.tiny else []),
                 f"train.out_dir={args.out / f'f{f}' / 'train'}", f"train.max_minutes={minutes:.6f}",
                 f"train.steps={NEVER}", "train.lr_schedule=constant", "train.warmup_steps=20", "train.log_every=1",
                 f"train.ckpt_every={NEVER}", f"train.sample_every={NEVER}", "train.sample_steps=1",
                 "train.guidance_scale=1.0", f"train.batch_size={args.batch_size}", f"train.seed={args.seed}",
                 f"train.cache_latents={'false' if args.tiny else 'true'}", f"train.device={args.device}",
                 f"train.num_threads={args.threads}"]
    return load_config(LDMRunConfig, LDM_PRESET, overrides)


def evaluate_point(model: Path, out: Path, args, guidance: float, metrics: tuple[str, ...], n: int) -> dict:
    """``ldmkit eval`` of one model; sampling seconds per image when every batch was sampled now."""
    fresh = not list((out / "samples").glob("batch_*.npz"))
    stamps: list[float] = []
    t0 = time.perf_counter()

    def log(message: str) -> None:
        if message.startswith("sampled"):
            stamps.append(time.perf_counter())
        else:
            print(message, flush=True)

    report = evaluate(str(model), extractor="fmnist", metrics=metrics, n=n, seed=0, steps=args.eval_steps,
                      guidance=guidance, batch_size=args.eval_batch, out=out, device=args.device, log=log)
    return {**report["metrics"], "eval_s": time.perf_counter() - t0,
            "sample_s_per_image": (stamps[-1] - t0) / n if fresh and stamps else None}


def run_row(f: int, args, fracs: list[float]) -> dict:
    row_dir = args.out / f"f{f}"
    settings = {"budget_min": args.budget_min, "eval_n": args.eval_n, "eval_steps": args.eval_steps,
                "eval_guidance": args.eval_guidance, "eval_at": fracs, "batch_size": args.batch_size,
                "seed": args.seed, "tiny": args.tiny}
    done = row_dir / "row.json"
    if done.is_file():
        row = json.loads(done.read_text())
        if row["settings"] != settings:
            raise ConfigError(f"{done}: finished with other settings ({row['settings']}); use another --out")
        print(f"f={f}: finished earlier, skipped", flush=True)
        return row
    fs = first_stage(f, args)
    cache_record = row_dir / "cache.json"  # kept apart: a resumed row finds its cache made and must not report 0
    cache_s = prepare_cache(ldm_config(f, fs, args, 0.0), fs, args)
    if cache_s is not None:
        write_json(cache_record, {"seconds": cache_s})
    elif cache_record.is_file():
        cache_s = json.loads(cache_record.read_text())["seconds"]
    prog_path = row_dir / "progress.json"
    prog = json.loads(prog_path.read_text()) if prog_path.is_file() else {"settings": settings, "step": 0,
                                                                         "train_s": 0.0, "points": []}
    if prog["settings"] != settings:
        raise ConfigError(f"{prog_path}: started with other settings ({prog['settings']}); use another --out")
    train_dir, budget_s = row_dir / "train", args.budget_min * 60
    release, events = train_dir / "pipeline.safetensors", train_dir / "events.jsonl"
    for k, frac in enumerate(fracs):
        if k < len(prog["points"]):
            continue
        # a segment that finished after the last record (killed between its checkpoint and progress.json)
        if release.is_file() and read_release_metadata(release).get("train_steps", 0) > prog["step"]:
            step, seconds = segment_seconds(events, prog["step"])
            prog |= {"step": step, "train_s": prog["train_s"] + seconds}
            write_json(prog_path, prog)
        remaining = frac * budget_s - prog["train_s"]
        if remaining > 0 or prog["step"] == 0:
            print(f"f={f}: training to {frac * args.budget_min:.3g} min (segment of {max(remaining, 0) / 60:.3g} min)",
                  flush=True)
            train_ldm(ldm_config(f, fs, args, max(remaining, 1e-3) / 60))
            step, seconds = segment_seconds(events, prog["step"])
            prog |= {"step": step, "train_s": prog["train_s"] + seconds}
            write_json(prog_path, prog)
        point_dir = row_dir / "points" / str(k)
        model = point_dir / "pipeline.safetensors"
        if not model.is_file():
            point_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(release, model)
        previous = prog["points"][-1] if prog["points"] else None
        if previous is not None and previous["step"] == prog["step"]:  # a slow step overshot this point too
            scores = {key: previous[key] for key in previous if key not in ("frac", "train_s", "step")}
        else:
            scores = evaluate_point(model, point_dir / "eval", args, args.eval_guidance, ("fd", "is"), args.eval_n)
        prog["points"].append({"frac": frac, "train_s": prog["train_s"], "step": prog["step"], **scores})
        write_json(prog_path, prog)
        print(f"f={f}: {prog['train_s'] / 60:.2f} min, step {prog['step']}: {FD} {scores[FD]:.2f}", flush=True)
    # the same network at every point: the latest point sampled in one go gives the sampling time
    timed = [p["sample_s_per_image"] for p in prog["points"] if p.get("sample_s_per_image")]
    scored = [d for d in sorted((row_dir / "points").iterdir(), key=lambda d: int(d.name))
              if list((d / "eval" / "samples").glob("batch_*.npz"))]  # the last model that was sampled
    batches = sorted((scored[-1] / "eval" / "samples").glob("batch_*.npz"))
    samples = np.concatenate([np.load(p)["images"] for p in batches])
    per_class = [i for c in range(10) for i in range(c, len(samples), 10)[:8]]  # image k has class k % 10
    save_grid(images_to_tensor(samples[per_class]), row_dir / "grid.png", nrow=8)
    params = sum(t.numel() for k, t in load_file(str(release)).items() if k.startswith("unet."))
    row = {"f": f, "settings": settings, "first_stage": fs, "cache_s": cache_s, "unet_params": params,
           "steps": prog["step"], "train_s": prog["train_s"],
           "img_per_s": prog["step"] * args.batch_size / prog["train_s"] if prog["train_s"] else math.nan,
           "sample_s_per_image": timed[-1] if timed else None, "points": prog["points"]}
    write_json(done, row)
    return row


def guidance_sweep(args, scales: list[float]) -> list[dict] | None:
    """FD / precision / recall / IS of the f=4 row's final model at each guidance scale."""
    rows = load_rows(args.out)
    if 4 not in rows:
        print("--guidance-sweep needs the finished f=4 row; skipped", flush=True)
        return None
    model = args.out / "f4" / "points" / str(len(rows[4]["points"]) - 1) / "pipeline.safetensors"
    results = []
    for g in scales:
        out = args.out / "guidance" / f"g{g:g}"
        done = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None
        if done and (done["images"]["n"], done["images"]["steps"]) == (args.guidance_n, args.eval_steps):
            scores = done["metrics"] | {"eval_s": None}
        else:  # (other settings over existing samples: ldmkit eval refuses them with a one-line error)
            scores = evaluate_point(model, out, args, g, ("fd", "pr", "is"), args.guidance_n)
        results.append({"guidance": g, "n": args.guidance_n, "steps": args.eval_steps, **scores})
        print(f"guidance {g:g}: {FD} {scores[FD]:.2f} precision {scores['precision']:.3f} "
              f"recall {scores['recall']:.3f} IS {scores['IS']:.2f}", flush=True)
    write_json(args.out / "guidance.json", {"model": str(model), "scales": results})
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-min", type=float, default=5.0, help="training minutes per row (evaluation excluded)")
    ap.add_argument("--rows", default="1,2,4,8", help="downsampling factors; 1 = pixel space")
    ap.add_argument("--eval-n", type=int, default=500, help="samples per FD-fmnist point")
    ap.add_argument("--eval-steps", type=int, default=10, help="DDIM steps of every evaluation")
    ap.add_argument("--eval-guidance", type=float, default=1.0, help="guidance of the curves (1 = none, as Fig. 6)")
    ap.add_argument("--eval-at", default="1/6,1/3,2/3,1", help="fractions of the budget scored (latent rows)")
    ap.add_argument("--pixel-eval-at", default="1/3,1", help="fractions scored for f=1 (its sampling is slow)")
    ap.add_argument("--eval-batch", type=int, default=250)
    ap.add_argument("--psnr-n", type=int, default=10000, help="test images for the first stage's PSNR")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ae-dir", default="runs/results", help="folder with trained kl-f2 / kl-f4 / kl-f8 runs to reuse")
    ap.add_argument("--ae-budget-min", type=float, default=10.0, help="budget of first stages trained here")
    ap.add_argument("--guidance-sweep", action="store_true", help="also sweep guidance on the f=4 row's final model")
    ap.add_argument("--guidance-scales", default="1,2,3,4,5")
    ap.add_argument("--guidance-n", type=int, default=None, help="samples per guidance scale (default: --eval-n)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default="runs/compression")
    ap.add_argument("--plot", default=None, help="PNG (default: OUT/compression.png)")
    ap.add_argument("--tiny", action="store_true", help="smoke test: overrides budget (<= 3 s per row), eval sizes "
                    "(20 samples, 2 steps), UNet width (32) and the latent cache (off)")
    args = ap.parse_args()
    try:
        if args.tiny:
            args.budget_min, args.eval_n, args.eval_steps, args.psnr_n = min(args.budget_min, 0.05), 20, 2, 100
            args.eval_batch = 10
        args.guidance_n = args.guidance_n or args.eval_n
        args.out, args.ae_dir = Path(args.out), Path(args.ae_dir)
        rows = sorted({int(r) for r in args.rows.split(",") if r.strip()})
        if not rows or min(rows) < 1:
            raise ConfigError(f"--rows: downsampling factors >= 1, got {args.rows!r}")
        scales = [float(g) for g in args.guidance_scales.split(",") if g.strip()]
        eval_at, pixel_at = parse_fracs(args.eval_at), parse_fracs(args.pixel_eval_at)
        t0 = time.perf_counter()
        for f in rows:
            run_row(f, args, pixel_at if f == 1 else eval_at)
        guidance = guidance_sweep(args, scales) if args.guidance_sweep else None
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"compression_sweep: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    finished = load_rows(args.out)
    text = tables(finished, guidance)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    print(f"plot: {render_plot(finished, guidance, Path(args.plot or args.out / 'compression.png'))}")
    print(f"wall time of this invocation: {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
