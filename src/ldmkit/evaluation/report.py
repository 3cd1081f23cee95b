"""``ldmkit eval``: distribution metrics of generated (or given) images against real reference statistics.

The report records the protocol that decides the numbers: the images (sample count, seeds, sampler,
steps, guidance, checkpoint hash), the extractor (name, weights hash, resolution, resize method), the
reference statistics (data set, split, key, file hash) and the library versions. A Frechet distance
from the in-project classifier is reported as ``FD-<name>``; only the Inception-v3 FID network gives "FID".
"""
from __future__ import annotations

import datetime
import json
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..config import ConfigError
from ..data import DataConfig, build_dataset
from ..diffusion import sampler_name
from ..nn.noisy_classifier import load_noisy_classifier
from ..weights import atomic_write, file_digest
from .features import INCEPTION, build_extractor, describe, extract
from .generation import (SampleProtocol, condition_kind, generate_images, guidance_record, images_to_tensor,
                         load_latents, model_data_config, protocol_eta)
from .health import sample_health
from .metrics import feature_statistics, frechet_distance, inception_score, kid, precision_recall
from .reference import reference_statistics

METRICS = ("fd", "kid", "pr", "is")


def fd_name(extractor) -> str:
    return "FID" if extractor.name == INCEPTION else f"FD-{extractor.name.split('-')[0]}"


def compute_metrics(fake: np.ndarray, ref: dict, extractor, metrics: tuple[str, ...], logits: np.ndarray | None = None,
                    seed: int = 0) -> dict[str, float]:
    """Requested metrics of features ``fake`` (N, D) against reference statistics ``ref``."""
    out: dict[str, float] = {}
    if "fd" in metrics:
        mu, sigma = feature_statistics(fake)
        out[fd_name(extractor)] = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
    if "kid" in metrics:
        size = min(1000, len(fake), len(ref["features"]))
        out["KID"], out["KID_std"] = kid(fake, ref["features"], subset_size=size, seed=seed)
    if "pr" in metrics:
        out["precision"], out["recall"] = precision_recall(ref["features"], fake)
    if "is" in metrics and logits is not None:
        p = torch.from_numpy(logits).softmax(1).numpy()
        out["IS"], out["IS_std"] = inception_score(p, splits=min(10, len(p)))
    return out


def _read_images(source: Path) -> torch.Tensor:
    """A folder of PNG/JPEG files (sorted by name) or an ``.npz`` (uint8 NHWC, key ``images`` or the first)."""
    from PIL import Image

    if source.suffix == ".npz":
        with np.load(source) as f:
            arr = f["images"] if "images" in f else f[f.files[0]]
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise ValueError(f"{source}: expected uint8 images (N, H, W, C), got {arr.dtype} {arr.shape}")
        return images_to_tensor(arr)
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.name != "grid.png")
    if not files:
        raise ValueError(f"{source}: no .png / .jpg images")
    arrs = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    return images_to_tensor(np.stack(arrs))


def evaluate(source: str, *, extractor: str = "fmnist", weights: str | None = None, resize: str = "bilinear",
             ref: str | None = None, metrics: tuple[str, ...] = ("fd", "kid", "pr"), n: int = 10000, seed: int = 0,
             steps: int = 50, sampler: str = "ddim", guidance: float = 3.0, eta: float | None = None,
             batch_size: int = 250, out: str | Path = "runs/eval", device: str = "auto", data_root: str | None = None,
             classifier: str | None = None, classifier_scale: float = 1.0, guidance_rescale: float | None = None,
             guidance_interval: tuple[float, float] | None = None, log=print) -> dict[str, Any]:
    """Evaluate ``source``: a pipeline (sampled, resumable), a folder / .npz of images, or ``data:NAME:SPLIT``.

    ``eta`` None is the sampler's own default; ``classifier`` (a ``train-classifier`` file) adds classifier
    guidance of scale ``classifier_scale`` to the sampling (recorded in the protocol with its hash);
    ``guidance_rescale`` / ``guidance_interval`` None are the model's own defaults (recorded as used)."""
    from ..device import resolve_device

    bad = set(metrics) - set(METRICS)
    if bad:
        raise ConfigError(f"metrics: unknown {sorted(bad)}, expected some of {list(METRICS)}")
    out = Path(out)
    path = Path(source)
    sampled = path.is_file() and path.suffix == ".safetensors"
    if sampled:
        protocol_eta(sampler, eta)  # an unknown sampler or option fails before anything loads
    elif classifier:
        raise ValueError("--classifier: classifier guidance applies when sampling a pipeline, not to given images")
    dev = resolve_device(device)
    fx = build_extractor(extractor, weights, dev, resize)
    report: dict[str, Any] = {"source": source}
    data_cfg = None
    if source.startswith("data:"):
        name, _, split = source[5:].partition(":")
        data_cfg = DataConfig(name=name, root=data_root, channels=1 if name == "fashion_mnist" else 3)
        images = build_dataset(data_cfg, split or "train")
        report["images"] = {"data": name, "split": split or "train", "n": min(n, len(images))}
        fake_input = (images.images_tensor()[:n] if hasattr(images, "images_tensor")
                      else torch.stack([images[i]["image"] for i in range(min(n, len(images)))]))
    elif sampled:
        from ..pipeline import Pipeline

        data_cfg = model_data_config(path, data_root)
        pipe = Pipeline.load(path, device=dev)
        clf = None
        if classifier:
            clf = load_noisy_classifier(classifier, dev)
            pipe.check_classifier(clf)
        kind = condition_kind(pipe)
        dataset = None
        if kind == "data":
            if data_cfg is None:
                raise ValueError(f"{path}: no data config stored with the model to take conditions from")
            dataset = build_dataset(data_cfg, "test")
            kind = f"data:{data_cfg.name}:test"
        proto = SampleProtocol(file_digest(path), n, seed, steps, sampler_name(sampler), guidance,
                               protocol_eta(sampler, eta), batch_size, kind,
                               file_digest(Path(classifier)) if clf is not None else "",
                               classifier_scale if clf is not None else 0.0,
                               **guidance_record(pipe.guidance_settings(guidance_rescale, guidance_interval)))
        samples = generate_images(pipe, proto, out / "samples", dataset,
                                  progress=lambda k, total: log(f"sampled {k}/{total}"), classifier=clf)
        report["images"] = asdict(proto) | {"checkpoint": str(path), "seeds": f"{seed}..{seed + n - 1} (image k: seed + k)"}
        if clf is not None:
            report["images"]["classifier"] = str(classifier)
        fake_input = images_to_tensor(samples)
    elif path.exists():
        fake_input = _read_images(path)[:n]
        report["images"] = {"path": str(path), "n": len(fake_input)}
    else:
        raise FileNotFoundError(f"{source}: not found (expected a pipeline .safetensors, an image folder, "
                                f".npz or data:NAME:SPLIT)")
    if ref is None and data_cfg is None:
        raise ValueError("--ref DATA:SPLIT is required when the source does not say which data it models")
    if ref is not None:
        name, _, split = ref.partition(":")
        base = data_cfg or DataConfig(name=name, channels=1 if name == "fashion_mnist" else 3)
        ref_cfg, ref_split = DataConfig(**(asdict(base) | {"name": name, "root": data_root or base.root})), split or "test"
    else:
        ref_cfg, ref_split = data_cfg, "test"
    stats = reference_statistics(ref_cfg, ref_split, fx, cache_dir=None, batch_size=batch_size, log=log)
    fake = extract(fx, fake_input, batch_size=batch_size)
    logits = extract(fx, fake_input, batch_size=batch_size, what="logits") if "is" in metrics else None
    report["metrics"] = compute_metrics(fake, stats, fx, tuple(metrics), logits, seed)
    if sampled and data_cfg is not None:
        latents = load_latents(out / "samples", proto.n, proto.batch_size)
        if latents is None:
            report["health"] = {"skipped": f"{out / 'samples'} holds batches written without latents; "
                                           "sample again into a new --out to measure sample health"}
        else:
            report["health"] = sample_health(pipe, latents, data_cfg)
            report["metrics"]["off_manifold"] = report["health"]["off_manifold_share"]
    report["extractor"] = describe(fx)
    report["reference"] = {"data": ref_cfg.name, "split": ref_split, "n": stats["n"], "key": stats["key"],
                           "sha256": stats["sha256"], "path": stats["path"]}
    report["n_fake"] = len(fake)
    report["versions"] = {"ldmkit": __version__, "torch": torch.__version__, "numpy": np.__version__,
                          "python": platform.python_version()}
    report["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    return report


def metrics_table(report: dict[str, Any]) -> str:
    rows = [f"{k:<12} {v:.4f}" for k, v in report["metrics"].items()]
    head = f"{report['n_fake']} images vs {report['reference']['n']} {report['reference']['data']}/" \
           f"{report['reference']['split']} ({report['extractor']['extractor']})"
    return "\n".join([head, *rows])
