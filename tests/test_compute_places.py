"""Where edits run, tried as users run them: `dask scheduler` and `dask worker` processes on loopback,
started with the docs' commands (two threads a worker, as `dask worker` gives on two cores), TLS from
a throwaway CA, a scheduler with no worker, a worker that dies at start, Ctrl-C, the environment
variable exported under batch and the stress tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_batch import write_manifest
from test_compute import stop

from napari_medit import compute
from napari_medit.batch import run_batch
from napari_medit.catalogue import SCHEDULER_ENVIRON
from napari_medit.cli import main
from napari_medit.compute import Cluster, ComputeError
from napari_medit.io import read_image, write_image
from napari_medit.sample_data import load_brain, load_cxr

DASK = [sys.executable, "-m", "dask"]
MODELS = Path(__file__).resolve().parents[1] / "napari_medit" / "models"


def start_scheduler(folder: Path, *tls: str) -> tuple[str, subprocess.Popen]:
    """`dask scheduler` as docs/compute.md starts it: every port on loopback."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "scheduler.json"
    command = [*DASK, "scheduler", "--host", "127.0.0.1", "--port", "0"]
    command += ["--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(file), *tls]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return json.loads(file.read_text())["address"], process


def start_worker(address: str, *extra: str) -> subprocess.Popen:
    """`dask worker` as docs/compute.md starts it (its nanny, and the nanny's environment, included)."""
    command = [*DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "2", "--no-dashboard", *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_worker(address: str, **security) -> None:
    from distributed import Client

    with Client(address, timeout=30, **security) as client:
        client.wait_for_workers(1, timeout=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    address, scheduler = start_scheduler(tmp_path_factory.mktemp("cluster"))
    worker = start_worker(address)
    wait_for_worker(address)
    yield address
    stop([worker, scheduler])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The samples as files, and a copy of demo-cxr whose scheduler is PNDM (multistep: the hard case)."""
    folder = tmp_path_factory.mktemp("files")
    for name, image in load_cxr(size=256).items():
        write_image(folder / f"{name}.png", image)
    for name, image in load_brain().items():
        write_image(folder / f"{name}.nii.gz", image)
    pndm = folder / "demo-cxr-pndm"
    shutil.copytree(MODELS / "demo-cxr", pndm)
    config_file = pndm / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update({"_class_name": "PNDMScheduler", "skip_prk_steps": True})
    config_file.write_text(json.dumps(config))
    return folder


def every_method(files: Path) -> Path:
    cxr = {"image": "cxr.png", "model": "demo-cxr", "steps": 3}
    pndm = {"model": str(files / "demo-cxr-pndm"), "loop": "reference", "iterations": 2, "steps": 8}
    instruction = {"model": "demo-cxr-instruct", "prompt": "add a right pleural effusion"}
    rows = [
        {
            **cxr,
            "id": "radedit",
            "method": "radedit",
            "edit_mask": "edit_mask.png",
            "keep_mask": "keep_mask.png",
        },
        {**cxr, **pndm, "id": "pie-pndm-1", "method": "pie", "roi_mask": "edit_mask.png", "seed": 1},
        {**cxr, **pndm, "id": "pie-pndm-2", "method": "pie", "roi_mask": "edit_mask.png", "seed": 2},
        {**cxr, "id": "sdedit", "method": "sdedit", "strength": 0.5},
        {**cxr, "id": "repaint", "method": "repaint", "pathology_mask": "edit_mask.png"},
        {**cxr, "id": "diffedit", "method": "diffedit", "edit_mask": "edit_mask.png", "prompt": "effusion"},
        {**cxr, **instruction, "id": "instruct", "method": "instruct"},
        {**cxr, **instruction, "id": "instructx2x", "method": "instructx2x", "roi_mask": "edit_mask.png"},
        {
            "id": "mededit",
            "method": "mededit",
            "image": "t1.nii.gz",
            "model": "demo-brain",
            "steps": 3,
            "pathology_mask": "lesion_mask.nii.gz",
            "brain_mask": "brain_mask.nii.gz",
        },
    ]
    return write_manifest(files, rows, "every_method.csv")


def outputs(summary) -> dict[str, tuple[bytes, int]]:
    """Each item's written image and model evaluations, for comparing two runs bit for bit."""
    found = {}
    for record in summary.records:
        assert record["status"] == "done", record
        image = read_image(record["outputs"][0]).array
        found[record["id"]] = (image.tobytes(), record["provenance"]["model_evaluations"])
    return found


def test_a_two_thread_worker_gives_every_method_exactly_what_this_process_gives(cluster, files, tmp_path):
    manifest = every_method(files)
    here = outputs(run_batch(manifest, tmp_path / "here", workers=0, show_progress=False))
    there = run_batch(manifest, tmp_path / "there", scheduler=cluster, show_progress=False)
    assert {r["worker_pid"] for r in there.records} != {os.getpid()}
    assert outputs(there) == here


def test_a_worker_started_as_the_docs_say_computes_what_the_local_worker_computes(cluster, files):
    """The docs' worker runs under its nanny's OMP_NUM_THREADS=1; every edit sets torch's threads itself."""
    image = read_image(files / "cxr.png")
    run = {"model": "demo-cxr", "steps": 4, "strength": 0.5, "seed": 5}
    docs = compute.edit("sdedit", image, scheduler=cluster, **run)
    local = compute.edit("sdedit", image, scheduler="local", **run)
    assert docs.provenance["computed_on"] != local.provenance["computed_on"]
    assert docs.provenance["torch_threads"] == local.provenance["torch_threads"]
    np.testing.assert_array_equal(docs.image.array, local.image.array)


def test_the_exported_variable_is_read_once_by_batch_and_the_stress_tests(
    cluster, files, tmp_path, monkeypatch
):
    monkeypatch.setenv(SCHEDULER_ENVIRON, cluster)  # as docs/compute.md advises
    rows = [
        {
            "id": f"sd{seed}",
            "image": "cxr.png",
            "method": "sdedit",
            "model": "demo-cxr",
            "steps": 2,
            "seed": seed,
        }
        for seed in (1, 2)
    ]
    manifest = write_manifest(files, rows, "env.csv")
    runs = {"workers 0": {"workers": 0}, "workers 1": {"workers": 1}, "scheduler": {"scheduler": cluster}}
    for name, where in runs.items():
        summary = run_batch(manifest, tmp_path / name.replace(" ", ""), show_progress=False, **where)
        assert [r["status"] for r in summary.records] == ["done", "done"], (name, summary.records)
    out = tmp_path / "stress"
    command = ["stress-test", "acquisition", "--demo", "--n", "2", "--steps", "2", "--out", str(out)]
    assert main([*command, "--workers", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_generated"] == 2 and report["n_failed"] == 0


def test_ctrl_c_in_edit_cancels_the_workers_task_and_frees_it(cluster, files, tmp_path):
    from distributed import Client

    def edits_running(client) -> list[str]:
        return [key for keys in client.processing().values() for key in keys if "napari-medit-edit" in key]

    command = [sys.executable, "-m", "napari_medit.cli", "edit", "sdedit", "--image", str(files / "cxr.png")]
    command += ["--model", "demo-cxr", "--steps", "1000", "--strength", "1", "--scheduler", cluster]
    with open(tmp_path / "stderr.txt", "w+") as errors, Client(cluster, timeout=30) as client:
        # A test run started in the background (nohup make test &) ignores SIGINT, and so would the child:
        # give it the default disposition, as a terminal's foreground job has.
        edit = subprocess.Popen(
            [*command, "--out", str(tmp_path / "cf.png")],
            stderr=errors,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 120
        while not edits_running(client) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert edits_running(client), "the edit never started on the worker"
        time.sleep(2)  # a few steps in
        edit.send_signal(signal.SIGINT)
        assert edit.wait(30) == 130
        interrupted = time.monotonic()
        while edits_running(client) and time.monotonic() - interrupted < 30:
            time.sleep(0.1)
        assert not edits_running(client), "the worker still computes the abandoned edit"
        assert time.monotonic() - interrupted < 10  # within a step or so, not 1000 steps
        errors.seek(0)
        assert errors.read().strip().splitlines()[-1] == (
            "napari-medit: interrupted (an edit under way was stopped where it ran)"
        )
    assert not (tmp_path / "cf.png").exists()


def test_a_scheduler_with_no_worker_says_how_to_start_one(tmp_path, files):
    address, scheduler = start_scheduler(tmp_path / "lonely")
    try:
        started = time.monotonic()
        cluster = Cluster(address)
        with pytest.raises(ComputeError, match=r"has no worker: start one with `dask worker"):
            cluster.models()
        with pytest.raises(ComputeError, match=r"has no worker: start one with `dask worker"):
            compute.edit(
                "sdedit", read_image(files / "cxr.png"), model="demo-cxr", steps=2, scheduler=address
            )
        assert time.monotonic() - started < 30
    finally:
        stop([scheduler])


def test_a_local_worker_that_dies_at_start_says_why_at_once(tmp_path, monkeypatch):
    # The worker process's `python -m dask` finds a dask that fails as a broken CUDA install would
    # (on PYTHONPATH, which the worker inherits: nothing to execute from a temporary folder).
    broken = tmp_path / "broken" / "dask"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("")
    (broken / "__main__.py").write_text(
        "import sys\nprint('ImportError: libcuda.so.1: cannot open shared object file', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))
    started = time.monotonic()
    with pytest.raises(ComputeError, match=r"(?s)exited at start \(status 3\).*libcuda\.so\.1"):
        Cluster("local")
    assert time.monotonic() - started < 20  # not LOCAL_START_TIMEOUT_S


def test_a_connection_abandoned_before_it_finishes_is_closed_by_its_thread():
    from napari_medit.widgets.engine_client import _Connecting

    class Engine:
        closed = False

        def close(self):
            self.closed = True

    late, early = _Connecting(), _Connecting()
    late.abandon()  # the user chose another place, or closed the widget, while it connected
    engine = Engine()
    late.finish(engine, ["demo-cxr"], "")
    assert engine.closed and late.adopt() is None
    engine = Engine()
    early.finish(engine, ["demo-cxr"], "")  # finished first, then abandoned before it was adopted
    early.abandon()
    assert engine.closed and early.adopt() is None


# ---------------------------------------------------------------- TLS


def throwaway_ca(folder: Path) -> dict[str, Path]:
    """The docs' recipe: a CA, and a certificate per role signed by it (loopback names)."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = Path(__file__).resolve().parents[1] / "docs" / "tls-certificates.sh"
    subprocess.run(["bash", str(recipe), str(folder)], check=True, capture_output=True)
    return {path.stem: path for path in folder.iterdir()}


def test_tls_from_a_throwaway_ca_runs_an_edit_and_each_misconfiguration_is_one_line(
    tmp_path, files, monkeypatch
):
    certs = throwaway_ca(tmp_path / "tls")
    tls = ["--tls-ca-file", str(certs["ca"])]
    own = ["--tls-cert", str(certs["scheduler"]), "--tls-key", str(certs["scheduler-key"])]
    address, scheduler = start_scheduler(tmp_path / "tls-cluster", "--protocol", "tls", *tls, *own)
    worker = start_worker(
        address, *tls, "--tls-cert", str(certs["worker"]), "--tls-key", str(certs["worker-key"])
    )
    plain, plain_scheduler = start_scheduler(tmp_path / "plain")
    image = read_image(files / "cxr.png")
    try:
        # no client settings yet: refused at once, naming the settings
        started = time.monotonic()
        with pytest.raises(
            ComputeError, match="no TLS client settings: set DASK_DISTRIBUTED__COMM__TLS__CA_FILE"
        ):
            Cluster(address)
        with pytest.raises(ComputeError, match="closed the connection at once: it may expect TLS"):
            Cluster(address.replace("tls://", "tcp://"))
        assert time.monotonic() - started < 15
        for name, value in {
            "CA_FILE": certs["ca"],
            "CLIENT__CERT": certs["client"],
            "CLIENT__KEY": certs["client-key"],
        }.items():
            monkeypatch.setenv(f"DASK_DISTRIBUTED__COMM__TLS__{name}", str(value))
        import dask

        dask.config.refresh()
        try:
            started = time.monotonic()
            with pytest.raises(ComputeError, match=r"did not complete a TLS handshake.*plain scheduler"):
                Cluster(plain.replace("tcp://", "tls://"))
            assert time.monotonic() - started < 15
            from distributed.security import Security

            wait_for_worker(address, security=Security())
            result = compute.edit("sdedit", image, model="demo-cxr", steps=4, strength=0.5, scheduler=address)
            assert result.provenance["computed_on"]["process"] != os.getpid()
            assert not np.array_equal(result.image.array, image.array)
        finally:
            compute.places._disconnect()
            monkeypatch.undo()
            dask.config.refresh()
    finally:
        stop([worker, scheduler, plain_scheduler])


# ---------------------------------------------------------------- one set of defaults


def test_the_api_the_cli_and_a_manifest_give_one_result_with_every_run_option_left_out(files, tmp_path):
    """demo-brain on the brain sample: every run option left out (axis included) in all three."""
    masks = {"pathology_mask": "lesion_mask.nii.gz", "brain_mask": "brain_mask.nii.gz"}
    api = compute.edit(
        "mededit",
        read_image(files / "t1.nii.gz"),
        model="demo-brain",
        steps=2,
        **{role: read_image(files / name) for role, name in masks.items()},
    )
    command = [
        "edit",
        "mededit",
        "--image",
        str(files / "t1.nii.gz"),
        "--model",
        "demo-brain",
        "--steps",
        "2",
    ]
    for role, name in masks.items():
        command += [f"--{role.replace('_', '-')}", str(files / name)]
    assert main([*command, "--out", str(tmp_path / "cli.nii.gz")]) == 0
    row = {
        "id": "defaults",
        "image": "t1.nii.gz",
        "method": "mededit",
        "model": "demo-brain",
        "steps": 2,
        **masks,
    }
    summary = run_batch(
        write_manifest(files, [row], "defaults.csv"), tmp_path / "batch", workers=0, show_progress=False
    )
    cli, batch = read_image(tmp_path / "cli.nii.gz"), read_image(summary.records[0]["outputs"][0])
    assert api.provenance["axis"] == "axial"
    np.testing.assert_array_equal(cli.array, api.image.array)
    np.testing.assert_array_equal(batch.array, api.image.array)
    assert summary.records[0]["provenance"]["axis"] == "axial"


def test_a_closed_pipe_is_not_an_error():
    """`napari-medit models | head -1`: the reader went away before the listing was written."""
    models = subprocess.Popen(
        [sys.executable, "-m", "napari_medit.cli", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    models.stdout.close()  # before it writes: its first write finds no reader
    _, errors = models.communicate(timeout=120)
    assert models.returncode == 0 and errors.decode().strip() == ""


def test_the_cli_answers_a_tls_address_without_settings_in_one_line_and_exits_at_once(files, tmp_path):
    """No half-made dask client is left behind to hang the interpreter's exit (Client.__del__)."""
    command = [sys.executable, "-m", "napari_medit.cli", "edit", "sdedit", "--image", str(files / "cxr.png")]
    command += ["--model", "demo-cxr", "--out", str(tmp_path / "cf.png"), "--scheduler", "tls://127.0.0.1:9"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DASK_DISTRIBUTED__COMM__TLS")}
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environ)
    assert done.returncode == 2 and time.monotonic() - started < 20
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("napari-medit: error: tls://127.0.0.1:9 asks for TLS, and this machine has no TLS")
