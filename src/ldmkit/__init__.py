"""ldmkit: Latent Diffusion Models from scratch."""
__version__ = "0.1.0"
