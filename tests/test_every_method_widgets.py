"""Every method of the catalogue through every widget, on a 2D chest image and a brain volume: the Masks
widget makes and checks its masks, the Edit widget runs one short edit (on the default worker process),
and the Compare widget saves the result, which reads back as shown."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medit.catalogue import METHODS

PLUGIN = "napari-medit"
# A few steps each: enough to run every part of the method, not to make a good edit.
SHORT = {"radedit": {"steps": 4}, "mededit": {"steps": 3}, "pie": {"steps": 4, "iterations": 2},
         "sdedit": {"steps": 40}, "repaint": {"steps": 3}, "diffedit": {"steps": 4}, "instruct": {"steps": 3},
         "instructx2x": {"steps": 3, "threshold": 0.0}}
MODELS = {"mededit": "demo-brain", "repaint": "demo-brain", "instruct": "demo-cxr-instruct",
          "instructx2x": "demo-cxr-instruct"}


def test_every_method_has_a_short_run_here():
    assert set(SHORT) == set(METHODS)  # a new method joins this file


@pytest.mark.parametrize("sample, image, region_layer", [("cxr", "cxr", "edit_mask"), ("brain", "t1", "lesion_mask")],
                         ids=["2D", "3D"])
def test_every_method_through_masks_edit_and_compare(make_napari_viewer, qtbot, tmp_path, sample, image,
                                                      region_layer):
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
        in_view = int(np.flatnonzero(region.any(axis=(1, 2)))[len(np.flatnonzero(region.any(axis=(1, 2)))) // 2])
        viewer.dims.set_point(0, source.data_to_world([in_view, 0, 0])[0])
    for method, spec in METHODS.items():
        masks.image.value, masks.method.value = image, method
        masks.create_masks()
        for role in spec.masks:
            viewer.layers[f"{image} {role}"].data = (brain if role in ("brain_mask", "lung_mask") else region
                                                     ).astype(np.uint8)
        assert masks.check() == [], method
        edit.method.value, edit.model.value, edit.image.value = method, MODELS.get(method, "demo-cxr"), image
        for role in spec.masks:
            edit.masks[role].value = f"{image} {role}"
        if sample == "brain":
            edit.scope.value = "current slice"
        for key, value in SHORT[method].items():
            edit.parameter(key).value = value
        edit.run()
        qtbot.waitUntil(lambda: edit.run_button.enabled and edit.status.value.split(":")[0] in (
            method, "failed", "cancelled"), timeout=300_000)
        assert edit.status.value.startswith(f"{method}: done"), (method, edit.status.value)
        result = viewer.layers[f"{image} {method}"]
        qtbot.waitUntil(lambda: compare.result.value == result.name, timeout=10_000)
        saved = compare.save(tmp_path / f"{method}.{'png' if sample == 'cxr' else 'nii.gz'}")
        assert saved, method
        shown_again, _, _ = to_layer_data(read_image(saved[0]), "reread", "image")  # as the reader shows it
        np.testing.assert_array_equal(shown_again, result.data)
        np.testing.assert_array_equal(source.data, before)  # the source is never modified
        for name in [layer.name for layer in viewer.layers if layer.name != image]:
            viewer.layers.remove(name)
