"""Conditional accuracy: the share of class-conditional samples a classifier assigns to their class.

A scorer with one logit more than the model has classes (:mod:`.scorer`) can answer "none of these":
such a sample counts as wrong and as rejected. With a :class:`~.health.LatentRange` the samples'
latents are checked too (the sample-health rule), and the accuracy among the healthy ones is given beside
the share that is not.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .health import LatentRange
from .metrics import features_fd


@torch.no_grad()
def conditional_accuracy(pipe, classifier: nn.Module, n: int = 1000, guidance_scale: float = 3.0, steps: int = 50,
                         sampler: str = "ddim", batch_size: int = 250, seed: int = 0, keep: int = 0,
                         latent_range: LatentRange | None = None, keep_all: bool = False, **options) -> dict:
    """Sample ``n`` images with classes cycling 0..K-1 (image i has seed ``seed + i``) and classify them.

    ``keep`` returns the first ``keep`` images too (``images``, with ``labels``), e.g. for a grid;
    ``keep_all`` returns every image (``all_images``), e.g. for per-class FD.
    """
    k = pipe.cfg.conditioner.num_classes
    labels = torch.arange(n) % k
    preds, kept, healthy, every = [], [], [], []
    classifier = classifier.to(pipe.device).eval()
    for start in range(0, n, batch_size):
        chunk = labels[start:start + batch_size]
        x, z = pipe(class_labels=chunk.tolist(), num_inference_steps=steps, guidance_scale=guidance_scale,
                    sampler=sampler, seeds=list(range(seed + start, seed + start + len(chunk))),
                    output_type="pt+latent", **options)
        preds.append(classifier(x).argmax(1).cpu())
        if latent_range is not None:
            healthy.append(latent_range.healthy(z.cpu()))
        if start < keep:
            kept.append(x[:keep - start].cpu())
        if keep_all:
            every.append(x.cpu())
    preds = torch.cat(preds)
    hit = (preds == labels).float()
    rejected = (preds >= k).float()  # the scorer's "none of these"
    out = {"accuracy": float(hit.mean()), "per_class": [float(hit[labels == c].mean()) for c in range(k)], "n": n,
           "rejected": float(rejected.mean()), "per_class_rejected": [float(rejected[labels == c].mean())
                                                                       for c in range(k)],
           "seed": seed, "guidance_scale": guidance_scale, "steps": steps, "sampler": sampler}
    if healthy:
        ok = torch.cat(healthy)
        out |= {"off_manifold": float((~ok).float().mean()),
                "accuracy_healthy": float(hit[ok].mean()) if ok.any() else float("nan")}
        out["healthy"] = ok
    if keep:
        out |= {"images": torch.cat(kept), "labels": labels[:keep], "predictions": preds[:keep]}
    if keep_all:
        out |= {"all_images": torch.cat(every), "all_labels": labels}
    return out


def per_class_fd(fake: np.ndarray, fake_labels: np.ndarray, real: np.ndarray, real_labels: np.ndarray,
                 num_classes: int) -> list[float]:
    """Frechet distance of each class's sample features against the real features of that class."""
    return [features_fd(fake[fake_labels == c], real[real_labels == c]) for c in range(num_classes)]
