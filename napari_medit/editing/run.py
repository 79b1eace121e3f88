"""``edit()``: one request, from a source image and masks to a counterfactual with provenance."""

from __future__ import annotations

import dataclasses
import functools
import platform
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..io import MedicalImage
from ..io.image import PLANES, apply_orientation, plane_transforms
from ..masks import mask_problem, outside_brain_problem
from ..metrics import edit_metrics, jsonable
from .control import NoiseSource, Progress, StepInfo
from .denoiser import Denoiser
from .mededit import native_inpainting_mask
from .methods import METHODS, Method
from .slicing import Grid, IntensityWindow, slices_to_edit, to_dtype, to_latent_grid

MASK_NAMES = ("edit_mask", "keep_mask", "pathology_mask", "brain_mask", "roi_mask")
DEFAULT_CPU_BATCH = 4  # batching helps little on 2 CPU cores and costs memory (see benchmarks/)


class EditError(ValueError):
    """A request that cannot run: the message names the problem and the fix."""


@dataclass
class EditProgress:
    """A denoising step done; the slices in work, as they lie in the source array (for any ``axis``)."""

    step: int
    total: int
    slices: list[int]  # indices along ``axis`` of the slices being edited right now, in preview() order
    axis: int  # the source array's axis they are slices of
    render: Callable[[], np.ndarray] = field(repr=False)

    def preview(self) -> np.ndarray:
        """The current estimate of those slices in source units, (n, *the other two axes in array order)."""
        return self.render()


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
    metrics: dict = field(default_factory=dict)  # napari_medit.metrics.edit_metrics; JSON form in provenance


def edit(
    method: str,
    image: MedicalImage | np.ndarray,
    *,
    model: Denoiser,
    seed: int = 0,
    axis: int | str = 0,
    slices: tuple[int, int] | None = None,
    batch_size: int | None = None,
    shared_noise: bool = False,
    callback: Callable[[EditProgress], None] | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> EditResult:
    """Run ``method`` on ``image`` (2D, or slice-wise along ``axis`` for 3D) with ``model``.

    ``axis`` is an array axis (0, 1, 2: slices as they lie in the array) or an anatomical
    plane ('axial', 'coronal', 'sagittal'): the volume's affine then decides which array axis
    that is, and slices reach the model in the orientation it was trained on (exact flips and
    transposes; the result comes back in the image's own voxel order).

    Masks are passed by name (``edit_mask``, ``keep_mask``, ``pathology_mask``,
    ``brain_mask``, ``roi_mask``) as arrays or MedicalImages on the image's grid;
    every other option is a parameter of the method (see ``METHODS[method].params``).
    Raises ``EditError`` for bad requests and ``EditCancelled`` when ``cancel`` is set.
    """
    spec = _method(method)
    source = image if isinstance(image, MedicalImage) else MedicalImage(np.asarray(image), np.eye(4))
    masks = {name: _mask(name, options.pop(name), source) for name in MASK_NAMES if options.get(name) is not None}
    for name in MASK_NAMES:
        options.pop(name, None)
    if not spec.needs_text and options.get("prompt"):
        raise EditError(f"{spec.name} takes no prompt: it does not edit by text")
    params = _params(spec, options)
    _check_request(spec, source, masks, model)

    volume = source.array
    planar = volume.ndim == 2
    back = None
    if not planar and isinstance(axis, str):
        if axis not in PLANES:
            raise EditError(f"axis must be 0, 1, 2 or one of {', '.join(PLANES)}; got {axis!r}")
        there, back = plane_transforms(source.affine, PLANES[axis])
        volume = apply_orientation(volume, there)
        masks = {k: apply_orientation(m, there) for k, m in masks.items()}
    plane = axis if isinstance(axis, str) else None
    axis = 0 if planar or plane else axis
    if not -3 <= axis < 3:
        raise EditError(f"axis must be 0, 1 or 2 for a volume, got {axis}")
    axis %= 3
    in_source_order = functools.partial(_in_source_order, axis=axis, back=back, count=volume.shape[axis])
    stack = volume[None] if planar else np.moveaxis(volume, axis, 0)
    stacked_masks = {k: (m[None] if planar else np.moveaxis(m, axis, 0)) for k, m in masks.items()}
    if spec.name == "mededit":
        stacked_masks["inpaint_mask"] = _mededit_inpaint(stacked_masks, params, model, stack.shape[1:])
    region = stacked_masks.get(spec.slice_region) if spec.slice_region else None
    chosen = slices_to_edit(stack.shape[0], region, slices)
    if not chosen:
        raise EditError(f"the {spec.slice_region} touches no slice along axis {axis}: nothing to edit")

    try:
        window = IntensityWindow.of(volume)
    except ValueError as exc:
        raise EditError(str(exc)) from None
    grid = Grid(stack.shape[1], stack.shape[2], model.resolution)
    batch = batch_size or _default_batch(model, len(chosen))
    chunks = [chosen[i : i + batch] for i in range(0, len(chosen), batch)]
    progress = Progress(cancel=cancel, chunks=len(chunks))
    editable = spec.editable(stacked_masks)
    seeds = [_slice_seed(seed, 0 if shared_noise else i) for i in range(stack.shape[0])]

    outputs: list[np.ndarray] | None = None
    started = time.perf_counter()
    evaluations_before = model.evaluations
    pending = list(chunks)
    while pending:
        chunk = pending.pop(0)
        done_before = progress.done
        try:
            native = _edit_chunk(spec, model, params, stack, stacked_masks, chunk, seeds, window, grid,
                                 in_source_order, progress, callback)
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            # Retry this batch as two smaller ones; each slice keeps its own noise, so nothing changes.
            half = len(chunk) // 2
            warnings.warn(f"out of GPU memory with {len(chunk)} slices per batch; retrying with {half}",
                          stacklevel=2)
            torch.cuda.empty_cache()
            pending[:0] = [chunk[:half], chunk[half:]]
            progress.chunks += 1
            progress.done = done_before
            continue
        if outputs is None:
            outputs = [stack.astype(np.float64) for _ in native]
        for out, values in zip(outputs, native):
            out[chunk] = values
        progress.next_chunk()
    seconds = time.perf_counter() - started

    stacked_results = [_composite(stack, out, editable, chosen, source.array.dtype) for out in outputs]
    # Measured in the slicing orientation (slices along axis 0), where "edited slices" are defined.
    metrics = edit_metrics(stack, stacked_results[-1], region=spec.region(stacked_masks),
                           keep_mask=stacked_masks.get("keep_mask"), slice_axis=0,
                           slices=None if planar else chosen)
    results = [r[0] if planar else np.moveaxis(r, 0, axis) for r in stacked_results]
    used_masks = {k: (m[0] if planar else np.moveaxis(m, 0, axis)) for k, m in stacked_masks.items()}
    if back is not None:  # from the plane's orientation back to the image's voxel order
        results = [apply_orientation(r, back) for r in results]
        used_masks = {k: apply_orientation(m, back) for k, m in used_masks.items()}
    provenance = {
        "method": spec.name,
        "reference": spec.reference,
        "parameters": dataclasses.asdict(params),
        "model": {"name": model.name, "weights_sha256": model.weights_hash, "resolution": model.resolution,
                  "latent": model.latent},
        "seed": seed,
        "shared_noise": shared_noise,
        "axis": plane or axis,
        "slices": chosen,
        "masks": sorted(masks),
        "intensity_window": [window.low, window.high],
        "source": source.metadata.get("path"),
        "napari_medit": __version__,
        "torch": torch.__version__,
        "device": str(model.device),
        "platform": platform.platform(),
        "model_evaluations": model.evaluations - evaluations_before,
        "seconds": round(seconds, 3),
        "metrics": jsonable(metrics),
    }
    images = [source.with_array(r, edit=provenance) for r in results]
    return EditResult(
        image=images[-1],
        difference=(results[-1].astype(np.float32) - source.array.astype(np.float32)),
        edited_slices=chosen,
        axis=plane or axis,
        provenance=provenance,
        progression=images if len(images) > 1 else None,
        masks=used_masks,
        metrics=metrics,
    )


# ---------------------------------------------------------------- request checks


def _method(name: str) -> Method:
    if name not in METHODS:
        raise EditError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def _params(spec: Method, options: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(spec.params)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise EditError(f"{spec.name} has no parameter {unknown[0]!r}; its parameters: {', '.join(sorted(known))}")
    params = spec.params(**{k: v for k, v in options.items() if v is not None})
    try:
        params.validate()
    except ValueError as exc:
        raise EditError(f"{spec.name}: {exc}") from None
    return params


def _mask(name: str, value, source: MedicalImage) -> np.ndarray:
    if isinstance(value, MedicalImage):
        if value.array.shape != source.array.shape:
            raise EditError(f"{name} has shape {value.array.shape} but the image has {source.array.shape}")
        if not np.allclose(value.affine, source.affine, atol=1e-3):
            raise EditError(f"{name} is not on the image's grid (different affine): resample it to the image first")
        value = value.array
    mask = np.asarray(value)
    problem = mask_problem(name, mask, source.array.shape)
    if problem:
        raise EditError(problem)
    return mask > 0


def _check_request(spec: Method, source: MedicalImage, masks: dict, model: Denoiser) -> None:
    array = source.array
    if array.ndim not in (2, 3):
        raise EditError(
            f"napari-medit edits 2D images and 3D volumes; this image has shape {array.shape}: "
            "pick one volume (time point or channel) first"
        )
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise EditError(f"the image has {bad} NaN/Inf voxels: replace them (e.g. with 0) before editing")
    if array.dtype.kind not in "biuf":
        raise EditError(f"cannot edit an image of dtype {array.dtype}")
    missing = [m for m in spec.required_masks if m not in masks]
    if missing:
        raise EditError(f"{spec.name} needs a {' and a '.join(missing)}")
    unused = sorted(set(masks) - set(spec.required_masks) - set(spec.optional_masks))
    if unused:
        raise EditError(f"{spec.name} does not use a {unused[0]}; it takes: "
                        f"{', '.join(spec.required_masks + spec.optional_masks) or 'no masks'}")
    if spec.needs_text and not model.text_conditioned:
        raise EditError(f"{spec.name} edits with a text prompt, but model '{model.name}' has no text conditioning; "
                        "use mededit, repaint or sdedit with it, or pick a text-conditioned model")
    needed = [c for c in model.condition_names if c not in masks]
    if needed:
        raise EditError(f"model '{model.name}' is conditioned on {', '.join(model.condition_names)}: "
                        f"give {' and '.join(needed)}")
    if spec.name == "mededit":
        if set(model.condition_names) != {"pathology_mask", "brain_mask"}:
            raise EditError(f"mededit needs a model conditioned on a pathology mask and a brain mask; "
                            f"model '{model.name}' takes {list(model.condition_names) or 'no masks'}")
        if not (masks["pathology_mask"] & masks["brain_mask"]).any():
            raise EditError(outside_brain_problem(masks["pathology_mask"], masks["brain_mask"]))


def _mededit_inpaint(stacked_masks: dict, params, model: Denoiser, shape: tuple[int, int]) -> np.ndarray:
    return native_inpainting_mask(stacked_masks["pathology_mask"], stacked_masks["brain_mask"], params,
                                  model.resolution)


# ---------------------------------------------------------------- model space


def _edit_chunk(spec, model, params, stack, stacked_masks, chunk, seeds, window, grid, in_source_order, progress,
                callback):
    """One batch of slices through the method; returns the native-resolution versions."""
    x0 = _to_model(model, stack[chunk], window, grid)
    masks_model = {
        k: to_latent_grid(grid.to_model(m[chunk], soft=True), model.latent_factor).to(model.device)
        for k, m in stacked_masks.items()
    }
    conditions = _conditions(model, masks_model)
    if callback is not None:
        progress.callback = _reporter(callback, model, chunk, in_source_order, window, grid)
    noise = NoiseSource([seeds[i] for i in chunk], model.device)
    with torch.no_grad():
        edited = spec.run(model, x0, masks_model, params, noise, progress, conditions)
        versions = edited if isinstance(edited, list) else [edited]
        return [_from_model(model, v, window, grid) for v in versions]


def _to_model(model: Denoiser, slices: np.ndarray, window: IntensityWindow, grid: Grid) -> torch.Tensor:
    low, high = model.value_range
    unit = grid.to_model(window.to_unit(slices))
    x = model.encode((unit * (high - low) + low).to(model.device))
    # The sampler's own arithmetic runs in float64 (the networks in their own precision): an
    # inversion's residuals then cancel to ~1e-12 instead of float32's ~1e-4 after 1/sqrt(alpha_bar).
    return x.to(torch.float32 if model.device.type == "mps" else torch.float64)


def _from_model(model: Denoiser, x: torch.Tensor, window: IntensityWindow, grid: Grid) -> np.ndarray:
    low, high = model.value_range
    unit = (model.decode(x) - low) / (high - low)
    return window.from_unit(grid.from_model(unit.cpu()))


def _conditions(model: Denoiser, masks_model: dict[str, torch.Tensor]) -> torch.Tensor | None:
    if not model.condition_names:
        return None
    return torch.cat([masks_model[name] for name in model.condition_names], dim=1)


def _composite(stack, edited, editable, chosen, dtype) -> np.ndarray:
    """Edited values where the method may change the image, the source's own values elsewhere."""
    out = stack.copy()
    values = to_dtype(edited[chosen], dtype)
    if editable is not None:
        values = np.where(editable[chosen], values, stack[chosen])
    out[chosen] = values
    return out


def _reporter(callback, model, chunk, in_source_order, window, grid):
    axis, slices, _ = in_source_order(chunk)

    def report(info: StepInfo) -> None:
        def render() -> np.ndarray:
            with torch.no_grad():
                return in_source_order(chunk, _from_model(model, info.x0_estimate, window, grid))[2]

        callback(EditProgress(info.step, info.total, slices, axis, render))

    return report


def _in_source_order(chunk: list[int], planes: np.ndarray | None = None, *, axis: int, back, count: int):
    """Slices ``chunk`` of the slicing orientation as the source array holds them: (its axis, their
    indices along it, ``planes`` (n, H, W) reoriented to match); exact flips and transposes only."""
    if back is None:
        return axis, list(chunk), planes
    source_axis, flipped = int(back[0, 0]), back[0, 1] < 0  # where the plane's slice axis lies
    indices = [count - 1 - i for i in reversed(chunk)] if flipped else list(chunk)
    if planes is not None:  # apply_orientation flips the sub-stack too, so its order matches ``indices``
        planes = np.moveaxis(apply_orientation(planes, back), source_axis, 0)
    return source_axis, indices, planes


def _default_batch(model: Denoiser, count: int) -> int:
    if model.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(model.device)
        # ~ 60 MB per 64x64 item for a small UNet with CFG; scaled by area.
        per_item = 60e6 * (model.resolution / 64) ** 2 / model.latent_factor**2
        return max(1, min(count, int(0.5 * free / per_item)))
    return min(count, DEFAULT_CPU_BATCH)


def _slice_seed(seed: int, index: int) -> int:
    """Independent, reproducible seeds per slice (so batching never changes a slice's noise)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
