import nibabel as nib
import numpy as np
import pytest

from napari_medit.sample_data import HERE, load_brain, load_cxr
from napari_medit.sample_data.derive_brain_sample import derive


def test_committed_brain_sample_is_what_the_script_derives(tmp_path):
    pytest.importorskip("nilearn")
    for path in derive(tmp_path):
        committed, rebuilt = nib.load(HERE / path.name), nib.load(path)
        np.testing.assert_array_equal(committed.affine, rebuilt.affine)
        np.testing.assert_array_equal(np.asanyarray(committed.dataobj), np.asanyarray(rebuilt.dataobj))


def test_brain_sample_is_consistent():
    brain = load_brain()
    t1, mask, lesion = brain["t1"].array, brain["brain_mask"].array, brain["lesion_mask"].array
    assert t1.shape == mask.shape == lesion.shape
    for image in brain.values():
        np.testing.assert_array_equal(image.affine, brain["t1"].affine)
    assert lesion.sum() > 500
    assert np.all(lesion <= mask)  # the lesion lies inside the brain
    assert np.all(t1[mask == 0] == 0)  # skull-stripped
    # In the right hemisphere (RAS x > 0), as drawn.
    centre = brain["t1"].affine @ [*np.argwhere(lesion).mean(axis=0), 1]
    assert centre[0] > 10


def test_cxr_sample_masks():
    cxr = load_cxr(size=256)
    edit, keep, lungs = (cxr[k].array.astype(bool) for k in ("edit_mask", "keep_mask", "lung_mask"))
    assert cxr["cxr"].array.dtype == np.uint8 and cxr["cxr"].array.shape == (256, 256)
    assert edit.any() and keep.any() and lungs.any()
    assert not (edit & keep).any()  # a gap separates them: the model may blend there
    assert (edit | keep).mean() < 1.0
    assert cxr["cxr"].spacing == pytest.approx((410 / 256, 410 / 256))
