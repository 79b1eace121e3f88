"""Model backends: where Denoisers come from (model folders, presets, Stable Diffusion-style
folders, the hub).

Naming and describing models needs no torch (``registry``); loading them does, so
``load_model`` and ``save_model`` are imported on first use.
"""

from ..results import ModelLoadError
from .presets import describe_presets
from .registry import CONFIG_NAME, describe, model_folders, resolve

__all__ = [
    "CONFIG_NAME",
    "ModelLoadError",
    "describe",
    "describe_presets",
    "load_model",
    "model_folders",
    "resolve",
    "save_model",
]


def __getattr__(name: str):
    if name in ("load_model", "save_model"):
        from . import folder

        return getattr(folder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
