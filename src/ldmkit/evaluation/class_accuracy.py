"""Conditional accuracy: the share of class-conditional samples a classifier assigns to their class."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def conditional_accuracy(pipe, classifier: nn.Module, n: int = 1000, guidance_scale: float = 3.0, steps: int = 50,
                         sampler: str = "ddim", batch_size: int = 250, seed: int = 10_000, **options) -> dict:
    """Sample ``n`` images with classes cycling 0..K-1 (seed per image) and classify them."""
    k = pipe.cfg.conditioner.num_classes
    labels = torch.arange(n) % k
    preds = []
    classifier = classifier.to(pipe.device).eval()
    for start in range(0, n, batch_size):
        chunk = labels[start:start + batch_size]
        x = pipe(class_labels=chunk.tolist(), num_inference_steps=steps, guidance_scale=guidance_scale,
                 sampler=sampler, seeds=list(range(seed + start, seed + start + len(chunk))), output_type="pt",
                 **options)
        preds.append(classifier(x).argmax(1).cpu())
    preds = torch.cat(preds)
    hit = (preds == labels).float()
    per_class = [float(hit[labels == c].mean()) for c in range(k)]
    return {"accuracy": float(hit.mean()), "per_class": per_class, "n": n}
