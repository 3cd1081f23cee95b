"""ldmkit: Latent Diffusion Models from scratch."""
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import ldmkit` stays cheap and the CLI starts fast.
    if name in ("Pipeline", "PipelineConfig"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'ldmkit' has no attribute {name!r}")


__all__ = ["Pipeline", "PipelineConfig", "__version__"]
