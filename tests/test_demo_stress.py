"""The stress test's bundled demo models are biased the way the paper's real models were: each looks
right on its own (biased) distribution and fails where the shortcut and the finding part ways."""

import numpy as np
import pytest

from napari_medit.sample_data.cxr_phantom import generate_cxr_phantom, to_uint8
from napari_medit.stress.demo import DEMO_MODELS, DEMO_SIZE, acquisition_signature
from napari_medit.stress.models import ModelUnderTest
from napari_medit.stress.scenarios import SCENARIOS, Scenario, dice

SEEDS = range(20_000, 20_012)  # phantoms no training batch drew


def load(scenario):
    return ModelUnderTest.load(DEMO_MODELS[scenario], SCENARIOS[scenario].task)


def phantom(seed, **findings):
    return generate_cxr_phantom(DEMO_SIZE, seed, **findings)


def test_the_drain_classifier_sees_drains_not_pneumothoraces():
    model = load(Scenario.manifestation)
    with_both = model.predict(
        [to_uint8(phantom(s, pneumothorax="left", chest_drain="left").image) for s in SEEDS]
    )
    # a drain where pneumothorax drains go (the apex), with no pneumothorax
    drain_only = model.predict(
        [to_uint8(phantom(s, chest_drain="left", drain_target="apex").image) for s in SEEDS]
    )
    healthy = model.predict([to_uint8(phantom(s).image) for s in SEEDS])
    assert np.mean(with_both) > 0.8 and np.mean(healthy) < 0.2
    assert np.mean(drain_only) > 0.5  # no pneumothorax, yet called one: the shortcut


def test_the_acquisition_classifier_sees_the_hospital_not_the_effusion():
    model = load(Scenario.acquisition)
    other_hospital_sick = model.predict(
        [acquisition_signature(to_uint8(phantom(s, effusion="right").image)) for s in SEEDS]
    )
    other_hospital_healthy = model.predict([acquisition_signature(to_uint8(phantom(s).image)) for s in SEEDS])
    assert np.mean(other_hospital_sick) > 0.8
    assert np.mean(other_hospital_healthy) > 0.5  # healthy, yet called sick: the signature


def test_the_lung_segmenter_fails_on_abnormal_lungs():
    model = load(Scenario.population)
    healthy = [phantom(s) for s in SEEDS]
    sick = [phantom(s, effusion="both", effusion_size=0.6) for s in SEEDS]

    def on(cases):
        predictions = model.predict([to_uint8(c.image) for c in cases])
        return np.mean([dice(m, c.masks["lungs"]) for m, c in zip(predictions, cases, strict=True)])

    assert on(healthy) > 0.9
    assert on(sick) < on(healthy) - 0.05


@pytest.mark.parametrize("scenario", list(Scenario))
def test_demo_models_keep_the_contract(scenario):
    model = load(scenario)
    assert model.input_size == 64 and model.task is SCENARIOS[scenario].task
