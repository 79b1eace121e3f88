"""Run once (not again on napari's previous release, unlike test_edit_widget.py): every method of
the catalogue through every widget, on a 2D chest image and a brain volume: the Masks
widget makes and checks its masks, the Edit widget runs one short edit (on the default worker process),
and the Compare widget saves the result, which reads back as shown."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medit.catalogue import METHODS
from napari_medit.widgets.edit import Scope

PLUGIN = "napari-medit"
# A few steps each: enough to run every part of the method, not to make a good edit.
SHORT = {
    "radedit": {"steps": 4},
    "mededit": {"steps": 3},
    "pie": {"steps": 4, "iterations": 2},
    "sdedit": {"steps": 40},
    "repaint": {"steps": 3},
    "diffedit": {"steps": 4},
    "instruct": {"steps": 3},
    "instructx2x": {"steps": 3, "threshold": 0.0},
}
MODELS = {
    "mededit": "demo-brain",
    "repaint": "demo-brain",
    "instruct": "demo-cxr-instruct",
    "instructx2x": "demo-cxr-instruct",
}


def said_last(count: int = 3) -> list[str]:
    """napari's latest notifications (a failed edit's message is there)."""
    from napari.utils.notifications import notification_manager

    return [record.message for record in notification_manager.records[-count:]]


def wait_for_outcome(qtbot, edit, method: str, seconds: float = 120):
    """Until the edit's outcome is shown and Run is enabled again; else what the widget was doing."""
    from pytestqt.exceptions import TimeoutError as QtTimeout

    def ended():
        return edit.run_button.enabled and edit.status.value.split(":")[0] in (method, "failed", "cancelled")

    try:
        qtbot.waitUntil(ended, timeout=int(seconds * 1000))
    except QtTimeout:
        raise AssertionError(
            f"{method}: no outcome within {seconds:.0f} s; status {edit.status.value!r}, run button "
            f"{'on' if edit.run_button.enabled else 'off'}, running {edit._run}, engine ready {edit.ready}, "
            f"GUI tasks queued {len(edit._gui_tasks)}, last notifications {said_last()}"
        ) from None


def test_every_method_has_a_short_run_here():
    assert set(SHORT) == set(METHODS)  # a new method joins this file


@pytest.mark.parametrize(
    "sample, image, region_layer",
    [("cxr", "cxr", "edit_mask"), ("brain", "t1", "lesion_mask")],
    ids=["2D", "3D"],
)
def test_every_method_through_masks_edit_and_compare(
    make_napari_viewer, qtbot, tmp_path, sample, image, region_layer
):
    from napari_medit import read_image
    from napari_medit.io.layers import to_layer_data

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, sample)
    source = viewer.layers[image]
    before = source.data.copy()
    region = viewer.layers[region_layer].data > 0
    brain = viewer.layers["brain_mask"].data > 0 if sample == "brain" else np.ones_like(region)
    for name in [layer.name for layer in viewer.layers if layer.name != image]:
        viewer.layers.remove(name)  # only the masks the Masks widget makes
    _, masks = viewer.window.add_plugin_dock_widget(PLUGIN, "Masks")
    _, edit = viewer.window.add_plugin_dock_widget(PLUGIN, "Edit")
    _, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare")
    qtbot.waitUntil(lambda: edit.ready, timeout=120_000)
    if sample == "brain":  # one slice in view through the lesion: a short run
        in_view = int(
            np.flatnonzero(region.any(axis=(1, 2)))[len(np.flatnonzero(region.any(axis=(1, 2)))) // 2]
        )
        viewer.dims.set_point(0, source.data_to_world([in_view, 0, 0])[0])
    for method, spec in METHODS.items():
        masks.image.value, masks.method.value = masks.viewer.layers[image], method
        masks.create_masks()
        for role in spec.masks:
            viewer.layers[f"{image} {role}"].data = (
                brain if role in ("brain_mask", "lung_mask") else region
            ).astype(np.uint8)
        assert masks.check() == [], method
        edit.method.value, edit.model.value, edit.image.value = (
            method,
            MODELS.get(method, "demo-cxr"),
            edit.viewer.layers[image],
        )
        for role in spec.masks:
            edit.masks[role].value = edit.viewer.layers[f"{image} {role}"]
        if sample == "brain":
            edit.scope.value = Scope.current
        for key, value in SHORT[method].items():
            edit.parameter(key).value = value
        edit.run()
        wait_for_outcome(qtbot, edit, method)
        assert edit.status.value.startswith(f"{method}: done"), (method, edit.status.value, said_last())
        result = viewer.layers[f"{image} {method}"]
        qtbot.waitUntil(lambda name=result.name: compare.result.value.name == name, timeout=10_000)
        saved = compare.save(tmp_path / f"{method}.{'png' if sample == 'cxr' else 'nii.gz'}")
        assert saved, method
        shown_again, _, _ = to_layer_data(read_image(saved[0]), "reread", "image")  # as the reader shows it
        np.testing.assert_array_equal(shown_again, result.data)
        np.testing.assert_array_equal(source.data, before)  # the source is never modified
        for name in [layer.name for layer in viewer.layers if layer.name != image]:
            viewer.layers.remove(name)


LIGHT_SCRIPT = """
import sys, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication

def wait(condition, seconds=300):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        app.processEvents(); time.sleep(0.01)

viewer = napari.Viewer(show=True)
app = QApplication.instance()
viewer.open_sample("napari-medit", "cxr")
viewer.open_sample("napari-medit", "brain")
_, widget = viewer.window.add_plugin_dock_widget("napari-medit", "Edit")
for name in ("Masks", "Compare", "Data", "Image info"):
    viewer.window.add_plugin_dock_widget("napari-medit", name)
wait(lambda: widget.ready)
print("compute:", widget.compute.value.value, "models:", ",".join(widget.model.choices))
for method, model, image, steps in (("radedit", "demo-cxr", "cxr", 3), ("mededit", "demo-brain", "t1", 3)):
    widget.method.value, widget.model.value, widget.image.value = method, model, widget.viewer.layers[image]
    widget.parameter("steps").value = steps
    widget.run()
    wait(lambda: widget.run_button.enabled and widget.status.value.split(":")[0] in (method, "failed"))
    result, source = viewer.layers[f"{image} {method}"], viewer.layers[image]
    elsewhere = result.metadata["edit"]["computed_on"]["process"] != __import__("os").getpid()
    print(method, widget.status.value.split(" in ")[0], result.data.shape == source.data.shape,
          bool((result.data != source.data).any()), elsewhere)
heavy = ("torch", "diffusers", "monai", "transformers")
print("heavy:", sorted(name for name in heavy if name in sys.modules))
viewer.close()
"""


def test_the_default_compute_edits_in_a_worker_process_and_napari_never_imports_torch(tmp_path):
    """Chest (2D) and brain (3D) edits through the Edit widget with its default compute: they run in the
    worker process, and napari's process (here a fresh one) never holds torch, diffusers, monai or
    transformers, with every napari-medit widget open."""
    import subprocess
    import sys

    script = tmp_path / "light.py"
    script.write_text(LIGHT_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("compute: worker process models: ") and "demo-brain" in lines[0]
    assert lines[1:3] == ["radedit radedit: done True True True", "mededit mededit: done True True True"], (
        done.stdout
    )
    assert lines[3] == "heavy: []"


@pytest.mark.parametrize(
    "method", ["radedit", "mededit", "pie", "sdedit", "repaint", "diffedit", "instruct", "instructx2x"]
)
def test_the_masks_widget_makes_every_method_s_masks(make_napari_viewer, method, tmp_path):
    """Create empty masks, check them, load a file for each role: every role a method takes is one the
    Masks widget knows (its colours come from the catalogue; lung_mask once raised KeyError)."""
    from napari_medit import MedicalImage, write_image
    from napari_medit.catalogue import MASK_ROLES, METHODS

    # a new method joins this test's list
    assert sorted(METHODS) == sorted(
        ["radedit", "mededit", "pie", "sdedit", "repaint", "diffedit", "instruct", "instructx2x"]
    )
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 40), np.float32), name="scan")
    _, masks = viewer.window.add_plugin_dock_widget(PLUGIN, "Masks")
    masks.image.value, masks.method.value = masks.viewer.layers["scan"], method
    spec = METHODS[method]
    masks.create_masks()
    for role in spec.masks:
        layer = viewer.layers[f"scan {role}"]
        assert layer.data.shape == (32, 40) and not layer.data.any()
        assert layer.colormap.map(np.array([1]))[0, :3] == pytest.approx(
            np.array([int(MASK_ROLES[role].color[i : i + 2], 16) / 255 for i in (1, 3, 5)]), abs=1e-3
        )
    problems = masks.check()
    assert all(f"{role} ('scan {role}') is empty" in " ".join(problems) for role in spec.required_masks)
    for role in spec.masks:
        region = np.zeros((32, 40), np.uint8)
        region[8:20, 10:30] = 1
        path = write_image(tmp_path / f"{role}.png", MedicalImage(region, np.eye(4)))
        viewer.layers.remove(f"scan {role}")
        assert masks.load_mask(path, role) is not None, role
        assert viewer.layers[f"scan {role}"].data.sum() == region.sum()
