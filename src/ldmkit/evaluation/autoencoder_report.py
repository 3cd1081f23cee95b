"""``ldmkit eval-autoencoder``: PSNR / SSIM on the held-out split, a reconstruction grid, a JSON report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..autoencoder import load_autoencoder
from ..config import from_dict
from ..data import DataConfig, build_dataset, collate
from ..imageio import save_grid
from ..weights import read_release_metadata
from .reconstruction import psnr, ssim


@torch.no_grad()
def evaluate_autoencoder(weights: str | Path, n: int = 0, batch_size: int = 250, out: str | Path | None = None,
                         data_root: str | None = None) -> dict[str, Any]:
    """Reconstruct the test split with the posterior mode (deterministic) and average per-image metrics."""
    model, cfg, scale = load_autoencoder(Path(weights))
    meta = read_release_metadata(Path(weights))
    data_cfg = from_dict(DataConfig, meta.get("data") or {"name": "fashion_mnist", "channels": cfg.in_channels,
                                                         "image_size": cfg.resolution})
    if data_root:
        data_cfg.root = data_root
    test = build_dataset(data_cfg, "test")
    total = len(test) if n <= 0 else min(n, len(test))
    psnrs, ssims, usage = [], [], []
    images = test.images_tensor()[:total] if hasattr(test, "images_tensor") else None
    for start in range(0, total, batch_size):
        idx = range(start, min(total, start + batch_size))
        x = images[start:idx.stop] if images is not None else collate([test[i] for i in idx])["image"]
        z = model.encode_latents(x, sample=False)
        xrec = model.decode(z).clamp(-1, 1)
        psnrs.append(psnr(x, xrec))
        ssims.append(ssim(x, xrec))
        if cfg.kind == "vq":
            usage.append(model.code_indices(z).flatten())
        if start == 0 and out:
            save_grid(torch.cat([x[:16], xrec[:16]]), Path(out) / "reconstructions.png", nrow=min(16, len(x)))
    report: dict[str, Any] = {"weights": str(weights), "kind": cfg.kind, "f": cfg.downsample_factor,
                              "latent_shape": list(cfg.latent_shape), "n_images": total,
                              "psnr": float(torch.cat(psnrs).mean()), "ssim": float(torch.cat(ssims).mean()),
                              "scale_factor": scale, "data": data_cfg.name}
    if usage:
        report["codebook_usage"] = float(torch.cat(usage).unique().numel() / cfg.n_embed)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "report.json").write_text(json.dumps(report, indent=2))
    return report
