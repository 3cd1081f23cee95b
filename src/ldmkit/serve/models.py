"""A loaded pipeline as the server offers it: a name and what the page may ask of it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..diffusion.registry import SAMPLERS
from ..pipeline import Pipeline
from ..pipeline_inputs import CONTEXT_KEYS

# the samplers the page lists, the default first (every registered one; aliases are accepted by the API too)
SAMPLER_NAMES = ("ddim", *(s for s in SAMPLERS if s != "ddim"))


@dataclass
class ModelEntry:
    name: str
    pipe: Pipeline
    source: str
    loras: list[str] = field(default_factory=list)

    def capabilities(self) -> dict[str, Any]:
        """What the model is conditioned on, and the inputs every model takes (img2img, inpaint by re-imposing)."""
        cfg = self.pipe.cfg
        key = CONTEXT_KEYS.get(cfg.conditioner.kind)
        concat = cfg.concat.kind
        names = list(cfg.class_names)
        caps: dict[str, Any] = {
            "name": self.name, "source": self.source, "loras": self.loras,
            "class": key == "label", "text": key == "caption",
            "boxes": key == "boxes" or concat == "boxes",
            "segmentation": concat == "semantic", "low_res": concat == "low_res",
            # the 9-channel / LDM inpainting models need image + mask; any other model takes them optionally
            "inpaint_model": concat == "inpaint",
            "guidance": cfg.conditioner.kind != "none",
            "size": cfg.autoencoder.resolution, "size_multiple": cfg.autoencoder.downsample_factor,
            "channels": cfg.autoencoder.in_channels, "samplers": list(SAMPLER_NAMES),
            "timesteps": cfg.diffusion.timesteps,
        }
        if key == "label":
            n = cfg.conditioner.num_classes
            caps["class_names"] = names[:n] if len(names) >= n else [str(i) for i in range(n)]
        if caps["boxes"]:
            caps["box_classes"] = names  # 1-based ids in the data: box class k is names[k - 1]
            caps["max_objects"] = getattr(cfg.conditioner, "max_objects", None)
        if concat == "semantic":
            caps["segmentation_classes"] = cfg.concat.num_classes
        if concat == "low_res":
            caps["sr_factor"] = cfg.concat.factor
        return caps


def unique_names(paths: list[str]) -> list[str]:
    """Each checkpoint's name on the page: its file stem (its folder's name for pipeline.safetensors or a
    diffusers folder), with -2, -3 added where two would be the same."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        stem = path.name if path.is_dir() else (path.parent.name if path.stem == "pipeline" else path.stem)
        name, k = stem or "model", 2
        while name in out:
            name, k = f"{stem}-{k}", k + 1
        out.append(name)
    return out
