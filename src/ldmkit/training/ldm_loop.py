"""Latent diffusion training over a frozen first stage: encode, noise, denoise, AdamW, EMA."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..convert.loader import load_autoencoder_any, load_pipeline_any
from ..convert.lora_file import save_lora
from ..device import resolve_device
from ..config import ConfigError, load_config, require, to_dict
from ..data import DataConfig, build_dataset, collate, first_items
from ..diffusion import GuidanceConfig, ScheduleConfig, diffusion_loss
from ..evaluation.periodic import PeriodicEval
from ..imageio import save_grid
from ..nn import ConditionerConfig, UNetConfig
from ..nn.concat import ConcatConfig
from ..pipeline import Pipeline, PipelineConfig
from ..pipeline_inputs import CONTEXT_KEYS, batch_conditioning, gather_inputs
from .adapters import add_adapters, freeze_all_but, frozen_in_half, load_release_for, lora_release
from .checkpoint import Checkpointer
from .config import TrainConfig, autocast, base_lr, grad_scaler, lr_factor
from .distributed import Dist, no_sync
from .ema import EMA
from .guard import StepGuard, clipped_norm, skip_step
from .prior import PriorPairs, generate_class_images, prior_loss
from .latents import LatentCache, LatentSource, canonical, encode_dataset, uses_flips
# IDENTITY and cache_latents are re-exported: callers import them from here (cli, benchmarks, tests)
from .ldm_caches import (IDENTITY, _first_stage_path, cache_latents, identity_first_stage,  # noqa: F401
                         open_embedding_cache, open_latent_cache, pixel_space)
from .logger import RunLogger
from .optim import adam
from .run import TimeBudget, seed_rank, set_lr, start_run
from .seeding import sample_generators
from .stream import make_stream, split_batch


DENOISER_PARTS = ("unet", "conditioner", "spatial")  # what trains (and gets an EMA); the first stage is frozen


@dataclass
class LDMTrainConfig(TrainConfig):
    ema_decay: float = 0.9999
    p_uncond: float = 0.1               # condition dropout, so one model also predicts unconditionally (CFG)
    loss_type: Literal["l2", "l1"] = "l2"
    snr_gamma: float = 0.0              # > 0: Min-SNR-gamma loss weighting (5 is the paper's choice); 0 = off
    # min_snr: Hang et al.; min_snr_plus_one: SNR + 1 in its place (x0 error weighted >= 1 at every noise level)
    snr_weighting: Literal["min_snr", "min_snr_plus_one"] = "min_snr"
    # use the latent cache (ldmkit cache-latents); in-memory data sets are cached by the first run
    cache_latents: bool = True
    encode_precision: Literal["fp32", "bf16"] = "fp32"   # bf16 encodes ~2.3x faster on AMX CPUs
    sample_steps: int = 50
    guidance_scale: float = 3.0
    eval_every: int = 0                 # > 0: Frechet distance of eval_n EMA samples every eval_every steps
    eval_n: int = 256
    eval_steps: int = 25
    eval_extractor: str = "fmnist"      # fmnist (in-project classifier) | inception (needs eval_weights)
    eval_weights: str = ""
    # LoRA fine-tuning (peft adapters, nn/lora.py): rank > 0 trains adapters only, the released weights frozen;
    # the run writes lora.safetensors (kohya layout) beside the merged pipeline.safetensors
    lora_rank: int = 0
    lora_alpha: float = 0.0             # 0 = the rank (update scale 1)
    lora_dropout: float = 0.0
    lora_feed_forward: bool = False     # also the transformer blocks' feed-forward layers
    lora_text_encoder: bool = False     # also the CLIP text encoder's attention projections
    # DreamBooth prior preservation: a folder of the class's images (ldmkit fine-tune --class-prompt writes one),
    # drawn in equal shares with the training data; loss = instance mean + prior_weight x class mean
    prior_data: str = ""
    prior_weight: float = 1.0
    # full fine-tuning of part of the denoiser: only parameters whose names contain one of these train (e.g.
    # [attn1, attn2]: every UNet attention); empty = all. Frozen ones get no gradient and no optimizer state
    trainable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.lora_rank >= 0, "lora_rank", f"must be >= 0 (0 = train every weight), got {self.lora_rank}")
        require(not (self.trainable and self.lora_rank), "trainable",
                "selects weights of a full fine-tune; a LoRA run trains its adapters (train.lora_rank=0 or drop it)")
        require(0.0 <= self.p_uncond < 1.0, "p_uncond", f"must be in [0, 1), got {self.p_uncond}")
        require(0.0 < self.ema_decay < 1.0, "ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        require(self.eval_every >= 0, "eval_every", f"must be >= 0, got {self.eval_every}")
        require(self.eval_n >= 2, "eval_n", f"must be >= 2 (a covariance), got {self.eval_n}")
        require(self.prior_weight >= 0, "prior_weight", f"must be >= 0, got {self.prior_weight}")
        require(self.snr_weighting in ("min_snr", "min_snr_plus_one"), "snr_weighting",
                f"expected min_snr or min_snr_plus_one, got {self.snr_weighting!r}")


@dataclass
class LDMRunConfig:
    data: DataConfig = field(default_factory=lambda: DataConfig(name="fashion_mnist", channels=1))
    # autoencoder: ldmkit .safetensors, original .ckpt or diffusers (VAE) folder; "identity" = pixel space
    first_stage: str = ""
    init_from: str = ""                 # fine-tune a released pipeline (any format): its architecture and weights
    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    concat: ConcatConfig = field(default_factory=ConcatConfig)
    diffusion: ScheduleConfig = field(default_factory=ScheduleConfig)
    # sampling defaults stored with the model (guidance rescale / interval): measured per preset, issue 23
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    train: LDMTrainConfig = field(default_factory=lambda: LDMTrainConfig(out_dir="runs/ldm"))

    def __post_init__(self) -> None:
        require(bool(self.first_stage or self.init_from), "first_stage",
                "path to an autoencoder (autoencoder.safetensors, original .ckpt or diffusers folder) is required")
        if self.conditioner.kind != "none":
            require(self.unet.context_dim == self.conditioner.embed_dim, "unet.context_dim",
                    f"must equal conditioner.embed_dim ({self.conditioner.embed_dim}), got {self.unet.context_dim}")


def adopt_release(cfg: LDMRunConfig, released: Pipeline) -> LDMRunConfig:
    """Fine-tuning trains the released architecture: its UNet, conditioning and schedule replace the preset's;
    its guidance defaults too, unless the run sets its own."""
    rc = released.cfg
    guidance = rc.guidance if cfg.guidance == GuidanceConfig() else cfg.guidance
    # activation checkpointing is how the run trains, not the architecture: `unet.use_checkpoint=true` holds
    unet = replace(rc.unet, use_checkpoint=cfg.unet.use_checkpoint or rc.unet.use_checkpoint)
    return replace(cfg, unet=unet, conditioner=rc.conditioner, concat=rc.concat, diffusion=rc.diffusion,
                   guidance=guidance)


def build_pipeline(cfg: LDMRunConfig, class_names: list[str], released: Pipeline | None = None) -> Pipeline:
    if pixel_space(cfg):
        ae, ae_cfg, scale = identity_first_stage(cfg.data)
    elif cfg.first_stage or released is None:
        ae, ae_cfg, scale = load_autoencoder_any(_first_stage_path(cfg))
    else:
        ae, ae_cfg, scale = released.autoencoder, released.cfg.autoencoder, released.cfg.scale_factor
    extra = cfg.concat.channels(ae_cfg.embed_dim, cfg.data.channels)
    require(ae_cfg.embed_dim + extra == cfg.unet.in_channels, "unet.in_channels",
            f"must equal the first stage's latent channels ({ae_cfg.embed_dim})"
            + (f" + the {cfg.concat.kind} condition's {extra}" if extra else "") + f", got {cfg.unet.in_channels}")
    require(ae_cfg.embed_dim == cfg.unet.out_channels, "unet.out_channels",
            f"must equal the first stage's latent channels ({ae_cfg.embed_dim}), got {cfg.unet.out_channels}")
    # the LDM may train at another size than the first stage's (SD: a 256-px VAE under a 512-px LDM; fine-tuning
    # a release at 768 or 256): both are convolutional, and the release records the size it was trained at
    ae_cfg = ae_cfg.at_resolution(cfg.data.image_size)
    pcfg = PipelineConfig(ae_cfg, cfg.unet, cfg.conditioner, cfg.diffusion, scale,
                          class_names or (released.cfg.class_names if released else []), cfg.concat, cfg.guidance)
    if released is None:
        return Pipeline(pcfg, autoencoder=ae)
    # fine-tuning trains the release's own modules (adopt_release gave the run their architecture): a fresh
    # pipeline loaded from them would hold every weight twice, 3.4 GB more for SD's UNet
    released.unet.cfg = cfg.unet  # (carries use_checkpoint)
    return Pipeline(pcfg, autoencoder=ae, **{part: getattr(released, part) for part in DENOISER_PARTS})


class DenoiserLoss(nn.Module):
    """One forward = conditioning + the per-sample diffusion loss: the unit DDP wraps.

    Its parameters are the denoiser's (UNet, conditioner, spatial rescaler); the frozen first stage is
    reached through the pipeline, which is held outside the module tree so DDP never sees it.
    """

    def __init__(self, pipe: Pipeline, denoiser: nn.ModuleDict, tc: LDMTrainConfig, device: torch.device):
        super().__init__()
        self.denoiser = denoiser
        self._pipe = (pipe,)
        self.tc, self.device = tc, device

    def forward(self, z0: torch.Tensor, values, concat: dict | None, generators: list[torch.Generator]) -> torch.Tensor:
        pipe, tc = self._pipe[0], self.tc
        cond = pipe.condition(values, concat, tuple(z0.shape[-2:]))  # z0: (B, c, h, w)
        with autocast(self.device, tc.precision):
            loss_per, _ = diffusion_loss(pipe.schedule, lambda x, t: pipe.model_fn(x, t, cond), z0,
                                         generator=generators, loss_type=tc.loss_type, snr_gamma=tc.snr_gamma or None,
                                         snr_weighting=tc.snr_weighting)
        return loss_per  # (B,)


def train_ldm(cfg: LDMRunConfig, resume: bool = True, released: Pipeline | None = None) -> Path:
    """Train the denoiser; writes checkpoints and ``pipeline.safetensors`` (EMA weights); returns its path.
    ``released``: the ``init_from`` pipeline when the caller has loaded it already.

    Runs as one process, or as one rank of a ``torchrun`` job (see docs/train-on-many-gpus.md).
    """
    if not pixel_space(cfg):
        _first_stage_path(cfg)
    if cfg.init_from:
        released = released or load_pipeline_any(cfg.init_from)
        cfg = adopt_release(cfg, released)
    out, device, dist = start_run(cfg, cfg.train)
    try:
        return _train(cfg, released, resume, out, device, dist)
    finally:
        dist.close()


def _train(cfg: LDMRunConfig, released: Pipeline | None, resume: bool, out: Path, device: torch.device,
           dist: Dist) -> Path:
    tc = cfg.train
    cache_path, cache = open_latent_cache(cfg)
    # with a cache the data set is read unflipped: the cache holds the mirror images' latents
    dataset = build_dataset(canonical(cfg.data) if cache is not None else cfg.data, "train")
    if tc.prior_data:
        dataset = PriorPairs(dataset, build_dataset(replace(cfg.data, name="image_folder", root=tc.prior_data), "train"))
    caption_note = check_captions(cfg, dataset)
    pipe = build_pipeline(cfg, list(getattr(dataset, "class_names", [])), released)
    # (tar shards without classes.json do not know their class count up front: a label out of range fails)
    known = getattr(dataset, "num_classes", None) is not None
    if cfg.conditioner.kind == "class" and known and cfg.conditioner.num_classes != dataset.num_classes:
        raise ConfigError(f"conditioner.num_classes: {cfg.conditioner.num_classes} but the data set has "
                          f"{dataset.num_classes} classes")
    pipe.to(device)
    if cache is None and cache_path is not None and hasattr(dataset, "images_tensor"):
        if dist.is_main:  # in-memory data sets are cached on the first run; rank 0 encodes, the others read
            encode_dataset(pipe.autoencoder, dataset, cache_path, flips=uses_flips(cfg.data),
                           precision=tc.encode_precision, device=device, batch_size=512,
                           metadata={"first_stage": str(cfg.first_stage or cfg.init_from), "data": to_dict(cfg.data)})
        dist.barrier()
        cache = LatentCache.load(cache_path)
    if cache is not None and len(cache) != len(dataset):
        raise ValueError(f"latent cache {cache_path} holds {len(cache)} items but the data set has {len(dataset)}: "
                         "delete it and run `ldmkit cache-latents` again")
    if tc.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    # before the optimizer, the EMA copy and the checkpoint restore, which all see the adapters
    n_lora = add_adapters(pipe, tc, DENOISER_PARTS) if tc.lora_rank else 0
    if tc.trainable:
        freeze_all_but(pipe, tc.trainable, DENOISER_PARTS)
    store = open_embedding_cache(cfg, pipe.conditioner)
    if store is not None:  # before the EMA copy, which then shares it
        pipe.conditioner.store = store
    denoiser = nn.ModuleDict({k: getattr(pipe, k) for k in DENOISER_PARTS if getattr(pipe, k) is not None})
    seed_rank(tc.seed, dist)
    model = dist.wrap(DenoiserLoss(pipe, denoiser, tc, device), device)
    opt = adam(denoiser.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scaler = grad_scaler(device, tc.precision)
    ema = EMA(denoiser, tc.ema_decay)
    # each rank reads batch_size x grad_accum items per step, cut into grad_accum micro-batches
    micro, accum = tc.batch_size, tc.grad_accum
    stream = make_stream(dataset, micro * accum, tc.seed, tc.num_workers, dist.rank, dist.world_size)
    global_batch = micro * accum * dist.world_size
    peak_lr = base_lr(tc, dist.world_size)
    source = LatentSource(pipe.autoencoder, pipe.cfg.scale_factor, device, cache)
    preview = _preview_batch(dataset, cfg)
    evaluator = None
    if tc.eval_every and dist.is_main:
        evaluator = PeriodicEval(cfg.data, tc.eval_n, tc.eval_steps, tc.guidance_scale, tc.eval_extractor,
                                 tc.eval_weights, device=device, log=lambda m: None)

    stateful = {"model": denoiser, "ema": ema, "opt": opt, "stream": stream} | ({"scaler": scaler}
                                                                              if scaler.is_enabled() else {})
    ckpt = Checkpointer(out / "checkpoint.pt", stateful, None, device, to_dict(cfg), dist)
    step = ckpt.restore() if resume else 0

    log = RunLogger(out, tc.steps, step, enabled=dist.is_main, tensorboard=tc.tensorboard)
    if caption_note:
        log.write(caption_note)
    if store is not None:
        log.write(f"text embeddings of {len(store)} captions from {store.path} (the encoder runs for others only)")
    trainable = sum(p.numel() for p in denoiser.parameters() if p.requires_grad)
    log.write(f"trainable parameters: {trainable:,} of {sum(p.numel() for p in denoiser.parameters()):,}"
              + (f" (LoRA rank {tc.lora_rank}: {n_lora:,})" if tc.lora_rank else "")
              + f"; optimizer state {2 * 4 * trainable / 2**20:.1f} MiB")
    if dist.world_size > 1 or accum > 1 or tc.scale_lr:
        log.write(f"global batch {global_batch} = {micro} x {dist.world_size} process(es) x {accum} accumulation; "
                  f"lr {peak_lr:.3g}")
    budget = TimeBudget(tc.max_minutes)
    guard = StepGuard(tc.max_bad_steps, ckpt.path, log)
    denoiser.train()
    batches = iter(stream)
    try:
        while step < tc.steps:  # check before drawing: the stream position is part of the checkpoint
            batch = guard.next_batch(batches)
            lr = peak_lr * lr_factor(step, tc)
            set_lr((opt,), lr)
            opt.zero_grad(set_to_none=True)
            losses = []
            for k, mb in enumerate(split_batch(batch, accum)):
                # positions in the global batch key the per-sample random streams (see seeding.py)
                gens = sample_generators(tc.seed, step, dist.rank * micro * accum + k * micro, len(mb["index"]))
                z0, mb = source.latents(mb, gens)  # (B, c, h, w)
                if tc.channels_last:
                    z0 = z0.contiguous(memory_format=torch.channels_last)
                inputs = gather_inputs(pipe.cfg, device, **batch_conditioning(pipe.cfg, mb, gens))
                values = inputs.values
                if pipe.conditioner is not None:
                    values = pipe.conditioner.drop(values, tc.p_uncond, generator=gens)
                with no_sync(model, k < accum - 1):
                    loss_per = model(z0, values, inputs.concat, gens)  # (B,)
                    loss = prior_loss(loss_per, mb["prior"], tc.prior_weight) if tc.prior_data else loss_per.mean()
                    scaler.scale(loss / accum if accum > 1 else loss).backward()
                losses.append(loss.detach())
            norm = clipped_norm(denoiser.parameters(), opt, scaler, tc.grad_clip)
            if not guard.ok(step, losses, norm, dist, device):
                skip_step((opt,), scaler)
                continue
            scaler.step(opt)
            scaler.update()
            ema.update(denoiser)
            step += 1
            log.step()
            if step % tc.log_every == 0 or step == tc.steps:
                mean_loss = dist.mean({"loss": float(torch.stack(losses).mean())}, device)  # every rank takes part
                log.log(step, mean_loss | {"lr": lr}, global_batch)
            measure_start = time.perf_counter()  # grids and evaluation are measurements: not training time
            if step % tc.sample_every == 0 and dist.is_main:
                _save_samples(pipe, ema.model, tc, out / "samples" / f"samples_{step:07d}.png", preview, device)
            scores = None
            if evaluator is not None and step % tc.eval_every == 0:
                with autocast(device, tc.precision if frozen_in_half(tc) else "fp32"):
                    scores = evaluator(_ema_pipeline(pipe, ema.model).eval())
            measured = time.perf_counter() - measure_start
            budget.exclude(measured)
            log.exclude(measured)
            if scores is not None:
                log.log(step, scores)
            if step % tc.ckpt_every == 0:
                ckpt.save(step)
            # rank 0's clock decides (the others wait through its evaluation); every rank stops at the same step
            if tc.max_minutes and dist.any(dist.is_main and budget.spent(), device):
                log.write(f"time budget of {tc.max_minutes} min spent at step {step}")
                break
    except BaseException:  # the message after the bar starts on its own line
        log.close()
        raise
    log.close()
    ckpt.save(step)
    release = out / "pipeline.safetensors"
    if dist.is_main:
        _save_samples(pipe, ema.model, tc, out / "samples" / "samples_final.png", preview, device)
        view, meta = _ema_pipeline(pipe, ema.model), {"train_steps": step, "data": to_dict(cfg.data)}
        # LoRA: the adapter alone, then folded into the weights. The EMA shares the frozen released weights with
        # the live model, so the merge changes both: nothing trains or saves a checkpoint after this point
        if tc.lora_rank:
            save_lora(view, out / "lora.safetensors", metadata=meta | {"base": cfg.init_from})
            if frozen_in_half(tc) and cfg.init_from:  # merged into the base as stored, not its rounded copy
                view = lora_release(view, cfg.init_from, out / "lora.safetensors", load_pipeline_any)
            else:
                view.merge_lora()
        view.save(release, meta)
    dist.barrier()
    return release


def check_captions(cfg: LDMRunConfig, dataset) -> str | None:
    """A text model on an image folder: a one-line error when no image has a caption; a note of how many lack one
    (they train as the empty prompt, the unconditional one classifier-free guidance learns anyway)."""
    captions = getattr(getattr(dataset, "instance", dataset), "captions", None)  # (PriorPairs: the user's images)
    if CONTEXT_KEYS.get(cfg.conditioner.kind) != "caption" or captions is None:
        return None
    missing = sum(c is None for c in captions)
    empty = sum(c is not None and not c.strip() for c in captions)
    if missing + empty == len(captions):
        raise ConfigError(f"{cfg.data.root}: none of the {len(captions)} images has a caption, which a text-to-image "
                          "model needs (x.txt beside x.png, or metadata.jsonl with file_name / text)")
    if not missing + empty:
        return None
    why = ", ".join(f"{n} {what}" for n, what in ((missing, "missing"), (empty, "empty")) if n)
    return f"{missing + empty} of {len(captions)} images have no caption ({why}): they train as the empty prompt"


def _ema_pipeline(pipe: Pipeline, ema_model: nn.ModuleDict) -> Pipeline:
    """The same pipeline with the EMA denoiser (what samples and the release use)."""
    return Pipeline(pipe.cfg, autoencoder=pipe.autoencoder,
                    **{k: ema_model[k] if k in ema_model else None for k in DENOISER_PARTS})


@torch.no_grad()
def _save_samples(pipe: Pipeline, ema_model: nn.ModuleDict, tc: LDMTrainConfig, path: Path,
                  preview: dict | None, device: torch.device) -> None:
    # half-precision frozen weights (a bf16 LoRA run) meet float32 adapters: sampled under autocast, as trained
    with autocast(device, tc.precision if frozen_in_half(tc) else "fp32"):
        _draw_samples(pipe, ema_model, tc, path, preview)


def _draw_samples(pipe: Pipeline, ema_model: nn.ModuleDict, tc: LDMTrainConfig, path: Path,
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
        n, (h, w) = len(preview["image"]), preview["image"].shape[-2:]
        # at the training images' size (a fine-tuned release's default size may be another: SD's 512)
        images = torch.cat([view(**kwargs, seeds=list(range(n)), height=h, width=w, **settings).cpu(),
                            preview["image"].cpu()])
    save_grid(images, path, nrow=8)


def _preview_batch(dataset, cfg: LDMRunConfig) -> dict | None:
    """The first 8 training items, whose conditioning the sample grids show (None: unconditional)."""
    if cfg.conditioner.kind in ("none", "class") and cfg.concat.kind == "none":
        return None
    return collate(first_items(dataset, 8))


def fine_tune(checkpoint: str, data: str, lora_rank: int = 0, overrides: list[str] = (), resume: bool = True,
              prior: tuple[str, int, float] | None = None) -> Path:
    """``ldmkit fine-tune``: ``train-ldm`` from a released pipeline (any format ``sample`` reads) on an image folder
    (captions from ``x.txt`` sidecars or captions.jsonl / metadata.jsonl, or class subfolders) or a shard set (a
    folder of .tar), with LoRA adapters of ``lora_rank`` (0: every weight trains). ``overrides`` as train-ldm's;
    the image size defaults to the release's. ``prior`` = (class prompt, number of class images, weight) adds
    DreamBooth prior preservation: the release draws the class images into ``OUT/class-images`` first."""
    released = load_release_for(checkpoint, lora_rank, overrides)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of images or tar shards")
    name = "webdataset" if any(root.glob("*.tar")) or any(root.glob("*.tar.gz")) else "image_folder"
    given = {o.split("=", 1)[0] for o in overrides}
    defaults = {"init_from": checkpoint, "data.name": name, "data.root": str(root), "data.test_every": 0,
                "data.channels": released.cfg.autoencoder.in_channels,
                "data.image_size": released.cfg.autoencoder.resolution, "train.lora_rank": lora_rank,
                "train.out_dir": f"runs/fine-tune/{root.name}-{'lora' if lora_rank else 'full'}",
                "train.guidance_scale": 7.5 if released.cfg.conditioner.kind in ("clip", "openclip") else 3.0}
    cfg = load_config(LDMRunConfig, None, [f"{k}={v}" for k, v in defaults.items() if k not in given] + list(overrides))
    if prior is not None:
        prompt, n, weight = prior
        require(n >= 1, "--class-images", f"must be >= 1, got {n}")
        # on the training device (then back: train_ldm moves the release itself; under torchrun every rank draws
        # the same images and writes them atomically)
        folder = generate_class_images(released.to(resolve_device(cfg.train.device)), prompt, n,
                                       Path(cfg.train.out_dir) / "class-images", guidance=cfg.train.guidance_scale,
                                       seed=cfg.train.seed)
        released.to("cpu")
        cfg = replace(cfg, train=replace(cfg.train, prior_data=str(folder), prior_weight=weight))
    return train_ldm(cfg, resume=resume, released=released)
