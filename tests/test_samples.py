"""Several samples of one edit (run option ``samples``): each is the single edit with its own seed, bit
for bit; their per-voxel standard deviation is 0 exactly wherever the method cannot change a voxel."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tiny_models
from test_editing import CASES, run_case, volume_with_lesion

from napari_medit.catalogue import sample_seeds
from napari_medit.editing import EditCancelled, EditError, edit
from napari_medit.io import MedicalImage, read_image, write_image


@pytest.mark.parametrize("method", list(CASES))
def test_each_sample_is_the_single_edit_with_its_seed_and_the_map_their_spread(method):
    many = run_case(method, seed=4, samples=3)
    seeds = many.provenance["samples"]
    assert seeds == sample_seeds(4, 3) and seeds[0] == 4 and len(set(seeds)) == 3
    assert [s.metadata["edit"]["seed"] for s in many.samples] == seeds
    np.testing.assert_array_equal(many.image.array, run_case(method, seed=4).image.array)  # sample 1
    for seed, sample in zip(seeds[1:], many.samples[1:], strict=True):
        np.testing.assert_array_equal(sample.array, run_case(method, seed=seed).image.array)
    values = np.stack([s.array.astype(np.float64) for s in many.samples])
    np.testing.assert_allclose(many.variability, values.std(axis=0), rtol=1e-6, atol=1e-6)
    source = run_case(method, seed=4).image.array - run_case(method, seed=4).difference  # the phantom
    kept = (values == source.astype(np.float64)).all(axis=0)  # where no sample changed anything
    assert kept.any() or method in ("sdedit", "instruct", "radedit")
    assert (many.variability[kept] == 0).all()  # exactly, not about
    summary = many.provenance["variability"]
    assert summary["voxels"] > 0 and summary["std_p95"] >= summary["std_mean"] >= 0


def test_a_keep_mask_has_no_spread_at_all():
    image = tiny_models_image = np.linspace(100, 900, 256, dtype=np.float32).reshape(16, 16)
    edit_mask, keep_mask = np.zeros((16, 16), bool), np.zeros((16, 16), bool)
    edit_mask[4:10, 4:10] = True
    keep_mask[12:, :] = True
    many = edit(
        "radedit",
        tiny_models_image,
        model=tiny_models.text_unet(),
        prompt="effusion",
        steps=4,
        skip=1,
        edit_mask=edit_mask,
        keep_mask=keep_mask,
        samples=4,
    )
    assert (many.variability[keep_mask] == 0).all() and many.variability[~keep_mask].max() > 0
    for sample in many.samples:
        np.testing.assert_array_equal(sample.array[keep_mask], image[keep_mask])


@pytest.mark.parametrize("smoothing", [0.0, 0.5])
def test_volume_samples_equal_single_edits_and_leave_other_slices_without_spread(smoothing):
    """Slice-wise, along an anatomical plane, with through-plane smoothing (whose neighbours must not
    reach from one sample's copy into the next's)."""
    volume, brain, lesion = volume_with_lesion((16, 16, 6))
    lesion[4:10, 5:11, 1:4] = True
    image = MedicalImage(volume, np.diag([1.0, 1.2, 2.5, 1.0]))
    run = dict(
        model=tiny_models.monai_unet(),
        steps=3,
        pathology_mask=lesion,
        brain_mask=brain,
        axis="axial",
        batch_size=2,
        through_plane_smoothing=smoothing,
    )
    many = edit("mededit", image, samples=3, seed=1, **run)
    for seed, sample in zip(many.provenance["samples"], many.samples, strict=True):
        np.testing.assert_array_equal(sample.array, edit("mededit", image, seed=seed, **run).image.array)
    untouched = [k for k in range(6) if k not in many.edited_slices]
    assert untouched and (many.variability[..., untouched] == 0).all()
    assert many.variability[..., many.edited_slices].max() > 0
    np.testing.assert_array_equal(many.image.affine, image.affine)


def test_progress_counts_every_sample_and_cancel_stops_them_all():
    steps = []
    run_case("sdedit", samples=3, callback=lambda p: steps.append((p.step, p.total)))
    single = []
    run_case("sdedit", callback=lambda p: single.append(p.total))
    assert [s for s, _ in steps] == list(range(1, 3 * single[0] + 1)) and {t for _, t in steps} == {
        3 * single[0]
    }
    cancel, seen = threading.Event(), []

    def stop_in_the_second_sample(progress):
        seen.append(progress.step)
        if progress.step == single[0] + 1:
            cancel.set()

    with pytest.raises(EditCancelled):
        run_case("sdedit", samples=3, callback=stop_in_the_second_sample, cancel=cancel)
    assert seen[-1] == single[0] + 1


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_a_sample_count_below_one_is_refused(bad):
    with pytest.raises(EditError, match="samples must be a whole number of at least 1"):
        run_case("sdedit", samples=bad)


# ---------------------------------------------------------------- files


def test_the_cli_writes_each_sample_and_the_map_beside_the_result(tmp_path):
    from napari_medit.cli import main
    from napari_medit.sample_data import load_brain

    brain = load_brain()
    for name, image in brain.items():
        write_image(tmp_path / f"{name}.nii.gz", image)
    command = ["edit", "mededit", "--image", str(tmp_path / "t1.nii.gz"), "--model", "demo-brain"]
    command += ["--pathology-mask", str(tmp_path / "lesion_mask.nii.gz"), "--brain-mask"]
    command += [str(tmp_path / "brain_mask.nii.gz"), "--steps", "2", "--samples", "3"]
    assert main([*command, "--out", str(tmp_path / "cf.nii.gz")]) == 0
    written = [
        read_image(tmp_path / name) for name in ("cf.nii.gz", "cf_sample02.nii.gz", "cf_sample03.nii.gz")
    ]
    spread = read_image(tmp_path / "cf_std.nii.gz")
    values = np.stack([w.array.astype(np.float64) for w in written])
    np.testing.assert_allclose(spread.array, values.std(axis=0), rtol=1e-5, atol=1e-4)
    for image in (*written, spread):
        np.testing.assert_array_equal(image.affine, brain["t1"].affine)
    kept = (values == brain["t1"].array.astype(np.float64)).all(axis=0)
    assert spread.array.max() > 0 and kept.any() and (spread.array[kept] == 0).all()


def test_pie_steps_and_samples_do_not_collide_in_names(tmp_path):
    from napari_medit.cli import main
    from napari_medit.sample_data import load_cxr

    for name, image in load_cxr(size=128).items():
        write_image(tmp_path / f"{name}.png", image)
    command = ["edit", "pie", "--image", str(tmp_path / "cxr.png"), "--model", "demo-cxr", "--roi-mask"]
    command += [str(tmp_path / "edit_mask.png"), "--iterations", "2", "--steps", "4", "--samples", "2"]
    assert main([*command, "--out", str(tmp_path / "cf.png")]) == 0
    names = sorted(p.name for p in tmp_path.glob("cf*"))
    assert names == ["cf.json", "cf.png", "cf_sample02.png", "cf_std.nii.gz", "cf_step01.png"]


def test_a_batch_records_the_samples_and_their_spread(tmp_path):
    import csv

    from test_batch import write_manifest

    from napari_medit.batch import run_batch
    from napari_medit.sample_data import load_cxr

    write_image(tmp_path / "cxr.png", load_cxr(size=128)["cxr"])
    rows = [
        {"id": "one", "image": "cxr.png", "method": "sdedit", "model": "demo-cxr", "steps": 4},
        {
            "id": "three",
            "image": "cxr.png",
            "method": "sdedit",
            "model": "demo-cxr",
            "steps": 4,
            "samples": 3,
        },
    ]
    summary = run_batch(write_manifest(tmp_path, rows), tmp_path / "out", workers=0, show_progress=False)
    assert [r["status"] for r in summary.records] == ["done", "done"]
    with open(tmp_path / "out" / "summary.csv") as table:
        one, three = csv.DictReader(table)
    assert (one["samples"], three["samples"]) == ("1", "3")
    assert one["variability_std_mean"] == "" and float(three["variability_std_mean"]) > 0
    assert float(three["variability_change_p95"]) >= float(three["variability_change_mean"]) > 0
    assert three["output"].endswith("three.png")
    assert (tmp_path / "out" / "three_sample03.png").exists() and (
        tmp_path / "out" / "three_std.nii.gz"
    ).exists()


def test_samples_sharing_model_calls_equal_single_edits_up_to_rounding(monkeypatch):
    """A GPU's path, taken here on the CPU: the samples of a 2D edit go through the network together."""
    from napari_medit.editing import run

    monkeypatch.setattr(run, "samples_share_batches", lambda model, batch_size: True)
    model, image = tiny_models.pixel_unet(), np.linspace(100, 900, 256, dtype=np.float32).reshape(16, 16)
    batches = []
    model.network.register_forward_hook(lambda module, inputs, output: batches.append(inputs[0].shape[0]))
    many = edit("sdedit", image, model=model, strength=0.5, steps=4, samples=3)
    assert set(batches) == {3}  # every call carried the three samples
    for seed, sample in zip(many.provenance["samples"], many.samples, strict=True):
        single = edit("sdedit", image, model=model, strength=0.5, steps=4, seed=seed).image.array
        np.testing.assert_allclose(sample.array, single, rtol=0, atol=1e-3 * float(np.ptp(image)))
