"""napari-medit: diffusion-based editing of medical images in napari.

Importing the package is cheap on purpose (napari scans plugins at start-up):
torch, diffusers and MONAI load only when an edit runs.
"""

from ._version import __version__
from .io import ImageReadError, MedicalImage, read_image, write_image

__all__ = ["ImageReadError", "MedicalImage", "__version__", "edit", "read_image", "write_image"]


def __getattr__(name: str):
    # ``napari_medit.edit`` computes in this process or on a dask worker (``compute``); loaded on first use.
    if name == "edit":
        from .compute import edit

        return edit
    raise AttributeError(f"module 'napari_medit' has no attribute {name!r}")
