"""First-stage training: reconstruction + regulariser + (gated) PatchGAN, two Adam optimisers."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..autoencoder import Autoencoder, AutoencoderConfig, AutoencoderLoss, AutoencoderLossConfig
from ..config import require, to_dict
from ..data import DataConfig, build_dataset, first_items
from ..imageio import save_grid
from ..weights import save_release
from .checkpoint import Checkpointer
from .config import TrainConfig, autocast, base_lr, grad_scaler, lr_factor
from .distributed import Dist, no_sync
from .guard import StepGuard, clipped_norm, skip_step
from .logger import RunLogger
from .optim import adam
from .run import TimeBudget, seed_rank, set_lr, start_run
from .seeding import sample_generators
from .stream import make_stream, split_batch


@dataclass
class AutoencoderRunConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(name="fashion_mnist", channels=1))
    model: AutoencoderConfig = field(default_factory=lambda: AutoencoderConfig(in_channels=1))
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=4.5e-4, out_dir="runs/autoencoder"))
    scale_samples: int = 2048       # images encoded to estimate the latent scale_factor

    def __post_init__(self) -> None:
        require(self.model.kind != "identity", "model.kind",
                "identity has nothing to train: pixel-space diffusion is `train-ldm ... first_stage=identity`")
        require(self.model.resolution == self.data.image_size, "model.resolution",
                f"must equal data.image_size ({self.data.image_size}), got {self.model.resolution}")
        require(self.model.in_channels == self.data.channels, "model.in_channels",
                f"must equal data.channels ({self.data.channels}), got {self.model.in_channels}")


@torch.no_grad()
def estimate_scale_factor(model: Autoencoder, images: torch.Tensor, batch_size: int = 256,
                          seed: int = 0) -> float:
    """1 / std of the latents the diffusion model will see (posterior samples for KL).

    The original estimates it on one batch; more images give a steadier figure.
    """
    g = torch.Generator(device=images.device).manual_seed(seed)
    zs = [model.encode_latents(images[i:i + batch_size], sample=True, generator=g)
          for i in range(0, len(images), batch_size)]
    return float(1.0 / torch.cat(zs).float().std())


def _first_images(dataset, n: int) -> torch.Tensor:
    if hasattr(dataset, "images_tensor"):
        return dataset.images_tensor()[:n]
    return torch.stack([item["image"] for item in first_items(dataset, n)])


def release_autoencoder(path: Path, model: Autoencoder, cfg: AutoencoderConfig, scale_factor: float,
                        extra: dict | None = None) -> None:
    save_release(path, model.state_dict(), {"kind": "autoencoder", "config": to_dict(cfg),
                                            "scale_factor": scale_factor, **(extra or {})})


class DiscriminatorLoss(nn.Module):
    """The PatchGAN loss (real and fake passes) as one forward: the unit DDP wraps for the discriminator.

    The autoencoder's GAN term calls the bare discriminator instead: its gradient only steers the
    autoencoder, and the discriminator's own gradients are zeroed before its step.
    """

    def __init__(self, loss_fn: AutoencoderLoss):
        super().__init__()
        self.discriminator = loss_fn.discriminator
        self._loss = (loss_fn,)

    def forward(self, x: torch.Tensor, xrec: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self._loss[0].discriminator_loss(x, xrec, step)


def train_autoencoder(cfg: AutoencoderRunConfig, resume: bool = True) -> Path:
    """Train, checkpoint (atomic, resumable), and write ``autoencoder.safetensors``; returns its path.

    Runs as one process, or as one rank of a ``torchrun`` job (see docs/train-on-many-gpus.md).
    """
    out, device, dist = start_run(cfg, cfg.train)
    try:
        return _train(cfg, resume, out, device, dist)
    finally:
        dist.close()


def _train(cfg: AutoencoderRunConfig, resume: bool, out: Path, device: torch.device, dist: Dist) -> Path:
    tc = cfg.train
    train_set, test_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    model = Autoencoder(cfg.model).to(device)
    loss_fn = AutoencoderLoss(cfg.loss, cfg.model.kind, cfg.model.in_channels).to(device)
    seed_rank(tc.seed, dist)
    if dist.active and device.type == "cuda":
        # the discriminator's BatchNorm sees the global batch, as in one process (SyncBatchNorm is CUDA-only)
        loss_fn.discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(loss_fn.discriminator)
    if dist.active:
        loss_fn.grad_reduce = dist.average
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
        loss_fn.to(memory_format=torch.channels_last)
    ae, disc = dist.wrap(model, device), dist.wrap(DiscriminatorLoss(loss_fn), device)
    opt_ae = adam(model.parameters(), lr=tc.lr, betas=(0.5, 0.9), decoupled=False)
    opt_d = adam(loss_fn.discriminator.parameters(), lr=tc.lr, betas=(0.5, 0.9), decoupled=False)
    scaler = grad_scaler(device, tc.precision)
    micro, accum = tc.batch_size, tc.grad_accum
    stream = make_stream(train_set, micro * accum, tc.seed, tc.num_workers, dist.rank, dist.world_size)
    global_batch = micro * accum * dist.world_size
    peak_lr = base_lr(tc, dist.world_size)

    stateful = {"model": model, "loss": loss_fn, "opt_ae": opt_ae, "opt_d": opt_d, "stream": stream} | (
        {"scaler": scaler} if scaler.is_enabled() else {})
    ckpt = Checkpointer(out / "checkpoint.pt", stateful, None, device, to_dict(cfg), dist)
    step = ckpt.restore() if resume else 0

    fixed = _first_images(test_set, 16).to(device)
    log = RunLogger(out, tc.steps, step, enabled=dist.is_main, tensorboard=tc.tensorboard)
    if dist.world_size > 1 or accum > 1 or tc.scale_lr:
        log.write(f"global batch {global_batch} = {micro} x {dist.world_size} process(es) x {accum} accumulation; "
                  f"lr {peak_lr:.3g}")
    budget = TimeBudget(tc.max_minutes)
    guard = StepGuard(tc.max_bad_steps, ckpt.path, log)
    model.train()
    batches = iter(stream)
    try:
        while step < tc.steps:  # check before drawing: the stream position is part of the checkpoint
            batch = guard.next_batch(batches)
            lr = peak_lr * lr_factor(step, tc)
            set_lr((opt_ae, opt_d), lr)
            opt_ae.zero_grad(set_to_none=True)
            pairs, logs, losses = [], [], []
            for k, mb in enumerate(split_batch(batch, accum)):
                x = mb["image"].to(device, non_blocking=True)  # (B, C, H, W)
                if tc.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                # posterior noise per sample, keyed by its position in the global batch (see seeding.py)
                gens = sample_generators(tc.seed, step, dist.rank * micro * accum + k * micro, len(x))
                with no_sync(ae, k < accum - 1):
                    with autocast(device, tc.precision):
                        xrec, reg_loss, info = ae(x, sample_posterior=True, generator=gens)
                        loss, values = loss_fn.generator_loss(x, xrec.float(), reg_loss, model.last_layer, step)
                    scaler.scale(loss / accum if accum > 1 else loss).backward()
                losses.append(loss.detach())
                pairs.append((x, xrec.detach().float()))
                logs.append(values | {k_: float(v) for k_, v in info.items() if k_ in ("perplexity", "usage")})
            norm = clipped_norm(model.parameters(), opt_ae, scaler, tc.grad_clip)
            if not guard.ok(step, losses, norm, dist, device):
                skip_step((opt_ae, opt_d), scaler)
                continue
            scaler.step(opt_ae)
            if step >= cfg.loss.disc_start:  # the discriminator is idle (and free) before disc_start
                opt_d.zero_grad(set_to_none=True)  # drops what the autoencoder's GAN term left there
                for k, (x, xrec) in enumerate(pairs):
                    with no_sync(disc, k < accum - 1):
                        with autocast(device, tc.precision):
                            d_loss, d_values = disc(x, xrec, step)
                        scaler.scale(d_loss / accum if accum > 1 else d_loss).backward()
                    logs[k].update(d_values)
                scaler.step(opt_d)
            scaler.update()
            step += 1
            log.step()
            if step % tc.log_every == 0 or step == tc.steps:
                values = {k_: sum(float(v[k_]) for v in logs) / len(logs) for k_ in logs[0]}
                log.log(step, dist.mean(values, device) | {"lr": lr}, global_batch)  # every rank takes part
            if step % tc.sample_every == 0 and dist.is_main:
                _save_reconstructions(model, fixed, out / "samples" / f"recon_{step:07d}.png")
            if step % tc.ckpt_every == 0:
                ckpt.save(step)
            if tc.max_minutes and dist.any(budget.spent(), device):  # every rank stops at the same step
                log.write(f"time budget of {tc.max_minutes} min spent at step {step}")
                break
    except BaseException:  # the message after the bar starts on its own line
        log.close()
        raise
    log.close()
    ckpt.save(step)
    release = out / "autoencoder.safetensors"
    if dist.is_main:
        model.eval()
        _save_reconstructions(model, fixed, out / "samples" / "recon_final.png")
        scale = estimate_scale_factor(model, _first_images(train_set, cfg.scale_samples).to(device), seed=tc.seed)
        release_autoencoder(release, model, cfg.model, scale, {"train_steps": step, "data": to_dict(cfg.data)})
    dist.barrier()
    return release


@torch.no_grad()
def _save_reconstructions(model: Autoencoder, x: torch.Tensor, path: Path) -> None:
    was_training = model.training
    model.eval()
    xrec = model.decode(model.encode_latents(x, sample=False))
    save_grid(torch.cat([x, xrec]).cpu(), path, nrow=len(x))
    model.train(was_training)
