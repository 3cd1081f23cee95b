"""Sampling for evaluation: N images, a seed per image, written in batches so an interrupted run resumes.

Image k has seed ``seed + k`` and a condition fixed by k alone: class ``k % K`` for class-conditional
models, test item ``k % len(test)`` for models conditioned on captions, layouts or maps (its
super-resolution input is the bicubic x f copy, its inpainting mask is drawn from ``[seed, k]``).
So a result does not depend on the batch size, and a resumed run recomputes nothing it has.
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data import DataConfig, collate
from ..data.masks import generate_mask
from ..diffusion import check_options, option_default, sampler_options
from ..imageio import to_uint8
from ..pipeline_inputs import batch_conditioning
from ..weights import atomic_write, read_release_metadata


EVERY_STEP = (0.0, math.inf)  # an explicit "guide at every step" (None would mean the model's own default)


@dataclass
class SampleProtocol:
    """Everything that decides the generated images (recorded in the report, checked on resume)."""

    checkpoint_sha256: str
    n: int
    seed: int
    steps: int = 50
    sampler: str = "ddim"
    guidance_scale: float = 3.0
    eta: float = 0.0
    batch_size: int = 100
    conditions: str = "unconditional"   # "class-balanced" | "unconditional" | "data:<name>:<split>"
    classifier_sha256: str = ""         # classifier guidance: the noisy classifier's weights ("" = none)
    classifier_scale: float = 0.0
    # the guidance rescale / interval used (the model's own defaults unless the command set them); None = every step
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] | None = None


def guidance_record(settings: tuple[float, tuple[float, float] | None]) -> dict:
    """``Pipeline.guidance_settings(...)`` as the fields of a protocol / PNG record."""
    rescale, interval = settings
    return {"guidance_rescale": rescale, "guidance_interval": None if interval is None else tuple(interval)}


def protocol_eta(sampler: str, eta: float | None = None) -> float:
    """The eta a run uses: ``eta`` when given (the sampler must take it), else the sampler's default
    (0 for DDIM, 1 for euler_a); samplers without the option draw no extra noise: recorded as 0."""
    if eta is not None:
        check_options(sampler, {"eta": eta})
        return float(eta)
    return float(option_default(sampler, "eta")) if "eta" in sampler_options(sampler) else 0.0


def same_protocol(saved: dict, proto: SampleProtocol) -> bool:
    """Whether a folder's recorded protocol is ``proto``; fields added since it was written count as
    their defaults (a folder from before classifier guidance was unguided)."""
    defaults = {f.name: f.default for f in fields(SampleProtocol) if f.default is not MISSING}
    return {**defaults, **saved} == json.loads(json.dumps(asdict(proto)))  # tuples as the file's lists


def model_data_config(path: Path, data_root: str | None = None) -> DataConfig | None:
    """The data config stored with a released pipeline (None if absent), with ``data_root`` overriding its root."""
    meta = read_release_metadata(path)
    if "data" not in meta:
        return None
    return DataConfig(**(meta["data"] | ({"root": data_root} if data_root else {})))


def condition_kind(pipe) -> str:
    if pipe.cfg.conditioner.kind == "class" and pipe.cfg.concat.kind == "none":
        return "class-balanced"
    if pipe.cfg.conditioner.kind == "none" and pipe.cfg.concat.kind == "none":
        return "unconditional"
    return "data"


def eval_batch(pipe, dataset, indices: list[int], seed: int) -> dict:
    """Data items for images ``indices`` (item k % len), with their eval-time masks fixed by ``[seed, k]``."""
    batch = collate([dataset[k % len(dataset)] for k in indices])
    if pipe.cfg.concat.kind == "inpaint":
        size = tuple(batch["image"].shape[-2:])
        batch["mask"] = torch.stack([torch.from_numpy(generate_mask(size, np.random.default_rng([seed, k]),
                                                                    kind=pipe.cfg.concat.mask_kind)) for k in indices])[:, None]
    return batch


def _call_inputs(pipe, proto: SampleProtocol, indices: list[int], dataset) -> dict:
    if proto.conditions == "class-balanced":
        return {"class_labels": [k % pipe.cfg.conditioner.num_classes for k in indices]}
    if proto.conditions == "unconditional":
        return {"num_images": len(indices)}
    batch = eval_batch(pipe, dataset, indices, proto.seed)
    # super-resolution is evaluated on the plain bicubic degradation, whatever the model was trained on
    cfg = pipe.cfg
    if cfg.concat.kind == "low_res" and cfg.concat.degradation != "bicubic":
        cfg = replace(cfg, concat=replace(cfg.concat, degradation="bicubic"))
    return batch_conditioning(cfg, batch)


@torch.no_grad()
def sample_batch(pipe, proto: SampleProtocol, indices: list[int], dataset=None, classifier=None,
                 with_latents: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Images ``indices`` of the protocol, (B, C, H, W) in [-1, 1]; with ``with_latents`` also the sampler's
    latents (B, c, h, w), which the sample-health rule judges."""
    # every sampler that takes eta (any alias of DDIM, euler_a) gets the protocol's
    options = {"eta": proto.eta} if "eta" in sampler_options(proto.sampler) else {}
    if proto.classifier_sha256:
        if classifier is None:
            raise ValueError("this protocol is classifier-guided: pass the classifier")
        options |= {"classifier": classifier, "classifier_scale": proto.classifier_scale}
    return pipe(**_call_inputs(pipe, proto, indices, dataset), num_inference_steps=proto.steps,
                guidance_scale=proto.guidance_scale, guidance_rescale=proto.guidance_rescale,
                guidance_interval=proto.guidance_interval or EVERY_STEP, sampler=proto.sampler,
                seeds=[proto.seed + k for k in indices],
                output_type="pt+latent" if with_latents else "pt", **options)


@torch.no_grad()
def generate_images(pipe, proto: SampleProtocol, out_dir: Path, dataset=None,
                    progress: Callable[[int, int], None] | None = None, classifier=None) -> np.ndarray:
    """All ``proto.n`` images as uint8 (N, H, W, C); finished batches in ``out_dir`` are reused. Each batch file
    also keeps the sampler's latents (float16, read by :func:`load_latents`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = out_dir / "protocol.json"
    if record.is_file() and not same_protocol(json.loads(record.read_text()), proto):
        raise ValueError(f"{out_dir} holds samples made with other settings ({record}); choose another --out")
    atomic_write(record, lambda tmp: Path(tmp).write_text(json.dumps(asdict(proto), indent=1)))
    if proto.conditions.startswith("data") and dataset is None:
        raise ValueError("this model is conditioned on data items: pass the data set to take conditions from")
    parts = []
    for start in range(0, proto.n, proto.batch_size):
        indices = list(range(start, min(proto.n, start + proto.batch_size)))
        path = out_dir / f"batch_{start:07d}.npz"
        if path.is_file():
            parts.append(np.load(path)["images"])
        else:
            x, z = sample_batch(pipe, proto, indices, dataset, classifier, with_latents=True)
            images, latents = to_uint8(x), z.cpu().half().numpy()  # (B, H, W, C), (B, c, h, w)
            # atomic: a killed run never leaves a half-written batch
            atomic_write(path, lambda tmp: _save_npz(tmp, images, latents))
            parts.append(images)
        if progress:
            progress(indices[-1] + 1, proto.n)
    return np.concatenate(parts)


def _save_npz(path, images: np.ndarray, latents: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, images=images, latents=latents)


def load_latents(out_dir: Path, n: int, batch_size: int) -> torch.Tensor | None:
    """The sampler's latents of the ``n`` images :func:`generate_images` wrote to ``out_dir`` (float32), or None
    when a batch file predates them (written before the files kept latents)."""
    parts = []
    for start in range(0, n, batch_size):
        with np.load(Path(out_dir) / f"batch_{start:07d}.npz") as f:
            if "latents" not in f:
                return None
            parts.append(torch.from_numpy(f["latents"]).float())
    return torch.cat(parts)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
