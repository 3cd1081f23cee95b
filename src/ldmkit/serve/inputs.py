"""What a generation request may hold, its limits, and its uploads decoded into ``Pipeline.__call__`` arguments.

Every rejection is a :class:`RequestError` naming the field; the app answers it as ``{"error", "field"}`` JSON
with a 4xx status. Uploads are base64 (optionally a ``data:image/...;base64,`` URL), PNG / JPEG / WebP only,
bounded in bytes and pixels before they are decoded.
"""
from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ..diffusion import check_options, sampler_name
from ..imageio import from_pil
from ..nn.prompt_weights import PromptSyntaxError, parse_prompt
from ..pipeline_inputs import gather_inputs
from .models import ModelEntry

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
UPLOADS = ("image", "mask", "low_res", "segmentation")


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on one request and on the queue. Memory: a queued job holds at most its decoded uploads
    (``UPLOADS`` x ``max_upload_pixels`` x 3 float32 values), so the queue's share is bounded by ``max_queue``."""

    max_size: int = 1024               # output side, pixels
    max_steps: int = 150
    max_n: int = 8                     # images per request
    max_prompt_chars: int = 1000
    max_upload_bytes: int = 8 * 2**20  # one uploaded file, after base64 decoding
    max_upload_pixels: int = 1024 * 1024
    max_queue: int = 16                # jobs queued or running
    keep_jobs: int = 200               # finished jobs remembered for status and the gallery
    previews: int = 4                  # decoded previews per job (0: none; each costs one decode)

    def public(self) -> dict[str, int]:
        return asdict(self)

    @property
    def max_body_bytes(self) -> int:
        """A request body: every upload at its limit in base64 (4/3), plus the JSON around it."""
        return len(UPLOADS) * (self.max_upload_bytes * 4 // 3 + 64) + 64 * 1024


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx), the ``field`` at fault and a one-line message."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


class Box(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: int | str = Field(description="class id (1-based, as in the data) or class name")
    x0: float = Field(ge=0, le=1)
    y0: float = Field(ge=0, le=1)
    x1: float = Field(ge=0, le=1)
    y1: float = Field(ge=0, le=1)


class GenerateRequest(BaseModel):
    """One generation: the model, its conditioning, and the sampler settings."""

    model_config = ConfigDict(extra="forbid")
    model: str
    prompt: str | None = None
    negative_prompt: str | None = None
    prompt_weighting: bool = Field(False, description="read (word:1.3), (word), [word] in the prompts and encode "
                                   "prompts beyond the text encoder's window in chunks")
    class_label: int | str | None = Field(None, description="class index or name (class-conditional models)")
    boxes: list[Box] | None = Field(None, description="layout models: objects with corners in [0, 1]")
    image: str | None = Field(None, description="base64 image: img2img start, or the image to inpaint with mask")
    mask: str | None = Field(None, description="base64 image, white = fill (inpainting, any model)")
    low_res: str | None = Field(None, description="base64 image to upscale (super-resolution models)")
    segmentation: str | None = Field(None, description="base64 grey / palette image, pixel = class id")
    sampler: str = "ddim"
    steps: int = Field(30, ge=1)
    guidance: float = Field(3.0, ge=0, le=50)
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="image k gets seed + k; none: random")
    n: int = Field(1, ge=1)
    size: int | None = Field(None, ge=8, description="output side in pixels (default: the model's)")
    strength: float | None = Field(None, ge=0, le=1, description="img2img: share of the steps run")


def decode_upload(field: str, data: str, limits: ServeLimits) -> Image.Image:
    """A base64 upload (or data URL) -> a loaded PIL image, bounded and of a known type."""
    if data.startswith("data:"):
        head, _, data = data.partition(",")
        if ";base64" not in head:
            raise RequestError(field, "expected a base64 data URL (data:image/png;base64,...)")
    if len(data) > limits.max_upload_bytes * 4 // 3 + 8:
        raise RequestError(field, f"upload over {limits.max_upload_bytes} bytes", 413)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, "not valid base64") from None
    if len(raw) > limits.max_upload_bytes:
        raise RequestError(field, f"upload of {len(raw)} bytes, over {limits.max_upload_bytes}", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            fmt = img.format
            if fmt not in IMAGE_FORMATS:
                raise RequestError(field, f"{fmt or 'unknown'} image, expected PNG, JPEG or WebP", 415)
            if img.width * img.height > limits.max_upload_pixels:
                raise RequestError(field, f"{img.width}x{img.height} image, over {limits.max_upload_pixels} "
                                          "pixels", 413)
            img.load()
    except RequestError:
        raise
    except (OSError, Image.DecompressionBombWarning, Image.DecompressionBombError, ValueError) as e:
        raise RequestError(field, f"not a readable image ({' '.join(str(e).split())[:120]})", 415) from None
    return img


def _class_index(value: int | str, names: list[str], field: str, base: int = 0) -> int:
    """A class given by index (``base``-based) or by name -> its index (``base``-based)."""
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        lowered = [n.lower() for n in names]
        if value.lower() not in lowered:
            raise RequestError(field, f"unknown class {value!r} (known: {', '.join(names)})")
        return lowered.index(value.lower()) + base
    idx = int(value)
    if not base <= idx < len(names) + base:
        raise RequestError(field, f"class {idx} out of range {base}..{len(names) - 1 + base}")
    return idx


def _check_limits(req: GenerateRequest, caps: dict[str, Any], limits: ServeLimits) -> None:
    for field, value, bound in (("steps", req.steps, limits.max_steps), ("n", req.n, limits.max_n),
                                ("size", req.size or 0, limits.max_size)):
        if value > bound:
            raise RequestError(field, f"{value} is over the limit {bound}")
    for field in ("prompt", "negative_prompt"):
        text = getattr(req, field)
        if text is not None and len(text) > limits.max_prompt_chars:
            raise RequestError(field, f"{len(text)} characters, over the limit {limits.max_prompt_chars}")
    if req.size and req.size % caps["size_multiple"]:
        raise RequestError("size", f"{req.size} is not a multiple of the first stage's factor {caps['size_multiple']}")
    try:
        check_options(req.sampler, {})
    except ValueError as e:
        raise RequestError("sampler", str(e).split(": ", 1)[-1]) from None
    if sampler_name(req.sampler) == "ddpm" and req.steps != caps["timesteps"]:
        raise RequestError("steps", f"DDPM sampling runs all {caps['timesteps']} steps, got {req.steps}")


def _wanted(req: GenerateRequest, caps: dict[str, Any]) -> None:
    """Inputs the model does not take are refused by name; the ones it needs are asked for by name."""
    offered = {"prompt": caps["text"], "negative_prompt": caps["text"], "class_label": caps["class"],
               "boxes": caps["boxes"], "low_res": caps["low_res"], "segmentation": caps["segmentation"]}
    for field, ok in offered.items():
        if getattr(req, field) is not None and not ok:
            raise RequestError(field, f"model {caps['name']} does not take it")
    needed = {"prompt": caps["text"], "class_label": caps["class"], "boxes": caps["boxes"],
              "low_res": caps["low_res"], "segmentation": caps["segmentation"],
              "image": caps["inpaint_model"], "mask": caps["inpaint_model"]}
    for field, need in needed.items():
        if need and getattr(req, field) is None:
            raise RequestError(field, f"model {caps['name']} needs it")


def call_arguments(req: GenerateRequest, entry: ModelEntry, limits: ServeLimits) -> dict[str, Any]:
    """The request as checked ``Pipeline.__call__`` keyword arguments (seeds included); RequestError otherwise."""
    caps = entry.capabilities()
    _check_limits(req, caps, limits)
    _wanted(req, caps)
    kw: dict[str, Any] = {}
    if req.prompt is not None:
        kw["prompt"] = req.prompt
    if req.negative_prompt:
        kw["negative_prompt"] = req.negative_prompt
    if req.prompt_weighting:
        if not caps["text"]:
            raise RequestError("prompt_weighting", f"model {caps['name']} does not take prompts")
        for field in ("prompt", "negative_prompt"):
            try:  # a broken bracket is named before the job waits in the queue
                parse_prompt(getattr(req, field) or "")
            except PromptSyntaxError as e:
                raise RequestError(field, str(e).split(": ", 1)[-1]) from None
        kw["prompt_weighting"] = True
    if req.class_label is not None:
        kw["class_labels"] = [_class_index(req.class_label, caps["class_names"], "class_label")]
    if req.boxes is not None:
        if not req.boxes:
            raise RequestError("boxes", "at least one box")
        if caps.get("max_objects") and len(req.boxes) > caps["max_objects"]:
            raise RequestError("boxes", f"{len(req.boxes)} objects, the model takes at most {caps['max_objects']}")
        rows = []
        for k, b in enumerate(req.boxes):
            if b.x0 >= b.x1 or b.y0 >= b.y1:
                raise RequestError(f"boxes[{k}]", "needs x0 < x1 and y0 < y1")
            rows.append([float(_class_index(b.label, caps["box_classes"], f"boxes[{k}].label", base=1)),
                         b.x0, b.y0, b.x1, b.y1])
        kw["boxes"] = torch.tensor(rows)
    channels = caps["channels"]
    for field in UPLOADS:
        data = getattr(req, field)
        if data is None:
            continue
        img = decode_upload(field, data, limits)
        if max(img.size) > limits.max_size:
            raise RequestError(field, f"{img.width}x{img.height} image, over the side limit {limits.max_size}")
        if field == "mask":
            kw["mask"] = (from_pil(img, 1) > 0).float()  # white (> mid-grey) = fill
        elif field == "segmentation":
            grey = img if img.mode in ("L", "P") else img.convert("L")
            seg = torch.from_numpy(np.asarray(grey, dtype=np.int64).copy())
            if int(seg.max()) >= caps["segmentation_classes"]:
                raise RequestError(field, f"class id {int(seg.max())} >= the model's "
                                          f"{caps['segmentation_classes']} classes")
            kw["segmentation"] = seg
        else:
            kw[field] = from_pil(img, channels)
    if req.strength is not None:
        if req.image is None:
            raise RequestError("strength", "img2img needs an image")
        kw["strength"] = req.strength
    seed = req.seed if req.seed is not None else int(torch.randint(0, 2**31 - 1 - limits.max_n, (1,)))
    kw["seeds"] = [seed + k for k in range(req.n)]
    try:  # the pipeline's own checks (batching, sizes), before the job waits in the queue
        inputs = gather_inputs(entry.pipe.cfg, "cpu", **{k: v for k, v in kw.items()
                                                      if k not in ("strength", "prompt_weighting")})
        entry.pipe.latent_size(inputs, req.size, req.size)
    except ValueError as e:
        message = str(e)
        field = message.split(":", 1)[0] if ":" in message.split(" ", 1)[0] else "request"
        raise RequestError(field, message.split(": ", 1)[-1] if field != "request" else message) from None
    if inputs.image_hw is not None and max(inputs.image_hw) > limits.max_size:
        raise RequestError("size", f"the output would be {inputs.image_hw}, over the side limit {limits.max_size}")
    kw.update(num_inference_steps=req.steps, guidance_scale=req.guidance, sampler=req.sampler,
              height=req.size, width=req.size)
    return kw


def settings_record(req: GenerateRequest, kw: dict[str, Any]) -> dict[str, Any]:
    """What a result PNG carries (besides its seed): enough to reproduce it with ``ldmkit sample``."""
    rec = {"model": req.model, "sampler": sampler_name(req.sampler), "steps": req.steps, "guidance": req.guidance,
           "size": req.size}
    for field in ("prompt", "negative_prompt", "class_label", "strength"):
        if getattr(req, field) is not None:
            rec[field] = getattr(req, field)
    if req.prompt_weighting:
        rec["prompt_weighting"] = True
    if "boxes" in kw:
        rec["boxes"] = kw["boxes"].tolist()
    rec["uploads"] = [f for f in UPLOADS if getattr(req, f) is not None]
    return rec
