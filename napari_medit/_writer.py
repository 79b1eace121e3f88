"""npe2 writer contributions: image and labels layers to NIfTI, FreeSurfer MGZ/MGH or PNG.

A layer read by napari-medit is written back in its file's voxel order with
the file's affine and header; any other layer gets an affine built from its
scale and translate.
"""

from __future__ import annotations

from typing import Any

from .io import write_image
from .io.layers import from_layer


def write_image_layer(path: str, data: Any, meta: dict) -> list[str]:
    image = from_layer(data, meta.get("metadata"), meta.get("scale"), meta.get("translate"))
    return [str(write_image(path, image))]


write_labels_layer = write_image_layer
