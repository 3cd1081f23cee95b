"""The thin composition of the paper: autoencoder + conditioners + UNet + noise schedule.

No training code lives here. ``Pipeline`` encodes / decodes latents (times / over
``scale_factor``), builds the conditioning (a cross-attention ``context`` from a class,
caption or layout, and / or a ``concat`` map from a semantic map, low-res or masked image),
and samples with any registered sampler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .autoencoder import Autoencoder, AutoencoderConfig, IdentityFirstStage, build_autoencoder
from .autoencoder.tiling import tiled_decode
from .config import ConfigError, from_dict, to_dict
from .device import release_free_memory
from .diffusion import GuidanceConfig, Schedule, ScheduleConfig, cfg_denoise, check_interval, check_options, classifier_guided, ddim_invert, get_sampler
from .diffusion.editing import paste_known, reimpose_known
from .diffusion.noise import randn
from .imageio import to_pil
from .nn import ConditionerConfig, UNetConfig, UNetModel, build_conditioner, reuse_context_kv
from .nn.concat import ConcatConfig
from .nn.inference import inference_dtype, prepare_inference
from .nn.noisy_classifier import load_noisy_classifier
from .nn.prompt_weights import encode_weighted
from .nn.spatial import SpatialRescaler, box_map, one_hot_map
from .pipeline_inputs import CallInputs, gather_inputs
from .weights import load_release, save_release

PARTS = ("autoencoder", "unet", "conditioner", "spatial")  # prefixes of the tensors in a pipeline file


@dataclass
class PipelineConfig:
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    diffusion: ScheduleConfig = field(default_factory=ScheduleConfig)
    scale_factor: float = 1.0
    class_names: list[str] = field(default_factory=list)
    concat: ConcatConfig = field(default_factory=ConcatConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)  # the model's defaults for rescale / interval

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.autoencoder.latent_shape


def build_spatial(cfg: ConcatConfig) -> nn.Module | None:
    """The trainable part of a concat condition: the semantic / box map's rescaler (others have none)."""
    if cfg.kind not in ("semantic", "boxes"):
        return None
    return SpatialRescaler(n_stages=cfg.n_stages, method="bilinear", multiplier=0.5,
                           in_channels=cfg.num_classes, out_channels=cfg.out_channels or None)


class Pipeline(nn.Module):
    """``pipe(class_labels=[...] | prompt=[...] | boxes=... | segmentation=... | low_res=... | image=, mask=,
    num_inference_steps=50, guidance_scale=3.0, sampler="ddim", seeds=[...])`` -> PIL images.

    Editing works with any model: ``image`` + ``strength`` is img2img (SDEdit), ``image`` + ``mask``
    inpaints by re-imposing the known region at every step (models with an inpainting concat condition
    take image + mask as that condition instead); :meth:`invert` is DDIM inversion (image -> noise).
    ``classifier=`` (a noisy latent classifier, ``ldmkit train-classifier``) + ``classifier_scale`` adds
    classifier guidance towards ``class_labels``, with any sampler and on top of classifier-free guidance.
    """

    def __init__(self, cfg: PipelineConfig, autoencoder: Autoencoder | IdentityFirstStage | None = None,
                 unet: UNetModel | None = None, conditioner: nn.Module | None = None,
                 spatial: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.autoencoder = (autoencoder or build_autoencoder(cfg.autoencoder)).eval().requires_grad_(False)
        self.unet = unet or UNetModel(cfg.unet)
        self.conditioner = conditioner if conditioner is not None else build_conditioner(cfg.conditioner)
        self.spatial = spatial if spatial is not None else build_spatial(cfg.concat)
        self.schedule = Schedule(cfg.diffusion)

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        tensors = {}
        for name in PARTS:
            module = getattr(self, name)
            if module is not None:
                tensors |= {f"{name}.{k}": v for k, v in module.state_dict().items()}
        save_release(Path(path), tensors, {"kind": "pipeline", "config": to_dict(self.cfg), **(extra or {})})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Pipeline":
        """Load release weights written by :meth:`save`; the config stored with them wins."""
        tensors, meta = load_release(Path(path))
        if meta.get("kind") != "pipeline":
            raise ConfigError(f"{path}: not an ldmkit pipeline file (kind={meta.get('kind')!r})")
        pipe = cls(from_dict(PipelineConfig, meta["config"]))
        for name in PARTS:
            module = getattr(pipe, name)
            if module is not None:
                module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
        return pipe.to(device).eval()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's compute dtype (float32 unless :meth:`set_precision` changed it)."""
        return next(self.unet.parameters()).dtype

    @property
    def first_stage_dtype(self) -> torch.dtype:
        """The first stage's compute dtype (float32 for the parameter-free pixel-space identity)."""
        return next(self.autoencoder.parameters(), torch.empty(0)).dtype

    def set_precision(self, precision: str = "fp32") -> "Pipeline":
        """Run the UNet and the first stage in ``precision`` ("fp32", "bf16", "fp16"); conditioners, samplers and
        outputs stay float32 (inputs are cast at the UNet / autoencoder boundary). On a CPU, half precision puts
        the convolutions in channels-last layout, and the first stage's in float32 too (``nn.inference``).
        Casting down rounds the weights: load the pipeline again for exact float32. Returns self."""
        dtype = inference_dtype(precision)
        self.unet = prepare_inference(self.unet, dtype)
        self.autoencoder = prepare_inference(self.autoencoder, dtype, first_stage=True)
        return self

    def load_lora(self, path: str | Path, scale: float = 1.0, name: str | None = None) -> str:
        """A LoRA file (kohya or diffusers layout) onto the UNet / text encoder as adapter ``name`` (default: the
        file's stem), at ``scale``; several may be loaded. Returns the adapter's name (convert/lora_file.py)."""
        from .convert.lora_file import load_lora  # convert builds on this module

        return load_lora(self, path, scale, name)

    def merge_lora(self) -> "Pipeline":
        """Fold every loaded LoRA into the weights (plain layers again: saved and exported like any pipeline)."""
        from .nn.lora import merge_lora

        for module in (self.unet, self.conditioner):
            if module is not None:
                merge_lora(module)
        return self

    # ---------------------------------------------------------------- latents
    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor, generator: torch.Generator | None = None,
                       sample: bool = True) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W) -> scaled latents (B, c, h, w); VQ gives pre-quant latents."""
        z = self.autoencoder.encode_latents(x.to(self.first_stage_dtype), sample=sample, generator=generator)
        return z.float() * self.cfg.scale_factor

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]; VQ first stages quantise here. ``tile`` (latent pixels)
        decodes in overlapping tiles to bound memory for large images."""
        z = (z / self.cfg.scale_factor).to(self.first_stage_dtype)
        if tile:
            return tiled_decode(self.autoencoder.decode, z, tile).float()
        return self.autoencoder.decode(z).float()

    # ---------------------------------------------------------------- conditioning
    @property
    def input_key(self) -> str | None:
        """The batch field the cross-attention conditioner reads ("label", "caption", "boxes"), if any."""
        return None if self.conditioner is None else self.conditioner.input_key

    def concat_condition(self, inputs: dict[str, torch.Tensor], latent_hw: tuple[int, int]) -> torch.Tensor:
        """The map concatenated onto the latent: (B, concat channels, h, w)."""
        kind, (h, w) = self.cfg.concat.kind, latent_hw
        missing = [k for k in self.cfg.concat.input_keys if inputs.get(k) is None]
        if missing:
            raise ValueError(f"this pipeline is conditioned on a {kind} map: pass {', '.join(missing)}")
        if kind == "semantic":
            out = self.spatial(one_hot_map(inputs["segmentation"], self.cfg.concat.num_classes))
        elif kind == "boxes":  # rasterised at the image size the rescaler's halvings bring to (h, w)
            s = 2 ** self.cfg.concat.n_stages
            out = self.spatial(box_map(inputs["boxes"].float(), self.cfg.concat.num_classes, h * s, w * s))
        elif kind == "low_res":
            out = inputs["low_res"]
        else:  # inpaint: the masked image's latent (posterior mode) and the mask at latent size
            z = self.encode_latents(inputs["masked_image"], sample=False)
            mask = F.interpolate(inputs["mask"].float(), size=z.shape[-2:], mode="nearest")
            if self.cfg.concat.inpaint_layout == "sd":  # SD inpainting: [mask in {0, 1}, latent]
                out = torch.cat([mask, z], dim=1)
            else:  # the original inpainting_big: [latent, mask in {-1, 1}]
                out = torch.cat([z, mask * 2 - 1], dim=1)
        if out.shape[-2:] != (h, w):  # e.g. a low-res image that is not exactly latent-sized
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out

    def condition(self, values: Any = None, concat_inputs: dict[str, torch.Tensor] | None = None,
                  latent_hw: tuple[int, int] | None = None,
                  context: torch.Tensor | None = None) -> dict[str, torch.Tensor] | None:
        """Conditioner inputs -> the UNet's keyword inputs: {"context": (B, T, D), "concat": (B, C, h, w)};
        a given ``context`` (e.g. :meth:`weighted_contexts`) stands for the conditioner's output."""
        cond = {}
        if self.conditioner is not None:
            if values is None:
                raise ValueError(f"this pipeline is conditioned on {self.input_key!r}: pass it")
            cond["context"] = self.conditioner(values) if context is None else context
        if self.cfg.concat.kind != "none":
            cond["concat"] = self.concat_condition(concat_inputs or {}, latent_hw or self.cfg.latent_shape[1:])
        return cond or None

    def uncondition(self, n: int, cond: dict[str, torch.Tensor] | None = None, negative: Any = None,
                    context: torch.Tensor | None = None) -> dict[str, torch.Tensor] | None:
        """The guidance baseline: the null (or negative) context; a concat map is kept (it is not guided)."""
        if self.conditioner is None:
            return None
        values = negative if negative is not None else self.conditioner.null(n, self.device)
        out = {"context": self.conditioner(values) if context is None else context}
        if cond is not None and "concat" in cond:
            out["concat"] = cond["concat"]
        return out

    def weighted_contexts(self, prompts: Sequence[str], negatives: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts and negative prompts (None: the null caption) in the web UIs' syntax, ``(word:1.3)``, ``[word]``,
        and beyond the encoder's window (:mod:`ldmkit.nn.prompt_weights`): (context, negative context), both
        padded to the same number of chunks so one guided batch holds them."""
        if not hasattr(self.conditioner, "encode_chunks"):
            raise ConfigError(f"prompt_weighting: needs a text-conditional pipeline (conditioner.kind is "
                              f"{self.cfg.conditioner.kind})")
        negatives = list(negatives) if negatives is not None else self.conditioner.null(len(prompts))
        both = encode_weighted(self.conditioner, [*prompts, *negatives])  # one chunk count for both halves
        return both[:len(prompts)], both[len(prompts):]

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """The UNet with conditioning routed: ``concat`` joins the input channels, ``context`` goes to cross-attention."""
        cond = cond or {}
        if "concat" in cond:
            x = torch.cat([x, cond["concat"].to(x.dtype)], dim=1)  # (B, c + concat, h, w)
        dtype, context = self.dtype, cond.get("context")
        if dtype != x.dtype:  # half-precision UNet (set_precision): cast in, float32 out for the sampler
            context = None if context is None else context.to(dtype)
            return self.unet(x.to(dtype), t, context=context, y=cond.get("y")).float()
        return self.unet(x, t, context=context, y=cond.get("y"))

    # ---------------------------------------------------------------- sampling
    def guidance_settings(self, rescale: float | None = None,
                          interval: tuple[float, float] | None = None) -> tuple[float, tuple[float, float] | None]:
        """The (guidance_rescale, guidance_interval) a call with these arguments uses: each None takes the model's
        own (``cfg.guidance``); an interval covering every step is returned as None."""
        rescale = self.cfg.guidance.rescale if rescale is None else float(rescale)
        interval = check_interval(self.cfg.guidance.interval if interval is None else interval)
        every_step = interval is None or (interval[0] <= 0 and interval[1] >= self.schedule.timesteps - 1)
        return rescale, None if every_step else interval

    def check_classifier(self, classifier: nn.Module) -> None:
        """Refuse a noisy classifier that was trained for other latents, classes or noise levels."""
        if self.cfg.conditioner.kind != "class":
            raise ValueError("classifier guidance needs a class-conditional pipeline: its class_labels are the "
                             f"classifier's targets (this one has conditioner.kind={self.cfg.conditioner.kind})")
        ccfg, trained = getattr(classifier, "cfg", None), getattr(classifier, "trained_on", {})
        if ccfg is not None and ccfg.in_channels != self.cfg.latent_shape[0]:
            raise ConfigError(f"classifier: takes {ccfg.in_channels} latent channels, the pipeline has "
                              f"{self.cfg.latent_shape[0]}")
        if ccfg is not None and ccfg.num_classes != self.cfg.conditioner.num_classes:
            raise ConfigError(f"classifier: has {ccfg.num_classes} classes, the pipeline "
                              f"{self.cfg.conditioner.num_classes}")
        if "diffusion" in trained and trained["diffusion"] != to_dict(self.cfg.diffusion):
            raise ConfigError(f"classifier: trained on the noise schedule {trained['diffusion']}, the pipeline uses "
                              f"{to_dict(self.cfg.diffusion)}")
        if "scale_factor" in trained and not math.isclose(trained["scale_factor"], self.cfg.scale_factor, rel_tol=1e-6):
            raise ConfigError(f"classifier: trained on latents scaled by {trained['scale_factor']}, the pipeline "
                              f"scales by {self.cfg.scale_factor}")

    def guided_fn(self, cond: dict | None, uncond: dict | None, guidance_scale: float = 1.0,
                  classifier: nn.Module | None = None, classifier_labels: torch.Tensor | None = None,
                  classifier_scale: float = 0.0, guidance_rescale: float = 0.0,
                  guidance_interval: tuple[float, float] | None = None):
        """The ``denoise_fn(x_t, t)`` every sampler calls: classifier-free guidance (one batched call, with
        ``guidance_rescale`` of Lin et al. 2023 when > 0, only for timesteps inside ``guidance_interval`` when
        given), then classifier guidance of the combined eps
        (``classifier(x_t, t) -> logits`` towards ``classifier_labels``)."""
        # nothing to guide without a context conditioner: scale 1 is a single plain call
        scale = guidance_scale if uncond is not None else 1.0
        # contexts in the UNet's dtype once, not per step: the same tensor every step is what lets
        # reuse_context_kv (sample_latents) keep the cross-attention keys and values
        cond, uncond = self._context_in_dtype(cond), self._context_in_dtype(uncond)
        denoise_fn = cfg_denoise(self.model_fn, cond, uncond, scale, guidance_rescale, guidance_interval)
        if classifier is not None and classifier_scale != 0:
            if classifier_labels is None:
                raise ValueError("classifier guidance needs class_labels (the classes to guide towards)")
            denoise_fn = classifier_guided(denoise_fn, self.schedule, classifier, classifier_labels, classifier_scale)
        return denoise_fn

    def _context_in_dtype(self, cond: dict | None) -> dict | None:
        context = None if cond is None else cond.get("context")
        if context is None or context.dtype == self.dtype:
            return cond
        return {**cond, "context": context.to(self.dtype)}

    @torch.no_grad()
    def sample_latents(self, cond: dict | None, uncond: dict | None, noise: torch.Tensor, *, steps: int = 50,
                       guidance_scale: float = 1.0, sampler: str = "ddim",
                       generator: torch.Generator | list[torch.Generator] | None = None,
                       callback=None, known: tuple[torch.Tensor, torch.Tensor] | None = None,
                       classifier: nn.Module | None = None, classifier_labels: torch.Tensor | None = None,
                       classifier_scale: float = 0.0, guidance_rescale: float | None = None,
                       guidance_interval: tuple[float, float] | None = None, **options) -> torch.Tensor:
        """Run ``sampler`` (any registered name) from ``noise``. ``known`` = (latents, mask with 1 = fill)
        re-imposes the known region at every model call and pastes it into the result; ``classifier`` guides
        towards ``classifier_labels`` (see :meth:`guided_fn`); ``options`` go to the sampler (eta, spacing,
        karras, x_init / strength, ...). ``guidance_rescale`` / ``guidance_interval`` left at None take the
        model's own defaults (``cfg.guidance``); ``(0, math.inf)`` guides at every step."""
        check_options(sampler, options)
        guidance_rescale, guidance_interval = self.guidance_settings(guidance_rescale, guidance_interval)
        denoise_fn = self.guided_fn(cond, uncond, guidance_scale, classifier, classifier_labels, classifier_scale,
                                    guidance_rescale, guidance_interval)
        if known is not None:
            denoise_fn = reimpose_known(denoise_fn, self.schedule, known[0], noise, known[1])
        with reuse_context_kv(self.unet):  # the prompt's keys and values once, not every step
            z = get_sampler(sampler)(denoise_fn, noise, self.schedule, steps=steps, generator=generator,
                                     callback=callback, **options)
        return z if known is None else paste_known(z, known[0], known[1])

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A pixel mask (B, 1, H, W), 1 = fill -> latent (B, 1, h, w): a latent pixel is regenerated when any
        pixel of its f x f patch is to be filled (the decoder's known pixels are pasted back afterwards)."""
        f = self.cfg.autoencoder.downsample_factor
        return F.max_pool2d(mask.float(), kernel_size=f) if f > 1 else mask.float()

    def latent_size(self, inputs: CallInputs, height: int | None, width: int | None) -> tuple[int, int]:
        """Latent (h, w): from a spatial condition's size (convolutional sampling), else height / width."""
        f = self.cfg.autoencoder.downsample_factor
        if inputs.image_hw is not None:
            height, width = inputs.image_hw
        height = height or self.cfg.autoencoder.resolution
        width = width or height
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not divisible by the first stage's factor {f}")
        return height // f, width // f

    @torch.no_grad()
    def __call__(self, class_labels: Sequence[int] | torch.Tensor | None = None, *, prompt=None, negative_prompt=None,
                 boxes=None, segmentation=None, low_res=None, image=None, mask=None, num_images: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 50,
                 guidance_scale: float = 3.0, guidance_rescale: float | None = None, sampler: str = "ddim",
                 generator: torch.Generator | None = None, seeds: Sequence[int] | None = None, strength: float | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "pil", decode_tile: int | None = None,
                 classifier: nn.Module | str | Path | None = None, classifier_scale: float = 1.0,
                 prompt_weighting: bool = False, **options) -> list | torch.Tensor:
        """Sample images. ``seeds`` gives image k its own generator, so it can be regenerated alone, with
        any sampler and in any batch.

        Spatial conditions set the output size (a low-res image of side s gives s * factor), so
        super-resolution and semantic synthesis run beyond the training size (convolutional sampling);
        ``decode_tile`` (in latent pixels) decodes such large images in overlapping tiles.
        ``guidance_rescale`` (0-1, diffusers' name) takes back the over-exposure of large guidance scales
        (Lin et al. 2023; 0.7 is their figure); ``guidance_interval=(lo, hi)`` guides only at the model
        timesteps lo <= t <= hi (Kynkaenniemi et al. 2024). Left at None, both come from the model's
        ``cfg.guidance`` (set when it was trained; plain guidance for released SD checkpoints).

        Editing: ``image`` alone is img2img: its latent (the posterior mode) is noised to the timestep
        where the last ``strength`` (default 0.8) of the steps begin, and those steps run; strength 0
        gives back the first stage's reconstruction of the image. ``image`` + ``mask`` (1 = fill) on a
        model without an inpainting concat condition re-imposes the known region at every step and pastes
        the known pixels into the output (strength default 1: the fill starts from pure noise).
        ``latents`` replaces the seeded start noise (e.g. the output of :meth:`invert`); ``output_type``
        is "pil", "pt" (images in [-1, 1]), "latent", or "pt+latent" (both: images and the sampler's latents,
        which the sample-health rule judges).

        Classifier guidance: ``classifier`` (a module or a ``train-classifier`` file) steers every step
        towards ``class_labels`` with strength ``classifier_scale`` (0 = off; the original LDM's ImageNet
        figure used 10), combined with ``guidance_scale``; each model call adds one classifier forward and
        backward pass.

        ``prompt_weighting``: read prompts and negative prompts in the web UIs' syntax (``(word:1.3)``, ``(word)``,
        ``[word]``) and encode prompts longer than the text encoder's window in chunks (:meth:`weighted_contexts`).
        """
        dev = self.device
        inputs = gather_inputs(self.cfg, dev, class_labels=class_labels, prompt=prompt,
                               negative_prompt=negative_prompt, boxes=boxes, segmentation=segmentation,
                               low_res=low_res, image=image, mask=mask, num_images=num_images, seeds=seeds)
        n = inputs.n
        if seeds is not None:
            generator = [torch.Generator().manual_seed(int(s)) for s in seeds]
        h, w = self.latent_size(inputs, height, width)
        shape = (n, self.cfg.latent_shape[0], h, w)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents: shape {tuple(latents.shape)}, expected {shape}")
            noise = latents.to(dev)
        else:
            noise = randn(shape, generator, device=dev)
        context = negative_context = None
        if prompt_weighting:
            context, negative_context = self.weighted_contexts(inputs.values, inputs.negative)
        cond = self.condition(inputs.values, inputs.concat, (h, w), context)
        uncond = self.uncondition(n, cond, inputs.negative, negative_context) if self.conditioner is not None else None
        if isinstance(classifier, (str, Path)):
            classifier = load_noisy_classifier(classifier)
        if classifier is not None:
            self.check_classifier(classifier)
            classifier = classifier.to(dev).eval()
            options |= {"classifier": classifier, "classifier_labels": inputs.values,
                        "classifier_scale": classifier_scale}
        known = None
        if inputs.image is not None:
            z_image = self.encode_latents(inputs.image, sample=False)
            if inputs.repaint_mask is not None:
                known = (z_image, self.latent_mask(inputs.repaint_mask))
            edits_with_mask = inputs.repaint_mask is not None or self.cfg.concat.kind == "inpaint"
            strength = (1.0 if edits_with_mask else 0.8) if strength is None else strength
            # inpainting at full strength starts from pure noise (as the inpainting models do); img2img
            # always starts from the noised image
            if strength < 1.0 or not edits_with_mask:
                options |= {"x_init": z_image, "strength": strength}
        elif strength is not None:
            raise ValueError("strength given without image: img2img needs an image")
        z = self.sample_latents(cond, uncond, noise, steps=num_inference_steps, guidance_scale=guidance_scale,
                                guidance_rescale=guidance_rescale, sampler=sampler, generator=generator,
                                known=known, **options)
        if output_type == "latent":
            return z
        release_free_memory(z.device)  # the steps' freed buffers, before the decode's large maps
        images = self.decode_latents(z, decode_tile).clamp(-1, 1)
        if self.cfg.concat.kind == "inpaint" and self.cfg.concat.paste_known:
            known_pixels = inputs.concat["masked_image"]
            images = inputs.concat["mask"] * images + (1 - inputs.concat["mask"]) * known_pixels
        if inputs.repaint_mask is not None:  # the decoder is not local: paste the known pixels exactly
            images = paste_known(images, inputs.image, inputs.repaint_mask)
        if output_type == "pt":
            return images
        if output_type == "pt+latent":
            return images, z
        return [to_pil(x) for x in images]

    @torch.no_grad()
    def invert(self, image: torch.Tensor, class_labels: Sequence[int] | torch.Tensor | None = None, *, prompt=None,
               boxes=None, segmentation=None, low_res=None, mask=None, num_inference_steps: int = 50,
               guidance_scale: float = 1.0, spacing: str = "uniform") -> torch.Tensor:
        """DDIM inversion: images (B, C, H, W) in [-1, 1] -> start latents x_T that ``self(..., latents=x_T,
        sampler="ddim", num_inference_steps=..., guidance_scale=...)`` maps back to (about) the same image.
        Guidance above 1 makes the round trip inexact (the inverted ODE is not the guided one)."""
        inputs = gather_inputs(self.cfg, self.device, class_labels=class_labels, prompt=prompt, boxes=boxes,
                               segmentation=segmentation, low_res=low_res, image=image, mask=mask)
        h, w = self.latent_size(inputs, None, None)
        cond = self.condition(inputs.values, inputs.concat, (h, w))
        uncond = self.uncondition(inputs.n, cond) if self.conditioner is not None else None
        scale = guidance_scale if uncond is not None else 1.0
        z0 = self.encode_latents(inputs.image, sample=False)
        return ddim_invert(cfg_denoise(self.model_fn, cond, uncond, scale), z0, self.schedule,
                           steps=num_inference_steps, spacing=spacing)
