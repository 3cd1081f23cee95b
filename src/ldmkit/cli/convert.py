"""``ldmkit convert SRC DST``: any pipeline checkpoint ldmkit reads -> ldmkit, diffusers or original."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_convert_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert between ldmkit pipeline.safetensors, original .ckpt + YAML and diffusers folders",
        description="SRC: pipeline.safetensors, an original .ckpt (with its YAML) or a diffusers folder. "
                    "DST: .safetensors (ldmkit), .ckpt (original; a .yaml is written next to it) or a folder "
                    "(diffusers: an existing folder, a name ending in '/' or without a suffix).")
    p.add_argument("src", help="pipeline.safetensors, original .ckpt, or a diffusers folder (model_index.json)")
    p.add_argument("dst", help="pipeline.safetensors, .ckpt, or a folder for diffusers")
    p.add_argument("--config", default=None, help="the original YAML of SRC (default: SRC with .yaml)")
    p.add_argument("--to", choices=("ldmkit", "diffusers", "original"), default=None,
                   help="output format (default: from DST's name)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="dtype of the written weights (fp16 halves a Stable Diffusion folder: 2 GB instead of 4)")
    p.add_argument("--prediction", choices=("eps", "v"), default=None,
                   help="what an SD 2.x single file's UNet predicts, when its name does not tell (768 models: v)")


def convert_command(args: argparse.Namespace) -> None:
    from ..convert.loader import convert_any

    print(" ".join(str(p) for p in convert_any(args.src, args.dst, args.config, args.to, args.precision,
                                               args.prediction)))


def parse_lora(spec: str) -> tuple[str, float]:
    """``FILE`` or ``FILE:SCALE`` -> (file, scale)."""
    head, sep, tail = spec.rpartition(":")
    if sep:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def add_lora_arg(p) -> None:
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="a LoRA file (kohya or diffusers layout) at SCALE (default 1); repeatable")


def add_merge_lora_parser(sub) -> None:
    p = sub.add_parser("merge-lora", help="bake LoRA files into a checkpoint (any format convert writes)")
    p.add_argument("checkpoint", help="pipeline.safetensors, an original .ckpt / .safetensors or a diffusers folder")
    p.add_argument("out", help="the merged checkpoint: .safetensors (ldmkit), .ckpt (original) or a folder (diffusers)")
    add_lora_arg(p)
    p.add_argument("--config", default=None, help="the original YAML of CHECKPOINT (SD files need none)")
    p.add_argument("--to", choices=("ldmkit", "diffusers", "original"), default=None)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")


def merge_lora_command(args: argparse.Namespace) -> None:
    from ..convert.loader import check_target, load_pipeline_any, write_pipeline

    if not args.lora:
        raise ValueError("merge-lora: pass at least one --lora FILE[:SCALE]")
    target = check_target(args.out, args.to)
    loras = [parse_lora(s) for s in args.lora]
    for f, _ in loras:
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: file not found")
    pipe = load_pipeline_any(args.checkpoint, config=args.config, precision=args.precision)
    for f, scale in loras:
        pipe.load_lora(f, scale)
    pipe.merge_lora()
    extra = {"merged_from": Path(args.checkpoint).name, "loras": [f"{Path(f).name}:{s}" for f, s in loras]}
    print(" ".join(str(p) for p in write_pipeline(pipe, args.out, target, extra)))
