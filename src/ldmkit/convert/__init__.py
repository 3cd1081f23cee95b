"""Converters between ldmkit releases and foreign checkpoint formats (never unpickling code)."""
from .original import (
    export_original,
    load_original,
    original_config_to_pipeline_config,
    original_state_dict_to_pipeline,
    pipeline_config_to_original_config,
    pipeline_to_original_state_dict,
)
from .safe_load import load_state_dict_file

__all__ = [
    "export_original",
    "load_original",
    "load_state_dict_file",
    "original_config_to_pipeline_config",
    "original_state_dict_to_pipeline",
    "pipeline_config_to_original_config",
    "pipeline_to_original_state_dict",
]
