"""Spatial conditioning by channel concatenation (semantic maps, low-res images, masked images).

The paper conditions its semantic-synthesis, super-resolution and inpainting models by concatenating
a map of the latent's size onto the UNet input. ``boxes`` (not in the original) rasterises a layout's boxes
into a class map and treats it like a semantic map; with a layout conditioner this is the hybrid layout model. ``ConcatConfig`` says which map and how many channels
it adds; the pipeline builds the map (inpainting needs the first stage to encode the masked image).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ldmkit.config import require

CONCAT_KINDS = ("none", "semantic", "low_res", "inpaint", "boxes")


@dataclass
class ConcatConfig:
    kind: Literal["none", "semantic", "low_res", "inpaint", "boxes"] = "none"
    num_classes: int = 19          # semantic, boxes: classes of the map, background included (shapes: 18 + 1)
    n_stages: int = 2              # semantic, boxes: halvings from image to latent size (log2 of the first stage's f)
    out_channels: int = 3          # semantic, boxes: 1x1 remap of the one-hot map (0 = keep num_classes channels)
    factor: int = 4                # low_res: super-resolution factor (high-res side / low-res side)
    degradation: Literal["bicubic", "bsr"] = "bicubic"   # low_res: how training pairs are made
    mask_kind: Literal["large", "box", "stroke"] = "large"   # inpaint: training mask generator
    paste_known: bool = True       # inpaint: keep the known pixels exactly (as the original inpaint script)
    # inpaint: channel layout. "ldm": [masked image latent, mask in {-1, 1}] (the original inpainting_big);
    # "sd": [mask in {0, 1}, masked image latent] (Stable Diffusion's 9-channel inpainting UNets)
    inpaint_layout: Literal["ldm", "sd"] = "ldm"

    def __post_init__(self) -> None:
        require(self.kind in CONCAT_KINDS, "kind", f"expected one of {list(CONCAT_KINDS)}, got {self.kind!r}")
        require(self.num_classes >= 2, "num_classes", f"must be >= 2, got {self.num_classes}")
        require(self.n_stages >= 0, "n_stages", f"must be >= 0, got {self.n_stages}")
        require(self.out_channels >= 0, "out_channels", f"must be >= 0, got {self.out_channels}")
        require(self.factor >= 1, "factor", f"must be >= 1, got {self.factor}")
        require(self.degradation in ("bicubic", "bsr"), "degradation", f"expected bicubic or bsr, got {self.degradation!r}")
        require(self.inpaint_layout in ("ldm", "sd"), "inpaint_layout",
                f"expected ldm or sd, got {self.inpaint_layout!r}")
        require(self.mask_kind in ("large", "box", "stroke"), "mask_kind",
                f"expected large, box or stroke, got {self.mask_kind!r}")

    def channels(self, latent_channels: int, image_channels: int) -> int:
        """Channels this condition adds to the UNet input."""
        if self.kind in ("semantic", "boxes"):
            return self.out_channels or self.num_classes
        if self.kind == "low_res":
            return image_channels
        if self.kind == "inpaint":
            return latent_channels + 1  # the masked image's latent and the mask (order: inpaint_layout)
        return 0

    @property
    def input_keys(self) -> tuple[str, ...]:
        """Batch / call fields the condition is built from."""
        return {"none": (), "semantic": ("segmentation",), "low_res": ("low_res",),
                "inpaint": ("mask", "masked_image"),
                "boxes": ("boxes",)}[self.kind]
