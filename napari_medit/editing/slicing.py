"""From a 2D image or a volume to batches on the model's grid, and back.

- Slices along one axis are independent 2D edits; only the chosen ones are touched.
- Intensities and geometry are the model's preprocessing (``napari_medit.preprocessing``:
  ``IntensityWindow`` and ``Grid``); results come back to the source's dtype here. The
  caller composites at native resolution, so what must not change (and what a crop cut
  away) stays bit-identical.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def slices_to_edit(
    num_slices: int, region: np.ndarray | None, slice_range: tuple[int, int] | None
) -> list[int]:
    """The slices (along axis 0 of ``region``) to edit: a given [start, stop) range, or those the region
    touches."""
    if slice_range is not None:
        start, stop = slice_range
        if not 0 <= start < stop <= num_slices:
            raise ValueError(f"slice range {start}:{stop} is outside the {num_slices} slices along this axis")
        return list(range(start, stop))
    if region is None:
        return list(range(num_slices))
    return [int(i) for i in np.flatnonzero(region.reshape(num_slices, -1).any(axis=1))]


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the source's dtype: integers rounded and clipped to their range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return values > 0.5
    return values.astype(dtype)


def to_latent_grid(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A mask on the image grid averaged onto a latent grid ``factor`` times coarser."""
    return mask if factor == 1 else F.avg_pool2d(mask, factor)


def binarised(mask: torch.Tensor) -> torch.Tensor:
    """A cell is in the mask when at least half of it is: the (mask > 0) mask resized to the
    model's grid and thresholded at 0.5, as diffusers' DiffEdit ``preprocess_mask`` (which
    RadEdit's pipeline uses) binarises the masks it is given."""
    return (mask >= 0.5).to(mask.dtype)
