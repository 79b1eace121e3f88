"""`napari-medit batch`: a manifest on a 2-worker LocalCluster survives a killed worker and resumes."""

import json
import os
import signal
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import tiny_models
from test_model_folder import MONAI_CONFIG

from napari_medit.backends import save_model
from napari_medit.batch import ManifestError, read_manifest, run_batch
from napari_medit.cli import main
from napari_medit.io import MedicalImage, read_image, write_image

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
AFFINE[:3, 3] = [-10, 20, 5]


@pytest.fixture(scope="module")
def items_folder(tmp_path_factory):
    """Small volumes with lesion and brain masks, and a tiny MedEdit-style model, as files."""
    folder = tmp_path_factory.mktemp("batch")
    save_model(folder / "model", tiny_models.monai_unet(), MONAI_CONFIG)
    rng = np.random.default_rng(0)
    brain = np.zeros((16, 16, 4), np.uint8)
    brain[2:14, 2:14] = 1
    write_image(folder / "brain.nii.gz", MedicalImage(brain, AFFINE))
    for index in range(4):
        volume = (300 + 80 * rng.standard_normal((16, 16, 4))).astype(np.int16)
        write_image(folder / f"t1_{index}.nii.gz", MedicalImage(volume, AFFINE))
        lesion = np.zeros_like(brain)
        lesion[5 + index : 9 + index, 6:10, 1:3] = 1
        write_image(folder / f"lesion_{index}.nii.gz", MedicalImage(lesion, AFFINE))
    return folder


def write_manifest(folder, rows, name="manifest.csv"):
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def mededit_rows(count):
    return [
        {
            "id": f"case{i:02d}",
            "image": f"t1_{i % 4}.nii.gz",
            "method": "mededit",
            "pathology_mask": f"lesion_{i % 4}.nii.gz",
            "brain_mask": "brain.nii.gz",
            "model": "model",
            "steps": 40,
            "seed": i,
            "axis": 2,
        }
        for i in range(count)
    ]


def test_batch_on_two_workers_survives_a_killed_worker_and_resumes(items_folder, tmp_path):
    from distributed import Client, LocalCluster

    rows = mededit_rows(22)
    rows.insert(
        5,
        {
            "id": "broken",
            "image": "t1_0.nii.gz",
            "method": "mededit",
            "pathology_mask": "missing.nii.gz",
            "brain_mask": "brain.nii.gz",
            "model": "model",
            "axis": 2,
        },
    )
    manifest = write_manifest(items_folder, rows)
    out = tmp_path / "out"

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        results = {}
        runner = threading.Thread(
            target=lambda: results.update(
                summary=run_batch(manifest, out, scheduler=cluster.scheduler_address, show_progress=False)
            )
        )
        runner.start()
        deadline = time.monotonic() + 120
        while len(list(out.glob("case*.json"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        finished_before_kill = len(list(out.glob("case*.json")))
        victim = sorted(client.run(os.getpid).values())[0]
        os.kill(victim, signal.SIGKILL)  # a worker dies mid-run; its nanny starts a new one
        runner.join(timeout=300)
        assert not runner.is_alive()

    summary = results["summary"]
    assert finished_before_kill < 22, "the batch ended before the worker was killed; make the items slower"
    statuses = {r["id"]: r["status"] for r in summary.records}
    assert statuses.pop("broken") == "failed"
    assert set(statuses.values()) == {"done"} and len(statuses) == 22
    broken = next(r for r in summary.records if r["id"] == "broken")
    assert "missing.nii.gz" in broken["error"]

    source = nib.load(items_folder / "t1_0.nii.gz")
    for row in rows[:5] + rows[6:]:
        result = nib.load(out / f"{row['id']}.nii.gz")
        assert result.shape == source.shape and np.array_equal(result.affine, source.affine)
        assert result.get_data_dtype() == np.int16
        sidecar = json.loads((out / f"{row['id']}.json").read_text())
        assert sidecar["seed"] == row["seed"] and sidecar["method"] == "mededit"
        assert sidecar["metrics"]["outside"]["psnr"] == "inf"  # MedEdit keeps everything outside its mask
    assert not list(out.glob(".partial-*"))
    # each worker process loaded the model once (a restarted worker loads it again)
    done = [r for r in summary.records if r["status"] == "done"]
    loads_per_pid = {}
    for record in done:
        loads_per_pid[record["worker_pid"]] = (
            loads_per_pid.get(record["worker_pid"], 0) + record["model_loaded"]
        )
    assert set(loads_per_pid.values()) == {1}

    # Same seed, same item: identical to running it alone in this process.
    (out / "alone").mkdir()
    alone = run_batch(
        write_manifest(items_folder, [rows[0]], "one.csv"), out / "alone", workers=0, show_progress=False
    )
    assert alone.count("done") == 1
    assert np.array_equal(
        nib.load(out / "alone" / "case00.nii.gz").get_fdata(), nib.load(out / "case00.nii.gz").get_fdata()
    )

    # An interrupted run: two results lost, one sidecar lost (its image may be partial), a stale temp file.
    for name in ("case03.nii.gz", "case03.json", "case11.nii.gz", "case11.json", "case17.json"):
        (out / name).unlink()
    (out / ".partial-case20.nii.gz").write_bytes(b"half written")
    stamp = (out / "case04.nii.gz").stat().st_mtime_ns
    rerun = run_batch(manifest, out, workers=2, show_progress=False)
    ran = sorted(r["id"] for r in rerun.records if r["status"] == "done")
    assert ran == ["case03", "case11", "case17"]
    assert rerun.count("skipped") == 19 and rerun.count("failed") == 1
    assert (out / "case04.nii.gz").stat().st_mtime_ns == stamp  # finished items were not touched
    assert not (out / ".partial-case20.nii.gz").exists()

    table = (out / "summary.csv").read_text().splitlines()
    assert table[0].startswith("id,status,error,method,output")
    assert "outside_ssim" in table[0] and "slice_consistency_ratio" in table[0]
    assert len(table) == 24


def test_manifest_errors_name_the_line_and_the_fix(items_folder, tmp_path):
    good = {"id": "a", "image": "t1_0.nii.gz", "method": "mededit", "model": "model"}
    cases = {
        "lacks the column 'method'": [{"id": "a", "image": "x.nii.gz"}],
        "unknown column 'stepz'": [{**good, "stepz": 3}],
        "line 3: the id 'a' is used twice": [good, good],
        "steps must be int": [{**good, "steps": "many"}],
        "no model": [{**good, "model": ""}],
        "id 'a b'": [{**good, "id": "a b"}],
        "the 'image' cell is empty": [{**good, "image": ""}],
        "slices must look like 10:20": [{**good, "slices": "3-5"}],
        "id '../escape' must be": [{**good, "id": "../escape"}],  # outputs stay in --out
        "id '.hidden' must be": [{**good, "id": ".hidden"}],
        "must be up to 200 letters": [{**good, "id": "x" * 300}],  # longer than a file name may be
        "id '' must be": [{**good, "id": ""}],
    }
    for expected, rows in cases.items():
        manifest = write_manifest(tmp_path, rows)
        with pytest.raises(ManifestError, match=expected.replace("(", r"\(")):
            read_manifest(manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(tmp_path / "nowhere.csv", tmp_path / "out")
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("id,image,method\ncaf\xe9,t1.nii.gz,mededit\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not a CSV file"):
        read_manifest(latin, tmp_path / "out")


def test_cli_batch_in_process_reports_failures_with_exit_1(items_folder, tmp_path, capsys):
    rows = mededit_rows(2)
    rows[0]["steps"] = 3
    # PIE needs a text-conditioned model: a failure only running the row can find
    rows[1].update(
        steps=3, method="pie", pathology_mask="", brain_mask="", roi_mask=rows[1]["pathology_mask"]
    )
    manifest = write_manifest(items_folder, rows, "cli.csv")
    assert main(["batch", str(manifest), "--out", str(tmp_path), "--workers", "0"]) == 1
    captured = capsys.readouterr()
    assert "1 edited, 0 already finished, 1 failed" in captured.out
    assert "case01: model " in captured.err and "pie edits with a text prompt" in captured.err
    assert (tmp_path / "case00.nii.gz").exists() and not (tmp_path / "case01.nii.gz").exists()
    assert main(["batch", str(manifest), "--out", str(tmp_path), "--workers", "0"]) == 1
    assert "0 edited, 1 already finished, 1 failed" in capsys.readouterr().out


def test_local_dask_workers_start_without_dask_s_malloc_trimming(monkeypatch):
    import os

    import dask
    from distributed import Client, LocalCluster

    from napari_medit.compute import TORCH_WORKER_ENVIRON

    # a nanny writes its environment into the process that starts it, so an earlier cluster here with dask's
    # defaults left its threshold behind for every later worker to inherit
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with dask.config.set(TORCH_WORKER_ENVIRON):
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        (threshold,) = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()
    assert threshold is None  # dask's default, 65536, made torch edits ~3x slower
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        (threshold,) = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()
    assert threshold == "65536"  # what the setting undoes


def test_an_output_that_is_a_link_to_a_source_replaces_the_link_not_the_source(items_folder, tmp_path):
    """An out folder holding links back to the data (case00.nii.gz -> t1_0.nii.gz): results replace
    the links; the sources they pointed at stay byte for byte."""
    rows = mededit_rows(1)
    rows[0]["steps"] = 2
    manifest = write_manifest(items_folder, rows, "linked.csv")
    source = items_folder / "t1_0.nii.gz"
    before = source.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "case00.nii.gz").symlink_to(source)
    (out / "case00.json").symlink_to(items_folder / "brain.nii.gz")
    assert main(["batch", str(manifest), "--out", str(out), "--workers", "0"]) == 0
    assert source.read_bytes() == before
    assert not (out / "case00.nii.gz").is_symlink() and not (out / "case00.json").is_symlink()
    assert read_image(out / "case00.nii.gz").array.shape == (16, 16, 4)
