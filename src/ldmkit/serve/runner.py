"""Run one job: sample with the sampler's callback reporting progress (and a few decoded previews), then write
each image as a PNG that carries its settings and seed, atomically, into the output folder."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..imageio import save_png, to_pil
from .jobs import Cancelled, Job, png_bytes
from .models import ModelEntry


def run_job(job: Job, entry: ModelEntry, out_dir: Path, previews: int) -> None:
    pipe = entry.pipe
    every = max(1, job.total // previews) if previews > 0 else 0

    def callback(step_index: int, t, x: torch.Tensor, x0: torch.Tensor) -> None:
        if job.cancel.is_set():
            raise Cancelled()
        step = min(job.total, job.step + 1)
        changes = {"step": step}
        if every and step % every == 0 and step < job.total:  # the last one is the result itself
            with torch.no_grad():
                img = pipe.decode_latents(x0[:1].to(pipe.first_stage_dtype)).clamp(-1, 1)[0]
            changes |= {"preview": png_bytes(to_pil(img.float().cpu())), "previews": job.previews + 1}
        job.touch(**changes)

    images = pipe(**job.kwargs, output_type="pt", callback=callback)
    if job.cancel.is_set():
        raise Cancelled()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for k, (img, seed) in enumerate(zip(images, job.kwargs["seeds"])):
        name = f"{job.id}_{k:02d}_seed{seed}.png"
        save_png(img, out_dir / name, {"ldmkit": json.dumps(job.settings | {"seed": seed})})
        names.append(name)
    job.touch(step=job.total, images=names, seeds=list(job.kwargs["seeds"]))
