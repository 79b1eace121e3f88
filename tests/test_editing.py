"""Properties of the editing engine that must hold for any model."""

import json
import threading
from dataclasses import fields

import numpy as np
import pytest
import tiny_models
import torch
from diffusers import DDIMScheduler

from napari_medit.catalogue import Precision, RunOptions, SliceNoise
from napari_medit.editing import (
    METHODS,
    EditCancelled,
    EditError,
    NoiseSchedule,
    NoiseSource,
    Progress,
    edit,
)
from napari_medit.editing.ddpm import FINAL, pairs
from napari_medit.editing.radedit import RadEditParams, radedit
from napari_medit.io import MedicalImage
from napari_medit.testing import GaussianDenoiser


def analytic(**kwargs):
    return GaussianDenoiser(tiny_models.scheduler(), resolution=16, **kwargs)


MODELS = {
    "analytic": lambda: analytic(means={"": 0.0, "effusion": 0.6}),
    "pixel-unet": tiny_models.pixel_unet,
    "text-unet": tiny_models.text_unet,
    "latent-text-unet": lambda: tiny_models.text_unet(vae=True),
    "monai-unet": tiny_models.monai_unet,
}


def phantom_slice(shape=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (500 + 300 * np.sin(xx / 3.0) * np.cos(yy / 4.0) + 50 * rng.standard_normal(shape)).astype(
        np.float32
    )


# ---------------------------------------------------------------- step maths against diffusers


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_step_matches_diffusers_ddim(eta):
    scheduler = tiny_models.scheduler("ddim")
    schedule = NoiseSchedule.from_scheduler(scheduler)
    timesteps = schedule.timesteps(20)
    x, eps, z = (torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    for t, t_prev in pairs(timesteps):
        ours = schedule.step(x, eps, t, t_prev, eta, z)
        theirs = scheduler.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- inversion


@pytest.mark.parametrize("name", list(MODELS))
def test_inversion_then_reverse_reconstructs_input(name):
    """Edit prompt = inversion prompt, guidance 1, no masks: the reverse pass lands on x0."""
    model = MODELS[name]()
    side = model.resolution // model.latent_factor
    x0 = (
        torch.randn(2, model.latent_channels, side, side, generator=torch.Generator().manual_seed(0)).double()
        / 2
    )
    conditions = torch.zeros(2, len(model.condition_names), side, side) if model.condition_names else None
    prompt = "pleural effusion" if model.text_conditioned and name != "analytic" else ""
    params = RadEditParams(
        prompt=prompt, inversion_prompt=prompt, steps=12, skip=0, guidance=1.0, inversion_guidance=1.0
    )
    out = radedit(
        model,
        x0,
        edit_mask=torch.ones(1),
        keep_mask=torch.zeros(1),
        params=params,
        noise=NoiseSource([1, 2]),
        progress=Progress(),
        conditions=conditions,
    )
    # The sampler runs in float64, so only the network's own float32 arithmetic remains: a network
    # gives ~1e-7 different answers for the doubled classifier-free-guidance batch than for the
    # inversion's batch, which 1/sqrt(alpha_bar) amplifies over the steps.
    tolerance = 1e-3 if model.text_conditioned and name != "analytic" else 1e-9
    torch.testing.assert_close(out, x0, rtol=0, atol=tolerance)


def test_last_inversion_step_is_finite_where_reference_divides_by_zero():
    model = analytic()
    schedule = model.schedule
    t_last = schedule.timesteps(10)[-1]
    assert schedule.sigma(t_last, FINAL, 1.0) == 0.0  # z = residual / sigma would be NaN here
    x0 = torch.randn(1, 1, 16, 16)
    out = radedit(
        model,
        x0,
        edit_mask=torch.ones(1),
        keep_mask=torch.zeros(1),
        params=RadEditParams(prompt="", steps=10, skip=0, guidance=1.0),
        noise=NoiseSource([0]),
        progress=Progress(),
    )
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- exactness at native resolution


def test_radedit_keep_mask_bit_identical_at_native_resolution():
    image = phantom_slice((23, 37))  # not square, not the model's size: resampled both ways
    keep = np.zeros(image.shape, bool)
    keep[:, :15] = True
    edit_mask = np.zeros(image.shape, bool)
    edit_mask[5:18, 20:33] = True
    result = edit(
        "radedit",
        image,
        model=tiny_models.text_unet(),
        prompt="effusion",
        steps=8,
        skip=2,
        edit_mask=edit_mask,
        keep_mask=keep,
        seed=3,
    )
    out = result.image.array
    assert out.dtype == image.dtype and out.shape == image.shape
    np.testing.assert_array_equal(out[keep], image[keep])
    assert not np.array_equal(out[edit_mask], image[edit_mask])


def volume_with_lesion(shape=(20, 24, 6)):
    volume = np.stack([phantom_slice(shape[:2], seed=k) for k in range(shape[2])], axis=-1).astype(np.int16)
    brain = np.zeros(shape, bool)
    brain[2:-2, 2:-2, :] = True
    lesion = np.zeros(shape, bool)
    lesion[8:12, 9:13, 2:4] = True
    return volume, brain, lesion


def test_mededit_changes_only_the_inpainting_mask_and_touched_slices():
    volume, brain, lesion = volume_with_lesion()
    image = MedicalImage(volume, np.diag([0.9, 0.9, 3.0, 1.0]))
    result = edit(
        "mededit",
        image,
        model=tiny_models.monai_unet(),
        pathology_mask=lesion,
        brain_mask=brain,
        axis=2,
        steps=10,
        seed=1,
    )
    out, inpaint = result.image.array, result.masks["inpaint_mask"]
    assert result.edited_slices == [2, 3]
    np.testing.assert_array_equal(out[~inpaint], volume[~inpaint])
    np.testing.assert_array_equal(out[..., [0, 1, 4, 5]], volume[..., [0, 1, 4, 5]])
    assert inpaint[lesion].all() and not inpaint[~brain].any() and inpaint.sum() > lesion.sum()
    assert (out[inpaint] != volume[inpaint]).mean() > 0.5
    np.testing.assert_array_equal(result.image.affine, image.affine)


def test_mededit_with_an_exact_denoiser_paints_the_conditional_mean():
    """std -> 0: the analytic model knows x0 exactly, so the inpainted region is its mean."""
    model = GaussianDenoiser(
        tiny_models.scheduler("ddpm"),
        resolution=24,
        std=0.0,
        means={"": -0.5},
        condition_names=("pathology_mask", "brain_mask"),
        condition_shift=1.0,
        value_range=(0.0, 1.0),
    )
    volume, brain, lesion = volume_with_lesion((24, 24, 6))
    volume, brain, lesion = volume[..., 2:3], brain[..., 2:3], lesion[..., 2:3]
    window_low, window_high = np.percentile(volume, (0.5, 99.5))
    result = edit(
        "mededit",
        volume[..., 0],
        model=model,
        pathology_mask=lesion[..., 0],
        brain_mask=brain[..., 0],
        steps=50,
        dilation=5,
    )
    out, inpaint = result.image.array, result.masks["inpaint_mask"]

    def expected(unit):
        return np.clip(np.round(unit * (window_high - window_low) + window_low), volume.min(), volume.max())

    np.testing.assert_allclose(out[lesion[..., 0]], expected(0.5), atol=1)  # mean -0.5 + shift 1.0
    ring = inpaint & ~lesion[..., 0]
    np.testing.assert_allclose(out[ring], expected(-0.5), atol=1)


# ---------------------------------------------------------------- every method


CASES = {
    "radedit": dict(model="text-unet", prompt="effusion", steps=4, skip=1, edit_mask=True),
    "mededit": dict(model="monai-unet", steps=3, jump_n_sample=2, pathology_mask=True, brain_mask=True),
    "pie": dict(model="text-unet", prompt="effusion", iterations=2, steps=6, roi_mask=True),
    "sdedit": dict(model="pixel-unet", strength=0.5, steps=4),
    "repaint": dict(model="pixel-unet", steps=4, jump_length=2, jump_n_sample=2, pathology_mask=True),
    "diffedit": dict(model="latent-text-unet", prompt="effusion", steps=4, strength=0.5, edit_mask=True),
    "instruct": dict(model="instruct-unet", prompt="add a right pleural effusion", steps=4),
    "instructx2x": dict(model="instruct-unet", prompt="add a right pleural effusion", steps=4, roi_mask=True),
}
CASE_MODELS = {**MODELS, "instruct-unet": tiny_models.instruct_unet}


def run_case(method, seed=0, image=None, **overrides):
    case = {**CASES[method], **overrides}
    model = CASE_MODELS[case.pop("model")]()
    image = phantom_slice() if image is None else image
    region = np.zeros(image.shape, bool)
    region[4:10, 5:11] = True
    brain = np.ones(image.shape, bool)
    for name in ("edit_mask", "pathology_mask", "roi_mask"):
        if case.get(name) is True:
            case[name] = region
    if case.get("brain_mask") is True:
        case["brain_mask"] = brain
    return edit(method, image, model=model, seed=seed, **case)


def test_every_method_is_registered_with_a_case():
    assert set(METHODS) == set(CASES)


# A value other than the default for every run option; a new option must join (the first test says so).
OTHER_RUN_OPTIONS = [
    ("seed", 3),
    ("axis", "coronal"),
    ("slices", "1:3"),
    ("batch_size", 1),
    *[("slice_noise", kind) for kind in SliceNoise],
    ("noise_correlation_mm", 2.0),
    ("through_plane_smoothing", 0.5),
    *[("precision", kind) for kind in Precision],
    ("samples", 2),
    ("cache_interval", 2),
    ("compile_network", True),
]
# Besides each method's case model, the model kinds that take a method down another path: a VAE
# (PIE's reference loop re-encodes with a posterior sample), an Euler ancestral scheduler (fractional
# timesteps and step noise drawn by the scheduler, as public InstructPix2Pix checkpoints ship).
OTHER_MODELS = {
    "pie": "latent-text-unet",
    "instruct": "instruct-unet-euler",
    "instructx2x": "instruct-unet-euler",
}
CASE_MODELS["instruct-unet-euler"] = lambda: tiny_models.instruct_unet(scheduler_kind="euler-ancestral")


def test_every_run_option_has_another_value_to_try():
    assert {name for name, _ in OTHER_RUN_OPTIONS} == {item.name for item in fields(RunOptions)}


@pytest.mark.parametrize("method, model", [*((m, CASES[m]["model"]) for m in CASES), *OTHER_MODELS.items()])
def test_every_method_runs_on_a_volume_with_every_run_option(method, model, monkeypatch):
    """Each method, each model path, each run option away from its default: a finite edit that leaves
    the slices it did not edit bit-identical."""
    monkeypatch.setattr(torch, "compile", lambda network, **_: network)  # compiling: the tests below
    volume, brain, lesion = volume_with_lesion((16, 16, 4))
    lesion[4:10, 5:11, :] = True
    image = MedicalImage(volume, np.diag([1.0, 1.2, 2.5, 1.0]))
    case = {**CASES[method], "steps": 2}
    case.pop("model")
    case.update(
        {
            name: {"edit_mask": lesion, "pathology_mask": lesion, "roi_mask": lesion, "brain_mask": brain}[
                name
            ]
            for name, value in case.items()
            if value is True
        }
    )
    if "skip" in case:
        case["skip"] = 0
    loaded = CASE_MODELS[model]()
    for name, value in OTHER_RUN_OPTIONS:
        options = RunOptions(**{"axis": "2", name: value}).edit_arguments()
        result = edit(method, image, model=loaded, **options, **case)
        out = result.image.array
        assert np.isfinite(out).all() and out.shape == volume.shape, (name, value)
        axis = 1 if options["axis"] == "coronal" else options["axis"]  # the affine is diagonal: RAS order
        untouched = [i for i in range(volume.shape[axis]) if i not in result.edited_slices]
        np.testing.assert_array_equal(np.take(out, untouched, axis), np.take(volume, untouched, axis))
        assert took_effect(name, value, result.provenance), (name, value)


def took_effect(name: str, value, provenance: dict) -> bool:
    """What the edit records of a run option it was given: an option read and dropped fails here."""
    if name == "slices":
        return provenance["slices"] == list(range(*(int(v) for v in value.split(":"))))
    if name == "samples":
        return provenance["samples"][0] == provenance["seed"] and len(provenance["samples"]) == value
    if name == "precision":  # auto: float32 on a CPU without native bfloat16, bfloat16 on one with it
        return value is Precision.auto or provenance["precision"] == value.value
    return provenance[name] == getattr(value, "value", value)


@pytest.mark.parametrize("method", list(CASES))
def test_method_output_is_finite_reproducible_and_traceable(method):
    first, again, other = run_case(method), run_case(method), run_case(method, seed=1)
    assert np.all(np.isfinite(first.image.array))
    np.testing.assert_array_equal(first.image.array, again.image.array)
    if method != "diffedit":  # DDIM inversion and sampling draw no noise at all
        assert not np.array_equal(first.image.array, other.image.array)
    provenance = json.loads(json.dumps(first.provenance))
    assert provenance["method"] == method and provenance["seed"] == 0
    assert provenance["model"]["weights_sha256"] and provenance["napari_medit"]
    assert provenance["model_evaluations"] > 0
    assert first.image.metadata["edit"]["method"] == method


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_no_nan_for_any_step_count(steps):
    for method in ("radedit", "sdedit", "repaint", "mededit"):
        overrides = {"steps": steps}
        if method == "radedit":
            overrides["skip"] = 0
        if method == "sdedit":
            overrides["strength"] = 1.0
        out = run_case(method, **overrides).image.array
        assert np.all(np.isfinite(out)), method


def test_pie_returns_every_step():
    result = run_case("pie", iterations=3)
    assert len(result.progression) == 3
    assert result.progression[-1] is result.image
    region = np.zeros((16, 16), bool)
    region[4:10, 5:11] = True
    for step in result.progression:
        np.testing.assert_array_equal(step.array[~region], phantom_slice()[~region])


def test_batching_does_not_change_a_slice():
    volume, _brain, lesion = volume_with_lesion((16, 16, 5))
    lesion[8:12, 9:13, :] = True
    outs = [
        edit(
            "sdedit",
            volume,
            model=tiny_models.pixel_unet(),
            axis=2,
            strength=0.5,
            steps=4,
            edit_mask=lesion,
            batch_size=b,
            seed=7,
        ).image.array
        for b in (1, 5)
    ]
    np.testing.assert_allclose(outs[0], outs[1], atol=2)  # int16 rounding of float-level differences


def test_cancel_stops_within_one_step():
    cancel = threading.Event()
    seen = []

    def on_step(progress):
        seen.append(progress.step)
        if progress.step == 3:
            cancel.set()

    model = tiny_models.pixel_unet()
    passes = []
    model.network.register_forward_hook(lambda *_: passes.append(1))
    with pytest.raises(EditCancelled):
        edit("sdedit", phantom_slice(), model=model, strength=1.0, steps=20, callback=on_step, cancel=cancel)
    assert seen == [1, 2, 3]
    assert len(passes) == 3
    assert model.evaluations == 0  # an edit counts on its own view of the model, never on the shared one


def test_progress_reports_totals_and_previews():
    reports = []
    run_case("radedit", callback=lambda p: reports.append((p.step, p.total, p.preview().shape)))
    assert [r[0] for r in reports] == list(range(1, len(reports) + 1))
    assert all(total == len(reports) for _, total, _ in reports)
    assert reports[0][2] == (1, 16, 16)


# ---------------------------------------------------------------- RePaint against diffusers


class ScriptedNoise(NoiseSource):
    """Replays diffusers' RePaintScheduler draws: one per denoising step, shared by the
    known and unknown parts (as diffusers does), one per jump step."""

    def __init__(self, seed):
        super().__init__([0])
        self.generator = torch.Generator().manual_seed(seed)
        self.last = None

    def draw(self, shape, kind=""):
        if kind == "known":
            return self.last
        self.last = torch.randn((1, *shape), generator=self.generator)
        return self.last


def test_naive_repaint_matches_diffusers_repaint_scheduler():
    from diffusers import RePaintScheduler

    from napari_medit.editing.repaint import RePaintParams, repaint

    # A short chain with a gentle schedule, so that one model call per timestep (diffusers' RePaint
    # walks every training timestep when asked for as many steps) stays cheap and well conditioned.
    train_steps, betas = 40, dict(beta_start=1e-4, beta_end=0.05, beta_schedule="linear")
    model = tiny_models.pixel_unet()
    model.schedule = NoiseSchedule.from_scheduler(
        DDIMScheduler(num_train_timesteps=train_steps, **betas, timestep_spacing="leading", clip_sample=False)
    )
    x0 = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)
    inpaint = torch.zeros(1, 1, 16, 16)
    inpaint[..., 4:12, 4:12] = 1
    ours = repaint(
        model,
        x0,
        inpaint_mask=inpaint,
        params=RePaintParams(steps=train_steps, jump_length=5, jump_n_sample=3),
        noise=ScriptedNoise(11),
        progress=Progress(),
    )

    reference = RePaintScheduler(num_train_timesteps=train_steps, **betas, eta=1.0, clip_sample=False)
    reference.set_timesteps(train_steps, jump_length=5, jump_n_sample=3)
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(x0.shape, generator=generator)
    t_last = reference.timesteps[0] + 1
    with torch.no_grad():
        for t in reference.timesteps:
            if t < t_last:
                eps = model.unet(x, t).sample
                x = reference.step(eps, t, x, x0, 1 - inpaint, generator).prev_sample
            else:
                x = reference.undo_step(x, t_last, generator)
            t_last = t
    torch.testing.assert_close(ours.float(), x, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours[inpaint.bool()].float(), x0[inpaint.bool()], atol=0.1)  # it did inpaint


# ---------------------------------------------------------------- bad requests


def test_bad_requests_fail_with_one_clear_message():
    image = phantom_slice()
    region = np.zeros(image.shape, bool)
    region[3:6, 3:6] = True
    text, monai, pixel = tiny_models.text_unet(), tiny_models.monai_unet(), tiny_models.pixel_unet()
    cases = [
        (dict(method="warp", model=text), "unknown method"),
        (dict(method="radedit", model=text, edit_mask=np.zeros((4, 4))), "shape"),
        (dict(method="radedit", model=text, edit_mask=np.zeros(image.shape)), "empty"),
        (dict(method="radedit", model=pixel), "no text conditioning"),
        (dict(method="sdedit", model=pixel, prompt="effusion"), "takes no prompt"),
        (
            dict(method="mededit", model=pixel, pathology_mask=region, brain_mask=region),
            "needs a model conditioned on pathology_mask and brain_mask",
        ),
        (dict(method="mededit", model=monai, pathology_mask=region, brain_mask=~region), "outside the brain"),
        (dict(method="radedit", model=text, steps=0), "steps must be at least 1"),
        (dict(method="radedit", model=text, steps=10, skip=10), "skip must be in"),
        (dict(method="radedit", model=text, strenght=0.3), "no parameter 'strenght'"),
        (dict(method="pie", model=text), "needs a roi_mask"),
        (dict(method="repaint", model=monai, pathology_mask=region), "give brain_mask"),
    ]
    for kwargs, message in cases:
        with pytest.raises(EditError, match=message):
            edit(kwargs.pop("method"), image, **kwargs)

    with pytest.raises(EditError, match="NaN"):
        edit("sdedit", np.where(region, np.nan, image), model=pixel)
    with pytest.raises(EditError, match="constant"):
        edit("sdedit", np.ones((16, 16)), model=pixel)
    with pytest.raises(EditError, match="2D images and 3D volumes"):
        edit("sdedit", np.ones((2, 3, 16, 16)), model=pixel)
    mask_image = MedicalImage(region.astype(np.uint8), np.diag([2.0, 2.0, 1.0, 1.0]))
    with pytest.raises(EditError, match="different affine"):
        edit("diffedit", MedicalImage(image, np.eye(4)), model=text, prompt="effusion", edit_mask=mask_image)


def test_source_is_never_modified():
    image = phantom_slice()
    before = image.copy()
    run_case("radedit", image=image)
    np.testing.assert_array_equal(image, before)


def test_named_plane_gives_the_model_the_same_slices_whatever_the_voxel_order():
    volume, _, lesion = volume_with_lesion((12, 14, 6))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # RAS voxels: axial slices lie along array axis 2
    image = MedicalImage(volume, affine)
    options = dict(strength=0.5, steps=4, seed=2)
    by_name = edit("sdedit", image, model=tiny_models.pixel_unet(), axis="axial", edit_mask=lesion, **options)
    shown = image.reoriented()  # (S, P, L): axial slices along axis 0, radiological view
    by_index = edit(
        "sdedit",
        shown,
        model=tiny_models.pixel_unet(),
        axis=0,
        edit_mask=MedicalImage(lesion, affine).reoriented().array,
        **options,
    )
    np.testing.assert_array_equal(
        by_name.image.array, shown.with_array(by_index.image.array).in_source_orientation().array
    )
    assert by_name.provenance["axis"] == "axial" and by_name.edited_slices == [2, 3]
    np.testing.assert_array_equal(by_name.masks["edit_mask"], lesion)


def test_out_of_gpu_memory_retries_with_smaller_batches_and_says_so():
    """Simulated: a model that runs out of memory above two slices per call."""
    volume, _, lesion = volume_with_lesion((16, 16, 4))
    lesion[..., :] = lesion[..., 2:3]
    model = tiny_models.pixel_unet()
    inner = model.model_output

    def limited(x_t, t, text, conditions):
        if x_t.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return inner(x_t, t, text, conditions)

    model.model_output = limited
    options = dict(axis=2, strength=0.5, steps=4, edit_mask=lesion, seed=5)
    with pytest.warns(UserWarning, match="out of GPU memory with 4 slices per batch; retrying with 2"):
        retried = edit("sdedit", volume, model=model, batch_size=4, **options)
    model.model_output = inner
    reference = edit("sdedit", volume, model=model, batch_size=2, **options)
    np.testing.assert_array_equal(retried.image.array, reference.image.array)


def test_mask_only_methods_run_unconditionally_on_text_models():
    """SDEdit and RePaint take no prompt: a text model is driven with the empty prompt."""
    image = phantom_slice()
    region = np.zeros(image.shape, bool)
    region[4:10, 5:11] = True
    model = tiny_models.text_unet()
    for method, options in (
        ("sdedit", dict(strength=0.5, steps=4, edit_mask=region)),
        ("repaint", dict(steps=3, jump_length=1, jump_n_sample=1, pathology_mask=region)),
    ):
        out = edit(method, image, model=model, **options).image.array
        assert np.all(np.isfinite(out)) and not np.array_equal(out[region], image[region])
        np.testing.assert_array_equal(out[~region], image[~region])


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_progress_slices_are_given_as_the_source_array_holds_them(plane):
    """Whatever plane an edit slices along, previews are planes of the source array at the reported
    indices."""
    from napari_medit.editing.run import _in_source_order
    from napari_medit.io.image import PLANES, apply_orientation, plane_axis, plane_transforms

    volume = np.random.default_rng(0).random((5, 6, 7))
    # permuted and flipped
    affine = np.array([[0, 0, -2.0, 10], [1.5, 0, 0, -4], [0, -1.0, 0, 3], [0, 0, 0, 1]])
    there, back = plane_transforms(affine, PLANES[plane])
    in_plane_order = apply_orientation(volume, there)
    chunk = [1, 3, 4]
    axis, indices, planes = _in_source_order(
        chunk, in_plane_order[chunk], axis=0, back=back, count=in_plane_order.shape[0]
    )
    np.testing.assert_array_equal(planes, np.moveaxis(volume, axis, 0)[indices])
    source_axis, flipped = plane_axis(affine, plane)
    assert source_axis == axis
    count = volume.shape[axis]
    assert indices == sorted(count - 1 - i for i in chunk) if flipped else indices == chunk


def test_inpainting_mask_is_the_binary_dilation_by_a_square_and_the_brain():
    """MedEdit's dilate(pathology) AND brain, against scipy's binary dilation by the k x k square."""
    from scipy.ndimage import binary_dilation

    from napari_medit.masks import inpainting_mask

    rng = np.random.default_rng(3)
    pathology = rng.random((3, 40, 33)) > 0.995
    pathology[1, 0, 0] = pathology[2, -1, -1] = True  # at the borders: nothing wraps or leaks
    brain = rng.random((3, 40, 33)) > 0.2
    for kernel in (1, 3, 9, 25):
        square = np.ones((1, kernel, kernel), bool)
        expected = binary_dilation(pathology, structure=square) & brain
        np.testing.assert_array_equal(inpainting_mask(pathology, brain, kernel), expected)


def test_auto_precision_is_what_the_device_computes_natively(monkeypatch):
    from napari_medit.editing.run import network_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert network_precision("auto", torch.device("cpu")) is torch.float32  # bfloat16 would be emulated
    assert network_precision("auto", torch.device("cuda")) is torch.float16
    assert network_precision("bfloat16", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert network_precision(Precision.auto, torch.device("cpu")) is torch.bfloat16


def test_reduced_precision_changes_only_the_edited_region_and_is_recorded():
    """bfloat16 changes the network's arithmetic only: the keep mask stays bit-identical, the edit
    stays close to float32's, and the provenance says what ran."""
    image = phantom_slice((32, 32))
    edit_mask, keep_mask = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    edit_mask[8:24, 8:20] = True
    keep_mask[12:16, 12:16] = True
    model = tiny_models.text_unet(32)
    run = dict(
        model=model, prompt="effusion", steps=6, skip=0, edit_mask=edit_mask, keep_mask=keep_mask, seed=2
    )
    full = edit("radedit", image, precision="float32", **run)
    brain = edit("radedit", image, precision="bfloat16", **run)
    assert (full.provenance["precision"], brain.provenance["precision"]) == ("float32", "bfloat16")
    for result in (full, brain):  # RadEdit may change all but its keep mask
        np.testing.assert_array_equal(result.image.array[keep_mask], image[keep_mask])
    changed = edit_mask & ~keep_mask
    assert not np.array_equal(full.image.array[changed], brain.image.array[changed])
    span = float(image.max() - image.min())
    assert np.abs(full.image.array[changed] - brain.image.array[changed]).mean() < 0.05 * span
    assert next(model.network.parameters()).dtype == torch.float32 and model.compute_dtype is None


@pytest.mark.parametrize("build", [tiny_models.text_unet, tiny_models.monai_unet], ids=["diffusers", "monai"])
def test_a_compiled_network_gives_the_eager_result_and_is_compiled_once(monkeypatch, build):
    """compile_network runs the network through torch.compile (traced here with its "eager" backend:
    the same kernels, no C++ build), keeps the compiled form with the model for the next edit, and
    the provenance says so; the result is the uncompiled one."""
    from napari_medit.editing.denoiser import NetworkDenoiser

    monkeypatch.setattr(NetworkDenoiser, "compile_backend", "eager")
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compiled.append(net) or real_compile(net, **kw))
    image, mask = phantom_slice((32, 32)), np.zeros((32, 32), bool)
    mask[8:24, 8:20] = True
    model = build()
    method, masks = (
        ("mededit", dict(pathology_mask=mask, brain_mask=np.ones_like(mask)))
        if build is tiny_models.monai_unet
        else ("radedit", dict(edit_mask=mask, prompt="effusion"))
    )
    run = dict(model=model, steps=3, seed=4, **masks)
    if method == "radedit":
        run["skip"] = 0
    eager = edit(method, image, **run)
    fast = edit(method, image, compile_network=True, **run)
    again = edit(method, image, compile_network=True, **run)
    assert compiled == [model.network]  # once, for both compiled edits
    np.testing.assert_allclose(fast.image.array, eager.image.array, rtol=0, atol=1e-6 * float(np.ptp(image)))
    np.testing.assert_array_equal(again.image.array, fast.image.array)
    assert (eager.provenance["compile_network"], fast.provenance["compile_network"]) == (False, True)
    assert fast.provenance["model_evaluations"] > 0
    assert not model._run_compiled  # the shared model is left as it was: each edit compiles its own view


def test_a_network_torch_compile_cannot_compile_fails_with_one_message(monkeypatch):
    from napari_medit.editing.denoiser import NetworkDenoiser

    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(NetworkDenoiser, "compile_backend", no_compiler)
    image, mask = phantom_slice((32, 32)), np.zeros((32, 32), bool)
    mask[8:24, 8:20] = True
    model, brain = tiny_models.monai_unet(), np.ones_like(mask)
    with pytest.raises(EditError, match=r"torch.compile could not compile .*run without compile_network"):
        edit(
            "mededit",
            image,
            model=model,
            pathology_mask=mask,
            brain_mask=brain,
            steps=2,
            compile_network=True,
        )
    assert (
        edit("mededit", image, model=model, pathology_mask=mask, brain_mask=brain, steps=2).image.array.shape
        == image.shape
    )
