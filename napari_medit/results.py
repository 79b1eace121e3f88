"""What an edit gives back, how it reports progress and how it fails.

Torch-free on purpose: an edit computed on a dask worker comes back to a client (napari's
process, the CLI) that never imports torch, and everything it unpickles is defined here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .io import MedicalImage


class EditError(ValueError):
    """A request that cannot run: the message names the problem and the fix."""


class ModelLoadError(Exception):
    """A model that cannot be loaded; the message names what is missing and how to get it."""


class EditCancelled(Exception):
    """Raised within one denoising step of a cancel request; nothing partial is returned."""


@dataclass
class EditProgress:
    """A denoising step done, wherever it ran; the slices in work, as they lie in the source array (for
    any ``axis``). The one progress type every callback gets: from the engine, ``napari_medit.edit``, a
    worker process or a cluster."""

    step: int
    total: int
    slices: list[int]  # indices along ``axis`` of the slices being edited right now, in preview() order
    axis: int  # the source array's axis they are slices of
    render: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    estimate: np.ndarray | None = field(default=None, repr=False, compare=False)

    def preview(self) -> np.ndarray | None:
        """The current estimate of those slices in source units, (n, *the other two axes in array
        order), rendered on first ask; None on a step that carries none (between the previews a
        worker sends, or from one that was asked for none)."""
        if self.estimate is None and self.render is not None:
            self.estimate = np.asarray(self.render(), np.float32)
        return self.estimate


@dataclass
class EditResult:
    image: MedicalImage  # the counterfactual, on the source's grid and affine
    difference: np.ndarray  # float32, result - source
    edited_slices: list[int]  # indices along the slice axis (of the plane's orientation for a named plane,
    #                           see plane_axis())
    axis: int | str
    provenance: dict[str, Any]
    progression: list[MedicalImage] | None = None  # PIE: every step, the last one is ``image``
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # masks as used (MedEdit: inpaint_mask)
    # maps the method computed (catalogue.MAP_ROLES)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # napari_medit.metrics.edit_metrics; JSON form in provenance
    # Several samples of the edit (run option ``samples``): each one's result on the source's grid, sample 1
    # being ``image``, and the per-voxel standard deviation over them (float32; 0 where nothing may change).
    samples: list[MedicalImage] | None = None
    variability: np.ndarray | None = None
