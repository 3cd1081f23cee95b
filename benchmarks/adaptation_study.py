"""Issue 19: does fine-tuning teach a trained text model a concept it never saw, and keep the old ones?

The base is a shapes text-to-image pipeline (``ldmkit train-ldm ldm/shapes-text``), which knows six colour words.
The study draws a folder of a few hundred shapes images in which every image holds an object of a seventh colour
(default "cyan", RGB 0,185,200), captioned by the data set's grammar ("a cyan circle left of a red square"), and
runs ``ldmkit fine-tune`` on it (LoRA of a given rank, or every weight). Each model is then scored by reading
its images back with the shapes detector, which knows the new colour too (``DetectorConfig.extra_colours``):

- new concept: held-out captions of the same generator (every one names the new colour);
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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldmkit.data import build_dataset
from ldmkit.data.shapes import COLOURS, ShapeObject, describe, render, sample_objects
from ldmkit.evaluation.generation import model_data_config
from ldmkit.evaluation.tasks import caption_accuracy
from ldmkit.evaluation.tasks_shapes import DetectorConfig
from ldmkit.pipeline import Pipeline
from ldmkit.weights import atomic_write

SEED0 = 10_000_000
CONCEPT_STREAM, PROMPT_STREAM = 7, 8  # rng streams of the concept images and the held-out prompts


def concept_item(rng: np.random.Generator, size: int, max_objects: int, colour: str,
                 palette: dict) -> tuple[np.ndarray, str]:
    """One image (uint8 (S, S, 3)) and its caption; at least one object has ``colour``."""
    grey = int(rng.integers(225, 256))
    placed = sample_objects(rng, size, max_objects, COLOURS + (colour,))
    if all(p[4] != colour for p in placed):
        i = int(rng.integers(len(placed)))
        placed[i] = (*placed[i][:4], colour)
    image, _ = render(placed, size, (grey, grey, grey), palette)
    objects = [ShapeObject(shape, c, (x0 / size, y0 / size, (x0 + s) / size, (y0 + s) / size))
               for x0, y0, s, shape, c in placed]
    return image, describe(objects)


def write_concept_folder(out: Path, n: int, size: int, max_objects: int, colour: str, palette: dict,
                         seed: int = 0) -> Path:
    """``out``/k.png + k.txt for k < n (kept if already there)."""
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        png = out / f"{k:05d}.png"
        if png.is_file():
            continue
        image, caption = concept_item(np.random.default_rng([seed, CONCEPT_STREAM, k]), size, max_objects,
                                      colour, palette)
        (out / f"{k:05d}.txt").write_text(caption + "\n")
        Image.fromarray(image).save(png)
    return out


def new_concept_prompts(n: int, size: int, max_objects: int, colour: str, palette: dict, seed: int = 0) -> list[str]:
    return [concept_item(np.random.default_rng([seed, PROMPT_STREAM, k]), size, max_objects, colour, palette)[1]
            for k in range(n)]


@torch.no_grad()
def score(path: Path, captions: list[str], detector: DetectorConfig, guidance: float, batch: int,
          grid: Path | None = None) -> dict:
    pipe = Pipeline.load(path)
    images = []
    for start in range(0, len(captions), batch):
        part = captions[start:start + batch]
        images.append(pipe(prompt=part, seeds=[SEED0 + start + i for i in range(len(part))], num_inference_steps=50,
                           guidance_scale=guidance, sampler="ddim", output_type="pt"))
    images = torch.cat(images)
    if grid is not None:
        from ldmkit.imageio import save_grid

        save_grid(images[:32], grid, nrow=8)
    return caption_accuracy(images, captions, detector)


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


def fine_tune(base: Path, data: Path, out: Path, variant: str, steps: int, lr: float | None, extra: list[str]) -> dict:
    """Run ``ldmkit fine-tune`` for ``variant`` ("loraR" or "full"); returns its wall time and first log line."""
    run_dir = out / variant
    mode = ["--full"] if variant == "full" else ["--lora", variant.removeprefix("lora")]
    default_lr = 1e-4 if variant == "full" else 1e-3
    cmd = [sys.executable, "-m", "ldmkit", "fine-tune", str(base), str(data), *mode, f"train.steps={steps}",
           f"train.lr={lr or default_lr}", f"train.out_dir={run_dir}", *extra]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    return {"command": " ".join(cmd[2:]), "seconds": round(time.time() - t0, 1), "pipeline": str(run_dir / "pipeline.safetensors")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", type=Path, help="a shapes text-to-image pipeline.safetensors")
    ap.add_argument("--out", type=Path, default=Path("runs/adapt"))
    ap.add_argument("--colour", default="cyan=0,185,200", help="NAME=R,G,B of the new colour word")
    ap.add_argument("--images", type=int, default=300, help="images in the concept folder")
    ap.add_argument("--prompts", type=int, default=200, help="held-out new-concept captions scored")
    ap.add_argument("--old", type=int, default=300, help="old-concept test captions scored")
    ap.add_argument("--variants", default="lora8,full", help="comma list of loraR / full")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=None, help="default 1e-3 for LoRA, 1e-4 for full")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("overrides", nargs="*", help="more fine-tune overrides, e.g. train.lora_feed_forward=true")
    args = ap.parse_args()

    name, rgb = args.colour.split("=")
    palette_extra = {name: tuple(int(v) for v in rgb.split(","))}
    from ldmkit.data.shapes import PALETTE

    palette = {**PALETTE, **palette_extra}
    detector = DetectorConfig(extra_colours=palette_extra)
    data_cfg = model_data_config(args.base)
    size, max_objects = data_cfg.image_size, data_cfg.max_objects
    data = write_concept_folder(args.out / "data", args.images, size, max_objects, name, palette)
    new = new_concept_prompts(args.prompts, size, max_objects, name, palette)
    test = build_dataset(data_cfg, "test")
    old = [test[k % len(test)]["caption"] for k in range(args.old)]

    rows = {"base": {"pipeline": str(args.base)}}
    for variant in filter(None, args.variants.split(",")):
        rows[variant] = fine_tune(args.base, data, args.out, variant, args.steps, args.lr, args.overrides)
    for label, row in rows.items():
        path = Path(row["pipeline"])
        row["new"] = cached_score(args.out, f"{label}-new", path, new, detector, args.guidance, args.batch)
        row["old"] = cached_score(args.out, f"{label}-old", path, old, detector, args.guidance, args.batch)
    report = {"colour": palette_extra, "images": args.images, "steps": args.steps, "guidance": args.guidance,
              "seeds_from": SEED0, "rows": rows}
    atomic_write(args.out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    print(f"| model | new '{name}' captions: all / one / two objects | old captions: all / one / two objects | fine-tune time |")
    print("|---|---|---|---|")
    for label, row in rows.items():
        n, o = row["new"], row["old"]
        cell = lambda r: f"{100 * r['accuracy']:.1f} / {100 * r['one_object']:.1f} / {100 * r['two_object']:.1f} %"
        print(f"| {label} | {cell(n)} | {cell(o)} | {row.get('seconds', '-')} s |")


if __name__ == "__main__":
    main()
