"""First-stage training: reconstruction + regulariser + (gated) PatchGAN, two Adam optimisers."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..autoencoder import Autoencoder, AutoencoderConfig, AutoencoderLoss, AutoencoderLossConfig
from ..config import require, to_dict
from ..data import DataConfig, build_dataset
from ..imageio import save_grid
from ..weights import save_release
from .checkpoint import Checkpointer
from .config import TrainConfig, autocast, lr_factor
from .logger import RunLogger
from .run import TimeBudget, set_lr, start_run
from .stream import BatchStream


@dataclass
class AutoencoderRunConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(name="fashion_mnist", channels=1))
    model: AutoencoderConfig = field(default_factory=lambda: AutoencoderConfig(in_channels=1))
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=4.5e-4, out_dir="runs/autoencoder"))
    scale_samples: int = 2048       # images encoded to estimate the latent scale_factor

    def __post_init__(self) -> None:
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
    return torch.stack([dataset[i]["image"] for i in range(min(n, len(dataset)))])


def release_autoencoder(path: Path, model: Autoencoder, cfg: AutoencoderConfig, scale_factor: float,
                        extra: dict | None = None) -> None:
    save_release(path, model.state_dict(), {"kind": "autoencoder", "config": to_dict(cfg),
                                            "scale_factor": scale_factor, **(extra or {})})


def train_autoencoder(cfg: AutoencoderRunConfig, resume: bool = True) -> Path:
    """Train, checkpoint (atomic, resumable), and write ``autoencoder.safetensors``; returns its path."""
    tc = cfg.train
    out, device = start_run(cfg, tc)

    train_set, test_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    model = Autoencoder(cfg.model).to(device)
    loss_fn = AutoencoderLoss(cfg.loss, cfg.model.kind, cfg.model.in_channels).to(device)
    opt_ae = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=tc.lr, betas=(0.5, 0.9))
    stream = BatchStream(train_set, tc.batch_size, tc.seed, tc.num_workers)
    gen = torch.Generator(device=device).manual_seed(tc.seed)  # posterior sampling

    stateful = {"model": model, "loss": loss_fn, "opt_ae": opt_ae, "opt_d": opt_d, "stream": stream}
    ckpt = Checkpointer(out / "checkpoint.pt", stateful, gen, device, to_dict(cfg))
    step = ckpt.restore() if resume else 0

    fixed = _first_images(test_set, 16).to(device)
    log = RunLogger(out, tc.steps, step)
    budget = TimeBudget(tc.max_minutes)
    model.train()
    batches = iter(stream)
    while step < tc.steps:  # check before drawing: the stream position is part of the checkpoint
        batch = next(batches)
        lr = tc.lr * lr_factor(step, tc)
        set_lr((opt_ae, opt_d), lr)
        x = batch["image"].to(device, non_blocking=True)  # (B, C, H, W)
        with autocast(device, tc.precision):
            xrec, reg_loss, info = model(x, sample_posterior=True, generator=gen)
            loss, values = loss_fn.generator_loss(x, xrec.float(), reg_loss, model.last_layer, step)
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt_ae.step()
        if step >= cfg.loss.disc_start:  # the discriminator is idle (and free) before disc_start
            with autocast(device, tc.precision):
                d_loss, d_values = loss_fn.discriminator_loss(x, xrec.detach().float(), step)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            values.update(d_values)
        step += 1
        log.step()
        if step % tc.log_every == 0 or step == tc.steps:
            values.update({k: float(v) for k, v in info.items() if k in ("perplexity", "usage")})
            log.log(step, {k: float(v) for k, v in values.items()} | {"lr": lr}, tc.batch_size)
        if step % tc.sample_every == 0:
            _save_reconstructions(model, fixed, out / "samples" / f"recon_{step:07d}.png")
        if step % tc.ckpt_every == 0:
            ckpt.save(step)
        if budget.spent():
            log.write(f"time budget of {tc.max_minutes} min spent at step {step}")
            break
    log.close()
    ckpt.save(step)
    model.eval()
    _save_reconstructions(model, fixed, out / "samples" / "recon_final.png")
    scale = estimate_scale_factor(model, _first_images(train_set, cfg.scale_samples).to(device), seed=tc.seed)
    release = out / "autoencoder.safetensors"
    release_autoencoder(release, model, cfg.model, scale, {"train_steps": step, "data": to_dict(cfg.data)})
    return release


@torch.no_grad()
def _save_reconstructions(model: Autoencoder, x: torch.Tensor, path: Path) -> None:
    was_training = model.training
    model.eval()
    xrec = model.decode(model.encode_latents(x, sample=False))
    save_grid(torch.cat([x, xrec]).cpu(), path, nrow=len(x))
    model.train(was_training)
