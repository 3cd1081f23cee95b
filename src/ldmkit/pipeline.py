"""The thin composition of the paper: autoencoder + conditioner + UNet + noise schedule.

No training code lives here. ``Pipeline`` encodes / decodes latents (times / over
``scale_factor``), builds the conditioning, and samples with any registered sampler.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .autoencoder import Autoencoder, AutoencoderConfig
from .config import ConfigError, from_dict, to_dict
from .diffusion import Schedule, ScheduleConfig, cfg_denoise, get_sampler
from .diffusion.noise import randn
from .imageio import to_pil
from .nn import ConditionerConfig, UNetConfig, UNetModel, build_conditioner
from .weights import load_release, save_release


@dataclass
class PipelineConfig:
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    diffusion: ScheduleConfig = field(default_factory=ScheduleConfig)
    scale_factor: float = 1.0
    class_names: list[str] = field(default_factory=list)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.autoencoder.latent_shape


class Pipeline(nn.Module):
    """``pipe(class_labels=[...], num_inference_steps=50, guidance_scale=3.0, seeds=[...])`` -> PIL images."""

    def __init__(self, cfg: PipelineConfig, autoencoder: Autoencoder | None = None,
                 unet: UNetModel | None = None, conditioner: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.autoencoder = (autoencoder or Autoencoder(cfg.autoencoder)).eval().requires_grad_(False)
        self.unet = unet or UNetModel(cfg.unet)
        self.conditioner = conditioner if conditioner is not None else build_conditioner(cfg.conditioner)
        self.schedule = Schedule(cfg.diffusion)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        tensors = {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()}
        tensors |= {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        if self.conditioner is not None:
            tensors |= {f"conditioner.{k}": v for k, v in self.conditioner.state_dict().items()}
        save_release(Path(path), tensors, {"kind": "pipeline", "config": to_dict(self.cfg), **(extra or {})})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Pipeline":
        """Load release weights written by :meth:`save`; the config stored with them wins."""
        tensors, meta = load_release(Path(path))
        if meta.get("kind") != "pipeline":
            raise ConfigError(f"{path}: not an ldmkit pipeline file (kind={meta.get('kind')!r})")
        pipe = cls(from_dict(PipelineConfig, meta["config"]))
        for name, module in (("autoencoder", pipe.autoencoder), ("unet", pipe.unet), ("conditioner", pipe.conditioner)):
            if module is None:
                continue
            sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            module.load_state_dict(sd)
        return pipe.to(device).eval()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # ---------------------------------------------------------------- latents
    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor, generator: torch.Generator | None = None,
                       sample: bool = True) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W) -> scaled latents (B, c, h, w); VQ gives pre-quant latents."""
        return self.autoencoder.encode_latents(x, sample=sample, generator=generator) * self.cfg.scale_factor

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]; VQ first stages quantise here."""
        return self.autoencoder.decode(z / self.cfg.scale_factor)

    # ---------------------------------------------------------------- conditioning
    def condition(self, class_labels: torch.Tensor | None) -> dict[str, torch.Tensor] | None:
        """Conditioner inputs -> the UNet's keyword inputs ({"context": (B, T, D)} for classes)."""
        if self.conditioner is None:
            return None
        if class_labels is None:
            raise ValueError("this pipeline is class-conditional: pass class_labels")
        return {"context": self.conditioner(class_labels)}

    def uncondition(self, batch: int) -> dict[str, torch.Tensor] | None:
        if self.conditioner is None:
            return None
        return {"context": self.conditioner(self.conditioner.unconditional(batch, self.device))}

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """The UNet with conditioning routed: ``concat`` joins the input channels, ``context`` goes to cross-attention."""
        cond = cond or {}
        if "concat" in cond:
            x = torch.cat([x, cond["concat"]], dim=1)
        return self.unet(x, t, context=cond.get("context"), y=cond.get("y"))

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_latents(self, cond: dict | None, uncond: dict | None, noise: torch.Tensor, *, steps: int = 50,
                       guidance_scale: float = 1.0, sampler: str = "ddim",
                       generator: torch.Generator | list[torch.Generator] | None = None,
                       callback=None, **options) -> torch.Tensor:
        # unconditional models have nothing to guide: scale 1 is a single plain call
        denoise_fn = cfg_denoise(self.model_fn, cond, uncond, guidance_scale if cond is not None else 1.0)
        return get_sampler(sampler)(denoise_fn, noise, self.schedule, steps=steps, generator=generator,
                                    callback=callback, **options)

    @torch.no_grad()
    def __call__(self, class_labels: Sequence[int] | torch.Tensor | None = None, num_images: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 3.0, sampler: str = "ddim",
                 generator: torch.Generator | None = None, seeds: Sequence[int] | None = None,
                 output_type: str = "pil", **options) -> list | torch.Tensor:
        """Sample images. ``seeds`` gives image k its own generator, so it can be regenerated alone."""
        n = len(class_labels) if class_labels is not None else (len(seeds) if seeds is not None else (num_images or 1))
        dev = self.device
        if seeds is not None:
            if len(seeds) != n:
                raise ValueError(f"got {len(seeds)} seeds for {n} images")
            generator = [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = randn((n, *self.cfg.latent_shape), generator, device=dev)
        labels = None if class_labels is None else torch.as_tensor(class_labels, dtype=torch.long, device=dev)
        cond = self.condition(labels)
        uncond = self.uncondition(n) if cond is not None else None
        z = self.sample_latents(cond, uncond, noise, steps=num_inference_steps, guidance_scale=guidance_scale,
                                sampler=sampler, generator=generator, **options)
        images = self.decode_latents(z).clamp(-1, 1)
        if output_type == "pt":
            return images
        return [to_pil(x) for x in images]

