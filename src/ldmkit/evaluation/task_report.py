"""``ldmkit eval-task``: the metric of each task of the paper, with its baseline beside it.

Images come from :func:`generate_images` (seed per image, conditions from the test split, resumable), so
the same protocol serves FD and the task metrics. Baselines: the detector on the real test images (text,
layout, semantic: what a perfect generator would score), bicubic upsampling (super-resolution), filling
the hole with the mean of the known pixels (inpainting).
"""
from __future__ import annotations

import datetime
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import __version__
from ..data import build_dataset
from ..diffusion import sampler_name
from ..weights import atomic_write, file_digest
from .generation import (SampleProtocol, eval_batch, generate_images, guidance_record, images_to_tensor,
                         load_latents, model_data_config, protocol_eta)
from .health import sample_health
from .tasks import MIoU, caption_accuracy, inpainting_report, mean_layout_iou, segment_shapes, sr_report


def task_name(cfg) -> str:
    """The paper task a pipeline config performs."""
    concat = {"semantic": "semantic", "low_res": "super-resolution", "inpaint": "inpainting",
              "boxes": "layout"}.get(cfg.concat.kind)
    if concat:
        return concat
    return {"text": "text", "text_frozen": "text", "bert": "text", "layout": "layout", "class": "class"}.get(cfg.conditioner.kind,
                                                                                             "unconditional")


def _semantic(fake: torch.Tensor, real: torch.Tensor, seg: torch.Tensor, num_classes: int) -> dict:
    out = {}
    for name, images in (("miou", fake), ("real_images_miou", real)):
        m = MIoU(num_classes)
        for img, target in zip(images, seg):
            m.update(segment_shapes(img), target)
        out[name] = m.compute()
    return out


def task_metrics(pipe, fake: torch.Tensor, batch: dict, classifier=None) -> dict[str, Any]:
    """Metrics of generated images ``fake`` (N, C, H, W) for the conditions in ``batch`` (the test items)."""
    task = task_name(pipe.cfg)
    real = batch["image"]
    if task == "text":
        model, ceiling = caption_accuracy(fake, batch["caption"]), caption_accuracy(real, batch["caption"])
        return {f"caption_match_{k}": v for k, v in model.items()} | {f"real_images_{k}": v for k, v in ceiling.items()}
    if task == "layout":
        return {"mean_iou": mean_layout_iou(fake, batch["boxes"]), "real_images_mean_iou": mean_layout_iou(real, batch["boxes"])}
    if task == "semantic":
        return _semantic(fake, real, batch["segmentation"], pipe.cfg.concat.num_classes)
    if task == "super-resolution":
        from ..data.degradation import bicubic_downsample

        low = bicubic_downsample(real, pipe.cfg.concat.factor)
        bicubic = F.interpolate(low, size=real.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
        return sr_report(fake, real, bicubic, classifier, batch.get("label") if classifier is not None else None)
    if task == "inpainting":
        return inpainting_report(fake, real, batch["mask"].float())
    raise ValueError(f"eval-task: no task metric for a {task} model (use `ldmkit eval` for FD / KID)")


def evaluate_task(checkpoint: str, *, n: int = 500, seed: int = 0, steps: int = 50, sampler: str = "ddim",
                  guidance: float = 3.0, batch_size: int = 100, out: str | Path = "runs/eval-task",
                  device: str = "auto", data_root: str | None = None, classifier: str | None = None,
                  guidance_rescale: float | None = None, guidance_interval: tuple[float, float] | None = None,
                  log=print) -> dict[str, Any]:
    from ..device import resolve_device
    from ..pipeline import Pipeline

    path, out, dev = Path(checkpoint), Path(out), resolve_device(device)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (a pipeline.safetensors)")
    data_cfg = model_data_config(path, data_root)
    if data_cfg is None:
        raise ValueError(f"{path}: no data config stored with the model, cannot take test conditions")
    pipe = Pipeline.load(path, device=dev)
    dataset = build_dataset(data_cfg, "test")
    proto = SampleProtocol(file_digest(path), n, seed, steps, sampler_name(sampler), guidance, protocol_eta(sampler),
                           batch_size, f"data:{data_cfg.name}:test",
                           **guidance_record(pipe.guidance_settings(guidance_rescale, guidance_interval)))
    fake = images_to_tensor(generate_images(pipe, proto, out / "samples", dataset,
                                            progress=lambda k, total: log(f"sampled {k}/{total}")))
    batch = eval_batch(pipe, dataset, list(range(n)), seed)
    clf = None
    if task_name(pipe.cfg) == "super-resolution" and data_cfg.name == "fashion_mnist":
        from .features import build_extractor

        clf = build_extractor("fmnist", classifier, "cpu")  # recognisability: the demo's classifier
    report = {"task": task_name(pipe.cfg), "checkpoint": str(path), "protocol": asdict(proto),
              "metrics": task_metrics(pipe, fake, batch, clf), "data": asdict(data_cfg), "ldmkit": __version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    latents = load_latents(out / "samples", n, batch_size)
    if latents is not None:  # the same sample-health rule as `ldmkit eval` (batches written before it: skipped)
        report["health"] = sample_health(pipe, latents, data_cfg)
        report["metrics"]["off_manifold"] = report["health"]["off_manifold_share"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    from ..imageio import save_grid

    save_grid(torch.cat([fake[:16], batch["image"][:16]]), out / "grid.png", nrow=8)
    return report
