"""Issue 19: does fine-tuning teach a trained text model a concept it never saw, and keep the old ones?

The base is a shapes text-to-image pipeline (``ldmkit train-ldm ldm/shapes-text``), which knows three shape words
and six colour words. The study draws a folder of a few hundred shapes images in which every image holds an object
of a fourth shape (default "diamond": the square turned 45 degrees), captioned by the data set's grammar ("a red
diamond left of a blue square"), and runs ``ldmkit fine-tune`` on it (LoRA of a given rank, or every weight). Each
model is then scored by reading its images back with the shapes detector, which knows the new word too
(``DetectorConfig.extra_shapes`` / ``extra_colours``):

- new concept: held-out captions of the same generator (every one names the new word);
- old concepts: the base model's own test captions (``eval-task``'s conditions), scored with the same detector.

Every image k has seed 10,000,000 + k (no training run draws these), DDIM 50, the given guidance. Results go
to OUT/report.json and a markdown table on stdout; every stage resumes (the fine-tunes through their
checkpoints, the scores through OUT/scores/*.json).

    PYTHONPATH=src python benchmarks/adaptation_study.py runs/ldm/shapes-text/pipeline.safetensors \
        --out runs/adapt --variants lora8,full
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldmkit.data import build_dataset
from ldmkit.data.shapes import EXTRA_SHAPES, PALETTE, SHAPES, ShapeObject, describe, render, sample_objects
from ldmkit.evaluation.generation import model_data_config
from ldmkit.evaluation.tasks import caption_accuracy
from ldmkit.evaluation.tasks_shapes import DetectorConfig
from ldmkit.pipeline import Pipeline
from ldmkit.weights import atomic_write

SEED0 = 10_000_000
load = lru_cache(maxsize=1)(Pipeline.load)  # each model is scored on two prompt sets: read it once
CONCEPT_STREAM, PROMPT_STREAM = 7, 8  # rng streams of the concept images and the held-out prompts


@dataclass(frozen=True)
class Concept:
    """The new word: a shape of EXTRA_SHAPES ("diamond") or a colour (``rgb`` set), and the vocabulary with it."""

    word: str
    rgb: tuple[int, int, int] | None = None

    @classmethod
    def parse(cls, text: str) -> "Concept":
        if "=" in text:
            name, rgb = text.split("=")
            return cls(name, tuple(int(v) for v in rgb.split(",")))
        if text not in EXTRA_SHAPES:
            raise SystemExit(f"--concept: expected a shape of {', '.join(EXTRA_SHAPES)} or NAME=R,G,B, got {text!r}")
        return cls(text)

    @property
    def detector(self) -> DetectorConfig:
        if self.rgb is None:
            return DetectorConfig(extra_shapes=(self.word,))
        return DetectorConfig(extra_colours={self.word: self.rgb})

    @property
    def palette(self) -> dict:
        return PALETTE | ({self.word: self.rgb} if self.rgb else {})

    def has(self, obj: tuple) -> bool:
        return obj[3 if self.rgb is None else 4] == self.word

    def put(self, obj: tuple) -> tuple:
        return (*obj[:3], self.word, obj[4]) if self.rgb is None else (*obj[:4], self.word)


def concept_item(rng: np.random.Generator, size: int, max_objects: int, concept: Concept) -> tuple[np.ndarray, str]:
    """One image (uint8 (S, S, 3)) and its caption; at least one object shows the concept. Diamonds are drawn with
    sides >= 5/16 of the image (10 px at 32): the shapes model's kl-f4 first stage turns smaller ones into dots."""
    grey = int(rng.integers(225, 256))
    det = concept.detector
    big = (lambda p: True) if concept.rgb is not None else (lambda p: p[2] * 16 >= 5 * size)
    while True:  # (a small diamond becomes another shape, so the one / two-object mix stays the data set's)
        placed = [p if big(p) or p[3] != "diamond" else (*p[:3], SHAPES[int(rng.integers(len(SHAPES)))], p[4])
                  for p in sample_objects(rng, size, max_objects, det.colours, det.shapes)]
        if not any(concept.has(p) for p in placed):
            room = [i for i, p in enumerate(placed) if big(p)]
            if not room:
                continue
            i = room[int(rng.integers(len(room)))]
            placed[i] = concept.put(placed[i])
        break
    image, _ = render(placed, size, (grey, grey, grey), concept.palette)
    objects = [ShapeObject(shape, c, (x0 / size, y0 / size, (x0 + s) / size, (y0 + s) / size))
               for x0, y0, s, shape, c in placed]
    return image, describe(objects)


def write_concept_folder(out: Path, n: int, size: int, max_objects: int, concept: Concept, seed: int = 0) -> Path:
    """``out``/k.png + k.txt for k < n (kept if already there)."""
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        png = out / f"{k:05d}.png"
        if png.is_file():
            continue
        image, caption = concept_item(np.random.default_rng([seed, CONCEPT_STREAM, k]), size, max_objects, concept)
        (out / f"{k:05d}.txt").write_text(caption + "\n")
        Image.fromarray(image).save(png)
    return out


def new_concept_items(n: int, size: int, max_objects: int, concept: Concept,
                      seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Held-out concept images (n, 3, S, S) in [-1, 1] and their captions (the prompts scored)."""
    items = [concept_item(np.random.default_rng([seed, PROMPT_STREAM, k]), size, max_objects, concept)
             for k in range(n)]
    images = torch.from_numpy(np.stack([im for im, _ in items])).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    return images, [c for _, c in items]


@torch.no_grad()
def ceiling(path: Path, images: torch.Tensor, captions: list[str], detector: DetectorConfig) -> dict:
    """The detector on the real held-out images and on their first-stage reconstructions (what the base's
    autoencoder can show of the new word at all)."""
    pipe = load(path)
    recon = pipe.decode_latents(pipe.encode_latents(images, sample=False)).clamp(-1, 1)
    return {"real": caption_accuracy(images, captions, detector), "reconstructed": caption_accuracy(recon, captions, detector)}


@torch.no_grad()
def score(path: Path, captions: list[str], detector: DetectorConfig, guidance: float, batch: int,
          grid: Path | None = None) -> dict:
    pipe = load(path)
    images = []
    for start in range(0, len(captions), batch):
        part = captions[start:start + batch]
        images.append(pipe(prompt=part, seeds=[SEED0 + start + i for i in range(len(part))], num_inference_steps=50,
                           guidance_scale=guidance, sampler="ddim", output_type="pt"))
    images = torch.cat(images)
    if grid is not None:
        from ldmkit.imageio import save_grid

        save_grid(images[:32], grid, nrow=8)
    result = caption_accuracy(images, captions, detector)
    try:  # old captions: also by the data set's own detector (what the new word's rule costs them)
        result["plain_detector"] = caption_accuracy(images, captions)
    except ValueError:
        pass
    return result


def cached_score(out: Path, name: str, path: Path, captions: list[str], detector, guidance, batch) -> dict:
    file = out / "scores" / f"{name}.json"
    if file.is_file():
        return json.loads(file.read_text())
    file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = score(path, captions, detector, guidance, batch, grid=out / "grids" / f"{name}.png")
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write(file, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    return result


@torch.no_grad()
def write_prior_folder(base: Path, out: Path, captions: list[str], guidance: float, batch: int) -> Path:
    """DreamBooth-style prior images: the base's own samples of old captions (seeds 20,000,000 + k), k.png + k.txt."""
    out.mkdir(parents=True, exist_ok=True)
    pipe = load(base)
    for start in range(0, len(captions), batch):
        part = captions[start:start + batch]
        if all((out / f"{start + i:05d}.png").is_file() for i in range(len(part))):
            continue
        images = pipe(prompt=part, seeds=[2 * SEED0 + start + i for i in range(len(part))], num_inference_steps=50,
                      guidance_scale=guidance, sampler="ddim")
        for i, (image, caption) in enumerate(zip(images, part)):
            (out / f"{start + i:05d}.txt").write_text(caption + "\n")
            image.save(out / f"{start + i:05d}.png")
    return out


def fine_tune(base: Path, data: Path, out: Path, variant: str, steps: int, lr: float | None, extra: list[str],
              reuse: bool = False) -> dict:
    """Run ``ldmkit fine-tune`` for ``variant`` ("loraR" or "full"; "+prior" / "+priorW": with OUT/prior as prior
    images, prior weight 1 / W); returns the command and its wall time. ``reuse``: keep a finished run's
    pipeline (written atomically at the end, so its presence means the run completed)."""
    run_dir = out / variant
    mode, _, prior = variant.partition("+")
    mode = ["--full"] if mode == "full" else ["--lora", mode.removeprefix("lora")]
    if prior:
        weight = float(prior.removeprefix("prior") or 1.0)
        extra = [*extra, f"train.prior_data={out / 'prior'}", f"train.prior_weight={weight}"]
    default_lr = 1e-4 if mode == ["--full"] else 1e-3
    cmd = [sys.executable, "-m", "ldmkit", "fine-tune", str(base), str(data), *mode, f"train.steps={steps}",
           f"train.lr={lr or default_lr}", f"train.out_dir={run_dir}", *extra]
    if reuse and (run_dir / "pipeline.safetensors").exists():
        print(f"{variant}: reusing {run_dir / 'pipeline.safetensors'}", flush=True)
        return {"command": " ".join(cmd[2:]), "seconds": "reused", "pipeline": str(run_dir / "pipeline.safetensors")}
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return {"command": " ".join(cmd[2:]), "seconds": round(time.time() - t0, 1), "pipeline": str(run_dir / "pipeline.safetensors")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", type=Path, help="a shapes text-to-image pipeline.safetensors")
    ap.add_argument("--out", type=Path, default=Path("runs/adapt"))
    ap.add_argument("--concept", default="diamond", help="a new shape (diamond) or colour (NAME=R,G,B); a colour "
                    "the base's autoencoder never saw is not reconstructed (cyan 0,185,200 comes back blue)")
    ap.add_argument("--images", type=int, default=300, help="images in the concept folder")
    ap.add_argument("--prompts", type=int, default=200, help="held-out new-concept captions scored")
    ap.add_argument("--old", type=int, default=300, help="old-concept test captions scored")
    ap.add_argument("--variants", default="lora8,full", help="comma list of loraR / full, +prior[W]: with prior images (weight W, default 1)")
    ap.add_argument("--prior", type=int, default=300, help="prior images (the base's samples of old train captions)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=None, help="default 1e-3 for LoRA, 1e-4 for full")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--reuse", action="store_true", help="keep fine-tuned pipelines already under --out")
    ap.add_argument("overrides", nargs="*", help="more fine-tune overrides, e.g. train.lora_feed_forward=true")
    args = ap.parse_intermixed_args()  # overrides may follow the options

    concept = Concept.parse(args.concept)
    detector = concept.detector
    data_cfg = model_data_config(args.base)
    size, max_objects = data_cfg.image_size, data_cfg.max_objects
    data = write_concept_folder(args.out / "data", args.images, size, max_objects, concept)
    real, new = new_concept_items(args.prompts, size, max_objects, concept)
    test = build_dataset(data_cfg, "test")
    old = [test[k % len(test)]["caption"] for k in range(args.old)]

    if "+prior" in args.variants:
        train = build_dataset(data_cfg, "train")
        write_prior_folder(args.base, args.out / "prior", [train[k]["caption"] for k in range(args.prior)],
                           args.guidance, args.batch)
    rows = {}
    for label in ["base", *filter(None, args.variants.split(","))]:
        row = {"pipeline": str(args.base)} if label == "base" else \
            fine_tune(args.base, data, args.out, label, args.steps, args.lr, args.overrides, args.reuse)
        path = Path(row["pipeline"])
        row["new"] = cached_score(args.out, f"{label}-new", path, new, detector, args.guidance, args.batch)
        row["old"] = cached_score(args.out, f"{label}-old", path, old, detector, args.guidance, args.batch)
        print(label, {k: round(row[k]["accuracy"], 3) for k in ("new", "old")}, flush=True)
        rows[label] = row
    report = {"concept": args.concept, "images": args.images, "steps": args.steps, "guidance": args.guidance,
              "seeds_from": SEED0, "ceiling": ceiling(args.base, real, new, detector), "rows": rows}
    atomic_write(args.out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    print(f"| model | new '{concept.word}' captions: all / one / two objects | old captions: all / one / two objects | fine-tune time |")
    print("|---|---|---|---|")
    def cell(r: dict) -> str:
        return f"{100 * r['accuracy']:.1f} / {100 * r['one_object']:.1f} / {100 * r['two_object']:.1f} %"

    for label, row in rows.items():
        print(f"| {label} | {cell(row['new'])} | {cell(row['old'])} | {row.get('seconds', '-')} s |")
    for label, r in report["ceiling"].items():
        print(f"| {label} images (ceiling) | {cell(r)} | - | - |")


if __name__ == "__main__":
    main()
