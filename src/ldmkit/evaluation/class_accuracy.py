"""Conditional accuracy: the share of class-conditional samples a classifier assigns to their class."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def conditional_accuracy(pipe, classifier: nn.Module, n: int = 1000, guidance_scale: float = 3.0, steps: int = 50,
                         sampler: str = "ddim", batch_size: int = 250, seed: int = 0, keep: int = 0,
                         **options) -> dict:
    """Sample ``n`` images with classes cycling 0..K-1 (image i has seed ``seed + i``) and classify them.

    ``keep`` returns the first ``keep`` images too (``images``, with ``labels``), e.g. for a grid.
    """
    k = pipe.cfg.conditioner.num_classes
    labels = torch.arange(n) % k
    preds, kept = [], []
    classifier = classifier.to(pipe.device).eval()
    for start in range(0, n, batch_size):
        chunk = labels[start:start + batch_size]
        x = pipe(class_labels=chunk.tolist(), num_inference_steps=steps, guidance_scale=guidance_scale,
                 sampler=sampler, seeds=list(range(seed + start, seed + start + len(chunk))), output_type="pt",
                 **options)
        preds.append(classifier(x).argmax(1).cpu())
        if start < keep:
            kept.append(x[:keep - start].cpu())
    preds = torch.cat(preds)
    hit = (preds == labels).float()
    out = {"accuracy": float(hit.mean()), "per_class": [float(hit[labels == c].mean()) for c in range(k)], "n": n,
           "seed": seed, "guidance_scale": guidance_scale, "steps": steps, "sampler": sampler}
    if keep:
        out |= {"images": torch.cat(kept), "labels": labels[:keep], "predictions": preds[:keep]}
    return out
