"""Slice-wise volume edits that hold together: correlated slice noise (ISCS) and through-plane smoothing."""

import json
import math

import numpy as np
import pytest
import tiny_models
import torch

from napari_medit.catalogue import SliceNoise
from napari_medit.editing import NoiseSource, edit
from napari_medit.editing.slice_noise import correlation, slice_mixtures, slice_seed
from napari_medit.editing.through_plane import ThroughPlaneSmoothing
from napari_medit.io import MedicalImage
from napari_medit.metrics import slice_consistency
from napari_medit.testing import GaussianDenoiser


def draws(mixtures, shape=(8, 32, 32)) -> np.ndarray:
    """(slices, elements) of one draw from a NoiseSource built on ``mixtures``."""
    return NoiseSource(mixtures).draw(shape).reshape(len(mixtures), -1).numpy()


# ---------------------------------------------------------------- the noise itself


def test_correlated_noise_is_standard_normal_on_every_slice():
    mixtures = slice_mixtures(SliceNoise.correlated, 3, 24, spacing_mm=1.5, correlation_mm=7.0)
    for mixture in mixtures:
        assert sum(weight**2 for _, weight in mixture) == pytest.approx(1.0, abs=1e-15)
    noise = draws(mixtures)  # 8192 elements per slice: standard error of the mean ~0.011
    np.testing.assert_allclose(noise.mean(axis=1), 0.0, atol=0.05)
    np.testing.assert_allclose(noise.var(axis=1), 1.0, atol=0.06)


@pytest.mark.parametrize("spacing_mm", [1.0, 2.5, 5.0])
def test_neighbours_correlate_over_the_requested_length_in_mm(spacing_mm):
    """The same correlation at the same distance in mm, whatever the slice spacing; 2L apart: none."""
    length = 10.0
    count = int(4 * length / spacing_mm) + 1
    mixtures = slice_mixtures(SliceNoise.correlated, 0, count, spacing_mm=spacing_mm, correlation_mm=length)
    noise = draws(mixtures)
    measured = np.corrcoef(noise)
    for i in range(count):
        for j in range(i + 1, count):
            distance = (j - i) * spacing_mm
            expected = correlation(mixtures[i], mixtures[j])
            assert measured[i, j] == pytest.approx(expected, abs=0.05)
            if int(i * spacing_mm // length) == int(j * spacing_mm // length):  # within one interval
                assert expected == pytest.approx(math.cos(math.pi * distance / (2 * length)), abs=1e-12)
            if distance >= 2 * length:
                assert expected == 0
    five_mm = round(5.0 / spacing_mm)
    assert correlation(mixtures[0], mixtures[five_mm]) == pytest.approx(math.cos(math.pi / 4))


def test_independent_and_shared_noise_are_what_they_were():
    """Before correlated noise existed, slice i drew from its own generator seeded SeedSequence([seed, i])
    (shared: [seed, 0] for all); those draws are unchanged, bit for bit."""
    shape = (2, 8, 8)
    for mode, index in ((SliceNoise.independent, lambda i: i), (SliceNoise.shared, lambda i: 0)):
        source = NoiseSource(slice_mixtures(mode, 11, 5))
        before = generators(11, 5, index)
        for _ in range(3):  # successive draws advance each slice's generator as before
            expected = torch.stack([torch.randn(shape, generator=g) for g in before])
            torch.testing.assert_close(source.draw(shape), expected, rtol=0, atol=0)


def generators(seed, count, index):
    return [
        torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index(i)]).generate_state(1)[0]))
        for i in range(count)
    ]


def test_a_single_slice_draws_the_same_noise_in_every_mode():
    """A 2D image is one slice at an anchor: its edits do not depend on the slice noise mode."""
    (independent,) = slice_mixtures(SliceNoise.independent, 4, 1)
    assert slice_mixtures(SliceNoise.shared, 4, 1) == [independent]
    assert slice_mixtures(SliceNoise.correlated, 4, 1, spacing_mm=3, correlation_mm=8) == [independent]
    assert independent == ((slice_seed(4, 0), 1.0),)


# ---------------------------------------------------------------- through-plane smoothing, as maths


def smoothing(slices, region, strength=0.5, max_batch=8):
    model = GaussianDenoiser(tiny_models.scheduler("ddpm"), resolution=8)
    return model, ThroughPlaneSmoothing(
        model, slices=slices, region=region, strength=strength, max_batch=max_batch
    )


def test_the_smoothed_prediction_is_one_step_towards_the_neighbours_inside_the_region():
    slices = [3, 4, 5, 9]  # 9 has no edited neighbour: it is left as it is
    region = torch.zeros(4, 1, 8, 8, dtype=torch.float64)
    region[..., 2:6, 2:6] = 1
    model, smoothed = smoothing(slices, region, strength=0.5)
    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = 400
    x0 = model.schedule.predict_x0(x_t, model(x_t, t), t)
    x0_smoothed = model.schedule.predict_x0(x_t, smoothed(x_t, t), t)
    neighbours = torch.stack([(x0[0] + x0[1]) / 2, (x0[0] + x0[2]) / 2, (x0[1] + x0[2]) / 2, x0[3]])
    expected = x0 + 0.5 * region * (neighbours - x0)
    torch.testing.assert_close(x0_smoothed, expected, rtol=0, atol=1e-12)
    outside = region == 0
    torch.testing.assert_close(
        x0_smoothed[outside.expand_as(x0)], x0[outside.expand_as(x0)], rtol=0, atol=1e-12
    )


def test_smoothing_commutes_with_classifier_free_guidance_and_micro_batches():
    """Regularising each guided pass equals regularising the guided combination (the step is affine
    in eps with weights summing to one); micro-batching the network changes nothing."""
    model = GaussianDenoiser(tiny_models.scheduler("ddpm"), resolution=8, means={"": 0.0, "effusion": 0.7})
    region = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole = ThroughPlaneSmoothing(model, slices=[0, 1, 2], region=region, strength=0.8, max_batch=6)
    pieces = ThroughPlaneSmoothing(model, slices=[0, 1, 2], region=region, strength=0.8, max_batch=1)
    x_t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    text, null = model.embed(["effusion", ""], 3)
    guided, _unconditional = whole.guided(x_t, 300, text, null, 7.5)
    plain_guided, _ = model.guided(x_t, 300, text, null, 7.5)
    torch.testing.assert_close(guided, whole.regularised(x_t, plain_guided, 300), rtol=0, atol=1e-9)
    torch.testing.assert_close(pieces.guided(x_t, 300, text, null, 7.5)[0], guided, rtol=0, atol=0)
    assert model.evaluations == 3 * 2 * 3  # every call counted once on the wrapped model, whatever the pieces


# ---------------------------------------------------------------- volume edits


def flat_volume(shape=(16, 16, 10)):
    """A volume whose slices are all alike, so every inter-slice difference of an edit is the sampler's."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    plane = 500 + 300 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    ramp = np.linspace(0, 40, shape[2])  # some anatomy along the slices: the source's own step is not 0
    volume = (plane[..., None] + ramp).astype(np.int16)
    region = np.zeros(shape, bool)
    region[4:12, 4:12, 2:8] = True
    return MedicalImage(volume, np.diag([1.0, 1.0, 2.0, 1.0])), region


def sdedit_volume(**options):
    image, region = flat_volume()
    model = GaussianDenoiser(tiny_models.scheduler("ddpm"), resolution=16, std=0.5)
    result = edit(
        "sdedit", image, model=model, axis=2, strength=0.6, steps=20, edit_mask=region, seed=4, **options
    )
    return image, region, result


def consistency(image, region, result):
    return slice_consistency(image.array, result.image.array, 2, result.edited_slices, region)["ratio"]


def test_correlated_noise_and_smoothing_make_neighbouring_slices_agree():
    image, region, independent = sdedit_volume(slice_noise="independent")
    ratios = {"independent": consistency(image, region, independent)}
    for name, options in {
        "shared": dict(slice_noise="shared"),
        "correlated": dict(slice_noise="correlated", noise_correlation_mm=12.0),
        "smoothed": dict(slice_noise="independent", through_plane_smoothing=0.8),
    }.items():
        ratios[name] = consistency(image, region, sdedit_volume(**options)[2])
    assert ratios["shared"] < ratios["correlated"] < 0.6 * ratios["independent"]
    assert ratios["smoothed"] < 0.8 * ratios["independent"]


@pytest.mark.parametrize(
    "options",
    [
        dict(slice_noise="correlated", noise_correlation_mm=5.0),
        dict(slice_noise="independent", through_plane_smoothing=0.5),
        dict(through_plane_smoothing=0.3),
    ],
)
def test_same_seed_same_result_and_untouched_slices_exact(options):
    image, region, first = sdedit_volume(**options)
    _, _, again = sdedit_volume(**options)
    np.testing.assert_array_equal(first.image.array, again.image.array)
    assert first.edited_slices == list(range(2, 8))
    untouched = [0, 1, 8, 9]
    np.testing.assert_array_equal(first.image.array[..., untouched], image.array[..., untouched])
    np.testing.assert_array_equal(first.image.array[~region], image.array[~region])
    assert not np.array_equal(first.image.array[region], image.array[region])
    provenance = json.loads(json.dumps(first.provenance))
    assert provenance["slice_spacing_mm"] == 2.0
    assert provenance["through_plane_smoothing"] == options.get("through_plane_smoothing", 0.0)
    correlated = options.get("slice_noise", "correlated") == "correlated"  # the default
    assert provenance["slice_noise"] == options.get("slice_noise", "correlated")
    assert provenance["noise_correlation_mm"] == (
        options.get("noise_correlation_mm", 3.0) if correlated else None
    )


def test_correlated_noise_does_not_depend_on_the_batch():
    volume, region = flat_volume()
    outs = [
        edit(
            "sdedit",
            volume,
            model=tiny_models.pixel_unet(),
            axis=2,
            strength=0.5,
            steps=4,
            edit_mask=region,
            batch_size=b,
            seed=7,
            slice_noise="correlated",
            noise_correlation_mm=6.0,
        ).image.array
        for b in (1, 4)
    ]
    np.testing.assert_allclose(outs[0], outs[1], atol=2)  # int16 rounding of float-level differences


def test_smoothing_off_is_the_plain_run_bit_for_bit():
    _, _, plain = sdedit_volume()
    _, _, off = sdedit_volume(through_plane_smoothing=0.0)
    np.testing.assert_array_equal(plain.image.array, off.image.array)


def test_smoothed_runs_keep_the_model_batch_and_retry_smaller_when_memory_runs_out():
    image, region = flat_volume()
    model = tiny_models.pixel_unet()
    inner, sizes = model.model_output, []

    def limited(x_t, t, text, conditions):
        sizes.append(x_t.shape[0])
        if x_t.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return inner(x_t, t, text, conditions)

    model.model_output = limited
    options = dict(axis=2, strength=0.5, steps=4, edit_mask=region, seed=5, through_plane_smoothing=0.5)
    with pytest.warns(UserWarning, match="out of GPU memory with 4 slices per batch; retrying with 2"):
        retried = edit("sdedit", image, model=model, batch_size=4, **options)
    assert sizes[0] == 4 and set(sizes[1:]) == {2}  # the six slices go through the network 2 at a time
    model.model_output = inner
    reference = edit("sdedit", image, model=model, batch_size=2, **options)
    np.testing.assert_array_equal(retried.image.array, reference.image.array)


def test_bad_slice_options_are_one_clear_message():
    from napari_medit.editing import EditError

    image, region = flat_volume()
    model = GaussianDenoiser(tiny_models.scheduler("ddpm"), resolution=16)
    with pytest.raises(EditError, match="through_plane_smoothing must be between 0 \\(off\\) and 1, got 2"):
        edit("sdedit", image, model=model, axis=2, edit_mask=region, through_plane_smoothing=2)
    with pytest.raises(EditError, match="noise_correlation_mm must be a positive length in mm, got -1"):
        edit(
            "sdedit",
            image,
            model=model,
            axis=2,
            edit_mask=region,
            slice_noise="correlated",
            noise_correlation_mm=-1,
        )
    with pytest.raises(EditError, match="slice_noise must be one of independent, shared, correlated"):
        edit("sdedit", image, model=model, axis=2, edit_mask=region, slice_noise="sometimes")
