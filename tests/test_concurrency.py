"""Edits that share one loaded model in threads of one process (a dask worker runs one task per
thread): each gives exactly what it gives alone. A stateful multistep scheduler (PNDM keeps its
history and a counter on the scheduler object) is the hard case."""

from __future__ import annotations

import gc
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tiny_models
from diffusers import PNDMScheduler
from test_editing import CASE_MODELS, CASES, phantom_slice

from napari_medit.catalogue import ComputeOptions
from napari_medit.editing import NoiseSchedule, edit


def _pndm_latent_text_unet():
    model = tiny_models.text_unet(vae=True)
    model.schedule = NoiseSchedule.from_scheduler(
        PNDMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=2e-2, skip_prk_steps=True)
    )
    return model


# Every method on its case model, and PIE's reference loop on a PNDM scheduler (the loop that steps
# the model's own scheduler), each twice with other seeds so two edits meet on one scheduler.
JOBS = [
    *((method, CASES[method]["model"], {}) for method in CASES),
    ("pie", "pndm-latent-text-unet", {"loop": "reference", "steps": 8, "strength": 0.75}),
]


def _run(models, method, kind, overrides, seed):
    case = {**CASES[method], **overrides}
    case.pop("model")
    image = phantom_slice()
    region = np.zeros(image.shape, bool)
    region[4:10, 5:11] = True
    for name in ("edit_mask", "pathology_mask", "roi_mask"):
        if case.get(name) is True:
            case[name] = region
    if case.get("brain_mask") is True:
        case["brain_mask"] = np.ones(image.shape, bool)
    return edit(method, image, model=models[kind], seed=seed, **case)


def test_every_method_in_threads_on_shared_models_equals_one_after_another():
    makers = {**CASE_MODELS, "pndm-latent-text-unet": _pndm_latent_text_unet}
    models = {kind: makers[kind]() for _, kind, _ in JOBS}  # one loaded model per kind, shared
    runs = [(job, seed) for job in JOBS for seed in (1, 2)]
    alone = [_run(models, *job, seed) for job, seed in runs]
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        together = list(pool.map(lambda run: _run(models, *run[0], run[1]), runs))
    for ((method, kind, _), seed), one, other in zip(runs, alone, together, strict=True):
        np.testing.assert_array_equal(other.image.array, one.image.array, err_msg=f"{method} {kind} {seed}")
        for key in ("model_evaluations", "scheduler", "parameters", "slices"):
            assert other.provenance[key] == one.provenance[key], (method, key)
    # and the shared models were not touched: no evaluations counted, no scheduler stepped
    assert all(model.evaluations == 0 for model in models.values())
    assert models["pndm-latent-text-unet"].schedule.scheduler.counter == 0


def test_an_edits_scheduler_is_its_own_and_the_models_is_left_as_loaded():
    model = _pndm_latent_text_unet()
    shared = model.schedule.scheduler
    own = model.for_edit()
    assert own.schedule.scheduler is not shared and own.network is model.network  # weights shared
    own.schedule.timesteps(10)
    assert shared.num_inference_steps is None and dict(own.schedule.scheduler.config) == dict(shared.config)


# ---------------------------------------------------------------- the model cache


@pytest.fixture
def loaded(monkeypatch) -> list[weakref.ref]:
    """load_model replaced by a tiny UNet; a weak reference to each network loaded: dead once freed."""
    networks = []

    def load_model(spec, **_):
        model = tiny_models.pixel_unet()
        networks.append(weakref.ref(model.network))
        return model

    monkeypatch.setattr("napari_medit.backends.load_model", load_model)
    return networks


def test_the_model_cache_keeps_its_bound_and_lets_evicted_models_go(loaded):
    """Three models in turn with a bound of one: each load evicts the one before, whose memory is
    returned (nothing holds it any more)."""
    from napari_medit.compute import ModelCache

    cache = ModelCache(limit=1)
    for name in ("a", "b", "c"):
        model, now = cache.get(name, ComputeOptions())
        assert now and cache.loaded() == [name]
        del model
    gc.collect()
    assert [ref() is None for ref in loaded] == [True, True, False]  # a and b freed, c kept
    assert cache.get("c", ComputeOptions())[1] is False  # kept: not loaded again
    cache.clear()
    gc.collect()
    assert loaded[-1]() is None and cache.loaded() == []


def test_the_model_cache_bound_comes_from_the_environment(monkeypatch):
    from napari_medit.compute import MODELS_KEPT_ENVIRON, ModelCache
    from napari_medit.results import EditError

    monkeypatch.setattr("napari_medit.backends.load_model", lambda spec, **_: object())
    monkeypatch.setenv(MODELS_KEPT_ENVIRON, "2")
    cache = ModelCache()
    for name in ("a", "b", "c"):
        cache.get(name)
    assert cache.loaded() == ["b", "c"]
    cache.get("b")  # used: now the most recent
    cache.get("d")
    assert cache.loaded() == ["b", "d"]
    monkeypatch.setenv(MODELS_KEPT_ENVIRON, "many")
    with pytest.raises(EditError, match=MODELS_KEPT_ENVIRON):
        cache.get("e")


def test_this_process_lets_its_models_go_when_its_place_closes(loaded):
    """The Edit widget's 'this process' is napari's own: closing it returns the models' memory."""
    from napari_medit.compute import MODELS, InProcess

    place = InProcess()
    place.warm_up("tiny")
    assert "tiny" in MODELS.loaded()
    place.close()
    gc.collect()
    assert MODELS.loaded() == [] and loaded[0]() is None
