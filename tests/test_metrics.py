"""Edit-quality metrics against values worked out by hand, and as the engine reports them."""

import math

import numpy as np
import pytest
import tiny_models

from napari_medit.editing import edit
from napari_medit.metrics import (
    change_map,
    edit_metrics,
    editing_score,
    fidelity,
    jsonable,
    keep_exactness,
    passes_editing_score,
    relative_contrast,
    slice_consistency,
)


def ramp(shape=(4, 20, 24)):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 97


def test_fidelity_of_identical_images_is_perfect():
    image = ramp()
    figures = fidelity(image, image.copy(), slice_axis=0)
    assert figures["mae"] == 0 and figures["psnr"] == math.inf and figures["ssim"] == pytest.approx(1.0)


def test_fidelity_counts_only_the_voxels_outside_the_region():
    source = ramp((20, 24))
    result = source.copy()
    region = np.zeros(source.shape, bool)
    region[5:10, 5:10] = True
    result[region] += 50  # a change inside the region only
    result[0, 0] += 8  # and one voxel outside it
    figures = fidelity(source, result, ~region)
    outside = (~region).sum()
    assert figures["voxels"] == outside
    assert figures["mae"] == pytest.approx(8 / outside)
    assert figures["psnr"] == pytest.approx(10 * math.log10(96**2 / (64 / outside)))
    assert figures["ssim"] < 1


def test_keep_exactness_counts_changed_voxels_exactly():
    source = ramp((20, 24))
    keep = np.zeros(source.shape, bool)
    keep[:, :6] = True
    result = source.copy()
    result[3, 2] += 1.5
    result[10, 20] += 40  # outside the keep mask: not counted
    assert keep_exactness(source, result, keep) == {
        "keep_voxels": 120,
        "keep_voxels_changed": 1,
        "keep_max_abs_change": 1.5,
    }


def test_slice_consistency_flags_flicker_between_neighbouring_slices():
    source = np.ones((6, 8, 8), np.float32) * np.arange(6)[:, None, None]  # steps of 1 between slices
    smooth = source + 3  # the same shift everywhere: no new jumps
    flicker = source + np.array([0, 4, 0, 4, 0, 4])[:, None, None]
    assert slice_consistency(source, smooth, 0, [1, 2, 3])["ratio"] == pytest.approx(1.0)
    jumpy = slice_consistency(source, flicker, 0, [1, 2, 3])
    assert jumpy["source_step"] == 1 and jumpy["result_step"] == pytest.approx((5 + 3) / 2)
    assert slice_consistency(source, flicker, 0, [1, 3]) is None  # no neighbouring edited slices
    # along another axis the same volume is constant between slices
    assert slice_consistency(source, flicker, 2, [0, 1, 2])["source_step"] == 0


def test_edit_metrics_reads_only_the_edited_slices():
    source = ramp((4, 20, 24))
    result = source.copy()
    region = np.zeros(source.shape, bool)
    region[1:3, 5:10, 5:10] = True
    result[region] = 0
    result[3] += 1  # a change on a slice that was not edited is not "outside the region on edited slices"
    metrics = edit_metrics(source, result, region=region, slice_axis=0, slices=[1, 2])
    assert metrics["outside"]["mae"] == 0 and metrics["outside"]["voxels"] == 2 * 20 * 24 - region.sum()
    assert metrics["changed_voxels"] == np.count_nonzero(change_map(source, result))
    assert metrics["slice_consistency"]["ratio"] == 0  # both edited slices are 0 in the region: no step


class LinearEncoder:
    """Images and texts mapped by fixed linear maps, so the score can be worked out by hand."""

    def embed_images(self, images):
        return np.array([[float(np.mean(i)), float(np.std(i)), 0.0] for i in images])

    def embed_texts(self, texts):
        table = {"effusion": [2.0, 0.0, 1.0], "no effusion": [0.0, 0.0, 1.0], "nodule": [2.0, 5.0, 1.0]}
        return np.array([table[t] for t in texts])


def test_relative_contrast_is_the_darkening_against_the_surroundings():
    image = np.full((4, 4), 200.0)
    image[1:3, 1:3] = 150.0
    inside = image == 150.0
    assert relative_contrast(image, inside, ~inside) == pytest.approx(0.25)
    assert relative_contrast(image, ~inside, inside) == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="needs voxels both inside"):
        relative_contrast(image, inside, np.zeros_like(inside))


def test_editing_score_is_the_directional_similarity():
    real = np.full((8, 8), 10.0)
    darker = np.full((8, 8), 4.0)  # dI = (-6, 0, 0)
    encoder = LinearEncoder()
    # dT = (-2, 0, 0): the image moved the way the text did
    assert editing_score(encoder, real, darker, "effusion", "no effusion") == pytest.approx(1.0)
    # dT = (2, 0, 0): the opposite way
    assert editing_score(encoder, real, darker, "no effusion", "effusion") == pytest.approx(-1.0)
    # dT = (0, 5, 0): orthogonal
    assert editing_score(encoder, real, darker, "effusion", "nodule") == pytest.approx(0.0)
    assert math.isnan(editing_score(encoder, real, real.copy(), "effusion", "no effusion"))
    # RadEdit Sec. 4.4 drops edits scoring below 0.2
    assert passes_editing_score(0.2) and not passes_editing_score(0.19) and not passes_editing_score(math.nan)


def test_jsonable_keeps_json_strict():
    assert jsonable({"a": [math.inf, -math.inf, math.nan, 1.5]}) == {"a": ["inf", "-inf", "nan", 1.5]}


def test_engine_reports_metrics_in_result_and_provenance():
    """MedEdit composites outside its inpainting mask: fidelity there is exact; RadEdit's keep mask too."""
    rng = np.random.default_rng(0)
    volume = (400 + 100 * rng.standard_normal((5, 16, 16))).astype(np.float32)
    pathology = np.zeros(volume.shape, bool)
    pathology[1:4, 6:10, 6:10] = True
    brain = np.zeros(volume.shape, bool)
    brain[:, 2:14, 2:14] = True
    result = edit(
        "mededit",
        volume,
        model=tiny_models.monai_unet(),
        pathology_mask=pathology,
        brain_mask=brain,
        steps=3,
        seed=1,
    )
    outside = result.metrics["outside"]
    assert outside["mae"] == 0 and outside["psnr"] == math.inf
    assert result.provenance["metrics"]["outside"]["psnr"] == "inf"
    assert result.metrics["slice_consistency"]["ratio"] > 0
    assert result.metrics["mean_abs_change_inside"] > 0

    image = volume[2]
    keep = np.zeros(image.shape, bool)
    keep[:, :5] = True
    edit_region = np.zeros(image.shape, bool)
    edit_region[5:12, 6:12] = True
    radedit = edit(
        "radedit",
        image,
        model=tiny_models.text_unet(),
        edit_mask=edit_region,
        keep_mask=keep,
        prompt="no effusion",
        steps=4,
        skip=1,
    )
    assert radedit.metrics["keep"]["keep_voxels_changed"] == 0
    assert radedit.metrics["outside"]["mae"] > 0  # RadEdit may change everything outside the keep mask
    assert "slice_consistency" not in radedit.metrics
