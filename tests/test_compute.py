"""Edits computed on dask workers: a scheduler and workers started as separate processes on loopback,
as a user starts them on a GPU machine (`dask scheduler`, `dask worker ADDRESS`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_medit.compute import Cluster, ComputeError, edit
from napari_medit.results import EditCancelled, EditError
from napari_medit.sample_data import load_cxr

STEPS = 4


def start_cluster(folder: Path, *, nanny: bool = True) -> tuple[str, list[subprocess.Popen]]:
    """`dask scheduler` and one single-threaded `dask worker` on 127.0.0.1; returns the address."""
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [
            *dask,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        **quiet,
    )
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = subprocess.Popen(
        [
            *dask,
            "worker",
            "--scheduler-file",
            str(scheduler_file),
            "--host",
            "127.0.0.1",
            "--nthreads",
            "1",
            "--no-dashboard",
            "--nanny" if nanny else "--no-nanny",
        ],
        **quiet,
    )
    import json

    address = json.loads(scheduler_file.read_text())["address"]
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(1, timeout=60)
    return address, [worker, scheduler]


def stop(processes: list[subprocess.Popen]) -> None:
    from napari_medit import compute

    compute.places._disconnect()  # the API's kept connections, before their scheduler goes
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    address, processes = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield address
    stop(processes)


@pytest.fixture(scope="module")
def chest():
    sample = load_cxr()
    return sample["cxr"], {"edit_mask": sample["edit_mask"].array, "keep_mask": sample["keep_mask"].array}


def radedit(image, masks, **where):
    return edit(
        "radedit",
        image,
        model="demo-cxr",
        steps=STEPS,
        prompt="No acute cardiopulmonary process",
        seed=3,
        **masks,
        **where,
    )


@pytest.fixture(scope="module")
def here(chest):
    """The same edit in this process, with the worker's one torch thread (a thread count of its own would
    sum in another order: equal up to float rounding, not bit for bit)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return radedit(*chest)
    finally:
        torch.set_num_threads(threads)


def test_the_api_edits_on_the_worker_bit_identical_to_this_process(cluster, chest, here):
    image, masks = chest
    steps = []
    result = radedit(image, masks, scheduler=cluster, callback=steps.append, previews=True)
    assert result.provenance["computed_on"]["process"] != os.getpid()
    np.testing.assert_array_equal(result.image.array, here.image.array)
    np.testing.assert_array_equal(result.difference, here.difference)
    np.testing.assert_array_equal(result.image.affine, image.affine)
    keep = masks["keep_mask"] > 0
    np.testing.assert_array_equal(result.image.array[keep], image.array[keep])
    assert [s.step for s in steps] == list(range(1, steps[-1].total + 1))
    previews = [s for s in steps if s.estimate is not None]  # every 5 steps and the last, in source units
    assert [s.step for s in previews] == [
        s for s in range(1, steps[-1].total + 1) if s % 5 == 0 or s == steps[-1].total
    ]
    assert previews[-1].estimate.shape == (1, *image.array.shape)


def test_samples_and_their_spread_come_back_from_the_worker_as_computed_here(cluster, chest):
    image, masks = chest
    there, here = radedit(image, masks, scheduler=cluster, samples=2), radedit(image, masks, samples=2)
    assert there.provenance["samples"] == here.provenance["samples"]
    for remote, local in zip(there.samples, here.samples, strict=True):
        np.testing.assert_array_equal(remote.array, local.array)
    np.testing.assert_array_equal(there.variability, here.variability)
    assert there.variability.shape == image.array.shape and there.variability.max() > 0


def test_steps_carry_no_preview_unless_one_is_asked_for(cluster, chest):
    """The CLI's progress bar asks for none: no decode is run for it and a step is a few bytes."""
    import pickle

    image, masks = chest
    steps = []
    radedit(image, masks, scheduler=cluster, callback=steps.append)
    assert steps and all(s.preview() is None for s in steps)
    assert max(len(pickle.dumps(s)) for s in steps) < 1024


def test_the_cli_edits_on_the_worker_like_this_process(cluster, chest, tmp_path, capsys):
    import torch

    from napari_medit import read_image, write_image
    from napari_medit.cli import main

    image, masks = chest
    write_image(tmp_path / "cxr.png", image)
    for role, values in masks.items():
        write_image(tmp_path / f"{role}.png", image.with_array(values.astype(np.uint8)))
    common = [
        "edit",
        "radedit",
        "--image",
        str(tmp_path / "cxr.png"),
        "--model",
        "demo-cxr",
        "--steps",
        "3",
        "--edit-mask",
        str(tmp_path / "edit_mask.png"),
        "--keep-mask",
        str(tmp_path / "keep_mask.png"),
    ]
    assert main([*common, "--out", str(tmp_path / "remote.png"), "--scheduler", cluster]) == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*common, "--out", str(tmp_path / "here.png")]) == 0
    finally:
        torch.set_num_threads(threads)
    remote, local = read_image(tmp_path / "remote.png").array, read_image(tmp_path / "here.png").array
    np.testing.assert_array_equal(remote, local)
    assert (remote != image.array).any()


def test_the_environment_variable_sends_edits_to_the_cluster(cluster, chest, here, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDIT_SCHEDULER", cluster)
    result = radedit(*chest)
    assert result.provenance["computed_on"]["process"] != os.getpid()
    np.testing.assert_array_equal(result.image.array, here.image.array)


def test_cancel_stops_the_worker_within_a_step_and_frees_it(cluster, chest, here):
    image, masks = chest
    cancel, seen = threading.Event(), []

    def on_step(update):
        seen.append(update.step)
        cancel.set()

    started = time.monotonic()
    with pytest.raises(EditCancelled):
        edit(
            "radedit",
            image,
            model="demo-cxr",
            steps=200,
            seed=3,
            scheduler=cluster,
            callback=on_step,
            cancel=cancel,
            **masks,
        )
    assert time.monotonic() - started < 60 and max(seen) < 10  # 400 steps would take minutes
    np.testing.assert_array_equal(radedit(image, masks, scheduler=cluster).image.array, here.image.array)


def test_bad_requests_and_missing_models_come_back_as_one_message(cluster, chest):
    image, masks = chest
    with pytest.raises(EditError, match="no-such-model"):
        edit("radedit", image, model="no-such-model", scheduler=cluster, **masks)
    with pytest.raises(EditError, match="steps must be at least 1"):
        edit("radedit", image, model="demo-cxr", scheduler=cluster, steps=0, **masks)


def test_an_unreachable_scheduler_is_named_with_the_fix(monkeypatch):
    monkeypatch.setattr("napari_medit.compute.cluster.CONNECT_TIMEOUT_S", 2.0)
    started = time.monotonic()
    with pytest.raises(
        ComputeError, match=r"cannot reach the dask scheduler at tcp://127.0.0.1:9.*dask scheduler"
    ):
        Cluster("tcp://127.0.0.1:9")
    assert time.monotonic() - started < 30


def test_the_cli_says_so_when_the_scheduler_is_unreachable(monkeypatch, tmp_path, capsys):
    from napari_medit import write_image
    from napari_medit.cli import main

    monkeypatch.setattr("napari_medit.compute.cluster.CONNECT_TIMEOUT_S", 2.0)
    sample = load_cxr()
    for name, image in sample.items():
        write_image(tmp_path / f"{name}.png", image)
    code = main(
        [
            "edit",
            "radedit",
            "--image",
            str(tmp_path / "cxr.png"),
            "--out",
            str(tmp_path / "out.png"),
            "--model",
            "demo-cxr",
            "--edit-mask",
            str(tmp_path / "edit_mask.png"),
            "--scheduler",
            "tcp://127.0.0.1:9",
        ]
    )
    assert code == 2 and "cannot reach the dask scheduler" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_a_cluster_of_other_versions_is_refused(cluster, monkeypatch):
    from importlib import metadata

    class OtherVersions:  # this machine's napari-medit is another than the worker's
        PackageNotFoundError = metadata.PackageNotFoundError

        @staticmethod
        def version(name):
            return "0.0.1-other" if name == "napari-medit" else metadata.version(name)

    monkeypatch.setattr("napari_medit.compute.worker.metadata", OtherVersions)
    with pytest.raises(ComputeError, match=r"other versions.*napari-medit .* there, 0.0.1-other here"):
        Cluster(cluster)


def test_a_killed_worker_is_restarted_and_the_edit_rerun_to_the_same_result(tmp_path, chest, here):
    address, processes = start_cluster(tmp_path / "nanny")
    image, masks = chest
    killed = []

    def kill_once(update):
        if not killed:
            (pid,) = cluster.client.run(os.getpid).values()
            os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
            killed.append(pid)

    try:
        cluster = Cluster(address)
        request_steps = []
        result = edit(
            "radedit",
            image,
            model="demo-cxr",
            steps=STEPS,
            prompt="No acute cardiopulmonary process",
            seed=3,
            scheduler=address,
            callback=lambda u: (request_steps.append(u.step), kill_once(u)),
            **masks,
        )
        assert killed and result.provenance["computed_on"]["process"] != killed[0]
        np.testing.assert_array_equal(result.image.array, here.image.array)  # seeded: the rerun is the same
        cluster.close()
    finally:
        stop(processes)


def test_no_worker_left_is_reported_within_seconds(tmp_path, chest):
    address, processes = start_cluster(tmp_path / "lone", nanny=False)
    image, masks = chest
    try:
        cluster = Cluster(address)
        (pid,) = cluster.client.run(os.getpid).values()
        cluster.close()
        kill = lambda update: os.kill(pid, signal.SIGKILL) if update.step == 1 else None  # noqa: E731
        started = []
        with pytest.raises(ComputeError, match="no dask worker is left"):
            started.append(time.monotonic())
            edit(
                "radedit",
                image,
                model="demo-cxr",
                steps=200,
                seed=3,
                scheduler=address,
                callback=kill,
                **masks,
            )
        assert time.monotonic() - started[0] < 60
    finally:
        stop(processes)
