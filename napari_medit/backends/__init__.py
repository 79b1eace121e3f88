"""Model backends: where Denoisers come from (a model folder today; presets and the hub later)."""

from .folder import CONFIG_NAME, ModelLoadError, load_model, save_model

__all__ = ["CONFIG_NAME", "ModelLoadError", "load_model", "save_model"]
