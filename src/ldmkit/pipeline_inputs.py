"""User inputs of ``Pipeline.__call__`` -> batched tensors, checked against what the pipeline is conditioned on.

A single input (one prompt, one layout, one low-res image) is repeated to the batch size, which comes
from the longest input, the seeds or ``num_images``; inputs of different batch sizes are an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data.degradation import bicubic_downsample, bsr_degrade
from .data.masks import generate_mask

CONTEXT_KEYS = {"class": "label", "text": "caption", "text_frozen": "caption", "bert": "caption",
                "clip": "caption", "openclip": "caption", "layout": "boxes"}
ARG_NAMES = {"label": "class_labels", "caption": "prompt", "boxes": "boxes",
             "segmentation": "segmentation", "low_res": "low_res", "image": "image", "mask": "mask"}


@dataclass
class CallInputs:
    n: int                                       # batch size
    values: Any = None                           # the context conditioner's input
    negative: Any = None                         # negative prompts (replace the null caption in guidance)
    concat: dict[str, Tensor] | None = None      # the concat condition's inputs
    image_hw: tuple[int, int] | None = None      # output size implied by a spatial input
    image: Tensor | None = None                  # (B, C, H, W) in [-1, 1]: img2img start / image to inpaint
    repaint_mask: Tensor | None = None           # (B, 1, H, W), 1 = fill: inpainting by re-imposing (any model)


def _with_batch(x: Any, dims: int, dtype: torch.dtype, device) -> Tensor:
    """Tensor with ``dims`` dimensions, a batch axis added to a single example."""
    t = torch.as_tensor(x, dtype=dtype).to(device)
    return t[None] if t.dim() == dims - 1 else t


def _repeat(x: Any, n: int, name: str) -> Any:
    size = len(x)
    if size == n:
        return x
    if size != 1:
        raise ValueError(f"{name}: got a batch of {size}, but the other inputs give {n} images")
    return x * n if isinstance(x, list) else x.expand(n, *x.shape[1:]).clone()


def gather_inputs(cfg, device, *, class_labels=None, prompt=None, negative_prompt=None, boxes=None,
                  segmentation=None, low_res=None, image=None, mask=None, num_images=None, seeds=None) -> CallInputs:
    """Check the given inputs against ``cfg`` (a PipelineConfig) and batch them."""
    key = CONTEXT_KEYS.get(cfg.conditioner.kind)
    given = {"label": class_labels, "caption": prompt, "boxes": boxes, "segmentation": segmentation,
             "low_res": low_res, "image": image, "mask": mask}
    # image (img2img) and image + mask (inpainting by re-imposing the known region) work with any model
    wanted = ({key} if key else set()) | set(cfg.concat.input_keys) | {"image", "mask"}
    wanted.discard("masked_image")
    for k, v in given.items():
        if v is not None and k not in wanted:
            raise ValueError(f"{ARG_NAMES[k]} given, but this pipeline is not conditioned on it "
                             f"(it takes: {', '.join(ARG_NAMES[w] for w in sorted(wanted)) or 'nothing'})")
    if negative_prompt is not None and key != "caption":
        raise ValueError("negative_prompt given, but this pipeline is not text-conditional")
    batch: dict[str, Any] = {}
    if class_labels is not None:
        batch["label"] = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).to(device)
    if prompt is not None:
        batch["caption"] = [prompt] if isinstance(prompt, str) else list(prompt)
    if negative_prompt is not None:
        batch["negative"] = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
    if boxes is not None:
        b = _with_batch(boxes, 3, torch.float32, device)  # (B, N, 5) rows [class_id, x0, y0, x1, y1]
        slots = getattr(cfg.conditioner, "max_objects", b.shape[1])
        if b.shape[1] > slots:
            raise ValueError(f"boxes: {b.shape[1]} objects, the model takes at most {slots}")
        batch["boxes"] = torch.cat([b, b.new_full((b.shape[0], slots - b.shape[1], 5), -1.0)], dim=1)
    if segmentation is not None:
        batch["segmentation"] = _with_batch(segmentation, 3, torch.long, device)  # (B, H, W)
    if low_res is not None:
        batch["low_res"] = _with_batch(low_res, 4, torch.float32, device)  # (B, C, h, w)
    if mask is not None and image is None:
        raise ValueError("mask given without image: inpainting needs both image and mask")
    if image is not None:
        batch["image"] = _with_batch(image, 4, torch.float32, device)
        channels = cfg.autoencoder.in_channels
        if batch["image"].shape[1] != channels:
            raise ValueError(f"image: {batch['image'].shape[1]} channels, the autoencoder takes {channels}")
    if mask is not None:
        m = torch.as_tensor(mask, dtype=torch.float32).to(device)
        batch["mask"] = m.reshape(-1, 1, *m.shape[-2:]) if m.dim() != 4 else m  # (B, 1, H, W), 1 = fill
        if batch["mask"].shape[-2:] != batch["image"].shape[-2:]:
            raise ValueError(f"mask: size {tuple(batch['mask'].shape[-2:])} differs from the image's "
                             f"{tuple(batch['image'].shape[-2:])}")
    sizes = [len(v) for v in batch.values()]
    n = max(sizes + [len(seeds) if seeds is not None else 0, num_images or 0, 1])
    batch = {k: _repeat(v, n, ARG_NAMES.get(k, k)) for k, v in batch.items()}
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} images")
    if key is not None and key not in batch:
        raise ValueError(f"this pipeline is conditioned on {ARG_NAMES[key]}: pass it")

    out = CallInputs(n=n, values=batch.get(key), negative=batch.get("negative"))
    kind = cfg.concat.kind
    if kind == "semantic" and "segmentation" in batch:
        out.concat = {"segmentation": batch["segmentation"]}
        out.image_hw = tuple(batch["segmentation"].shape[-2:])
    elif kind == "boxes" and "boxes" in batch:  # no size of its own: the output size is height / width
        out.concat = {"boxes": batch["boxes"]}
    elif kind == "low_res" and "low_res" in batch:
        out.concat = {"low_res": batch["low_res"]}
        out.image_hw = tuple(s * cfg.concat.factor for s in batch["low_res"].shape[-2:])
    elif kind == "inpaint" and "image" in batch and "mask" in batch:
        m = batch["mask"]
        out.concat = {"mask": m, "masked_image": batch["image"] * (1 - m)}
        out.image_hw = tuple(batch["image"].shape[-2:])
    elif kind != "none":
        raise ValueError(f"this pipeline is conditioned on a {kind} map: pass "
                         f"{', '.join(ARG_NAMES['image' if k == 'masked_image' else k] for k in cfg.concat.input_keys)}")
    if "image" in batch:
        out.image = batch["image"]
        hw = tuple(batch["image"].shape[-2:])
        if out.image_hw is not None and out.image_hw != hw:
            raise ValueError(f"image: size {hw} differs from the output size {out.image_hw} the conditioning gives")
        out.image_hw = hw
        if kind != "inpaint" and "mask" in batch:
            out.repaint_mask = batch["mask"]
    return out


def batch_conditioning(cfg, batch: dict[str, Any],
                       generator: torch.Generator | list[torch.Generator] | None = None) -> dict[str, Any]:
    """A data batch -> the keyword inputs of ``Pipeline.__call__`` / ``gather_inputs`` for ``cfg``'s conditioning.

    Training pairs that the data set does not carry are made here from the image: a degraded low-res
    copy (super-resolution) or a mask from the paper's kind of generator (inpainting), drawn from
    ``generator`` so that a resumed run draws the same ones (or from one generator per sample).
    """
    kw: dict[str, Any] = {}
    key = CONTEXT_KEYS.get(cfg.conditioner.kind)
    needed = ([key] if key else []) + [k for k in cfg.concat.input_keys if k not in ("low_res", "mask", "masked_image")]
    for k in needed:
        if k not in batch:
            raise ValueError(f"the data has no {k!r} field, which this model's conditioning needs "
                             f"(conditioner.kind={cfg.conditioner.kind}, concat.kind={cfg.concat.kind})")
    if key:
        kw[ARG_NAMES[key]] = batch[key]
    kind = cfg.concat.kind
    if kind in ("semantic", "boxes"):
        kw[cfg.concat.input_keys[0]] = batch[cfg.concat.input_keys[0]]
    elif kind == "low_res":
        if "low_res" in batch:
            kw["low_res"] = batch["low_res"]
        elif cfg.concat.degradation == "bsr" and isinstance(generator, (list, tuple)):
            # per-sample generators: each image degraded from its own seed (independent of the batch split)
            images, seeds = batch["image"].cpu(), _draw_seeds(generator, len(batch["image"]))
            kw["low_res"] = torch.cat([bsr_degrade(images[k:k + 1], cfg.concat.factor, torch.Generator().manual_seed(s))
                                       for k, s in enumerate(seeds)])
        elif cfg.concat.degradation == "bsr":
            seed = _draw_seeds(generator, 1)[0]
            kw["low_res"] = bsr_degrade(batch["image"].cpu(), cfg.concat.factor, torch.Generator().manual_seed(seed))
        else:
            kw["low_res"] = bicubic_downsample(batch["image"], cfg.concat.factor)
    elif kind == "inpaint":
        image = batch["image"]
        kw["image"] = image
        if "mask" in batch:
            kw["mask"] = batch["mask"]
        else:
            seeds = _draw_seeds(generator, len(image))
            masks = [torch.from_numpy(generate_mask(tuple(image.shape[-2:]), np.random.default_rng(s),
                                                    kind=cfg.concat.mask_kind)) for s in seeds]
            kw["mask"] = torch.stack(masks)[:, None].to(image.device)  # (B, 1, H, W)
    return kw


def _draw_seeds(generator: torch.Generator | list[torch.Generator] | None, n: int) -> list[int]:
    """``n`` seeds from one generator, or one seed from each of ``n`` per-sample generators."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} generators for {n} samples")
        return [int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device)) for g in generator]
    dev = generator.device if generator is not None else "cpu"
    return [int(s) for s in torch.randint(0, 2**31 - 1, (n,), generator=generator, device=dev)]
