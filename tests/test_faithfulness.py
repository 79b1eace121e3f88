"""Parity with the reference implementations, one test per known difference (issue: faithful to the
reference code). Written from the references' equations and the schedulers they use, not their code."""

import json

import numpy as np
import pytest
import tiny_models
import torch
from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler

from napari_medit import catalogue
from napari_medit.catalogue import PIELoop, PIEParams
from napari_medit.editing import EditError, edit
from napari_medit.editing.control import NoiseSource, Progress
from napari_medit.editing.ddpm import NoiseSchedule
from napari_medit.editing.inversion import invert
from napari_medit.editing.pie import INSIDE_ROI_KEEP, OUTSIDE_ROI_KEEP, pie
from napari_medit.editing.repaint import repeat_schedule
from napari_medit.editing.run import _to_model_range
from napari_medit.editing.slicing import binarised, to_latent_grid
from napari_medit.preprocessing import Fit, Grid, Intensity, IntensityWindow, Preprocessing
from napari_medit.testing import GaussianDenoiser


def analytic(scheduler=None, resolution=16, **kwargs):
    return GaussianDenoiser(scheduler or tiny_models.scheduler(), resolution=resolution, **kwargs)


# ---------------------------------------------------------------- 1. each model fed as it was trained


def test_radedit_preprocessing_centre_crops_and_min_maxes_exactly():
    """RadEdit (App. D): centre crop, min-max to [-1, 1]. A 8 x 12 slice at an 8 px model: no resize,
    so the model's input is the centre 8 x 8 columns 2..9, (v - min) / (max - min) * 2 - 1 exactly."""
    source = np.arange(96, dtype=np.float64).reshape(1, 8, 12) * 3 + 7
    model = analytic(resolution=8, preprocessing=Preprocessing(Fit.center_crop, Intensity.min_max))
    window = IntensityWindow.of(source, Intensity.min_max)
    x = _to_model_range(model, source, window, Grid(8, 12, 8, Fit.center_crop))
    expected = (source[:, :, 2:10] - source.min()) / (source.max() - source.min()) * 2 - 1
    np.testing.assert_allclose(x[:, 0].double().numpy(), expected, rtol=0, atol=1e-6)


def test_eight_bit_intensities_are_the_png_values():
    """PIE/SD fine-tunes and MedEdit read 8-bit PNGs: a uint8 source maps to v / 255 exactly; any other
    source is min-max scaled to 0..255 and rounded to integer levels first, as writing the PNG would."""
    uint8 = np.array([[0, 17, 128, 255]], dtype=np.uint8)
    window = IntensityWindow.of(uint8, Intensity.eight_bit)
    np.testing.assert_array_equal(window.to_unit(uint8), uint8 / 255.0)
    int16 = np.array([[-1000, -999, 0, 3000]], dtype=np.int16)
    window = IntensityWindow.of(int16, Intensity.eight_bit)
    levels = np.round((int16 + 1000) / 4000 * 255)  # -999 rounds to level 0, 0 to level 64
    np.testing.assert_array_equal(window.to_unit(int16), levels / 255)
    assert window.describe() == {"intensity": "8-bit", "low": -1000.0, "high": 3000.0}


def test_centre_crop_keeps_what_the_model_never_sees_bit_identical():
    """Pixels cropped away are never edited: with an edit mask over the whole image, the result equals
    the source outside the centred square, and the provenance says how the slice was fit."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, size=(20, 32)).astype(np.int16)
    model = analytic(
        means={"": 0.0, "clear": -0.8}, preprocessing=Preprocessing(Fit.center_crop, Intensity.min_max)
    )
    with pytest.warns(UserWarning, match="38% of the edit_mask lies outside the centred 20x20 square"):
        result = edit(
            "radedit",
            image,
            model=model,
            edit_mask=np.ones_like(image),
            prompt="clear",
            steps=6,
            guidance=3.0,
        )
    out = result.image.array
    np.testing.assert_array_equal(out[:, :6], image[:, :6])
    np.testing.assert_array_equal(out[:, 26:], image[:, 26:])
    assert not np.array_equal(out[:, 6:26], image[:, 6:26])
    assert result.provenance["preprocessing"] == {
        "fit": "center-crop",
        "resolution": 16,
        "region": [0, 6, 20, 20],
        "intensity": "min-max",
        "low": float(image[:, 6:26].min()),
        "high": float(image[:, 6:26].max()),
    }


def test_the_intensity_window_is_taken_after_the_centre_crop():
    """RadEdit's App. D crops, then min-maxes: burned-in text in the band cropped away (here 4095 in
    the outer columns) must not shift the mapping of the centre the model sees."""
    rng = np.random.default_rng(2)
    image = rng.integers(100, 900, size=(16, 24)).astype(np.int16)
    image[2:5, :3] = 4095  # a marker left of the centred 16 x 16 square
    model = analytic(
        resolution=16,
        means={"": 0.0, "clear": -0.8},
        preprocessing=Preprocessing(Fit.center_crop, Intensity.min_max),
    )
    mask = np.zeros_like(image, bool)
    mask[6:10, 10:14] = True
    result = edit("radedit", image, model=model, edit_mask=mask, prompt="clear", steps=4, guidance=3.0)
    centre = image[:, 4:20]
    assert result.provenance["preprocessing"]["low"] == centre.min()
    assert result.provenance["preprocessing"]["high"] == centre.max() < 4095
    out = result.image.array
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert out[mask].max() <= centre.max()  # decoded values map back into the centre's range


def test_a_mask_outside_the_crop_is_refused_and_one_partly_outside_warned():
    image = np.random.default_rng(1).random((16, 40)).astype(np.float32)
    model = analytic(preprocessing=Preprocessing(Fit.center_crop, Intensity.window))
    outside = np.zeros(image.shape, bool)
    outside[4:8, 1:5] = True  # the centred square is columns 12..27
    with pytest.raises(EditError, match="outside the centred square"):
        edit("sdedit", image, model=model, edit_mask=outside, steps=4)
    straddling = np.zeros(image.shape, bool)
    straddling[4:8, 8:16] = True
    with pytest.warns(UserWarning, match="50% of the edit_mask lies outside"):
        edit("sdedit", image, model=model, edit_mask=straddling, steps=4)


def test_model_folders_declare_their_preprocessing(tmp_path):
    from napari_medit.backends import ModelLoadError, load_model, save_model

    model = tiny_models.monai_unet()
    model.preprocessing = Preprocessing(Fit.pad, Intensity.eight_bit)
    folder = save_model(
        tmp_path / "m",
        model,
        {
            "resolution": 16,
            "value_range": [0, 1],
            "condition_names": ["pathology_mask", "brain_mask"],
            "network": dict(
                spatial_dims=2,
                in_channels=3,
                out_channels=1,
                channels=[8, 16],
                attention_levels=[False, True],
                num_res_blocks=1,
                num_head_channels=8,
                norm_num_groups=4,
            ),
            "scheduler": {"class": "DDPMScheduler", "num_train_timesteps": 1000},
        },
    )
    assert json.loads((folder / "medit.json").read_text())["preprocessing"] == {
        "fit": "pad",
        "intensity": "8-bit",
    }
    assert load_model(folder).preprocessing == Preprocessing(Fit.pad, Intensity.eight_bit)
    config = json.loads((folder / "medit.json").read_text())
    config["preprocessing"] = {"fit": "stretch"}
    (folder / "medit.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="fit must be one of 'pad', 'center-crop', got 'stretch'"):
        load_model(folder)


def test_bundled_demo_models_keep_what_they_were_trained_with():
    from napari_medit.backends import load_model

    for name in ("demo-brain", "demo-cxr"):
        assert load_model(name).preprocessing == Preprocessing(Fit.pad, Intensity.window)


# ---------------------------------------------------------------- 2. the scheduler's settings honoured


def test_clip_sample_step_equals_monai_ddpm_step():
    """MONAI's DDPMScheduler clips x0 to [-1, 1] by default (MedEdit's scheduler too): our DDPM step
    with the same noise is MONAI's step, for an eps large enough that the clip matters."""
    from monai.networks.schedulers import DDPMScheduler as MonaiDDPM

    scheduler = MonaiDDPM(num_train_timesteps=1000, schedule="linear_beta")
    schedule = NoiseSchedule.from_scheduler(scheduler)
    assert schedule.clip_range == (-1.0, 1.0)
    x_t = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2
    eps = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 3
    t = 400
    theirs, x0_theirs = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(eps.size(), generator=torch.Generator().manual_seed(2))
    ours = schedule.step(x_t.double(), eps.double(), t, t - 1, 1.0, noise.double())
    assert (x0_theirs.abs() == 1).any()  # the clip took effect
    torch.testing.assert_close(
        schedule.predict_x0(x_t.double(), eps.double(), t), x0_theirs.double(), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(ours, theirs.double(), atol=1e-5, rtol=0)


def test_clip_sample_step_equals_diffusers_ddim_step():
    """diffusers' DDIM clips x0_hat and keeps the network's eps in the direction term."""
    scheduler = DDIMScheduler(clip_sample=True, clip_sample_range=0.5, set_alpha_to_one=True)
    scheduler.set_timesteps(20)
    schedule = NoiseSchedule.from_scheduler(scheduler)
    x_t = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)).double()
    eps = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(4)).double()
    t, t_prev = 500, 450
    theirs = scheduler.step(eps, t, x_t, eta=0.0).prev_sample
    torch.testing.assert_close(schedule.step(x_t, eps, t, t_prev, 0.0, None), theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "setting, message",
    [
        (dict(thresholding=True), "thresholding=True"),
        (dict(variance_type="learned_range"), "variance_type"),
    ],
)
def test_settings_the_engine_cannot_honour_are_refused(setting, message):
    with pytest.raises(ValueError, match=message):
        NoiseSchedule.from_scheduler(DDPMScheduler(**setting))


def test_provenance_states_the_scheduler_settings_applied():
    model = tiny_models.monai_unet()
    image = np.random.default_rng(2).random((16, 16)).astype(np.float32)
    mask = np.zeros((16, 16), bool)
    mask[5:9, 5:9] = True
    result = edit("mededit", image, model=model, pathology_mask=mask, brain_mask=np.ones_like(mask), steps=3)
    assert result.provenance["scheduler"] == {
        "class": "DDPMScheduler",
        "prediction_type": "epsilon",
        "clip_sample": [-1.0, 1.0],
        "final_alpha_cumprod": 1.0,
    }


# ---------------------------------------------------------------- 3. PIE as its official script runs


class RecordingDenoiser(GaussianDenoiser):
    """The analytic denoiser, recording the timesteps it is asked at."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked = []

    def model_output(self, x_t, t, text, conditions):
        self.asked.append(t)
        return super().model_output(x_t, t, text, conditions)


def pndm():
    # sd-v1-4's scheduler
    return PNDMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )


def test_pie_reference_loop_is_run_pie_with_the_models_own_scheduler():
    """Written from run_pie.py and its pipeline, with PNDM: each iteration (a call of the pipeline, with
    draws of its own) noises the previous 8-bit image to timesteps[steps - int(steps * strength)],
    replaces the outside of the ROI by the original noised (one noise per call) to t before every step
    but the first, steps PLMS, blends 0.01 / 0.75, then decodes to an 8-bit image."""
    model = RecordingDenoiser(pndm(), resolution=8, means={"": 0.0, "effusion": 0.7})
    x0 = torch.linspace(-0.9, 0.9, 64, dtype=torch.float64).reshape(1, 1, 8, 8)
    roi = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    roi[..., 2:6, 2:6] = 1
    params = PIEParams(
        prompt="effusion", iterations=2, steps=10, strength=0.5, guidance=4.0, loop=PIELoop.reference
    )
    ours = pie(model, x0, roi_mask=roi, params=params, noise=NoiseSource([5]), progress=Progress())

    noise = NoiseSource([5])  # the same streams, drawn in the loop's order
    scheduler, text = pndm(), model.embed(["effusion", ""], 1)
    current, expected = x0, []
    for _ in range(2):
        known_noise = noise.draw((1, 8, 8), "known")  # drawn anew by every call of the pipeline
        scheduler.set_timesteps(10)
        timesteps = scheduler.timesteps[10 - 5 :]
        x = scheduler.add_noise(current, noise.draw((1, 8, 8), "img2img").double(), timesteps[:1])
        for i, t in enumerate(timesteps):
            if i > 0:
                x = roi * x + (1 - roi) * scheduler.add_noise(x0, known_noise.double(), t[None])
            eps_u = model.model_output(x, int(t), text[1], None)
            eps_c = model.model_output(x, int(t), text[0], None)
            x = scheduler.step(eps_u + 4.0 * (eps_c - eps_u), t, x).prev_sample
        z = ((x - x0) * 0.01 + x0) * (1 - roi) + ((x - x0) * 0.75 + x0) * roi
        expected.append(z)
        current = torch.round(((z + 1) / 2).clamp(0, 1) * 255) / 255 * 2 - 1
    assert (OUTSIDE_ROI_KEEP, INSIDE_ROI_KEEP) == (0.01, 0.75)
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # PNDM's list for 10 steps has 11 entries: the pipeline's slice [5:] holds 6, from one step higher
    # (one call per step: both guidance passes go in one batch).
    assert model.asked[:6] == [int(t) for t in pndm_timesteps(10)[5:]] == [501, 401, 301, 201, 101, 1]


def pndm_timesteps(steps):
    scheduler = pndm()
    scheduler.set_timesteps(steps)
    return scheduler.timesteps


def test_pie_reference_loop_refuses_a_model_that_does_not_predict_noise():
    model = analytic(
        DDIMScheduler(prediction_type="v_prediction"), resolution=8, means={"": 0.0, "effusion": 0.5}
    )
    roi = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    params = PIEParams(prompt="effusion", iterations=1, steps=4, loop=PIELoop.reference)
    with pytest.raises(ValueError, match="this model predicts v_prediction: use loop 'latent'"):
        pie(
            model,
            torch.zeros(1, 1, 8, 8, dtype=torch.float64),
            roi_mask=roi,
            params=params,
            noise=NoiseSource([0]),
            progress=Progress(),
        )


def test_pie_reference_loop_reencodes_an_eight_bit_image_with_a_vae_sample():
    """Latent models: every iteration starts from the previous one's decoded 8-bit image, encoded with a
    posterior sample (not the mean), so two seeds differ even with a deterministic DDIM."""
    model = tiny_models.text_unet(vae=True)
    image = np.random.default_rng(3).random((16, 16)).astype(np.float32)
    roi = np.zeros((16, 16), bool)
    roi[4:12, 4:12] = True
    run = dict(model=model, roi_mask=roi, prompt="effusion", iterations=2, steps=6, strength=0.5)
    first = edit("pie", image, seed=0, **run)
    again = edit("pie", image, seed=0, **run)
    other = edit("pie", image, seed=1, **run)
    np.testing.assert_array_equal(first.image.array, again.image.array)
    assert not np.array_equal(first.image.array, other.image.array)
    np.testing.assert_array_equal(first.image.array[~roi], image[~roi])
    assert len(first.progression) == 2


def test_pie_reference_loop_draws_the_originals_vae_samples_and_known_noise_anew_every_iteration(monkeypatch):
    """run_pie.py calls its pipeline once per iteration, and each call encodes the original and draws its
    noise again: the same distribution as one draw per run, other draws."""
    kinds, draw = [], NoiseSource.draw
    monkeypatch.setattr(
        NoiseSource, "draw", lambda self, shape, kind="": kinds.append(kind) or draw(self, shape, kind)
    )
    roi = np.zeros((16, 16), bool)
    roi[4:12, 4:12] = True
    image = np.random.default_rng(3).random((16, 16)).astype(np.float32)
    run = dict(roi_mask=roi, prompt="effusion", iterations=3, steps=6, strength=0.5, loop="reference")
    edit("pie", image, model=tiny_models.text_unet(vae=True), **run)
    per_call = ["vae-original", "vae-known", "known", "vae", "img2img"]
    assert [kind for kind in kinds if kind in per_call] == per_call * 3


# ---------------------------------------------------------------- 4. MedEdit's baselines as its paper ran
# them


def test_mededit_resampling_repeats_each_step_as_its_code_does():
    """MedEdit's loop: for t = T-1..0, run the step r times, going one step back up between repeats
    (not at t = 0). In visit indices (index i steps from timestep i to i - 1):"""
    assert repeat_schedule(3, 2) == [2, 3, 2, 1, 2, 1, 0]
    assert repeat_schedule(4, 1) == [3, 2, 1, 0]
    assert (
        sum(1 for a, b in zip([5, *repeat_schedule(5, 3)], repeat_schedule(5, 3), strict=False) if b < a)
        == 4 * 3 + 1
    )


def test_naive_repaint_preset_is_mededits_loop_on_the_undilated_mask():
    """The mededit-paper preset's RePaint is MedEdit's own loop (1000 steps, no resampling, noised start)
    on the pathology mask: bit-identical to MedEdit with no dilation and the whole image as brain."""
    model = analytic(means={"": 0.0}, condition_names=("pathology_mask", "brain_mask"), condition_shift=0.5)
    image = np.random.default_rng(4).random((16, 16)).astype(np.float32)
    lesion = np.zeros((16, 16), bool)
    lesion[6:10, 5:11] = True
    brain = np.ones_like(lesion)
    naive = edit(
        "repaint", image, model=model, preset="mededit-paper", pathology_mask=lesion, brain_mask=brain
    )
    mededit = edit("mededit", image, model=model, pathology_mask=lesion, brain_mask=brain, dilation=1)
    assert naive.provenance["preset"] == "mededit-paper"
    assert naive.provenance["parameters"] == {
        "steps": 1000,
        "jump_length": 1,
        "jump_n_sample": 1,
        "start": "noised_input",
    }
    assert naive.provenance["model_evaluations"] == 1000
    np.testing.assert_array_equal(naive.image.array, mededit.image.array)


def test_presets_and_the_methods_own_defaults():
    assert catalogue.method("sdedit").make_params({}, "mededit-paper").strength == 0.1
    assert catalogue.method("sdedit").make_params({}).strength == 0.5
    assert catalogue.method("repaint").make_params({"steps": 50}, "mededit-paper").steps == 50  # given wins
    with pytest.raises(ValueError, match="radedit has no preset 'mededit-paper'; its presets: none"):
        catalogue.method("radedit").make_params({}, "mededit-paper")
    # text from the API
    assert catalogue.method("pie").make_params({"loop": "reference"}).loop is PIELoop.reference
    with pytest.raises(ValueError, match="loop must be one of reference, latent, got 'official'"):
        catalogue.method("pie").make_params({"loop": "official"})


def test_presets_reach_the_cli_and_the_manifest(tmp_path):
    from napari_medit.batch import read_manifest
    from napari_medit.cli import _parser, edit_job

    args = _parser().parse_args(
        [
            "edit",
            "repaint",
            "--image",
            "x.nii.gz",
            "--out",
            "y.nii.gz",
            "--model",
            "m",
            "--pathology-mask",
            "p.nii.gz",
            "--preset",
            "mededit-paper",
            "--steps",
            "20",
        ]
    )
    job = edit_job(args)
    assert job.preset == "mededit-paper" and job.check().steps == 20 and job.check().jump_length == 1
    with pytest.raises(SystemExit):  # argparse: radedit offers no --preset
        _parser().parse_args(
            [
                "edit",
                "radedit",
                "--image",
                "x",
                "--out",
                "y.nii.gz",
                "--model",
                "m",
                "--preset",
                "mededit-paper",
            ]
        )
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,image,method,model,preset,strength\na,x.nii.gz,sdedit,m,mededit-paper,\nb,x.nii.gz,sdedit,m,,\n"
    )
    first, second = read_manifest(manifest, tmp_path / "out")
    assert (first.job.check().strength, second.job.check().strength) == (0.1, 0.5)
    manifest.write_text("id,image,method,model,preset\na,x.nii.gz,sdedit,m,mededit\n")
    with pytest.raises(ValueError, match="sdedit has no preset 'mededit'; its presets: mededit-paper"):
        read_manifest(manifest, tmp_path / "out")


# ---------------------------------------------------------------- 5. RadEdit


def test_radedit_masks_reach_the_latent_grid_binarised():
    """The pipeline binarises its masks: a latent cell is in the mask when at least half of it is."""
    mask = torch.zeros(1, 1, 8, 16)
    mask[..., :, :3] = 1  # 3 of 8 columns of the first cell: 3/8 covered
    mask[..., :, 8:13] = 1  # 5 of 8 columns of the second: 5/8
    fractional = to_latent_grid(mask, 8)
    assert fractional.flatten().tolist() == [0.375, 0.625]
    assert binarised(fractional).flatten().tolist() == [0.0, 1.0]
    assert catalogue.method("radedit").make_params({}).mask_grid is catalogue.MaskGrid.binary


def test_radedit_inverts_with_guidance_when_given_an_inversion_prompt():
    """eps during inversion = eps_u + w (eps_c - eps_u): the same residuals as inverting with a model
    whose (unconditional) answer is that guided estimate."""
    model = analytic(means={"": 0.0, "chest": 0.4})

    class Guided(GaussianDenoiser):
        def model_output(self, x_t, t, text, conditions):
            c, u = model.embed(["chest", ""], x_t.shape[0])
            eps_u = model.model_output(x_t, t, u, None)
            return eps_u + 2.5 * (model.model_output(x_t, t, c, None) - eps_u)

    guided = Guided(tiny_models.scheduler(), resolution=16)
    x0 = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(6)).double() / 2
    steps = list(zip([900, 600, 300], [600, 300, -1], strict=True))
    c, null = model.embed(["chest", ""], 1)
    ours = invert(
        model,
        x0,
        steps,
        text=c,
        null=null,
        guidance=2.5,
        conditions=None,
        noise=NoiseSource([1]),
        progress=Progress(),
    )
    reference = invert(
        guided, x0, steps, text=None, conditions=None, noise=NoiseSource([1]), progress=Progress()
    )
    for t, _ in steps:
        torch.testing.assert_close(ours.residual[t], reference.residual[t], atol=1e-12, rtol=0)
    # And with the same prompt and the same guidance for both passes, the reverse pass is exact again.
    image = np.random.default_rng(7).random((16, 16)).astype(np.float32)
    same = edit(
        "radedit",
        image,
        model=model,
        prompt="chest",
        inversion_prompt="chest",
        guidance=2.5,
        inversion_guidance=2.5,
        skip=0,
        steps=8,
    )
    np.testing.assert_allclose(same.image.array, image, atol=1e-5)


# ---------------------------------------------------------------- 6. PNDM's repeated timestep


def test_pndm_schedules_run_each_timestep_once():
    """PNDMScheduler(skip_prk_steps).set_timesteps(50) lists 51 entries, 961 twice; a sampler here runs
    50 distinct steps, and a RadEdit edit with 10 steps and skip 0 costs 10 + 2 x 10 evaluations."""
    assert len(pndm_timesteps(50)) == 51
    schedule = NoiseSchedule.from_scheduler(pndm())
    assert len(schedule.timesteps(50)) == 50 and len(set(schedule.timesteps(50))) == 50
    model = analytic(pndm(), means={"": 0.0, "clear": -0.5})
    image = np.random.default_rng(8).random((16, 16)).astype(np.float32)
    result = edit("radedit", image, model=model, prompt="clear", steps=10, skip=0)
    assert result.provenance["model_evaluations"] == 10 + 2 * 10


# ---------------------------------------------------------------- 7. round two: InstructX2X's DDIM and noise


def test_instructx2x_samples_with_ddim_built_from_the_folders_pndm_config(tmp_path):
    """rse_x2x.py replaces the folder's scheduler (its converter writes PNDM) by DDIM on sd-v1-4's config,
    starts from z_0 noised with one noise, and re-noises the region outside its mask with that same noise.
    Written from those equations, with napari-medit's documented level (t', the sample's own)."""
    from diffusers import PNDMScheduler
    from test_instruct import PROMPT, tiny_pix2pix

    from napari_medit.backends import load_model
    from napari_medit.catalogue import InstructX2XParams
    from napari_medit.editing.instruct import guided_eps
    from napari_medit.editing.instructx2x import instructx2x

    tiny_pix2pix(tmp_path / "ix2x", "PNDMScheduler")
    model = load_model(tmp_path / "ix2x")
    assert isinstance(model.schedule.scheduler, PNDMScheduler)
    gray = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    params = InstructX2XParams(prompt=PROMPT, steps=6, threshold=0.3)
    with torch.no_grad():
        x0 = model.encode(gray)
        ours = instructx2x(
            model,
            x0,
            image=gray,
            region=torch.ones_like(gray),
            params=params,
            noise=NoiseSource([4]),
            progress=Progress(),
        )
        keep = 1 - binarised(to_latent_grid(ours.maps["guidance_mask"], model.latent_factor))
        assert 0 < keep.mean() < 1
        ddim = DDIMScheduler.from_config(model.schedule.scheduler.config, clip_sample=False)
        ddim.set_timesteps(6)
        timesteps = ddim.timesteps
        assert len(timesteps) == 6  # PNDM's list for 6 steps has 7
        source = NoiseSource([4])  # drawn in the method's order: the relevance map's noise, then the start's
        source.like(x0, "relevance")
        noise = source.like(x0, "start")
        prior, (text, null) = model.encode_prior(gray).double(), model.embed([PROMPT, ""], 1)
        z = ddim.add_noise(x0, noise, timesteps[:1])
        for i, t in enumerate(timesteps):
            eps = guided_eps(model, z, t, text, null, prior, 7.5, 1.5)
            z = ddim.step(eps, t, z).prev_sample
            known = x0 if i == 5 else ddim.add_noise(x0, noise, timesteps[i + 1 : i + 2])
            z = (1 - keep) * z + keep * known
    torch.testing.assert_close(ours.versions[0], z, atol=1e-5, rtol=1e-5)
    assert ours.scheduler["class"] == "DDIMScheduler"


def test_instructx2x_records_the_ddim_it_ran_and_costs_three_passes_a_step(tmp_path):
    from test_instruct import PROMPT, tiny_pix2pix

    from napari_medit.backends import load_model

    tiny_pix2pix(tmp_path / "ix2x", "PNDMScheduler")
    model = load_model(tmp_path / "ix2x")
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    result = edit("instructx2x", image, model=model, prompt=PROMPT, steps=10, threshold=0.3)
    # the relevance map's two passes, then 10 DDIM steps of the three-way batch (PLMS would run 11)
    assert result.provenance["model_evaluations"] == 2 + 3 * 10
    assert result.provenance["scheduler"]["class"] == "DDIMScheduler"
    assert result.provenance["scheduler"]["built_from"] == "PNDMScheduler"


# ---------------------------------------------------------------- 8. round two: PIE with any scheduler

LOADABLE_SCHEDULERS = [
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "DPMSolverMultistepScheduler",
]


def sd_scheduler(name):
    import diffusers

    return getattr(diffusers, name)(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
    )


@pytest.mark.parametrize("name", LOADABLE_SCHEDULERS)
def test_pie_reference_loop_is_seeded_at_every_draw_with_every_scheduler(name):
    """Two seeded runs are bit-identical whatever the folder's scheduler: stochastic ones (DDPM, Euler
    ancestral) get the slice's own generators, and fractional timesteps (Euler-type) are not cast to int."""
    x0 = torch.linspace(-0.9, 0.9, 64, dtype=torch.float64).reshape(1, 1, 8, 8)
    roi = torch.zeros_like(x0)
    roi[..., 2:6, 2:6] = 1
    params = PIEParams(
        prompt="effusion", iterations=2, steps=6, strength=0.8, guidance=4.0, loop=PIELoop.reference
    )

    global_seeds = iter(range(100, 103))

    def run(seed):
        model = analytic(sd_scheduler(name), resolution=8, means={"": 0.0, "effusion": 0.7})
        torch.manual_seed(next(global_seeds))  # a draw from torch's global generator differs between runs
        return pie(model, x0, roi_mask=roi, params=params, noise=NoiseSource([seed]), progress=Progress())

    first, again, other = run(0), run(0), run(1)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert all(torch.isfinite(v).all() for v in first)
    assert not torch.equal(first[-1], other[-1])


def test_fractional_timesteps_have_the_alpha_bar_euler_schedulers_step_with():
    """Euler-type schedulers query the model between training timesteps; alpha_bar there is the one
    their sigma interpolation implies: sigma_t^2 = (1 - a_t) / a_t."""
    scheduler = sd_scheduler("EulerDiscreteScheduler")
    scheduler.set_timesteps(7)
    schedule = NoiseSchedule.from_scheduler(scheduler)
    fractional = [
        (t, s)
        for t, s in zip(scheduler.timesteps.tolist(), scheduler.sigmas.tolist(), strict=False)
        if t != int(t)
    ]
    assert fractional
    for t, sigma in fractional:
        assert schedule.alpha_bar(t) == pytest.approx(1 / (1 + sigma**2), rel=1e-6)
    assert schedule.alpha_bar(500.0) == float(schedule.alphas_cumprod[500])


# ---------------------------------------------------------------- 9. round two: DiffEdit against diffusers'
# pipeline


def test_diffedit_inverts_unguided_unless_asked_and_binarises_its_mask():
    """RadEdit's Algorithm 2 writes DiffEdit's inversion with the inversion prompt and no guidance;
    diffusers' invert() guides at 7.5: inversion_guidance restores it, at two passes per inversion step."""
    model = tiny_models.text_unet()
    image = np.random.default_rng(4).random((16, 16)).astype(np.float32)
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    run = dict(
        model=model, edit_mask=mask, prompt="clear", inversion_prompt="effusion", steps=10, strength=0.5
    )
    plain = edit("diffedit", image, **run)
    guided = edit("diffedit", image, inversion_guidance=7.5, **run)
    assert plain.provenance["parameters"]["inversion_guidance"] == 1.0
    assert plain.provenance["parameters"]["mask_grid"] == "binary"
    assert plain.provenance["model_evaluations"] == 5 + 2 * 5  # inversion, then guided sampling
    assert guided.provenance["model_evaluations"] == 2 * 5 + 2 * 5
    assert not np.array_equal(plain.image.array[mask], guided.image.array[mask])
    np.testing.assert_array_equal(guided.image.array[~mask], image[~mask])
