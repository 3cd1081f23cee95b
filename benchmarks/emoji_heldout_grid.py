"""Text-to-image on emoji names the model never saw: a labelled grid for docs/emoji-heldout.png.

Each row: a held-out emoji name (from the test split of `emoji`, skin-tone variants skipped), the real
emoji, then samples with seeds 0..k-1.

    python benchmarks/emoji_heldout_grid.py runs/ldm/emoji-text/pipeline.safetensors docs/emoji-heldout.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ldmkit.data import build_dataset
from ldmkit.evaluation.generation import model_data_config
from ldmkit.imageio import to_pil
from ldmkit.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--names", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--scale", type=int, default=2, help="pixel magnification in the grid")
    args = ap.parse_args()

    pipe = Pipeline.load(args.checkpoint)
    data = model_data_config(Path(args.checkpoint))
    test = build_dataset(data, "test")
    train_captions = set(build_dataset(data, "train").captions)
    held = [i for i, c in enumerate(test.captions) if "skin tone" not in c and c not in train_captions]
    by_cat: dict[int, list[int]] = {}
    for i in held:
        by_cat.setdefault(int(test.labels[i]), []).append(i)
    rows: list[int] = []  # round-robin over categories, so flags do not fill the grid
    while len(rows) < min(args.names, len(held)):
        for cat in sorted(by_cat):
            if by_cat[cat] and len(rows) < args.names:
                rows.append(by_cat[cat].pop(0))
    size = data.image_size * args.scale
    label_w = 230
    grid = Image.new("RGB", (label_w + size * (1 + args.samples) + 8, size * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, i in enumerate(rows):
        item = test[i]
        with torch.no_grad():
            x = pipe(prompt=[item["caption"]] * args.samples, num_inference_steps=args.steps,
                     guidance_scale=args.guidance, seeds=list(range(args.samples)), output_type="pt")
        draw.text((4, r * size + size // 2 - 6), item["caption"][:36], fill="black")
        tiles = [item["image"]] + list(x)
        for c, t in enumerate(tiles):
            grid.paste(to_pil(t).convert("RGB").resize((size, size), Image.NEAREST),
                       (label_w + c * size + (8 if c else 0), r * size))
    grid.save(args.out)
    print(f"{len(rows)} held-out names -> {args.out}")


if __name__ == "__main__":
    main()
