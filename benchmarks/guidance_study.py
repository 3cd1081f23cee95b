"""Guidance variants on a class-conditional Fashion-MNIST model (issue 23): health, accuracy and FD side by side.

Each variant samples ``--n`` images (classes cycling, seeds ``--seed + k``: seeds no training run draws) with
one sampler and guidance scale, and reports the sample-health off-manifold share (the sampler's latents,
:mod:`ldmkit.evaluation.health`), the scorer's accuracy and rejections (10 classes + "none of these"),
FD-fmnist against the test set, and precision / recall in the same features. Variants are
``name=key:value;key:value`` with keys ``rescale`` (guidance_rescale) and ``interval`` (lo-hi model timesteps).
Rows are appended to ``OUT/study.json`` as they finish.

    PYTHONPATH=src python benchmarks/guidance_study.py runs/demo/ldm/pipeline.safetensors --guidance 5 \\
        --variants "plain=;interval=interval:0-600" --n 500 --out runs/guidance-study
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ldmkit.data import DataConfig, build_dataset
from ldmkit.evaluation.class_accuracy import conditional_accuracy
from ldmkit.evaluation.classifier import load_or_train_fashion_classifier
from ldmkit.evaluation.features import FashionExtractor, extract
from ldmkit.evaluation.health import fit_range
from ldmkit.evaluation.metrics import features_fd, precision_recall
from ldmkit.evaluation.scorer import load_or_train_scorer
from ldmkit.imageio import save_grid
from ldmkit.pipeline import Pipeline


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition("=")
    options: dict = {}
    for item in filter(None, spec.split(";")):
        key, _, value = item.partition(":")
        if key == "rescale":
            options["guidance_rescale"] = float(value)
        elif key == "interval":
            lo, hi = value.split("-")
            options["guidance_interval"] = (float(lo), float(hi))
        else:
            raise SystemExit(f"variant {name!r}: unknown key {key!r} (rescale, interval)")
    return name, options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pipeline")
    ap.add_argument("--variants", required=True, help="name=key:value;key:value, separated by ','")
    ap.add_argument("--guidance", default="5")
    ap.add_argument("--sampler", default="ddim:50")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=10_000_000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "study.json"
    rows = json.loads(record.read_text()) if record.is_file() else []
    pipe = Pipeline.load(args.pipeline)
    data = DataConfig(name="fashion_mnist", channels=1, image_size=32)
    train, test = build_dataset(data, "train"), build_dataset(data, "test")
    rng = fit_range(pipe, train, sample=True)
    scorer, _ = load_or_train_scorer()
    fx = FashionExtractor(load_or_train_fashion_classifier()[0])
    real = extract(fx, test.images_tensor(), batch_size=500)
    sampler, steps = args.sampler.split(":")
    for g in (float(v) for v in args.guidance.split(",")):
        for name, options in map(parse_variant, args.variants.split(",")):
            key = {"variant": name, "guidance": g, "sampler": sampler, "steps": int(steps), "n": args.n}
            if any(all(r.get(k) == v for k, v in key.items()) for r in rows):
                continue
            t0 = time.perf_counter()
            s = conditional_accuracy(pipe, scorer, n=args.n, guidance_scale=g, steps=int(steps), sampler=sampler,
                                     seed=args.seed, latent_range=rng, keep_all=True, **options)
            fake = extract(fx, s["all_images"], batch_size=500)
            precision, recall = precision_recall(real, fake)
            order = torch.argsort(s["all_labels"][:100] * 1000 + torch.arange(100))
            save_grid(s["all_images"][:100][order], out / f"{name}-g{g:g}.png", nrow=10)
            row = key | {"options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                         "off_manifold": s["off_manifold"], "accuracy": s["accuracy"], "rejected": s["rejected"],
                         "fd_fmnist": features_fd(fake, real), "precision": precision, "recall": recall,
                         "off_per_class": [float((~s["healthy"][c::10]).float().mean()) for c in range(10)],
                         "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            record.write_text(json.dumps(rows, indent=1))
            print(f"{name:>14} g{g:g}: off {100 * row['off_manifold']:5.1f} %  acc {100 * row['accuracy']:5.1f} %  "
                  f"rej {100 * row['rejected']:4.1f} %  FD {row['fd_fmnist']:6.1f}  P {precision:.2f} R {recall:.2f}  "
                  f"({row['seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
