"""Converters between ldmkit releases and foreign checkpoint formats (never unpickling code)."""
from .diffusers import export_diffusers, load_diffusers, load_diffusers_autoencoder, load_diffusers_unet
from .loader import convert_any, load_autoencoder_any, load_pipeline_any
from .original import export_original, load_original, original_state_dict_to_pipeline, pipeline_to_original_state_dict
from .original_config import original_config_to_pipeline_config, pipeline_config_to_original_config
from .safe_load import load_state_dict_file

__all__ = [
    "convert_any",
    "export_diffusers",
    "export_original",
    "load_autoencoder_any",
    "load_diffusers",
    "load_diffusers_autoencoder",
    "load_diffusers_unet",
    "load_original",
    "load_pipeline_any",
    "load_state_dict_file",
    "original_config_to_pipeline_config",
    "original_state_dict_to_pipeline",
    "pipeline_config_to_original_config",
    "pipeline_to_original_state_dict",
]
