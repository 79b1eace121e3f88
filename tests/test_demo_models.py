"""The bundled demo models do the edits they are shipped for, at CPU-friendly step counts."""

import numpy as np
import pytest

from napari_medit.backends import describe, load_model, model_folders
from napari_medit.editing import edit
from napari_medit.sample_data import load_brain


def test_demo_models_are_bundled_and_described():
    folders = model_folders()
    assert {"demo-brain", "demo-cxr"} <= set(folders)
    assert "mededit" in describe(folders["demo-brain"])["methods"]
    cxr = describe(folders["demo-cxr"])
    assert cxr["text_conditioned"] and {"radedit", "pie"} <= set(cxr["methods"])
    for prompt in ("No findings", "Pleural effusion", "Cardiomegaly", "Pneumothorax", "Opacity", "Chest drain"):
        assert prompt in cxr["prompts"]


def test_demo_brain_draws_a_lesion_where_the_mask_is():
    brain = load_brain()
    lesion = brain["lesion_mask"].array > 0
    centre = int(np.argwhere(lesion)[:, 2].mean())
    result = edit("mededit", brain["t1"], model=load_model("demo-brain"), pathology_mask=lesion,
                  brain_mask=brain["brain_mask"].array, axis="axial", slices=(centre - 1, centre + 1), steps=50, seed=0)
    source, out = brain["t1"].array, result.image.array
    inpaint = result.masks["inpaint_mask"]
    np.testing.assert_array_equal(out[~inpaint], source[~inpaint])
    edited = lesion & (out != source)
    assert edited.sum() > 50
    # Lesions were trained T1-hypointense: the lesion comes out darker than the white matter it replaces.
    assert out[edited].mean() < 0.8 * source[edited].mean()
