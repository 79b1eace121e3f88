"""Edit-quality metrics: what changed, whether the rest stayed put, and whether slices agree.

Every function takes the source and the edited array on the same grid, in source units.
Fidelity is measured outside the region the method was asked to edit and, for slice-wise
edits, only on the slices that were edited (untouched slices are bit-identical by
construction and would only inflate the figures).

The image-text editing score is RadEdit's (Bond-Taylor et al., ECCV 2024, Sec. 4.4):
the cosine between the change of the image embedding and the change of the text
embedding, with edits scoring below 0.2 discarded (the paper follows Prabhu et al.).
Nothing here imports torch, Qt or napari.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

EDITING_SCORE_THRESHOLD = 0.2  # RadEdit Sec. 4.4: edits below this are filtered out


def change_map(source: np.ndarray, result: np.ndarray) -> np.ndarray:
    """|result - source| in source units, float32."""
    return np.abs(np.asarray(result, np.float64) - np.asarray(source, np.float64)).astype(np.float32)


def fidelity(
    source: np.ndarray,
    result: np.ndarray,
    where: np.ndarray | None = None,
    slice_axis: int | None = None,
    data_range: float | None = None,
) -> dict[str, float]:
    """MAE, PSNR and SSIM over the voxels in ``where`` (all voxels when None).

    SSIM is skimage's (7-pixel window) computed per 2D slice along ``slice_axis`` for
    volumes — the edits are slice-wise — and averaged over ``where``. PSNR uses the
    source's intensity range; it is ``inf`` when those voxels are identical.
    """
    from skimage.metrics import structural_similarity

    source = np.asarray(source, np.float64)
    result = np.asarray(result, np.float64)
    if source.shape != result.shape:
        raise ValueError(f"source {source.shape} and result {result.shape} differ in shape")
    where = np.ones(source.shape, bool) if where is None else np.asarray(where, bool)
    if not where.any():
        return {"mae": math.nan, "psnr": math.nan, "ssim": math.nan, "voxels": 0}
    if data_range is None:
        data_range = float(source.max() - source.min()) or 1.0
    error = result[where] - source[where]
    mse = float(np.mean(error**2))
    psnr = math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)

    planes_s = source[None] if source.ndim == 2 else np.moveaxis(source, slice_axis or 0, 0)
    planes_r = result[None] if result.ndim == 2 else np.moveaxis(result, slice_axis or 0, 0)
    window = min(7, *(d - (d + 1) % 2 for d in planes_s.shape[1:]))  # odd, no larger than the slice
    if window < 3:
        ssim_mean = math.nan
    else:
        maps = np.stack(
            [
                structural_similarity(s, r, data_range=data_range, win_size=window, full=True)[1]
                for s, r in zip(planes_s, planes_r, strict=True)
            ]
        )
        maps = maps[0] if source.ndim == 2 else np.moveaxis(maps, 0, slice_axis or 0)
        ssim_mean = float(maps[where].mean())
    return {"mae": float(np.abs(error).mean()), "psnr": psnr, "ssim": ssim_mean, "voxels": int(where.sum())}


def keep_exactness(source: np.ndarray, result: np.ndarray, keep_mask: np.ndarray) -> dict[str, float]:
    """How many keep-mask voxels changed at all (RadEdit promises none) and by how much at most."""
    keep = np.asarray(keep_mask, bool)
    changed = np.asarray(source)[keep] != np.asarray(result)[keep]
    difference = np.abs(np.asarray(result, np.float64)[keep] - np.asarray(source, np.float64)[keep])
    return {
        "keep_voxels": int(keep.sum()),
        "keep_voxels_changed": int(changed.sum()),
        "keep_max_abs_change": float(difference.max()) if difference.size else 0.0,
    }


def slice_consistency(
    source: np.ndarray, result: np.ndarray, axis: int, slices: Sequence[int], region: np.ndarray | None = None
) -> dict[str, float] | None:
    """Mean |difference between neighbouring slices| of the result, against the source's own.

    Slice-wise editing draws each slice's noise independently, so an edit can flicker
    along the slice axis. Measured over pairs of neighbouring edited slices, in the
    region either of them was edited in; ``ratio`` 1 means as smooth as the anatomy
    itself, larger means the edit adds inter-slice jumps. None when no two edited
    slices are neighbours (or the image is 2D).
    """
    if np.ndim(source) != 3:
        return None
    chosen = set(slices)
    pairs = [k for k in sorted(chosen) if k + 1 in chosen]
    if not pairs:
        return None
    src = np.moveaxis(np.asarray(source, np.float64), axis, 0)
    res = np.moveaxis(np.asarray(result, np.float64), axis, 0)
    inside = None if region is None else np.moveaxis(np.asarray(region, bool), axis, 0)
    steps_source, steps_result = [], []
    for k in pairs:
        where = np.ones(src.shape[1:], bool) if inside is None else inside[k] | inside[k + 1]
        steps_source.append(np.abs(src[k + 1] - src[k])[where])
        steps_result.append(np.abs(res[k + 1] - res[k])[where])
    source_step = float(np.concatenate(steps_source).mean())
    result_step = float(np.concatenate(steps_result).mean())
    return {
        "source_step": source_step,
        "result_step": result_step,
        "ratio": result_step / source_step if source_step else math.inf,
    }


def relative_contrast(image: np.ndarray, inside: np.ndarray, around: np.ndarray) -> float:
    """(mean around - mean inside) / mean around: how much darker a region is than its surroundings
    (a hypointense lesion against the tissue around it; negative when it is brighter)."""
    image = np.asarray(image, np.float64)
    inside, around = np.asarray(inside, bool), np.asarray(around, bool)
    if not inside.any() or not around.any():
        raise ValueError("relative contrast needs voxels both inside the region and around it")
    reference = image[around].mean()
    return float((reference - image[inside].mean()) / reference) if reference else math.nan


def edit_metrics(
    source: np.ndarray,
    result: np.ndarray,
    *,
    region: np.ndarray | None,
    keep_mask: np.ndarray | None = None,
    slice_axis: int = 0,
    slices: Sequence[int] | None = None,
) -> dict:
    """The figures a report needs for one edit (see the module docstring for definitions)."""
    source = np.asarray(source)
    on_edited_slices = np.ones(source.shape, bool)
    if source.ndim == 3 and slices is not None:
        on_edited_slices[:] = False
        index = [slice(None)] * 3
        index[slice_axis] = list(slices)
        on_edited_slices[tuple(index)] = True
    outside = on_edited_slices if region is None else on_edited_slices & ~np.asarray(region, bool)
    changed = change_map(source, result)
    metrics = {
        "changed_voxels": int((changed > 0).sum()),
        "mean_abs_change_inside": (
            float(changed[np.asarray(region, bool)].mean()) if region is not None and np.any(region) else None
        ),
        "outside": fidelity(source, result, outside, slice_axis),
    }
    if keep_mask is not None:
        metrics["keep"] = keep_exactness(source, result, keep_mask)
    if source.ndim == 3 and slices is not None:
        metrics["slice_consistency"] = slice_consistency(source, result, slice_axis, slices, region)
    return metrics


# ---------------------------------------------------------------- image-text editing score


class ImageTextEncoder(Protocol):
    """A joint image-text embedding model (BioViL-T in the paper)."""

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:  # (n, d)
        ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:  # (n, d)
        ...


def directional_similarity(delta_image: np.ndarray, delta_text: np.ndarray) -> float:
    """cos(dI, dT); NaN when either change is zero (the direction is undefined)."""
    norms = float(np.linalg.norm(delta_image) * np.linalg.norm(delta_text))
    return float(np.dot(np.ravel(delta_image), np.ravel(delta_text)) / norms) if norms else math.nan


def editing_score(
    encoder: ImageTextEncoder,
    real_image: np.ndarray,
    edited_image: np.ndarray,
    real_text: str,
    edit_text: str,
) -> float:
    """RadEdit's editing score: S = dI.dT / (|dI||dT|), dI = E_I(edit) - E_I(real), dT likewise for text."""
    images = np.asarray(encoder.embed_images([real_image, edited_image]), np.float64)
    texts = np.asarray(encoder.embed_texts([real_text, edit_text]), np.float64)
    return directional_similarity(images[1] - images[0], texts[1] - texts[0])


def passes_editing_score(score: float, threshold: float = EDITING_SCORE_THRESHOLD) -> bool:
    """Keep an edit only when its score reaches the threshold (NaN never passes)."""
    return bool(score >= threshold)


def jsonable(value):
    """Metrics as strict JSON: inf and NaN become the strings 'inf', '-inf' and 'nan'."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


# ---------------------------------------------------------------- counterfactual scores (BiomedJourney)


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the probability that a positive outscores a negative (ties count
    half), by the Mann-Whitney rank sum. ValueError when one class is missing."""
    from scipy.stats import rankdata

    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUROC needs both classes; got {positives} positives and {negatives} negatives")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def geometric_mean(values: Sequence[float]) -> float:
    values = np.asarray(list(values), float)
    if values.size == 0 or (values <= 0).any():
        raise ValueError(f"a geometric mean needs positive values, got {values.tolist()}")
    return float(np.exp(np.log(values).mean()))


def cmig_score(accuracy: dict[str, float], retention: dict[str, float]) -> float:
    """BiomedJourney's Counterfactual Medical Image Generation score (Sec. 3.4): the geometric mean
    of the geometric mean of the accuracy measures (e.g. pathology AUROC) and that of the
    feature-retention measures (race AUROC, age correlation; for phantoms, fidelity outside the
    edited region). Measures are named so a report says what went in; all must be positive."""
    if not accuracy or not retention:
        raise ValueError("the CMIG score needs at least one accuracy and one retention measure")
    return math.sqrt(geometric_mean(accuracy.values()) * geometric_mean(retention.values()))
