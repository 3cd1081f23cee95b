"""``ldmkit train-classifier``: a noise-aware classifier p(y | x_t, t) on a pipeline's latents (classifier guidance).

The pipeline's training data (the data config stored with it) is encoded once with its autoencoder into a
latent cache beside the pipeline file (keyed by the pipeline's weights, so another pipeline never meets a
stale cache). Each step draws items, a posterior sample times ``scale_factor`` (the latents the LDM trains
on), t uniform in [0, T) and x_t = q_sample(z, t, eps) on the pipeline's schedule, and minimises the
cross-entropy of the item's class, as guided-diffusion's ``classifier_train.py``. The end reports the
accuracy on held-out (test split) latents noised at a few t; it is stored in the release file too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import ConfigError, require, to_dict
from ..data import build_dataset
from ..device import resolve_device
from ..diffusion import noise as noise_lib
from ..diffusion import q_sample
from ..evaluation.generation import model_data_config
from ..nn.noisy_classifier import NoisyClassifier, NoisyClassifierConfig, save_noisy_classifier
from ..pipeline import Pipeline
from ..weights import file_digest, read_release_metadata
from .latents import LatentCache, cache_dir, canonical, encode_dataset
from .optim import adam
from .run import TimeBudget


@dataclass
class ClassifierTrainConfig:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 3e-4                # guided-diffusion's classifier recipe: AdamW, lr 3e-4, weight decay 0.05
    weight_decay: float = 0.05
    max_minutes: float = 0.0        # training wall time (the one-off encoding is not counted); 0 = none
    seed: int = 0
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    encode_precision: str = "fp32"  # fp32 | bf16 (the latent cache's key includes it)
    eval_n: int = 1000              # held-out test items for the accuracy report
    log_every: int = 100

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.max_minutes >= 0, "max_minutes", f"must be >= 0, got {self.max_minutes}")
        require(self.encode_precision in ("fp32", "bf16"), "encode_precision",
                f"expected fp32 or bf16, got {self.encode_precision!r}")
        require(self.eval_n >= 1, "eval_n", f"must be >= 1, got {self.eval_n}")


def report_timesteps(T: int) -> list[int]:
    """The noise levels of the held-out report: t = 0, T/4, T/2, 3T/4, T - 1."""
    return sorted({0, T // 4, T // 2, 3 * T // 4, T - 1})


def load_class_pipeline(path: Path, device: torch.device) -> Pipeline:
    """An ldmkit pipeline file of a class-conditional model, or a one-line error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pipeline file not found")
    try:
        kind = read_release_metadata(path).get("kind")
    except Exception:  # not a safetensors file at all
        raise ConfigError(f"{path}: not a safetensors file (expected an ldmkit pipeline.safetensors)") from None
    if kind != "pipeline":
        raise ConfigError(f"{path}: not an ldmkit pipeline file (kind={kind!r})")
    pipe = Pipeline.load(path, device=device)
    if pipe.cfg.conditioner.kind != "class":
        raise ConfigError(f"{path}: train-classifier needs a class-conditional pipeline "
                          f"(conditioner.kind={pipe.cfg.conditioner.kind}); its class labels are the targets")
    return pipe


def labels_of(dataset) -> torch.Tensor:
    """Every item's class (N,) int64: from the data set's table when it has one, else item by item."""
    if hasattr(dataset, "labels_tensor"):
        return dataset.labels_tensor().long()
    return torch.tensor([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=torch.long)


@torch.no_grad()
def encode_items(pipe: Pipeline, dataset, n: int, gen: torch.Generator, device: torch.device,
                 batch_size: int = 250) -> torch.Tensor:
    """Scaled posterior samples of items 0..n-1 (n, c, h, w), as the LDM's training latents."""
    parts = []
    for i in range(0, n, batch_size):
        images = torch.stack([dataset[k]["image"] for k in range(i, min(n, i + batch_size))]).to(device)
        mean, std = pipe.autoencoder.encode_moments(images)  # (b, c, h, w) each
        parts.append((mean + std * noise_lib.randn(mean.shape, gen, device=device)) * pipe.cfg.scale_factor)
    return torch.cat(parts)


def noisy_batch(pipe: Pipeline, z0: torch.Tensor, gen: torch.Generator,
                t: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, t): latents noised on the pipeline's schedule at ``t`` (default: uniform in [0, T))."""
    if t is None:
        t = noise_lib.randint(pipe.schedule.timesteps, len(z0), gen, device=z0.device)
    eps = noise_lib.randn(z0.shape, gen, device=z0.device, dtype=z0.dtype)
    return q_sample(pipe.schedule, z0, t, eps), t


@torch.no_grad()
def heldout_accuracy(model: NoisyClassifier, pipe: Pipeline, z0: torch.Tensor, labels: torch.Tensor,
                     seed: int, batch_size: int = 500) -> dict[str, float]:
    """Accuracy on ``z0`` (held-out latents) noised at each report timestep, with fixed noise."""
    model.eval()
    out = {}
    for t_value in report_timesteps(pipe.schedule.timesteps):
        gen = torch.Generator().manual_seed(seed + t_value)
        correct = 0
        for i in range(0, len(z0), batch_size):
            z = z0[i:i + batch_size]
            x_t, t = noisy_batch(pipe, z, gen, torch.full((len(z),), t_value, dtype=torch.long, device=z.device))
            correct += int((model(x_t, t).argmax(1) == labels[i:i + batch_size]).sum())
        out[str(t_value)] = correct / len(z0)
    model.train()
    return out


def train_noisy_classifier(pipeline: str | Path, cfg: ClassifierTrainConfig, *, out: str | Path | None = None,
                           data_root: str | None = None, device: str = "auto",
                           log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """Train the classifier for ``pipeline``; returns (release path, report with the held-out accuracies)."""
    path = Path(pipeline)
    dev = resolve_device(device)
    pipe = load_class_pipeline(path, dev)
    data_cfg = model_data_config(path, data_root)
    if data_cfg is None:
        raise ConfigError(f"{path}: no data config stored with the pipeline (train-classifier reads its training "
                          "data from it; pipelines from `ldmkit train-ldm` have one)")
    out = Path(out) if out else path.parent / "classifier.safetensors"

    # 1. Latents of the training set: the pipeline's autoencoder, cached beside the pipeline file.
    data_cfg = canonical(data_cfg)  # no random flips: each item's own latent
    train_set = build_dataset(data_cfg, "train")
    cache_path = cache_dir(path, data_cfg, cfg.encode_precision)
    cache = LatentCache.load(cache_path)
    if cache is None:
        log(f"encoding {len(train_set)} training images with the pipeline's autoencoder -> {cache_path}")
        encode_dataset(pipe.autoencoder, train_set, cache_path, flips=False, precision=cfg.encode_precision,
                       device=dev, batch_size=256, metadata={"first_stage": str(path), "data": to_dict(data_cfg)},
                       log=log)
        cache = LatentCache.load(cache_path)
    labels = labels_of(train_set).to(dev)
    if len(cache) != len(labels):
        raise ValueError(f"latent cache {cache_path} holds {len(cache)} items but the data set has {len(labels)}: "
                         "delete it and run again")
    num_classes = pipe.cfg.conditioner.num_classes
    if int(labels.max()) >= num_classes:
        raise ConfigError(f"{path}: the data has class {int(labels.max())}, the pipeline only {num_classes} classes")

    # 2. Held-out latents: the first eval_n test items, one fixed posterior sample each.
    test_set = build_dataset(data_cfg, "test")
    n_test = min(cfg.eval_n, len(test_set))
    test_labels = labels_of(test_set)[:n_test].to(dev)
    test_z = encode_items(pipe, test_set, n_test, torch.Generator().manual_seed(cfg.seed), dev)

    # 3. Train: uniform t, the pipeline's forward process, cross-entropy.
    torch.manual_seed(cfg.seed)
    model = NoisyClassifier(NoisyClassifierConfig(in_channels=pipe.cfg.latent_shape[0], num_classes=num_classes,
                                                  model_channels=cfg.model_channels, channel_mult=cfg.channel_mult,
                                                  num_res_blocks=cfg.num_res_blocks)).to(dev).train()
    opt = adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # CPU draws: the same numbers on every device
    budget, start = TimeBudget(cfg.max_minutes), time.perf_counter()
    step, running, correct, seen = 0, 0.0, 0, 0
    while step < cfg.steps:
        idx = torch.randint(0, len(cache), (cfg.batch_size,), generator=gen)
        mean, std = (m.to(dev) for m in cache.moments(idx))  # (B, c, h, w) posterior moments
        z0 = (mean + std * noise_lib.randn(mean.shape, gen, device=dev)) * pipe.cfg.scale_factor
        x_t, t = noisy_batch(pipe, z0, gen)
        y = labels[idx.to(dev)]
        logits = model(x_t, t)  # (B, K)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running += float(loss.detach())
        correct, seen = correct + int((logits.argmax(1) == y).sum()), seen + len(y)
        if step % cfg.log_every == 0 or step == cfg.steps:
            n_logged = (step - 1) % cfg.log_every + 1
            log(f"step {step}: loss {running / n_logged:.4f}, train accuracy (all t) {correct / seen:.3f}")
            running, correct, seen = 0.0, 0, 0
        if budget.spent():
            log(f"time budget of {cfg.max_minutes} min spent at step {step}")
            break
    minutes = (time.perf_counter() - start) / 60

    # 4. Report and release.
    accuracy = heldout_accuracy(model, pipe, test_z, test_labels, cfg.seed)
    report = {"steps": step, "minutes": round(minutes, 2), "heldout_n": n_test, "heldout_accuracy": accuracy}
    trained_on = {"pipeline": str(path), "pipeline_sha256": file_digest(path), "diffusion": to_dict(pipe.cfg.diffusion),
                  "scale_factor": pipe.cfg.scale_factor, "class_names": pipe.cfg.class_names,
                  "data": to_dict(data_cfg), "train": to_dict(cfg) | {"steps_done": step}, **report}
    save_noisy_classifier(out, model.eval(), trained_on)
    return out, report


def accuracy_table(report: dict) -> str:
    """The held-out accuracy per noise level as a markdown table."""
    rows = [f"| {t} | {acc:.3f} |" for t, acc in report["heldout_accuracy"].items()]
    head = f"held-out accuracy on {report['heldout_n']} test latents noised at t ({report['steps']} steps, " \
           f"{report['minutes']} min)"
    return "\n".join([head, "", "| t | accuracy |", "|---|---|", *rows])
