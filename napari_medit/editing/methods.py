"""What each method needs from a request, and what it may change.

Each entry adapts the generic request (image batch, masks on the model's
grid) to the method's own function, and names the native-resolution region
the method is allowed to change; everything else is copied back bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .diffedit import DiffEditParams, diffedit
from .mededit import MedEditParams, mededit
from .pie import PIEParams, pie
from .radedit import RadEditParams, radedit
from .repaint import RePaintParams, repaint
from .sdedit import SDEditParams, sdedit


@dataclass(frozen=True)
class Method:
    name: str
    params: type
    required_masks: tuple[str, ...]
    optional_masks: tuple[str, ...]
    needs_text: bool
    slice_region: str | None  # the mask whose slices get edited by default (None: every slice)
    run: Callable
    editable: Callable[[dict[str, np.ndarray]], np.ndarray | None]  # native region that may change
    region: Callable[[dict[str, np.ndarray]], np.ndarray | None]  # the region it is asked to edit (metrics)
    reference: str


def _radedit(denoiser, x0, masks, params, noise, progress, conditions):
    everywhere = torch.ones_like(x0[:, :1])
    return radedit(
        denoiser, x0,
        edit_mask=masks.get("edit_mask", everywhere),  # no edit mask: the whole image (paper, Sec. 4.2)
        keep_mask=masks.get("keep_mask", 0 * everywhere),
        params=params, noise=noise, progress=progress, conditions=conditions,
    )


def _mededit(denoiser, x0, masks, params, noise, progress, conditions):
    return mededit(
        denoiser, x0, inpaint_mask=masks["inpaint_mask"], pathology_mask=masks["pathology_mask"],
        brain_mask=masks["brain_mask"], params=params, noise=noise, progress=progress,
    )


def _pie(denoiser, x0, masks, params, noise, progress, conditions):
    return pie(denoiser, x0, roi_mask=masks["roi_mask"], params=params, noise=noise, progress=progress,
               conditions=conditions)


def _sdedit(denoiser, x0, masks, params, noise, progress, conditions):
    return sdedit(denoiser, x0, mask=masks.get("edit_mask"), params=params, noise=noise, progress=progress,
                  conditions=conditions)


def _repaint(denoiser, x0, masks, params, noise, progress, conditions):
    return repaint(denoiser, x0, inpaint_mask=masks["pathology_mask"], params=params, noise=noise,
                   progress=progress, conditions=conditions)


def _diffedit(denoiser, x0, masks, params, noise, progress, conditions):
    return diffedit(denoiser, x0, edit_mask=masks["edit_mask"], params=params, noise=noise, progress=progress,
                    conditions=conditions)


def _outside_keep(masks):
    keep = masks.get("keep_mask")
    return None if keep is None else ~keep


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("radedit", RadEditParams, (), ("edit_mask", "keep_mask"), True, "edit_mask", _radedit,
               _outside_keep, lambda m: m.get("edit_mask"), "Bond-Taylor et al., RadEdit, ECCV 2024, Algorithm 3"),
        Method("mededit", MedEditParams, ("pathology_mask", "brain_mask"), (), False, "pathology_mask", _mededit,
               lambda m: m["inpaint_mask"], lambda m: m["inpaint_mask"], "Ben Alaya et al., MedEdit, 2024"),
        Method("pie", PIEParams, ("roi_mask",), (), True, "roi_mask", _pie,
               lambda m: m["roi_mask"], lambda m: m["roi_mask"], "Liang et al., PIE, 2023"),
        Method("sdedit", SDEditParams, (), ("edit_mask", "pathology_mask", "brain_mask"), False, "edit_mask",
               _sdedit, lambda m: m.get("edit_mask"), lambda m: m.get("edit_mask"), "Meng et al., SDEdit, ICLR 2022"),
        Method("repaint", RePaintParams, ("pathology_mask",), ("brain_mask",), False, "pathology_mask", _repaint,
               lambda m: m["pathology_mask"], lambda m: m["pathology_mask"], "Lugmayr et al., RePaint, CVPR 2022"),
        Method("diffedit", DiffEditParams, ("edit_mask",), (), True, "edit_mask", _diffedit,
               lambda m: m["edit_mask"], lambda m: m["edit_mask"], "Couairon et al., DiffEdit, ICLR 2023 (given mask)"),
    )
}
