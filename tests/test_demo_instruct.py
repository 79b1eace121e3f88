"""The bundled instruction model and findings classifier do what they are shipped for."""

import numpy as np
import pytest

from napari_medit.backends import describe, load_model, model_folders
from napari_medit.editing import edit
from napari_medit.findings import FindingsClassifier
from napari_medit.instructions import Side, hemithorax
from napari_medit.sample_data.cxr_phantom import generate_cxr_phantom, to_uint8

STEPS = 50  # half InstructX2X's 100 DDIM steps: CPU-friendly, same effect


@pytest.fixture(scope="module")
def demo():
    from napari_medit.sample_data import load_cxr

    sample = load_cxr()  # phantom seed 0 with a right pleural effusion
    truth = generate_cxr_phantom(512, 0, effusion="right")
    healthy = to_uint8(generate_cxr_phantom(512, 0).image)
    return sample["cxr"], healthy, truth, load_model("demo-cxr-instruct"), FindingsClassifier.load()


def test_the_instruction_model_is_bundled_and_described():
    info = describe(model_folders()["demo-cxr-instruct"])
    assert set(info["methods"]) == {"instruct", "instructx2x"}
    assert "remove the right pleural effusion" in info["prompts"]


def test_the_findings_classifier_separates_phantom_findings():
    from napari_medit.training.findings import _validation

    classifier = FindingsClassifier.load()
    assert classifier.findings == ("effusion", "cardiomegaly", "pneumothorax", "opacity")
    scores = _validation(classifier, count=120)
    # measured on 200 phantoms: 1.000, 1.000, 0.999; opacity 0.834 (small nodules at 64 px)
    assert min(scores[f] for f in ("effusion", "cardiomegaly", "pneumothorax")) > 0.95, scores
    assert scores["opacity"] > 0.65, scores


def test_removing_the_right_effusion_darkens_it_and_lowers_its_probability(demo):
    sample, _, truth, model, classifier = demo
    effusion = truth.masks["effusion"]
    result = edit(
        "instructx2x",
        sample,
        model=model,
        prompt="remove the right pleural effusion",
        steps=STEPS,
        lung_mask=truth.masks["lungs"],
        seed=0,
    )
    source, out = sample.array.astype(float), result.image.array.astype(float)
    changed = result.masks["guidance_mask"] & result.masks["roi_mask"]
    np.testing.assert_array_equal(out[~changed], source[~changed])
    # measured (128 px, 5,000 steps): 158 -> 76, healthy lung there is 104 (after 2,500 steps: 103)
    assert out[effusion].mean() < source[effusion].mean() - 30
    before, after = (
        classifier.probabilities(image)["effusion"] for image in (sample.array, result.image.array)
    )
    assert after < before - 0.5, (before, after)  # measured: 0.9998 -> 0.0002 (2,500 steps: 0.019)


def test_adding_a_right_effusion_in_the_lungs_of_a_healthy_chest_brightens_it(demo):
    _, healthy, truth, model, classifier = demo
    effusion = truth.masks["effusion"]
    result = edit(
        "instructx2x",
        healthy,
        model=model,
        prompt="add a right pleural effusion",
        steps=STEPS,
        lung_mask=truth.masks["lungs"],
        seed=0,
    )
    out = result.image.array.astype(float)
    assert out[effusion].mean() > healthy[effusion].mean() + 30  # measured: 104 -> 189 (the phantom's: 158)
    before, after = (classifier.probabilities(image)["effusion"] for image in (healthy, result.image.array))
    assert after > before + 0.5, (before, after)  # measured: 0.003 -> 0.92


def test_adding_a_right_effusion_without_a_region_brightens_the_right_base(demo):
    # The templates alone leave a region that reaches the chest wall; at s_T 7.5 the fluid spills onto it,
    # and the classifier no longer calls it an effusion (measured 0.003 -> 0.0008; 2,500 steps: 0.07).
    _, healthy, truth, model, _ = demo
    effusion = truth.masks["effusion"]
    result = edit(
        "instructx2x", healthy, model=model, prompt="add a right pleural effusion", steps=STEPS, seed=0
    )
    out = result.image.array.astype(float)
    assert out[effusion].mean() > healthy[effusion].mean() + 30  # measured: 104 -> 197
    change = out - healthy
    right, left = (change[hemithorax(truth.masks["lungs"], side)].mean() for side in (Side.right, Side.left))
    assert right > left + 15 and abs(left) < 5, (right, left)  # measured: +23.8 over the right lung, 0 left


def test_the_relevance_of_a_right_effusion_lies_over_the_right_hemithorax(demo):
    sample, _, truth, model, _ = demo
    everywhere = np.ones(sample.array.shape, bool)  # no region: the map is the relevance alone
    result = edit(
        "instructx2x",
        sample,
        model=model,
        prompt="remove the right pleural effusion",
        steps=1,
        roi_mask=everywhere,
        seed=0,
    )
    relevance = result.maps["guidance_map"]
    right, left = (
        relevance[hemithorax(truth.masks["lungs"], side)].sum() for side in (Side.right, Side.left)
    )
    assert right > 1.2 * left, (right, left)  # measured: 1.9x the left lung's mass


def test_border_kept_effusions_are_the_healthy_phantom_outside_the_eroded_lungs():
    from scipy.ndimage import binary_erosion

    from napari_medit.training.findings import _effusion_inside_the_lung_border

    effusion, healthy = (
        generate_cxr_phantom(64, 3, effusion="right", effusion_size=0.6),
        generate_cxr_phantom(64, 3),
    )
    image = _effusion_inside_the_lung_border(effusion, healthy)
    inside = binary_erosion(healthy.masks["lungs"] > 0, iterations=2)  # 3% of 64 px
    np.testing.assert_array_equal(image[~inside], healthy.image[~inside])
    np.testing.assert_array_equal(image[inside], effusion.image[inside])
    assert (image != healthy.image).any()


def test_the_findings_classifier_sees_effusions_that_keep_the_lung_border():
    """What the population stress test adds: fluid inside the healthy lung border."""
    from napari_medit.training.findings import _effusion_inside_the_lung_border

    classifier = FindingsClassifier.load()
    for seed in range(500, 506):
        healthy = generate_cxr_phantom(64, seed)
        effusion = generate_cxr_phantom(64, seed, effusion=("left", "right")[seed % 2], effusion_size=0.3)
        bordered = to_uint8(_effusion_inside_the_lung_border(effusion, healthy))
        # measured: p >= 0.995 with the border kept, <= 0.007 healthy
        assert classifier.probabilities(bordered)["effusion"] > 0.9
        assert classifier.probabilities(to_uint8(healthy.image))["effusion"] < 0.1
