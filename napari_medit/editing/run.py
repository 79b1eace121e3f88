"""``edit()``: one request, from a source image and masks to a counterfactual with provenance."""

from __future__ import annotations

import dataclasses
import platform
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import catalogue
from .._version import __version__
from ..catalogue import MASK_ROLES, MaskGrid, Method, Precision, RunOptions, SliceNoise, check_slice_options
from ..io import MedicalImage
from ..io.image import PLANES, apply_orientation, plane_transforms
from ..masks import mask_problem
from ..metrics import edit_metrics, jsonable
from ..preprocessing import Grid, IntensityWindow
from ..results import EditError, EditProgress, EditResult
from .control import EditInputs, NoiseSource, Progress, Runner, StepInfo
from .denoiser import Denoiser
from .slice_noise import Mixture, slice_mixtures
from .slicing import binarised, slices_to_edit, to_dtype, to_latent_grid
from .through_plane import ThroughPlaneSmoothing

DEFAULT_CPU_BATCH = 4  # batching helps little on 2 CPU cores and costs memory (see benchmarks/)
RUN = RunOptions()  # the run options' defaults, stated once in the catalogue


def edit(
    method: str,
    image: MedicalImage | np.ndarray,
    *,
    model: Denoiser,
    seed: int = 0,
    axis: int | str = RUN.axis,
    slices: tuple[int, int] | None = None,
    batch_size: int | None = None,
    slice_noise: SliceNoise | str = RUN.slice_noise,
    noise_correlation_mm: float = RUN.noise_correlation_mm,
    through_plane_smoothing: float = RUN.through_plane_smoothing,
    precision: Precision | str = RUN.precision,
    samples: int = RUN.samples,
    cache_interval: int = RUN.cache_interval,
    compile_network: bool = RUN.compile_network,
    callback: Callable[[EditProgress], None] | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> EditResult:
    """Run ``method`` on ``image`` (2D, or slice-wise along ``axis`` for 3D) with ``model``.

    Args:
        method: a name from ``napari_medit.catalogue.METHODS`` (radedit, mededit, pie, ...).
        image: the source, a MedicalImage (affine kept) or a plain array.
        model: a loaded Denoiser (``napari_medit.backends.load_model``).
        seed: the same seed, model and settings give a bit-identical result.
        axis: an array axis (0, 1, 2: slices as they lie in the array) or an anatomical plane
            ('axial', 'coronal', 'sagittal'): the volume's affine then decides which array axis
            that is, and slices reach the model in the orientation it was trained on (exact
            flips and transposes; the result comes back in the image's own voxel order).
        slices: [start, stop) along that axis; None: the slices the method's mask touches.
        batch_size: slices per model call; None: 4 on CPU, by free memory on GPU.
        slice_noise: 'independent' (a seed per slice), 'shared' (one noise for all slices) or
            'correlated' (neighbouring slices' noise correlated over ``noise_correlation_mm``; ISCS).
        noise_correlation_mm: the correlation length of correlated slice noise, in mm along the
            slice axis (the affine's spacing), so it means the same at 1 mm and 5 mm slices.
        through_plane_smoothing: 0 (off) to 1: at every step, smooth the predicted clean image
            across neighbouring edited slices inside the edited region (all slices then run as
            one batch through the sampler; the network still sees ``batch_size`` at a time).
        precision: the denoising network's arithmetic: 'auto' (float16 on CUDA, bfloat16 on a CPU
            with native bfloat16, else float32), 'float32', 'bfloat16' or 'float16'. VAEs and
            text encoders compute in float32; compositing is exact in any precision.
        samples: N samples of the edit, each with its own seed (``catalogue.sample_seeds``: the first is
            ``seed``, so sample 1 is the edit without samples), bit for bit what a single edit with
            that seed gives; ``result.samples`` holds them, ``result.variability`` their per-voxel
            standard deviation. They run one after another on a CPU (a network's arithmetic depends
            on its batch), batched together on a GPU when ``batch_size`` is automatic (equal to
            single edits there up to float rounding).
        cache_interval: N > 1 reuses the network's deep features for N-1 of every N calls of a run
            (DeepCache, ``editing.feature_cache``): faster, not exact inside the editable region
            (benchmarks/speed.py gives speed and PSNR); compositing, hence every voxel outside it,
            is untouched. 1 (default): off, the exact network.
        compile_network: run the denoising network through ``torch.compile`` (compiled on the
            first pass and kept with the loaded model): faster per pass, after a compile that
            pays only on long runs (benchmarks/compile.py gives the break-even).
        callback: called after every denoising step with an ``EditProgress``.
        cancel: set it to stop the run within one step (``EditCancelled`` is raised).
        **options: the masks by role (``edit_mask``, ``keep_mask``, ``pathology_mask``,
            ``brain_mask``, ``roi_mask``; arrays or MedicalImages on the image's grid), the
            method's parameters (``METHODS[method].params``; None or absent: the default) and
            ``preset``, a name from ``METHODS[method].presets`` whose values replace the defaults
            (e.g. 'mededit-paper': a baseline as MedEdit's paper ran it).

    Raises ``EditError`` for bad requests and ``EditCancelled`` when ``cancel`` is set.
    """
    plan = plan_edit(
        method,
        image,
        model=model,
        seed=seed,
        axis=axis,
        slices=slices,
        batch_size=batch_size,
        slice_noise=slice_noise,
        noise_correlation_mm=noise_correlation_mm,
        through_plane_smoothing=through_plane_smoothing,
        precision=precision,
        samples=samples,
        cache_interval=cache_interval,
        compile_network=compile_network,
        **options,
    )
    started = time.perf_counter()
    try:  # shares only the weights
        own = model.for_edit(
            plan.precision, compiled=plan.compile_network, cache_interval=plan.cache_interval
        )
    except ValueError as exc:
        raise EditError(str(exc)) from None
    sampled = plan.sampled(
        samples_share_batches(own, batch_size), _default_batch(own, len(plan.chosen) * len(plan.seeds))
    )
    outputs, maps, scheduler = run_plan(sampled, own, callback=callback, cancel=cancel)
    per_sample = sampled.split(outputs, maps, plan)
    results = [
        assemble(
            plan.for_seed(seed),
            own,
            sample_outputs,
            sample_maps,
            seconds=time.perf_counter() - started,
            evaluations=own.evaluations // len(plan.seeds),  # every sample does the same work
            scheduler=scheduler,
        )
        for seed, (sample_outputs, sample_maps) in zip(plan.seeds, per_sample, strict=True)
    ]
    return results[0] if len(results) == 1 else with_samples(results, plan, per_sample[0][1])


@dataclass
class EditPlan:
    """A checked request, laid out as slices along axis 0 of ``stack`` (the slicing orientation)."""

    spec: Method
    params: Any  # the method's parameters dataclass, every default resolved
    preset: str | None  # the named preset its values came from (None: the method's own paper defaults)
    source: MedicalImage
    given_masks: list[str]
    stack: np.ndarray  # (slices, H, W): a 2D image is one slice
    masks: dict[str, np.ndarray]  # stacked like ``stack``, with the method's derived masks
    chosen: list[int]  # the slices to edit
    window: IntensityWindow
    grid: Grid
    noise: list[Mixture]  # one per slice of ``stack``: the seeded fields its noise is made of
    batch_size: int
    axis: int  # the array axis sliced (0 for 2D and for named planes, which are reoriented first)
    plane: str | None  # the anatomical plane asked for, if any
    back: np.ndarray | None  # the orientation from the plane's slicing back to the source's voxel order
    seed: int
    slice_noise: SliceNoise
    slice_spacing_mm: float  # between neighbouring slices of ``stack``
    noise_correlation_mm: float
    through_plane_smoothing: float
    precision: torch.dtype  # the network's arithmetic, resolved for the model's device
    cache_interval: int  # 1: the exact network; N: deep features reused for N-1 of every N calls
    compile_network: bool
    seeds: list[int]  # one per sample; the first is ``seed``
    # Several samples laid out as one plan (``sampled``): ``stack`` holds a copy per sample, ``copy_stride``
    # slices apart (one spare slice between copies, so no two samples' slices are neighbours), and
    # ``groups`` the slices each sample edits (batches never mix two; None: they may).
    copy_stride: int | None = None
    copy_start: int = 0  # a copy holds the source's slices copy_start .. copy_start + copy_stride - 2
    groups: list[list[int]] | None = None

    @property
    def planar(self) -> bool:
        return self.source.array.ndim == 2

    @property
    def slice_count(self) -> int:
        """The source's slices along the sliced axis (one for a 2D image)."""
        if self.planar:
            return 1
        return self.source.array.shape[self.axis if self.back is None else int(self.back[0, 0])]

    def in_source_order(self, chunk: list[int], planes: np.ndarray | None = None):
        if self.copy_stride is not None:  # a sampled plan's slice -> the source slice it is a copy of
            chunk = [self.copy_start + i % self.copy_stride for i in chunk]
        return _in_source_order(chunk, planes, axis=self.axis, back=self.back, count=self.slice_count)

    def for_seed(self, seed: int) -> EditPlan:
        """This plan as a single edit with ``seed``."""
        noise = slice_mixtures(
            self.slice_noise,
            seed,
            self.stack.shape[0],
            spacing_mm=self.slice_spacing_mm,
            correlation_mm=self.noise_correlation_mm,
        )
        return dataclasses.replace(self, seed=seed, noise=noise, seeds=[seed])

    def sampled(self, share_batches: bool, shared_batch_size: int) -> EditPlan:
        """Every sample as one plan: the stack, masks and noise repeated per seed. Each sample keeps a
        single edit's batches (bit-identical to it) unless ``share_batches`` (then ``shared_batch_size``)."""
        if len(self.seeds) == 1:
            return self
        # A copy holds the span of the chosen slices (their gaps kept: smoothing's neighbours stay the
        # source's), then one spare slice.
        start, stop = min(self.chosen), max(self.chosen) + 1
        stride, copies = stop - start + 1, len(self.seeds)

        def repeated(stack: np.ndarray) -> np.ndarray:
            return np.concatenate([np.concatenate([stack[start:stop], stack[start : start + 1]])] * copies)

        noise = []
        for seed in self.seeds:
            own = self.for_seed(seed).noise[start:stop]
            noise += [*own, own[0]]  # the spare slice is never edited: its noise is never drawn
        groups = [[i - start + k * stride for i in self.chosen] for k in range(copies)]
        return dataclasses.replace(
            self,
            stack=repeated(self.stack),
            masks={name: repeated(mask) for name, mask in self.masks.items()},
            chosen=[i for group in groups for i in group],
            noise=noise,
            copy_stride=stride,
            copy_start=start,
            groups=None if share_batches else groups,
            batch_size=shared_batch_size if share_batches else self.batch_size,
        )

    def split(self, outputs: list[np.ndarray], maps: dict[str, np.ndarray], whole: EditPlan):
        """A sampled plan's outputs and maps, per sample, as the single edit ``whole`` would give them."""
        if self.copy_stride is None:
            return [(outputs, maps)]
        span = slice(self.copy_start, self.copy_start + self.copy_stride - 1)

        def filled(part: np.ndarray, background: np.ndarray) -> np.ndarray:
            out = background.copy()
            out[span] = part
            return out

        source, zeros = whole.stack.astype(np.float64), np.zeros(whole.stack.shape, np.float32)
        per_sample = []
        for k in range(0, self.stack.shape[0], self.copy_stride):
            copy = slice(k, k + self.copy_stride - 1)
            versions = [filled(v[copy], source) for v in outputs]
            per_sample.append((versions, {name: filled(m[copy], zeros) for name, m in maps.items()}))
        return per_sample


def plan_edit(
    method: str,
    image: MedicalImage | np.ndarray,
    *,
    model: Denoiser,
    seed: int = 0,
    axis: int | str = RUN.axis,
    slices: tuple[int, int] | None = None,
    batch_size: int | None = None,
    slice_noise: SliceNoise | str = RUN.slice_noise,
    noise_correlation_mm: float = RUN.noise_correlation_mm,
    through_plane_smoothing: float = RUN.through_plane_smoothing,
    precision: Precision | str = RUN.precision,
    samples: int = RUN.samples,
    cache_interval: int = RUN.cache_interval,
    compile_network: bool = RUN.compile_network,
    **options: Any,
) -> EditPlan:
    """Check a request (same arguments as ``edit``) and lay it out as slices; nothing runs yet."""
    try:
        spec = catalogue.method(method)
        if not isinstance(slice_noise, SliceNoise):
            slice_noise = catalogue.parse_value(RunOptions, "slice_noise", slice_noise)
        if not isinstance(precision, Precision):
            precision = catalogue.parse_value(RunOptions, "precision", precision)
        check_slice_options(noise_correlation_mm, through_plane_smoothing)
        catalogue.check_count("samples", samples)
        catalogue.check_count("cache_interval", cache_interval)
    except ValueError as exc:
        raise EditError(str(exc)) from None
    source = image if isinstance(image, MedicalImage) else MedicalImage(np.asarray(image), np.eye(4))
    masks = {
        name: _mask(name, options.pop(name), source) for name in MASK_ROLES if options.get(name) is not None
    }
    for name in MASK_ROLES:
        options.pop(name, None)
    if not spec.takes_text and options.get("prompt"):
        raise EditError(f"{spec.name} takes no prompt: it does not edit by text")
    preset = options.pop("preset", None) or None
    try:
        params = spec.make_params(options, preset)
    except ValueError as exc:
        raise EditError(f"{spec.name}: {exc}") from None
    _check_request(spec, source, masks, model)

    volume, back, plane = source.array, None, None
    if volume.ndim == 3 and isinstance(axis, str):
        if axis not in PLANES:
            raise EditError(f"axis must be 0, 1, 2 or one of {', '.join(PLANES)}; got {axis!r}")
        there, back = plane_transforms(source.affine, PLANES[axis])
        volume = apply_orientation(volume, there)
        masks = {k: apply_orientation(m, there) for k, m in masks.items()}
        plane, axis = axis, 0
    if volume.ndim == 2:
        axis = 0
    if not -3 <= axis < 3:
        raise EditError(f"axis must be 0, 1 or 2 for a volume, got {axis}")
    axis %= 3
    stack = volume[None] if volume.ndim == 2 else np.moveaxis(volume, axis, 0)
    stacked = {k: (m[None] if volume.ndim == 2 else np.moveaxis(m, axis, 0)) for k, m in masks.items()}
    if spec.prepare_masks is not None:
        stacked.update(spec.prepare_masks(stacked, params, model.resolution, stack.shape))
    region = stacked.get(spec.slice_region) if spec.slice_region else None
    chosen = slices_to_edit(stack.shape[0], region, slices)
    if not chosen:
        raise EditError(f"the {spec.slice_region} touches no slice along axis {axis}: nothing to edit")
    grid = Grid(stack.shape[1], stack.shape[2], model.resolution, model.preprocessing.fit)
    try:  # over what the model sees: a centre crop first, then the window (RadEdit's App. D order)
        window = IntensityWindow.of(stack[(slice(None), *grid.crop)], model.preprocessing.intensity)
    except ValueError as exc:
        raise EditError(str(exc)) from None
    _check_coverage(spec, grid, stacked, chosen)
    # mm between neighbouring slices (a 2D image is one slice: no spacing to speak of)
    spacing = 1.0 if volume.ndim == 2 else source.spacing[axis if back is None else int(back[0, 0])]
    return EditPlan(
        spec=spec,
        params=params,
        preset=preset,
        source=source,
        given_masks=sorted(masks),
        stack=stack,
        masks=stacked,
        chosen=chosen,
        window=window,
        grid=grid,
        noise=slice_mixtures(
            slice_noise, seed, stack.shape[0], spacing_mm=spacing, correlation_mm=noise_correlation_mm
        ),
        batch_size=batch_size or _default_batch(model, len(chosen)),
        axis=axis,
        plane=plane,
        back=back,
        seed=seed,
        slice_noise=slice_noise,
        slice_spacing_mm=spacing,
        noise_correlation_mm=noise_correlation_mm,
        through_plane_smoothing=through_plane_smoothing,
        precision=network_precision(precision, model.device),
        cache_interval=int(cache_interval),
        compile_network=bool(compile_network),
        seeds=catalogue.sample_seeds(seed, int(samples)),
    )


def run_plan(
    plan: EditPlan,
    model: Denoiser,
    *,
    callback: Callable[[EditProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[list[np.ndarray], dict[str, np.ndarray], dict | None]:
    """Every chosen slice through the method in batches (``model``: the edit's own view of the loaded
    model, ``Denoiser.for_edit``); one float64 stack per output version
    (PIE: one per progression step), the source's values on the slices not chosen; the maps
    the method computed (float32 stacks, 0 on the slices not chosen); and the scheduler it
    sampled with when that is not the model's own (its provenance settings), else None."""
    run = plan.spec.load_runner()
    together = plan.through_plane_smoothing > 0  # neighbours must be in the batch they are smoothed with
    pending = []
    for group in plan.groups or [plan.chosen]:  # a sample's slices: batched as a single edit's would be
        size = len(group) if together else plan.batch_size
        pending += [group[i : i + size] for i in range(0, len(group), size)]
    progress = Progress(cancel=cancel, chunks=len(pending))
    maps = {name: np.zeros(plan.stack.shape, np.float32) for name in plan.spec.produces}
    try:
        outputs, scheduler = _run_chunks(run, plan, model, pending, together, progress, callback, maps)
    except _compile_errors(plan) as exc:
        raise EditError(
            f"torch.compile could not compile {model.name} on this machine ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); run without compile_network "
            "(its compiler needs a C++ toolchain on CPU, Triton on CUDA)"
        ) from exc
    return outputs, maps, scheduler


def _run_chunks(
    run: Runner,
    plan: EditPlan,
    model: Denoiser,
    pending: list[list[int]],
    together: bool,
    progress: Progress,
    callback,
    maps: dict[str, np.ndarray],
):
    """The batches in turn, halving them on running out of GPU memory; fills ``maps`` in place."""
    network_batch = plan.batch_size
    outputs, scheduler = None, None
    while pending:
        chunk = pending.pop(0)
        done_before = progress.done
        try:
            native, native_maps, scheduler = _edit_chunk(
                run, plan, model, chunk, progress, callback, network_batch
            )
        except torch.OutOfMemoryError:
            smaller = network_batch if together else len(chunk)
            if smaller == 1:
                raise
            # Retry with half the slices per model call; each slice keeps its own noise, so nothing changes.
            half = smaller // 2
            warnings.warn(
                f"out of GPU memory with {smaller} slices per batch; retrying with {half}", stacklevel=2
            )
            torch.cuda.empty_cache()
            if together:
                network_batch = half
                pending.insert(0, chunk)
            else:
                pending[:0] = [chunk[:half], chunk[half:]]
                progress.chunks += 1
            progress.done = done_before
            continue
        if outputs is None:
            outputs = [plan.stack.astype(np.float64) for _ in native]
        for out, values in zip(outputs, native, strict=True):
            out[chunk] = values
        for name, values in native_maps.items():
            maps[name][chunk] = values
        progress.next_chunk()
    return outputs, scheduler


def assemble(
    plan: EditPlan,
    model: Denoiser,
    outputs: list[np.ndarray],
    maps: dict[str, np.ndarray] | None = None,
    *,
    seconds: float,
    evaluations: int,
    scheduler: dict | None = None,
) -> EditResult:
    """Composite the edited slices into the source (bit-identical outside what the method may change),
    back in the source's voxel order and dtype, with metrics and provenance."""
    spec, stack = plan.spec, plan.stack
    maps = maps or {}
    masks = _masks_used(plan, maps)
    editable = _editable(plan, masks)
    stacked_results = [
        _composite(stack, out, editable, plan.chosen, plan.source.array.dtype) for out in outputs
    ]
    # Measured in the slicing orientation (slices along axis 0), where "edited slices" are defined.
    metrics = edit_metrics(
        stack,
        stacked_results[-1],
        region=spec.region(masks),
        keep_mask=plan.masks.get("keep_mask"),
        slice_axis=0,
        slices=None if plan.planar else plan.chosen,
    )
    results = [_in_source_voxels(plan, r) for r in stacked_results]
    used_masks = {k: _in_source_voxels(plan, m) for k, m in masks.items()}
    method_maps = {k: _in_source_voxels(plan, m) for k, m in maps.items() if not k.endswith("_mask")}
    provenance = {
        "method": spec.name,
        "reference": spec.reference,
        "preset": plan.preset,
        "parameters": jsonable(dataclasses.asdict(plan.params)),
        "model": {
            "name": model.name,
            "weights_sha256": model.weights_hash,
            "resolution": model.resolution,
            "latent": model.latent,
        },
        "seed": plan.seed,
        "slice_noise": plan.slice_noise.value,
        "noise_correlation_mm": plan.noise_correlation_mm
        if plan.slice_noise is SliceNoise.correlated
        else None,
        "through_plane_smoothing": plan.through_plane_smoothing,
        "precision": str(plan.precision).removeprefix("torch."),
        "cache_interval": plan.cache_interval,
        "feature_cache": None if model.feature_cache is None else model.feature_cache.describe(),
        "compile_network": plan.compile_network,
        "slice_spacing_mm": None if plan.planar else round(plan.slice_spacing_mm, 6),
        "axis": plan.plane or plan.axis,
        "slices": plan.chosen,
        "batch_size": plan.batch_size,
        "masks": plan.given_masks,
        "maps": sorted(method_maps),
        "preprocessing": {**plan.grid.describe(), **plan.window.describe()},
        "scheduler": model.schedule.settings()
        if scheduler is None
        else {**scheduler, "built_from": model.schedule.settings()["class"]},
        "source": plan.source.metadata.get("path"),
        "napari_medit": __version__,
        "torch": str(torch.__version__),  # a TorchVersion would make unpickling the result import torch
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),  # float sums, hence the last bits, depend on the split
        "platform": platform.platform(),
        "model_evaluations": evaluations,
        "seconds": round(seconds, 3),
        "metrics": jsonable(metrics),
    }
    images = [plan.source.with_array(r, edit=provenance) for r in results]
    return EditResult(
        image=images[-1],
        difference=(results[-1].astype(np.float32) - plan.source.array.astype(np.float32)),
        edited_slices=plan.chosen,
        axis=plan.plane or plan.axis,
        provenance=provenance,
        progression=images if len(images) > 1 else None,
        masks=used_masks,
        maps=method_maps,
        metrics=metrics,
    )


def _masks_used(plan: EditPlan, maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # a computed mask (name ending in _mask) is a region: a native pixel is in it when its value is at least
    # half
    return {**plan.masks, **{k: m >= 0.5 for k, m in maps.items() if k.endswith("_mask")}}


def _editable(plan: EditPlan, masks: dict[str, np.ndarray]) -> np.ndarray | None:
    """Where the method may change the stacked slices (None: everywhere on the chosen slices)."""
    editable = plan.spec.editable(masks)
    if not plan.grid.covers_all:  # a centre crop: what the model never saw stays as it was
        covered = plan.grid.covered()[None]
        editable = covered if editable is None else editable & covered
    return editable


def _in_source_voxels(plan: EditPlan, stacked: np.ndarray) -> np.ndarray:
    """A stack in the slicing orientation back in the image's own voxel order (exact)."""
    values = stacked[0] if plan.planar else np.moveaxis(stacked, 0, plan.axis)
    return values if plan.back is None else apply_orientation(values, plan.back)


def with_samples(results: list[EditResult], plan: EditPlan, maps: dict[str, np.ndarray]) -> EditResult:
    """Sample 1's result carrying every sample, their per-voxel standard deviation (float32, on the
    source's grid) and its summary inside the editable region, against the edit's own size there."""
    # Only the edited slices can differ: the rest of the map is 0 without computing it.
    slab = [slice(None)] * plan.source.array.ndim
    if not plan.planar:
        axis, indices, _ = plan.in_source_order(plan.chosen)
        slab[axis] = indices
    slab = tuple(slab)
    source = plan.source.array[slab].astype(np.float64)
    values = np.stack([r.image.array[slab].astype(np.float64) for r in results])
    # Shifted by sample 1: where every sample kept the source the deviations are 0.0 exactly, and so is the
    # standard deviation (a mean of equal floats need not equal them).
    variability = np.zeros(plan.source.array.shape, np.float32)
    variability[slab] = np.std(values - values[0], axis=0)
    editable = _editable(plan, _masks_used(plan, maps))
    region_stack = np.zeros(plan.stack.shape, bool)
    region_stack[plan.chosen] = True if editable is None else editable[plan.chosen]
    region = _in_source_voxels(plan, region_stack)[slab]
    change = np.abs(values - source).mean(axis=0)[region]
    spread = variability[slab][region].astype(np.float64)
    summary = {
        "std_mean": float(spread.mean()) if spread.size else 0.0,
        "std_p95": float(np.percentile(spread, 95)) if spread.size else 0.0,
        "change_mean": float(change.mean()) if change.size else 0.0,
        "change_p95": float(np.percentile(change, 95)) if change.size else 0.0,
        "voxels": int(region.sum()),
    }
    first = results[0]
    provenance = {**first.provenance, "samples": list(plan.seeds), "variability": summary}
    return dataclasses.replace(
        first,
        image=first.image.with_array(first.image.array, edit=provenance),
        provenance=provenance,
        samples=[r.image for r in results],
        variability=variability,
    )


# ---------------------------------------------------------------- request checks


def _mask(name: str, value, source: MedicalImage) -> np.ndarray:
    if isinstance(value, MedicalImage):
        if value.array.shape != source.array.shape:
            raise EditError(f"{name} has shape {value.array.shape} but the image has {source.array.shape}")
        if not np.allclose(value.affine, source.affine, atol=1e-3):
            raise EditError(
                f"{name} is not on the image's grid (different affine): resample it to the image first"
            )
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
    problem = spec.unused_mask_problem(masks)
    if problem:
        raise EditError(problem)
    problem = spec.model_problem(model.text_conditioned, model.condition_names, model.image_conditioned)
    if problem:
        raise EditError(f"model '{model.name}': {problem}")
    needed = [c for c in model.condition_names if c not in masks]
    if needed:
        raise EditError(
            f"model '{model.name}' is conditioned on {', '.join(model.condition_names)}: "
            f"give {' and '.join(needed)}"
        )
    problem = spec.check_masks(masks) if spec.check_masks else None
    if problem:
        raise EditError(problem)


def _check_coverage(spec: Method, grid: Grid, masks: dict, chosen: list[int]) -> None:
    """A centre-cropping model never sees the slice's edges: refuse a region entirely outside
    its square, warn when part of it is (that part stays as it was)."""
    region = spec.region(masks)
    if grid.covers_all or region is None:
        return
    inside = region[chosen][:, grid.covered()].sum()
    total = region[chosen].sum()
    if total and not inside:
        raise EditError(
            f"the {spec.slice_region or 'region'} lies outside the centred square the model sees (its "
            f"preprocessing crops {grid.height}x{grid.width} slices to {grid.side}x{grid.side}): "
            "move the mask inside it, or use a model that pads"
        )
    if inside < total:
        warnings.warn(
            f"{100 * (1 - inside / total):.0f}% of the {spec.slice_region or 'region'} lies outside the "
            f"centred {grid.side}x{grid.side} square the model sees; that part is left unedited",
            stacklevel=3,
        )


# ---------------------------------------------------------------- model space


def _edit_chunk(
    run: Runner,
    plan: EditPlan,
    model: Denoiser,
    chunk: list[int],
    progress: Progress,
    callback,
    network_batch: int,
):
    """One batch of slices through the method; returns the native-resolution versions."""
    images = _to_model_range(model, plan.stack[chunk], plan.window, plan.grid)
    with torch.no_grad():
        x0 = _sampler_precision(model, model.encode(images))
    binary = getattr(plan.params, "mask_grid", MaskGrid.fractional) is MaskGrid.binary
    masks_model = {}
    for name, mask in plan.masks.items():
        on_grid = to_latent_grid(plan.grid.to_model(mask[chunk], soft=True), model.latent_factor)
        masks_model[name] = (binarised(on_grid) if binary else on_grid).to(model.device)
    conditions = _conditions(model, masks_model)
    if callback is not None:
        progress.callback = _reporter(
            callback, model, chunk, plan.in_source_order, plan.window, plan.grid, plan.stack[chunk]
        )
    noise = NoiseSource([plan.noise[i] for i in chunk], model.device)
    denoiser = model
    if plan.through_plane_smoothing > 0:
        region = plan.spec.region(masks_model)
        denoiser = ThroughPlaneSmoothing(
            model,
            slices=chunk,
            strength=plan.through_plane_smoothing,
            max_batch=network_batch,
            region=torch.ones_like(x0[:, :1]) if region is None else region.to(x0.dtype),
        )
    inputs = EditInputs(
        denoiser=denoiser,
        x0=x0,
        image=_sampler_precision(model, images),
        masks=masks_model,
        params=plan.params,
        noise=noise,
        progress=progress,
        conditions=conditions,
    )
    with torch.no_grad():
        edited = run(inputs)
        native = [_from_model(model, v, plan.window, plan.grid, plan.stack[chunk]) for v in edited.versions]
        # maps lie on the model's image grid; outside a centre crop they are 0 (nothing was edited there)
        maps = {
            k: np.nan_to_num(plan.grid.from_model(m.float().cpu())).astype(np.float32)
            for k, m in edited.maps.items()
        }
        return native, maps, edited.scheduler


def _compile_errors(plan: EditPlan) -> tuple[type[Exception], ...]:
    # torch._dynamo is imported only when an edit asked for it (importing it costs seconds).
    return (torch._dynamo.exc.TorchDynamoException,) if plan.compile_network else ()


def network_precision(precision: Precision | str, device: torch.device) -> torch.dtype:
    """What ``precision`` means on ``device``. auto: float16 on CUDA (half the memory traffic, tensor
    cores); bfloat16 on a CPU that computes it natively (AVX512-BF16 or AMX: torch reports them);
    float32 elsewhere, where bfloat16 would be emulated and slower (benchmarks/precision.py)."""
    precision = Precision(precision)
    if precision is not Precision.auto:
        return getattr(torch, precision.value)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return torch.bfloat16
    return torch.float32


def _to_model_range(model: Denoiser, slices: np.ndarray, window: IntensityWindow, grid: Grid) -> torch.Tensor:
    """Native slices -> the model's grid and value range (images, before any VAE)."""
    low, high = model.value_range
    unit = grid.to_model(window.to_unit(slices))
    return (unit * (high - low) + low).to(model.device)


def _sampler_precision(model: Denoiser, x: torch.Tensor) -> torch.Tensor:
    # The sampler's own arithmetic runs in float64 (the networks in their own precision): an
    # inversion's residuals then cancel to ~1e-12 instead of float32's ~1e-4 after 1/sqrt(alpha_bar).
    return x.to(torch.float32 if model.device.type == "mps" else torch.float64)


def _from_model(
    model: Denoiser, x: torch.Tensor, window: IntensityWindow, grid: Grid, source: np.ndarray
) -> np.ndarray:
    """Model output back to source units on the slices' own grid; where a crop hid the slice
    from the model, the ``source`` slices' own values."""
    low, high = model.value_range
    unit = (model.decode(x) - low) / (high - low)
    native = window.from_unit(grid.from_model(unit.cpu()))
    return native if grid.covers_all else np.where(np.isnan(native), source, native)


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


def _reporter(callback, model, chunk, in_source_order, window, grid, source):
    axis, slices, _ = in_source_order(chunk)

    def report(info: StepInfo) -> None:
        def render() -> np.ndarray:
            with torch.no_grad():
                return in_source_order(chunk, _from_model(model, info.x0_estimate, window, grid, source))[2]

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


def samples_share_batches(model: Denoiser, batch_size: int | None) -> bool:
    """Whether several samples may share model calls: on a GPU with an automatic batch size, where
    batching pays. Elsewhere each sample keeps a single edit's batches and equals it bit for bit."""
    return model.device.type == "cuda" and batch_size is None


def _default_batch(model: Denoiser, count: int) -> int:
    if model.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(model.device)
        # ~ 60 MB per 64x64 item for a small UNet with CFG; scaled by area.
        per_item = 60e6 * (model.resolution / 64) ** 2 / model.latent_factor**2
        return max(1, min(count, int(0.5 * free / per_item)))
    return min(count, DEFAULT_CPU_BATCH)
