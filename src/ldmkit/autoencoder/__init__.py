"""First-stage autoencoders (KL and VQ) of latent diffusion, with their GAN + LPIPS training loss."""
from .config import AutoencoderConfig, AutoencoderLossConfig
from .discriminator import NLayerDiscriminator
from .losses import AutoencoderLoss, adaptive_weight, disc_factor
from .lpips import LPIPS
from .identity import IdentityFirstStage
from .model import Autoencoder, Decoder, Encoder, build_autoencoder, load_autoencoder
from .regularizers import DiagonalGaussian, KLRegularizer, VQRegularizer

__all__ = [
    "AutoencoderConfig",
    "AutoencoderLossConfig",
    "Autoencoder",
    "IdentityFirstStage",
    "build_autoencoder",
    "load_autoencoder",
    "Encoder",
    "Decoder",
    "DiagonalGaussian",
    "KLRegularizer",
    "VQRegularizer",
    "LPIPS",
    "NLayerDiscriminator",
    "AutoencoderLoss",
    "adaptive_weight",
    "disc_factor",
]
