"""Model backends: where Denoisers come from (a model folder today; presets and the hub later)."""

from .folder import CONFIG_NAME, ModelLoadError, load_model, save_model
from .registry import describe, describe_presets, model_folders, resolve

__all__ = ["CONFIG_NAME", "ModelLoadError", "describe", "describe_presets", "load_model", "model_folders", "resolve", "save_model"]
