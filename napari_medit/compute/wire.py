"""What travels between a front end and the place that computes: the request, the failure as text,
the result cut to the voxels that changed. Nothing here needs torch to unpickle."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..catalogue import ComputeOptions
from ..io import MedicalImage
from ..results import EditCancelled, EditError, EditResult


class ComputeError(RuntimeError):
    """Where the edit should run cannot run it (unreachable, mismatched, no worker left); says what to do."""


@dataclass
class EditRequest:
    """One edit as it travels to where it runs.

    ``previews``: render the current estimate every ``PREVIEW_EVERY`` steps (a VAE decode on latent
    models), for a consumer that shows it; ``preview_slices``: only these slices along the edit's
    axis (the ones on screen; None: every slice in work). Without previews, a step is a few numbers.
    """

    method: str
    image: MedicalImage
    model: str  # a name, folder or hub id, as the computing machine resolves it
    options: dict[str, Any] = field(default_factory=dict)  # edit()'s masks, method parameters and run options
    compute: ComputeOptions = field(default_factory=ComputeOptions)
    previews: bool = False
    preview_slices: list[int] | None = None


@dataclass(frozen=True)
class ModelFacts:
    """What a client sizes things by, for a model loaded where edits run (no weights travel)."""

    name: str
    resolution: int  # the model's grid, in image pixels (MedEdit's dilation scales with it)


@dataclass
class Failure:
    """An edit that failed where it ran, as plain text: its exception's type may need torch to unpickle."""

    cancelled: bool
    invalid: bool  # the request or the model is wrong: the message names the fix
    message: str
    details: str

    def exception(self) -> Exception:
        if self.cancelled:
            return EditCancelled(self.message)
        if self.invalid:
            return EditError(self.message)
        return ComputeError(f"the edit failed on the worker: {self.message}\n{self.details}")


@dataclass
class Box:
    """An EditResult whose full-size arrays are cut to the box of voxels that changed: outside it the
    result is the source, and the difference and maps are zero, exactly (``assemble`` composites so)."""

    result: EditResult
    box: tuple[slice, ...]
    masks: dict[str, tuple[np.ndarray, tuple[int, ...]]]  # the masks as used, one bit per voxel

    @classmethod
    def pack(cls, result: EditResult, source: np.ndarray) -> Box:
        versions = result.progression or [result.image]
        samples = result.samples or []
        zeros = [] if result.variability is None else [result.variability]
        changed = np.zeros(source.shape, bool)
        for version in (*versions, *samples):
            changed |= ~_same(version.array, source)
        for values in (result.difference, *result.maps.values(), *zeros):
            changed |= values != 0
        found = np.nonzero(changed)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) if i.size else slice(0, 0) for i in found)
        cut = [replace(version, array=version.array[box]) for version in versions]
        trimmed = replace(
            result,
            image=cut[-1],
            difference=result.difference[box],
            progression=cut if result.progression else None,
            maps={k: v[box] for k, v in result.maps.items()},
            masks={},
            samples=[replace(sample, array=sample.array[box]) for sample in samples] or None,
            variability=None if result.variability is None else result.variability[box],
        )
        masks = {k: (np.packbits(np.asarray(m, bool)), m.shape) for k, m in result.masks.items()}
        return cls(trimmed, box, masks)

    def unpack(self, source: MedicalImage) -> EditResult:
        def filled(part: np.ndarray, background: np.ndarray) -> np.ndarray:
            whole = background.astype(part.dtype, copy=True)
            whole[self.box] = part
            return whole

        result, zeros = self.result, np.zeros(source.array.shape, np.float32)
        versions = [
            replace(v, array=filled(v.array, source.array)) for v in (result.progression or [result.image])
        ]
        masks = {
            k: np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
            for k, (bits, shape) in self.masks.items()
        }
        samples = [replace(v, array=filled(v.array, source.array)) for v in result.samples or []]
        return replace(
            result,
            image=versions[-1],
            difference=filled(result.difference, zeros),
            progression=versions if result.progression else None,
            maps={k: filled(v, zeros) for k, v in result.maps.items()},
            masks=masks,
            samples=[versions[-1], *samples[1:]] if samples else None,
            variability=None if result.variability is None else filled(result.variability, zeros),
        )


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
