"""Latent diffusion training over a frozen first stage: encode, noise, denoise, AdamW, EMA."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..convert.loader import load_autoencoder_any, load_pipeline_any
from ..config import ConfigError, require, to_dict
from ..data import DataConfig, build_dataset, collate
from ..diffusion import ScheduleConfig, diffusion_loss
from ..evaluation.periodic import PeriodicEval
from ..imageio import save_grid
from ..nn import ConditionerConfig, UNetConfig
from ..nn.concat import ConcatConfig
from ..pipeline import Pipeline, PipelineConfig
from ..pipeline_inputs import batch_conditioning, gather_inputs
from ..weights import file_digest, load_release, save_release
from .checkpoint import Checkpointer
from .config import TrainConfig, autocast, lr_factor
from .ema import EMA
from .logger import RunLogger
from .run import TimeBudget, set_lr, start_run
from .stream import BatchStream


DENOISER_PARTS = ("unet", "conditioner", "spatial")  # what trains (and gets an EMA); the first stage is frozen


@dataclass
class LDMTrainConfig(TrainConfig):
    ema_decay: float = 0.9999
    p_uncond: float = 0.1               # condition dropout, so one model also predicts unconditionally (CFG)
    loss_type: Literal["l2", "l1"] = "l2"
    snr_gamma: float = 0.0              # > 0: Min-SNR-gamma loss weighting (5 is the paper's choice); 0 = off
    cache_latents: bool = True          # encode an in-memory data set once instead of every step
    encode_precision: Literal["fp32", "bf16"] = "fp32"   # bf16 encodes ~2.3x faster on AMX CPUs
    sample_steps: int = 50
    guidance_scale: float = 3.0
    eval_every: int = 0                 # > 0: Frechet distance of eval_n EMA samples every eval_every steps
    eval_n: int = 256
    eval_steps: int = 25
    eval_extractor: str = "fmnist"      # fmnist (in-project classifier) | inception (needs eval_weights)
    eval_weights: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.p_uncond < 1.0, "p_uncond", f"must be in [0, 1), got {self.p_uncond}")
        require(0.0 < self.ema_decay < 1.0, "ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        require(self.eval_every >= 0, "eval_every", f"must be >= 0, got {self.eval_every}")
        require(self.eval_n >= 2, "eval_n", f"must be >= 2 (a covariance), got {self.eval_n}")


@dataclass
class LDMRunConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(name="fashion_mnist", channels=1))
    first_stage: str = ""               # autoencoder: ldmkit .safetensors, original .ckpt or diffusers (VAE) folder
    init_from: str = ""                 # fine-tune a released pipeline (any format): its architecture and weights
    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    concat: ConcatConfig = field(default_factory=ConcatConfig)
    diffusion: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: LDMTrainConfig = field(default_factory=lambda: LDMTrainConfig(out_dir="runs/ldm"))

    def __post_init__(self) -> None:
        require(bool(self.first_stage or self.init_from), "first_stage",
                "path to an autoencoder (autoencoder.safetensors, original .ckpt or diffusers folder) is required")
        if self.conditioner.kind != "none":
            require(self.unet.context_dim == self.conditioner.embed_dim, "unet.context_dim",
                    f"must equal conditioner.embed_dim ({self.conditioner.embed_dim}), got {self.unet.context_dim}")


def _first_stage_path(cfg: LDMRunConfig) -> Path:
    """Where the frozen first stage comes from: ``first_stage``, else the pipeline to fine-tune."""
    path = Path(cfg.first_stage or cfg.init_from)
    if not path.exists():
        key = "first_stage" if cfg.first_stage else "init_from"
        raise ConfigError(f"{key}: {path} not found (train one with `ldmkit train-autoencoder`)")
    return path


def _digest(path: Path) -> str:
    """sha256 of a weights file, or of every file of a (diffusers) folder."""
    if path.is_file():
        return file_digest(path)
    return hashlib.sha256("".join(file_digest(f) for f in sorted(path.rglob("*")) if f.is_file()).encode()).hexdigest()


def adopt_release(cfg: LDMRunConfig, released: Pipeline) -> LDMRunConfig:
    """Fine-tuning trains the released architecture: its UNet, conditioning and schedule replace the preset's."""
    rc = released.cfg
    return replace(cfg, unet=rc.unet, conditioner=rc.conditioner, concat=rc.concat, diffusion=rc.diffusion)


def build_pipeline(cfg: LDMRunConfig, class_names: list[str], released: Pipeline | None = None) -> Pipeline:
    if cfg.first_stage or released is None:
        ae, ae_cfg, scale = load_autoencoder_any(_first_stage_path(cfg))
    else:
        ae, ae_cfg, scale = released.autoencoder, released.cfg.autoencoder, released.cfg.scale_factor
    extra = cfg.concat.channels(ae_cfg.embed_dim, cfg.data.channels)
    require(ae_cfg.embed_dim + extra == cfg.unet.in_channels, "unet.in_channels",
            f"must equal the first stage's latent channels ({ae_cfg.embed_dim})"
            + (f" + the {cfg.concat.kind} condition's {extra}" if extra else "") + f", got {cfg.unet.in_channels}")
    require(ae_cfg.embed_dim == cfg.unet.out_channels, "unet.out_channels",
            f"must equal the first stage's latent channels ({ae_cfg.embed_dim}), got {cfg.unet.out_channels}")
    require(ae_cfg.resolution == cfg.data.image_size, "data.image_size",
            f"must equal the first stage's resolution ({ae_cfg.resolution}), got {cfg.data.image_size}")
    pcfg = PipelineConfig(ae_cfg, cfg.unet, cfg.conditioner, cfg.diffusion, scale,
                          class_names or (released.cfg.class_names if released else []), cfg.concat)
    pipe = Pipeline(pcfg, autoencoder=ae)
    if released is not None:
        for part in DENOISER_PARTS:
            if getattr(pipe, part) is not None:
                getattr(pipe, part).load_state_dict(getattr(released, part).state_dict())
    return pipe


class _LatentSource:
    """Batches of scaled latents: from a cache of posterior moments, or encoded on the fly.

    In-memory data sets are encoded once. The moments are kept on disk beside the first stage,
    keyed by the autoencoder's weights hash and the data config, so a changed autoencoder or
    data set never reuses a stale cache, and a second run skips the encoding.
    """

    def __init__(self, pipe: Pipeline, dataset, cfg: LDMRunConfig, device: torch.device):
        self.pipe, self.device, self.moments = pipe, device, None
        if not (cfg.train.cache_latents and hasattr(dataset, "images_tensor")):
            return
        source = _first_stage_path(cfg)
        key = hashlib.sha256(_digest(source).encode()
                             + json.dumps([to_dict(cfg.data), cfg.train.encode_precision], sort_keys=True).encode()).hexdigest()[:16]
        path = source.parent / "latent_cache" / f"{cfg.data.name}-train-{key}.safetensors"
        if path.is_file():
            cached, _ = load_release(path, device)
            self.moments = (cached["mean"], cached["std"])
            return
        images = dataset.images_tensor()
        with torch.no_grad(), autocast(device, cfg.train.encode_precision):
            parts = [pipe.autoencoder.encode_moments(images[i:i + 512].to(device)) for i in range(0, len(images), 512)]
        self.moments = (torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts]).float())
        save_release(path, {"mean": self.moments[0], "std": self.moments[1]},
                     {"kind": "latent_cache", "first_stage": str(cfg.first_stage), "data": to_dict(cfg.data)})

    def latents(self, batch: dict, gen: torch.Generator) -> torch.Tensor:
        if self.moments is not None and "index" in batch:
            mean, std = (m[batch["index"].to(m.device)] for m in self.moments)
        else:
            with torch.no_grad():
                mean, std = self.pipe.autoencoder.encode_moments(batch["image"].to(self.device))
        # posterior.sample(), as the original encodes training data
        z = mean + std * torch.randn(mean.shape, generator=gen, device=gen.device).to(mean.device)
        return z * self.pipe.cfg.scale_factor


def train_ldm(cfg: LDMRunConfig, resume: bool = True) -> Path:
    """Train the denoiser; writes checkpoints and ``pipeline.safetensors`` (EMA weights); returns its path."""
    tc = cfg.train
    _first_stage_path(cfg)
    released = None
    if cfg.init_from:
        released = load_pipeline_any(cfg.init_from)
        cfg = adopt_release(cfg, released)
    out, device = start_run(cfg, tc)

    dataset = build_dataset(cfg.data, "train")
    pipe = build_pipeline(cfg, list(getattr(dataset, "class_names", [])), released)
    if cfg.conditioner.kind == "class" and cfg.conditioner.num_classes != dataset.num_classes:
        raise ConfigError(f"conditioner.num_classes: {cfg.conditioner.num_classes} but the data set has "
                          f"{dataset.num_classes} classes")
    pipe.to(device)
    denoiser = nn.ModuleDict({k: getattr(pipe, k) for k in DENOISER_PARTS if getattr(pipe, k) is not None})
    opt = torch.optim.AdamW(denoiser.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    ema = EMA(denoiser, tc.ema_decay)
    stream = BatchStream(dataset, tc.batch_size, tc.seed, tc.num_workers)
    source = _LatentSource(pipe, dataset, cfg, device)
    preview = _preview_batch(dataset, cfg)
    evaluator = None
    if tc.eval_every:
        evaluator = PeriodicEval(cfg.data, tc.eval_n, tc.eval_steps, tc.guidance_scale, tc.eval_extractor,
                                 tc.eval_weights, device=device, log=lambda m: None)
    gen = torch.Generator(device=device).manual_seed(tc.seed + 1)

    stateful = {"model": denoiser, "ema": ema, "opt": opt, "stream": stream}
    ckpt = Checkpointer(out / "checkpoint.pt", stateful, gen, device, to_dict(cfg))
    step = ckpt.restore() if resume else 0

    log = RunLogger(out, tc.steps, step)
    budget = TimeBudget(tc.max_minutes)
    denoiser.train()
    batches = iter(stream)
    while step < tc.steps:  # check before drawing: the stream position is part of the checkpoint
        batch = next(batches)
        lr = tc.lr * lr_factor(step, tc)
        set_lr((opt,), lr)
        z0 = source.latents(batch, gen)  # (B, c, h, w)
        inputs = gather_inputs(pipe.cfg, device, **batch_conditioning(pipe.cfg, batch, gen))
        values = inputs.values
        if pipe.conditioner is not None:
            values = pipe.conditioner.drop(values, tc.p_uncond, generator=gen)
        cond = pipe.condition(values, inputs.concat, tuple(z0.shape[-2:]))
        with autocast(device, tc.precision):
            loss_per, _ = diffusion_loss(pipe.schedule, lambda x, t: pipe.model_fn(x, t, cond), z0,
                                         generator=gen, loss_type=tc.loss_type, snr_gamma=tc.snr_gamma or None)
        loss = loss_per.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(denoiser.parameters(), tc.grad_clip)
        opt.step()
        ema.update(denoiser)
        step += 1
        log.step()
        if step % tc.log_every == 0 or step == tc.steps:
            log.log(step, {"loss": float(loss.detach()), "lr": lr}, tc.batch_size)
        if step % tc.sample_every == 0:
            _save_samples(pipe, ema.model, tc, out / "samples" / f"samples_{step:07d}.png", preview)
        if evaluator is not None and step % tc.eval_every == 0:
            log.log(step, evaluator(_ema_pipeline(pipe, ema.model).eval()))
        if step % tc.ckpt_every == 0:
            ckpt.save(step)
        if budget.spent():
            log.write(f"time budget of {tc.max_minutes} min spent at step {step}")
            break
    log.close()
    ckpt.save(step)
    release = out / "pipeline.safetensors"
    _ema_pipeline(pipe, ema.model).save(release, {"train_steps": step, "data": to_dict(cfg.data)})
    _save_samples(pipe, ema.model, tc, out / "samples" / "samples_final.png", preview)
    return release


def _ema_pipeline(pipe: Pipeline, ema_model: nn.ModuleDict) -> Pipeline:
    """The same pipeline with the EMA denoiser (what samples and the release use)."""
    return Pipeline(pipe.cfg, autoencoder=pipe.autoencoder,
                    **{k: ema_model[k] if k in ema_model else None for k in DENOISER_PARTS})


@torch.no_grad()
def _save_samples(pipe: Pipeline, ema_model: nn.ModuleDict, tc: LDMTrainConfig, path: Path,
                  preview: dict | None) -> None:
    """A grid from the EMA weights: one row per class (up to 10) for class-conditional models; otherwise
    samples for the conditioning of 8 fixed training items, above the items' own images."""
    view = _ema_pipeline(pipe, ema_model)
    settings = dict(num_inference_steps=tc.sample_steps, guidance_scale=tc.guidance_scale, output_type="pt")
    if pipe.cfg.conditioner.kind == "class" and pipe.cfg.concat.kind == "none":
        k = min(10, pipe.cfg.conditioner.num_classes)
        labels = [c for c in range(k) for _ in range(8)]
        images = view(class_labels=labels, seeds=list(range(len(labels))), **settings)
    elif preview is None:
        images = view(num_images=16, seeds=list(range(16)), **settings)
    else:
        kwargs = batch_conditioning(pipe.cfg, preview, torch.Generator().manual_seed(0))
        n = len(preview["image"])
        images = torch.cat([view(**kwargs, seeds=list(range(n)), **settings).cpu(), preview["image"].cpu()])
    save_grid(images, path, nrow=8)


def _preview_batch(dataset, cfg: LDMRunConfig) -> dict | None:
    """The first 8 training items, whose conditioning the sample grids show (None: unconditional)."""
    if cfg.conditioner.kind in ("none", "class") and cfg.concat.kind == "none":
        return None
    return collate([dataset[i] for i in range(min(8, len(dataset)))])
