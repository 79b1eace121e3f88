"""The Edit dock widget driving the engine on the demo models, in a real viewer."""

import numpy as np
import pytest

PLUGIN = "napari-medit"


@pytest.fixture
def brain_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "brain")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Edit")
    widget.method.value = "mededit"
    widget.model.value = "demo-brain"
    widget.image.value = "t1"
    return viewer, widget


def test_mededit_through_the_widget_adds_aligned_layers(brain_widget, qtbot):
    viewer, widget = brain_widget
    assert widget.masks["pathology_mask"].value == "lesion_mask" and widget.masks["brain_mask"].value == "brain_mask"
    source = viewer.layers["t1"]
    before = source.data.copy()
    widget.steps.value = 5
    widget.run()
    qtbot.waitUntil(lambda: "t1 mededit" in viewer.layers and widget.run_button.enabled, timeout=120_000)
    result = viewer.layers["t1 mededit"]
    assert result.data.shape == source.data.shape
    np.testing.assert_array_equal(result.scale, source.scale)
    np.testing.assert_array_equal(result.translate, source.translate)
    assert result.metadata["edit"]["method"] == "mededit"
    assert "t1 mededit difference" in viewer.layers and "preview" not in viewer.layers
    np.testing.assert_array_equal(source.data, before)  # the source layer is never modified
    lesion = viewer.layers["lesion_mask"].data > 0
    assert (result.data[lesion] != source.data[lesion]).any()


def test_cancel_leaves_no_layer(brain_widget, qtbot):
    viewer, widget = brain_widget
    widget.steps.value = 1000
    names = [layer.name for layer in viewer.layers]
    widget.run()
    qtbot.waitUntil(lambda: widget.status.value.startswith("step"), timeout=60_000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    assert [layer.name for layer in viewer.layers] == names
    assert widget.status.value == "cancelled"


def test_bad_input_notifies_and_changes_nothing(brain_widget, qtbot, monkeypatch):
    viewer, widget = brain_widget
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget.masks["pathology_mask"].value = "(none)"
    names = [layer.name for layer in viewer.layers]
    widget.run()
    qtbot.waitUntil(lambda: bool(shown) and widget.run_button.enabled, timeout=60_000)
    assert "needs a pathology_mask" in shown[0]
    assert [layer.name for layer in viewer.layers] == names


def test_layers_not_read_by_napari_medit_keep_their_layout(make_napari_viewer, qtbot):
    """A plain numpy volume is edited in its own axis order and the result lies on it."""
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    volume = (rng.random((4, 24, 40)) * 200).astype(np.uint8)
    viewer.add_image(volume, name="scan", scale=(3.0, 1.0, 0.5))
    region = np.zeros(volume.shape, np.uint8)
    region[1:3, 8:16, 10:30] = 1
    viewer.add_labels(region, name="edit_mask", scale=(3.0, 1.0, 0.5))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Edit")
    widget.method.value, widget.model.value, widget.image.value = "sdedit", "demo-cxr", "scan"
    assert widget.masks["edit_mask"].value == "edit_mask"
    widget.steps.value = 40  # SDEdit's default strength 0.1: 4 denoising steps
    widget.run()
    qtbot.waitUntil(lambda: widget.run_button.enabled and widget.status.value != "", timeout=120_000)
    assert widget.status.value.startswith("sdedit: done"), widget.status.value
    result = viewer.layers["scan sdedit"]
    assert result.data.shape == volume.shape
    np.testing.assert_array_equal(result.scale, [3.0, 1.0, 0.5])
    outside = region == 0
    np.testing.assert_array_equal(result.data[outside], volume[outside])
    assert (result.data[region > 0] != volume[region > 0]).any()
