"""The samples the health rule flags, side by side across samplers on the same seeds and conditions (issue 23).

Samples ``--n`` test conditions with each ``name:steps[:option=value]`` of ``--samplers`` at ``--guidance``, then
writes one row per sampler of the first columns any sampler flagged (up to ``--columns``), so a flag can be looked at:

    PYTHONPATH=src python benchmarks/flagged_grid.py runs/ldm/shapes-text-eps/pipeline.safetensors \\
        --samplers ddim:50,plms:50:order=3,plms:50 --guidance 5 --n 200 --out docs/plms-order-g5.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from ldmkit.data import build_dataset
from ldmkit.evaluation.generation import EVERY_STEP, condition_kind, model_data_config
from ldmkit.evaluation.health import fit_range
from ldmkit.pipeline import Pipeline
from sample_health_table import data_conditioned_latents, parse_sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pipeline")
    ap.add_argument("--samplers", default="ddim:50,plms:50")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=10_000_000)
    ap.add_argument("--columns", type=int, default=13)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    pipe = Pipeline.load(args.pipeline)
    cfg = model_data_config(Path(args.pipeline))
    rng = fit_range(pipe, build_dataset(cfg, "train"), sample=True)
    test = build_dataset(cfg, "test")
    kind = condition_kind(pipe)
    kind = f"data:{cfg.name}:test" if kind == "data" else kind
    latents, flagged = [], []
    for item in args.samplers.split(","):
        sampler, steps, options = parse_sampler(item)
        z = data_conditioned_latents(pipe, test, kind, args.n, args.seed, sampler, steps, args.guidance, args.n,
                                     guidance_rescale=0.0, guidance_interval=EVERY_STEP, **options)
        bad = (~rng.healthy(z)).nonzero().flatten().tolist()
        print(f"{item}: {len(bad)} of {args.n} flagged: {bad}")
        latents.append(z)
        flagged += [k for k in bad if k not in flagged]
    cols = flagged[:args.columns]
    if not cols:
        print("nothing flagged")
        return
    rows = [torch.cat(list(pipe.decode_latents(z[cols].float())), dim=2) for z in latents]  # (C, H, W * cols)
    grid = ((torch.cat(rows, dim=1).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(grid)
    image.resize((image.width * 3, image.height * 3), Image.NEAREST).save(args.out)
    print(f"rows: {args.samplers}; columns: samples {cols} -> {args.out}")


if __name__ == "__main__":
    main()
