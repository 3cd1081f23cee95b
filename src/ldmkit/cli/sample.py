"""``ldmkit sample``: one PNG per image (seed, class and settings in its text chunks) plus a grid."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..device import resolve_device
from ..imageio import from_pil, save_grid, save_png
from ..convert.loader import load_pipeline_any
from ..diffusion import sampler_name, validate_options
from ..evaluation.generation import guidance_record
from ..nn.noisy_classifier import load_noisy_classifier
from ..pipeline_inputs import CONTEXT_KEYS
from .convert import parse_lora


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


def read_boxes(text: str, names: list[str]) -> list[list[float]]:
    """``[[class, x0, y0, x1, y1], ...]`` (class: 1-based id as in the data, or a class name) -> rows."""
    try:
        rows = json.loads(text)
        assert isinstance(rows, list) and all(isinstance(r, list) and len(r) == 5 for r in rows)
    except (json.JSONDecodeError, AssertionError):
        raise ValueError(f"--boxes {text!r}: expected JSON [[class, x0, y0, x1, y1], ...]") from None
    lowered = [n.lower() for n in names]
    out = []
    for cls, *box in rows:
        if isinstance(cls, str):
            if cls.lower() not in lowered:
                raise ValueError(f"--boxes: unknown class {cls!r} (known: {', '.join(names)})")
            cls = lowered.index(cls.lower()) + 1
        if not all(0.0 <= float(v) <= 1.0 for v in box) or box[0] >= box[2] or box[1] >= box[3]:
            raise ValueError(f"--boxes: box {box} must have 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        out.append([float(cls), *map(float, box)])
    return out


def read_png(path: str, flag: str, channels: int | None = None) -> torch.Tensor:
    """A PNG as (C, H, W) in [-1, 1], or as an integer map (H, W) when ``channels`` is None."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path}: file not found")
    try:
        img = Image.open(path)
        img.load()
    except OSError as e:
        raise ValueError(f"{flag} {path}: not a readable image ({e})") from None
    if channels is None:  # class ids are the pixel values of a grey (L) or palette (P) image
        return torch.from_numpy(np.asarray(img if img.mode in ("L", "P") else img.convert("L"), dtype=np.int64).copy())
    return from_pil(img, channels)


def condition_inputs(args: argparse.Namespace, pipe) -> list[dict]:
    """One dict of ``Pipeline.__call__`` inputs per image: every given condition, ``--n`` times."""
    cond, names = pipe.cfg.conditioner, pipe.cfg.class_names
    per: list[dict] = [{}]
    if cond.kind == "class":
        classes = parse_classes(args.classes, names, cond.num_classes) or list(range(cond.num_classes))
        per = [{"class_labels": c} for c in classes]
    elif args.classes:
        raise ValueError("--class given, but this model is not class-conditional")
    if CONTEXT_KEYS.get(cond.kind) == "caption":
        if not args.prompt:
            raise ValueError("this is a text-to-image model: pass --prompt TEXT")
        per = [{"prompt": p} for p in args.prompt]
    elif args.prompt or args.negative_prompt or args.prompt_weighting:
        raise ValueError(f"--prompt / --negative-prompt / --prompt-weighting given, but this model is not "
                         f"text-conditional (conditioner: {cond.kind})")
    if cond.kind != "layout" and pipe.cfg.concat.kind != "boxes" and args.boxes:
        raise ValueError(f"--boxes given, but this model is not a layout model (conditioner: {cond.kind})")
    if cond.kind == "layout":
        if not args.boxes:
            raise ValueError("this is a layout-to-image model: pass --boxes JSON")
        per = [{"boxes": torch.tensor(read_boxes(args.boxes, names))}]
    channels = pipe.cfg.autoencoder.in_channels
    spatial = {"segmentation": args.segmentation and read_png(args.segmentation, "--segmentation"),
               "low_res": args.low_res and read_png(args.low_res, "--low-res", channels),
               "image": args.image and read_png(args.image, "--image", channels),
               "mask": args.mask and (read_png(args.mask, "--mask", 1) > 0).float()}
    spatial = {k: v for k, v in spatial.items() if v is not None}
    items = [p | spatial for p in per for _ in range(args.n)]
    if args.negative_prompt:
        items = [i | {"negative_prompt": args.negative_prompt} for i in items]
    return items


def _stack(items: list[dict]) -> dict:
    out = {}
    for k in items[0]:
        vals = [i[k] for i in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def sample_options(args: argparse.Namespace) -> dict:
    """Sampler options given on the command line (only those given: each sampler keeps its defaults)."""
    options = {k: v for k, v in (("eta", args.eta), ("spacing", args.spacing), ("order", args.order),
                                 ("noise_type", args.noise_type)) if v is not None}
    if args.karras:
        options["karras"] = True
    validate_options(args.sampler, options)  # unknown names, options and values fail before the checkpoint loads
    if args.strength is not None:
        if not args.image:
            raise ValueError("--strength given without --image: img2img needs an image")
        options["strength"] = args.strength
    return options


def sample_command(args: argparse.Namespace) -> None:
    options = sample_options(args)
    guide = {}
    if args.classifier:  # a bad file fails before the checkpoint loads
        guide = {"classifier": load_noisy_classifier(args.classifier), "classifier_scale": args.classifier_scale}
    text = {k: v for k, v in (("clip_skip", args.clip_skip), ("tokenizer", args.tokenizer)) if v is not None}
    pipe = load_pipeline_any(  # ldmkit, original .ckpt / .safetensors (SD: no YAML needed) or diffusers folder
        args.checkpoint, device=resolve_device(args.device), config=args.config, precision=args.precision,
        prediction=args.prediction, text_options=text)
    for path, scale in map(parse_lora, args.lora):
        pipe.load_lora(path, scale)
    if guide:
        pipe.check_classifier(guide["classifier"])
    items = condition_inputs(args, pipe)
    factor = pipe.cfg.autoencoder.downsample_factor
    if args.size and args.size % factor:  # before anything is written
        raise ValueError(f"--size {args.size}: not divisible by the first stage's factor {factor}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"checkpoint": str(args.checkpoint), "sampler": sampler_name(args.sampler), "steps": args.steps,
                "guidance": args.guidance, "precision": args.precision,
                **guidance_record(pipe.guidance_settings(args.guidance_rescale, args.guidance_interval)),
                **text, **({"lora": args.lora} if args.lora else {}),
                **({"prompt_weighting": True} if args.prompt_weighting else {}), **options}
    if guide:
        settings |= {"classifier": str(args.classifier), "classifier_scale": args.classifier_scale}
    images = []
    for start in range(0, len(items), args.batch_size):
        chunk = items[start:start + args.batch_size]
        seeds = [args.seed + start + k for k in range(len(chunk))]
        x = pipe(**_stack(chunk), num_inference_steps=args.steps, guidance_scale=args.guidance,
                 guidance_rescale=args.guidance_rescale, guidance_interval=args.guidance_interval, sampler=args.sampler,
                 seeds=seeds, height=args.size, width=args.size, output_type="pt", decode_tile=args.decode_tile,
                 prompt_weighting=args.prompt_weighting, **guide, **options)
        for k, (img, seed, item) in enumerate(zip(x, seeds, chunk)):
            meta = settings | {"seed": seed}
            if "class_labels" in item:
                label = item["class_labels"]
                meta |= {"class": label, "class_name": (pipe.cfg.class_names or [""] * (label + 1))[label]}
            if "prompt" in item:
                meta |= {"prompt": item["prompt"], "negative_prompt": args.negative_prompt}
            if "boxes" in item:
                meta |= {"boxes": item["boxes"].tolist()}
            save_png(img, out / f"{start + k:05d}_seed{seed}.png", {"ldmkit": json.dumps(meta)})
        images.append(x.cpu())
    save_grid(torch.cat(images), out / "grid.png", nrow=args.n if len(items) > args.n else None)
    print(f"{len(items)} images and grid.png in {out}")
