"""``ldmkit convert SRC DST``: any pipeline checkpoint ldmkit reads -> ldmkit, diffusers or original."""
from __future__ import annotations

import argparse


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
