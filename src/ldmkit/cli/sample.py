"""``ldmkit sample``: one PNG per image (seed, class and settings in its text chunks) plus a grid."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..device import resolve_device
from ..imageio import save_grid, save_png
from ..pipeline import Pipeline


def parse_classes(values: list[str] | None, names: list[str], num_classes: int) -> list[int]:
    """``--class 3 --class Sneaker`` or ``--class 0,1,2`` -> class indices, checked against the model."""
    out = []
    lowered = [n.lower() for n in names]
    for item in (v.strip() for raw in values or [] for v in raw.split(",") if v.strip()):
        if item.lstrip("-").isdigit():
            idx = int(item)
        elif item.lower() in lowered:
            idx = lowered.index(item.lower())
        else:
            raise ValueError(f"--class {item!r}: unknown class (known: {', '.join(names) or f'0..{num_classes - 1}'})")
        if not 0 <= idx < num_classes:
            raise ValueError(f"--class {idx}: out of range, the model has classes 0..{num_classes - 1}")
        out.append(idx)
    return out


def sample_command(args: argparse.Namespace) -> None:
    pipe = Pipeline.load(args.checkpoint, device=resolve_device(args.device))
    cond = pipe.cfg.conditioner
    if cond.kind == "class":
        classes = parse_classes(args.classes, pipe.cfg.class_names, cond.num_classes) or list(range(cond.num_classes))
        labels = [c for c in classes for _ in range(args.n)]
    else:
        if args.classes:
            raise ValueError("--class given, but this model is unconditional")
        labels = [None] * args.n
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"checkpoint": str(args.checkpoint), "sampler": args.sampler, "steps": args.steps,
                "eta": args.eta, "guidance": args.guidance}
    options = {"eta": args.eta} if args.sampler == "ddim" else {}
    images = []
    for start in range(0, len(labels), args.batch_size):
        chunk = labels[start:start + args.batch_size]
        seeds = [args.seed + start + k for k in range(len(chunk))]
        x = pipe(class_labels=None if chunk[0] is None else chunk, num_inference_steps=args.steps,
                 guidance_scale=args.guidance, sampler=args.sampler, seeds=seeds, output_type="pt", **options)
        for k, (img, seed, label) in enumerate(zip(x, seeds, chunk)):
            meta = settings | {"seed": seed}
            if label is not None:
                meta |= {"class": label, "class_name": (pipe.cfg.class_names or [""] * (label + 1))[label]}
            save_png(img, out / f"{start + k:05d}_seed{seed}.png", {"ldmkit": json.dumps(meta)})
        images.append(x.cpu())
    save_grid(torch.cat(images), out / "grid.png", nrow=args.n if cond.kind == "class" else None)
    print(f"{len(labels)} images and grid.png in {out}")
