"""Task metrics of the paper's conditional models, scored on what the images show.

- text-to-image (shapes captions): :func:`caption_match`, :func:`caption_accuracy`
- layout-to-image: :func:`layout_iou`, :func:`mean_layout_iou` (Hungarian matching per class)
- semantic synthesis: :func:`segment_shapes` + :class:`MIoU` / :func:`miou` (confusion-matrix mIoU)
- super-resolution: :func:`sr_report` (model vs bicubic: PSNR, SSIM, optional recognition accuracy)
- inpainting: :func:`inpainting_report` (PSNR inside / outside the hole, mean-fill baseline)

The shapes metrics read generated images back with the detector of ``tasks_shapes``.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ldmkit.data.shapes import COLOURS, SHAPES, ShapeObject, relation

from .reconstruction import psnr, ssim
from .tasks_shapes import DetectorConfig, analyse_shapes, detect_shapes, segment_shapes

RELATIONS = ("left of", "right of", "above", "below")


def _object_pattern(colours: Sequence[str], shapes: Sequence[str]) -> re.Pattern:
    return re.compile(rf"an? ({'|'.join(map(re.escape, colours))}) ({'|'.join(map(re.escape, shapes))})")


_OBJ = _object_pattern(COLOURS, SHAPES)
_REL = re.compile(rf" ({'|'.join(RELATIONS)}) ")
SSIM_WINDOW = 11  # reconstruction.ssim's window: smaller images get no SSIM keys


# ---------------------------------------------------------------------------------------- captions

@dataclass(frozen=True)
class ParsedCaption:
    """(colour, shape) per object in caption order; ``relation`` holds between the first two."""

    objects: tuple[tuple[str, str], ...]
    relation: str | None


def parse_caption(caption: str, colours: Sequence[str] = COLOURS, shapes: Sequence[str] = SHAPES) -> ParsedCaption:
    """Parse the grammar of ``shapes.describe``; raises ValueError on anything else (e.g. an unknown colour).

    ``colours`` / ``shapes``: the words allowed (``DetectorConfig.colours`` / ``.shapes`` when a study adds one).
    """
    text = caption.strip().lower()
    pattern = _OBJ if (tuple(colours), tuple(shapes)) == (COLOURS, SHAPES) else _object_pattern(colours, shapes)
    if text == "nothing":
        return ParsedCaption((), None)

    def obj_at(pos: int) -> tuple[tuple[str, str], int]:
        m = pattern.match(text, pos)
        if m is None:
            raise ValueError(f"caption {caption!r}: expected 'a <colour> <shape>' at {text[pos:]!r} "
                             f"(colours {', '.join(colours)}; shapes {', '.join(shapes)})")
        return (m.group(1), m.group(2)), m.end()

    first, pos = obj_at(0)
    objects, rel = [first], None
    m = _REL.match(text, pos)
    if m is not None:
        rel = m.group(1)
        second, pos = obj_at(m.end())
        objects.append(second)
    while pos < len(text):
        if not text.startswith(" and ", pos):
            raise ValueError(f"caption {caption!r}: expected a relation ({', '.join(RELATIONS)}) "
                             f"or ' and ' at {text[pos:]!r}")
        obj, pos = obj_at(pos + len(" and "))
        objects.append(obj)
    return ParsedCaption(tuple(objects), rel)


def caption_match(caption: str, objects: Sequence[ShapeObject], colours: Sequence[str] = COLOURS,
                  shapes: Sequence[str] = SHAPES) -> bool:
    """True when ``objects`` are exactly the caption's (colour, shape) multiset and its relation holds.

    The relation is checked on detected objects of the first two named kinds; when a kind occurs
    twice any assignment that satisfies it counts (the caption cannot say which one is meant).
    """
    parsed = parse_caption(caption, colours, shapes)
    if Counter((o.colour, o.shape) for o in objects) != Counter(parsed.objects):
        return False
    if parsed.relation is None:
        return True
    first = [o for o in objects if (o.colour, o.shape) == parsed.objects[0]]
    second = [o for o in objects if (o.colour, o.shape) == parsed.objects[1]]
    return any(a is not b and relation(a, b) == parsed.relation for a in first for b in second)


def _images(images: torch.Tensor | Sequence) -> Sequence:
    return list(images) if isinstance(images, torch.Tensor) else images


def caption_accuracy(images: torch.Tensor | Sequence, captions: Sequence[str],
                     cfg: DetectorConfig | None = None) -> dict:
    """Share of images whose detected objects match their caption: overall, one- and two-object captions.

    ``images``: (B, 3, H, W) in [-1, 1] or a sequence of images ``detect_shapes`` accepts. A rate over
    no captions is NaN; captions with three or more objects count in ``accuracy`` only.
    """
    images = _images(images)
    if len(images) != len(captions):
        raise ValueError(f"caption_accuracy: {len(images)} images but {len(captions)} captions")
    cfg = cfg or DetectorConfig()
    words = cfg.colours, cfg.shapes
    hits: dict[int, list[bool]] = {}
    for image, caption in zip(images, captions):
        n = len(parse_caption(caption, *words).objects)
        hits.setdefault(n, []).append(caption_match(caption, detect_shapes(image, cfg), *words))

    def rate(values: list[bool]) -> float:
        return sum(values) / len(values) if values else math.nan

    everything = [h for v in hits.values() for h in v]
    return {"accuracy": rate(everything), "one_object": rate(hits.get(1, [])), "two_object": rate(hits.get(2, [])),
            "n": len(everything), "n_one": len(hits.get(1, [])), "n_two": len(hits.get(2, []))}


# ------------------------------------------------------------------------------------------ layout

def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes; 0 when either is empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def layout_iou(requested_boxes: torch.Tensor | np.ndarray, detected: Sequence[ShapeObject]) -> float:
    """Mean IoU of the requested boxes with one-to-one matched detections of the same class.

    ``requested_boxes``: (N, 5) rows [class_id, x0, y0, x1, y1] (normalised), padding rows class -1.
    The matching maximises the total IoU (Hungarian); a box without a same-class partner scores 0.
    NaN when no box is requested.
    """
    rows = np.asarray(torch.as_tensor(requested_boxes, dtype=torch.float64).cpu()).reshape(-1, 5)
    rows = rows[rows[:, 0] >= 1]
    if len(rows) == 0:
        return math.nan
    if not detected:
        return 0.0
    iou = np.array([[box_iou(r[1:], d.box) if int(r[0]) == d.class_id else 0.0 for d in detected]
                    for r in rows])  # (N, D), class mismatch = 0
    ri, di = linear_sum_assignment(iou, maximize=True)
    return float(iou[ri, di].sum() / len(rows))


def mean_layout_iou(images: torch.Tensor | Sequence, boxes: torch.Tensor | Sequence,
                    cfg: DetectorConfig | None = None) -> float:
    """Mean over images of :func:`layout_iou` (images requesting no box are skipped); boxes (B, N, 5)."""
    images = _images(images)
    if len(images) != len(boxes):
        raise ValueError(f"mean_layout_iou: {len(images)} images but {len(boxes)} box sets")
    scores = [layout_iou(b, detect_shapes(im, cfg)) for im, b in zip(images, boxes)]
    scores = [s for s in scores if not math.isnan(s)]
    return sum(scores) / len(scores) if scores else math.nan


# ---------------------------------------------------------------------------------------- semantic

class MIoU:
    """Mean IoU from a confusion matrix accumulated over a data set (rows = target, columns = prediction).

    ``ignore_absent``: average over the classes present in prediction or target (standard mIoU);
    otherwise over all ``num_classes``, an absent class counting 0. Target pixels equal to
    ``ignore_index`` are skipped.
    """

    def __init__(self, num_classes: int, ignore_absent: bool = True, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"MIoU: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_absent = ignore_absent
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> "MIoU":
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"MIoU: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        p, t = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        k = self.num_classes
        for name, v in (("prediction", p), ("target", t)):
            if v.numel() and (v.min() < 0 or v.max() >= k):
                raise ValueError(f"MIoU: {name} classes must be in [0, {k}), got {int(v.min())}..{int(v.max())}")
        self.confusion += torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        return self

    def per_class(self) -> torch.Tensor:
        """(num_classes,) float64 IoU; NaN for classes in neither prediction nor target."""
        cm = self.confusion.double()
        inter = cm.diag()
        union = cm.sum(0) + cm.sum(1) - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, math.nan))

    def compute(self) -> float:
        iou = self.per_class()
        if self.ignore_absent:
            present = ~iou.isnan()
            return float(iou[present].mean()) if present.any() else math.nan
        return float(iou.nan_to_num(0.0).mean())


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_absent: bool = True) -> float:
    """mIoU of one prediction / target pair (or batch) of class maps."""
    return MIoU(num_classes, ignore_absent).update(pred, target).compute()


# ----------------------------------------------------------------------- super-resolution, inpainting

def _check_images(name: str, *tensors: torch.Tensor) -> None:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1 or tensors[0].dim() != 4:
        raise ValueError(f"{name}: expected (B, C, H, W) tensors of one shape, got {sorted(shapes)}")


def _has_ssim(x: torch.Tensor) -> bool:
    return min(x.shape[-2:]) >= SSIM_WINDOW


@torch.no_grad()
def _accuracy(classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    fn = getattr(classifier, "logits", None)
    fn = fn if callable(fn) else classifier
    params = getattr(classifier, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    device = first.device if first is not None else images.device  # run where the classifier lives
    preds = torch.cat([fn(images[i:i + batch_size].to(device)).argmax(1).cpu()
                       for i in range(0, len(images), batch_size)])
    return float((preds == labels.cpu()).double().mean())


def sr_report(sr: torch.Tensor, hr: torch.Tensor, lr_upsampled_bicubic: torch.Tensor, classifier=None,
              labels: torch.Tensor | Sequence[int] | None = None, batch_size: int = 256) -> dict:
    """Super-resolution against the bicubic baseline; all images (B, C, H, W) in [-1, 1].

    Mean per-image ``psnr`` / ``ssim`` of the model and ``bicubic_psnr`` / ``bicubic_ssim`` (SSIM
    only for images of at least 11x11). With a ``classifier`` (``.logits(x)`` or ``classifier(x)``
    returning logits) and ``labels``: recognition ``accuracy``, ``bicubic_accuracy`` and, as the
    ceiling, ``hr_accuracy``.
    """
    _check_images("sr_report", sr, hr, lr_upsampled_bicubic)
    out = {"n": len(sr), "psnr": float(psnr(sr, hr).double().mean()),
           "bicubic_psnr": float(psnr(lr_upsampled_bicubic, hr).double().mean())}
    if _has_ssim(sr):
        out["ssim"] = float(ssim(sr, hr).double().mean())
        out["bicubic_ssim"] = float(ssim(lr_upsampled_bicubic, hr).double().mean())
    if classifier is not None:
        if labels is None:
            raise ValueError("sr_report: a classifier needs labels")
        labels = torch.as_tensor(labels)
        if len(labels) != len(sr):
            raise ValueError(f"sr_report: {len(sr)} images but {len(labels)} labels")
        out |= {name: _accuracy(classifier, x, labels, batch_size)
                for name, x in (("accuracy", sr), ("bicubic_accuracy", lr_upsampled_bicubic), ("hr_accuracy", hr))}
    return out


def masked_psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """(B,) float64 PSNR over the pixels where ``mask`` (B, 1, H, W) is true; NaN for an empty mask."""
    m = mask.double().expand_as(x)
    se = ((x.double() - y.double()) ** 2 * m).flatten(1).sum(1)
    count = m.flatten(1).sum(1)
    mse = se / count  # 0/0 = NaN for an empty region
    return 10.0 * torch.log10(data_range**2 / mse)


def _mask4(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mask as bool (B, 1, H, W) from (H, W), (B, H, W) or (B, 1, H, W)."""
    m = torch.as_tensor(mask, device=like.device)
    if m.dim() == 2:
        m = m[None, None].expand(len(like), 1, *m.shape)
    elif m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[0] != like.shape[0] or m.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"inpainting_report: mask {tuple(mask.shape)} does not fit images {tuple(like.shape)}")
    return m > 0.5


def _nanmean(v: torch.Tensor) -> float:
    return float(v.nanmean()) if (~v.isnan()).any() else math.nan


def inpainting_report(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict:
    """Inpainting quality; images (B, C, H, W) in [-1, 1], ``mask`` 1 = the hole that was filled in.

    ``psnr_inside`` / ``psnr_outside``: mean per-image PSNR of the masked MSE inside / outside the
    hole (+inf where identical; images with an empty region are skipped), ``psnr`` over the whole
    image, and ``mean_fill_psnr_inside``: the baseline that fills the hole with the per-image,
    per-channel mean of the known pixels of ``target`` (0 when nothing is known). ``ssim`` /
    ``mean_fill_ssim`` (whole image) for images of at least 11x11.
    """
    _check_images("inpainting_report", output, target)
    hole = _mask4(mask, target)  # (B, 1, H, W) bool
    known = (~hole).to(target.dtype)
    count = known.flatten(1).sum(1).clamp(min=1)  # (B,)
    mean = (target * known).sum(dim=(2, 3)) / count[:, None]  # (B, C), 0 when nothing is known
    filled = torch.where(hole, mean[:, :, None, None].to(target.dtype), target)
    out = {"n": len(output),
           "psnr_inside": _nanmean(masked_psnr(output, target, hole)),
           "psnr_outside": _nanmean(masked_psnr(output, target, ~hole)),
           "psnr": float(psnr(output.double(), target.double()).mean()),
           "mean_fill_psnr_inside": _nanmean(masked_psnr(filled, target, hole))}
    if _has_ssim(output):
        out["ssim"] = float(ssim(output, target).double().mean())
        out["mean_fill_ssim"] = float(ssim(filled, target).double().mean())
    return out


__all__ = [
    "DetectorConfig", "ParsedCaption", "RELATIONS", "MIoU", "analyse_shapes", "box_iou", "caption_accuracy",
    "caption_match", "detect_shapes", "inpainting_report", "layout_iou", "masked_psnr", "mean_layout_iou", "miou",
    "parse_caption", "segment_shapes", "sr_report",
]
