"""Configuration of the first-stage autoencoder (KL or VQ) and of its training loss."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..config import require


@dataclass
class AutoencoderConfig:
    """Encoder/decoder backbone and latent regulariser, named after the original ``ddconfig``."""

    kind: Literal["kl", "vq", "identity"] = "kl"  # identity: pixel space (the latent is the image)
    in_channels: int = 3
    resolution: int = 32
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 2, 4)  # f = 2 ** (len(ch_mult) - 1)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()  # feature-map sizes (pixels) that get AttnBlocks
    mid_attn: bool = True  # False = the original ``attn_type: none`` (no mid.attn_1 keys)
    dropout: float = 0.0
    z_channels: int = 3
    embed_dim: int = 3
    n_embed: int = 8192  # VQ codebook size
    beta: float = 0.25  # VQ weight of the codebook term (legacy taming placement)

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        require(self.kind in ("kl", "vq", "identity"), "kind",
                f"expected 'kl', 'vq' or 'identity', got {self.kind!r}")
        if self.kind == "identity":
            # no layers: the factor is 1 and the latent channels are the image's, whatever was written
            self.ch_mult = (1,)
            self.z_channels = self.embed_dim = self.in_channels
        require(1 <= len(self.ch_mult) <= 6, "ch_mult",
                f"needs 1 to 6 levels (downsampling factor 1 to 32), got {len(self.ch_mult)}")
        require(all(m >= 1 for m in self.ch_mult), "ch_mult", f"entries must be >= 1, got {self.ch_mult}")
        for name in ("in_channels", "resolution", "ch", "num_res_blocks", "z_channels", "embed_dim", "n_embed"):
            value = getattr(self, name)
            require(value >= 1, name, f"must be >= 1, got {value}")
        require(all(r >= 1 for r in self.attn_resolutions), "attn_resolutions",
                f"entries must be >= 1, got {self.attn_resolutions}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")
        f = self.downsample_factor
        require(self.resolution % f == 0, "resolution",
                f"{self.resolution} is not divisible by the downsampling factor {f}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def at_resolution(self, size: int) -> "AutoencoderConfig":
        """The same network described at another image size (it is convolutional: the weights do not change).
        ``attn_resolutions`` are feature-map sizes, so they scale with the image to keep attention where it was."""
        if size == self.resolution:
            return self
        f = self.downsample_factor
        require(size % f == 0, "data.image_size", f"{size} is not divisible by the first stage's factor {f}")
        scaled = tuple(r * size / self.resolution for r in self.attn_resolutions)
        require(all(r == int(r) for r in scaled), "data.image_size",
                f"{size}: the first stage's attention sizes {self.attn_resolutions} at {self.resolution} px do not "
                f"scale to whole sizes")
        return replace(self, resolution=size, attn_resolutions=tuple(int(r) for r in scaled))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latents the diffusion model sees, for a ``resolution``-sized input."""
        side = self.resolution // self.downsample_factor
        return (self.embed_dim, side, side)


@dataclass
class AutoencoderLossConfig:
    """Weights of the reconstruction / regulariser / perceptual / adversarial terms."""

    rec_loss: Literal["l1", "l2"] = "l1"
    perceptual_weight: float = 0.0
    lpips_path: str | None = None  # VGG16 + LPIPS linear-head weights, see ldmkit.autoencoder.lpips
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    disc_weight: float = 0.5
    disc_start: int = 50001
    disc_factor: float = 1.0
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    disc_num_layers: int = 3
    disc_ndf: int = 64

    def __post_init__(self) -> None:
        require(self.rec_loss in ("l1", "l2"), "rec_loss", f"expected 'l1' or 'l2', got {self.rec_loss!r}")
        require(self.disc_loss in ("hinge", "vanilla"), "disc_loss",
                f"expected 'hinge' or 'vanilla', got {self.disc_loss!r}")
        for name in ("perceptual_weight", "kl_weight", "codebook_weight", "disc_weight", "disc_start", "disc_factor"):
            value = getattr(self, name)
            require(value >= 0, name, f"must be >= 0, got {value}")
        require(self.disc_num_layers >= 1, "disc_num_layers", f"must be >= 1, got {self.disc_num_layers}")
        require(self.disc_ndf >= 1, "disc_ndf", f"must be >= 1, got {self.disc_ndf}")
