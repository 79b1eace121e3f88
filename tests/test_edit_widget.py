"""The Edit dock widget driving the engine on the demo models, in a real viewer."""

import gc

import numpy as np
import pytest

from napari_medit.widgets.edit import Compute, Scope

PLUGIN = "napari-medit"


def open_edit_widget(viewer, qtbot):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Edit")
    qtbot.waitUntil(lambda: widget.ready, timeout=120_000)  # engine imported, parameter forms built
    return widget


@pytest.fixture
def brain_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "brain")
    widget = open_edit_widget(viewer, qtbot)
    widget.method.value = "mededit"
    widget.model.value = "demo-brain"
    widget.image.value = widget.viewer.layers["t1"]
    return viewer, widget


def test_mededit_through_the_widget_adds_aligned_layers(brain_widget, qtbot):
    viewer, widget = brain_widget
    assert (
        widget.masks["pathology_mask"].value.name == "lesion_mask"
        and widget.masks["brain_mask"].value.name == "brain_mask"
    )
    source = viewer.layers["t1"]
    before = source.data.copy()
    widget.parameter("steps").value = 5
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


def test_the_result_follows_its_source_layer_renamed_and_a_removed_one_is_said(
    brain_widget, qtbot, monkeypatch
):
    viewer, widget = brain_widget
    source = viewer.layers["t1"]
    widget.parameter("steps").value = 3
    widget.run()
    source.name = "t1 renamed mid-run"  # and moved: the picker holds the layer, not its name
    viewer.layers.move(viewer.layers.index(source), 0)
    assert widget.image.value is source
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert "t1 renamed mid-run mededit" in viewer.layers
    assert viewer.layers["t1 renamed mid-run mededit"].metadata["source_layer"] == "t1 renamed mid-run"
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    names = [layer.name for layer in viewer.layers]
    widget.parameter("steps").value = 20
    widget.run()
    qtbot.waitUntil(lambda: widget.status.value.startswith("step"), timeout=60_000)
    viewer.layers.remove(source)
    # the edit runs on to its end; its outcome finds no source and says so
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=300_000)
    assert shown == ["the layer 't1 renamed mid-run' was removed during the edit: nothing was added"]
    assert [layer.name for layer in viewer.layers] == [n for n in names if n != "t1 renamed mid-run"]


def test_rgb_images_are_not_offered(brain_widget):
    viewer, widget = brain_widget
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="photo", rgb=True)
    assert viewer.layers["photo"] not in widget.image.choices and viewer.layers["t1"] in widget.image.choices


def test_cancel_leaves_no_layer(brain_widget, qtbot):
    viewer, widget = brain_widget
    widget.parameter("steps").value = 1000
    names = [layer.name for layer in viewer.layers]
    widget.run()
    qtbot.waitUntil(lambda: widget.status.value.startswith("step 1"), timeout=60_000)
    # The preview layer comes with the first estimate and shows it on the slices in work, the rest is
    # the source.
    qtbot.waitUntil(lambda: "preview" in viewer.layers, timeout=60_000)
    preview, source = viewer.layers["preview"], viewer.layers["t1"].data
    qtbot.waitUntil(lambda: (preview.data != source).any(), timeout=60_000)
    lesion_slices = np.flatnonzero(viewer.layers["lesion_mask"].data.any(axis=(1, 2)))
    changed = np.flatnonzero((preview.data != source).any(axis=(1, 2)))
    assert set(changed) <= set(lesion_slices)
    assert widget.client.progress_bar.total == 1000 * -(
        -len(lesion_slices) // 4
    )  # 1000 steps a batch of 4 slices
    assert " s left" in widget.status.value
    assert gc.get_freeze_count() > 0  # napari's objects sit out full collections while the edit runs
    widget.cancel()
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    assert [layer.name for layer in viewer.layers] == names
    assert widget.status.value == "cancelled" and widget.client.progress_bar is None
    assert gc.get_freeze_count() == 0  # and are handed back when it ends


def test_full_collections_are_held_while_any_edit_runs_and_resumed_after_the_last():
    from napari_medit.widgets.common import QuietCollector

    assert gc.get_freeze_count() == 0
    QuietCollector.hold()
    assert gc.get_freeze_count() > 0
    QuietCollector.hold()  # a second viewer's edit
    QuietCollector.release()
    assert gc.get_freeze_count() > 0  # the other edit still runs
    QuietCollector.release()
    assert gc.get_freeze_count() == 0
    QuietCollector.release()  # one release too many (a widget closed twice) changes nothing
    assert gc.get_freeze_count() == 0


def test_bad_input_notifies_and_changes_nothing(brain_widget, qtbot, monkeypatch):
    viewer, widget = brain_widget
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget.masks["pathology_mask"].value = None
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
    widget = open_edit_widget(viewer, qtbot)
    widget.compute.value = Compute.this_process  # today's thread worker, kept for debugging
    qtbot.waitUntil(lambda: widget.ready, timeout=120_000)
    widget.method.value, widget.model.value, widget.image.value = (
        "sdedit",
        "demo-cxr",
        widget.viewer.layers["scan"],
    )
    assert widget.masks["edit_mask"].value.name == "edit_mask"
    assert widget.axis.choices == (0, 1, 2)  # no affine: array axes, not anatomical planes
    widget.parameter("steps").value = 40  # SDEdit's default strength 0.1: 4 denoising steps
    widget.run()
    qtbot.waitUntil(
        lambda: (
            widget.run_button.enabled
            and widget.status.value.split(":")[0] in ("sdedit", "failed", "cancelled")
        ),
        timeout=120_000,
    )
    assert widget.status.value.startswith("sdedit: done"), widget.status.value
    result = viewer.layers["scan sdedit"]
    assert result.data.shape == volume.shape
    np.testing.assert_array_equal(result.scale, [3.0, 1.0, 0.5])
    outside = region == 0
    np.testing.assert_array_equal(result.data[outside], volume[outside])
    assert (result.data[region > 0] != volume[region > 0]).any()


def test_the_view_picker_looks_across_slices_of_volumes_only(brain_widget):
    viewer, widget = brain_widget
    assert not widget.view.native.isHidden()  # (visible only once the dock is on screen)
    widget.view.value = "coronal"  # the edits are axial: this plane shows them slice against slice
    assert tuple(viewer.dims.displayed) == (0, 2) and widget.status.value.startswith("coronal view")
    viewer.add_image(np.zeros((32, 40), np.float32), name="flat")
    widget.image.value = widget.viewer.layers["flat"]
    assert widget.view.native.isHidden() and widget.axis.native.isHidden()


@pytest.fixture
def cxr_viewer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cxr")
    edit_widget = open_edit_widget(viewer, qtbot)
    _, masks_widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Masks")
    return viewer, edit_widget, masks_widget


def run_and_wait(widget, qtbot, layer_name):
    widget.run()
    qtbot.waitUntil(
        lambda: (
            widget.run_button.enabled
            and widget.status.value.split(":")[0] in (widget.method.value, "failed", "cancelled")
        ),
        timeout=180_000,
    )
    assert widget.status.value.startswith(f"{widget.method.value}: done"), widget.status.value
    return widget.viewer.layers[layer_name]


@pytest.mark.parametrize(
    "method, settings",
    [
        ("radedit", dict(steps=4, prompt="No findings")),
        ("diffedit", dict(steps=4, prompt="No findings")),
        ("repaint", dict(steps=3)),
    ],
)
def test_cxr_methods_through_the_widget(cxr_viewer, qtbot, method, settings):
    viewer, widget, _ = cxr_viewer
    widget.method.value, widget.model.value, widget.image.value = (
        method,
        "demo-cxr",
        widget.viewer.layers["cxr"],
    )
    if method == "repaint":
        widget.masks["pathology_mask"].value = widget.viewer.layers["edit_mask"]
    for key, value in settings.items():
        widget.parameter(key).value = value
    source = viewer.layers["cxr"]
    before = source.data.copy()
    result = run_and_wait(widget, qtbot, f"cxr {method}")
    assert result.data.shape == source.data.shape and result.data.dtype == source.data.dtype
    np.testing.assert_array_equal(result.scale, source.scale)
    np.testing.assert_array_equal(result.translate, source.translate)
    np.testing.assert_array_equal(source.data, before)
    unchanged = (
        (viewer.layers["keep_mask"].data > 0)
        if method == "radedit"
        else (viewer.layers["edit_mask"].data == 0)
    )
    np.testing.assert_array_equal(result.data[unchanged], before[unchanged])
    assert result.metadata["edit"]["metrics"]["changed_voxels"] > 0


def test_samples_through_the_widget_add_a_stack_of_samples_and_their_spread(cxr_viewer, qtbot):
    viewer, widget, _ = cxr_viewer
    widget.method.value, widget.model.value, widget.image.value = (
        "radedit",
        "demo-cxr",
        widget.viewer.layers["cxr"],
    )
    widget.parameter("steps").value = 4
    widget.run_options.samples.value = 3
    result = run_and_wait(widget, qtbot, "cxr radedit")
    qtbot.waitUntil(lambda: "cxr radedit std" in viewer.layers, timeout=10_000)
    stack, spread = viewer.layers["cxr radedit samples"], viewer.layers["cxr radedit std"]
    assert stack.data.shape == (3, *result.data.shape)  # a slider over the samples, sample 1 first
    np.testing.assert_array_equal(stack.data[0], result.data)
    assert not (stack.data[1] == stack.data[2]).all()
    np.testing.assert_array_equal(stack.scale[1:], result.scale)
    np.testing.assert_array_equal(spread.scale, result.scale)
    np.testing.assert_array_equal(spread.translate, result.translate)
    keep = viewer.layers["keep_mask"].data > 0
    assert not spread.visible and (spread.data[keep] == 0).all() and spread.data.max() > 0
    np.testing.assert_allclose(spread.data, stack.data.astype(np.float64).std(axis=0), atol=1e-4)
    assert "3 samples: spread (std)" in widget.status.value
    assert result.metadata["edit"]["samples"] == stack.metadata["seeds"]


def test_pie_through_the_masks_and_edit_widgets_adds_a_progression_stack(cxr_viewer, qtbot):
    viewer, widget, masks = cxr_viewer
    masks.image.value, masks.method.value = masks.viewer.layers["cxr"], "pie"
    masks.create_masks()
    roi = viewer.layers["cxr roi_mask"]
    assert roi.data.shape == viewer.layers["cxr"].data.shape and not roi.data.any()
    np.testing.assert_array_equal(roi.scale, viewer.layers["cxr"].scale)
    assert masks.check() == ["roi_mask ('cxr roi_mask') is empty: paint the region first"]
    roi.data = (viewer.layers["edit_mask"].data > 0).astype(np.uint8)  # "painting" the ROI
    assert masks.check() == []
    widget.method.value, widget.model.value, widget.image.value = (
        "pie",
        "demo-cxr",
        widget.viewer.layers["cxr"],
    )
    assert widget.masks["roi_mask"].value.name == "cxr roi_mask"
    widget.parameter("steps").value, widget.parameter("prompt").value = 4, "Pleural effusion"
    result = run_and_wait(widget, qtbot, "cxr pie")
    qtbot.waitUntil(lambda: "cxr pie progression" in viewer.layers, timeout=10_000)
    stack = viewer.layers["cxr pie progression"]
    assert stack.data.shape == (10, *result.data.shape)  # PIE's 10 progressive steps, the last = the result
    np.testing.assert_array_equal(stack.data[-1], result.data)
    np.testing.assert_array_equal(stack.scale[1:], result.scale)


def test_instructx2x_through_the_widget_adds_its_guidance_map(cxr_viewer, qtbot):
    viewer, widget, _ = cxr_viewer
    widget.method.value, widget.model.value, widget.image.value = (
        "instructx2x",
        "demo-cxr-instruct",
        widget.viewer.layers["cxr"],
    )
    widget.masks["roi_mask"].value = widget.viewer.layers[
        "edit_mask"
    ]  # the region picker: the effusion's edit mask
    for name, value in dict(
        prompt="remove the right pleural effusion",
        steps=4,
        text_guidance=5.0,
        image_guidance=1.5,
        threshold=0.2,
    ).items():
        widget.parameter(name).value = value
    source = viewer.layers["cxr"]
    before = source.data.copy()
    result = run_and_wait(widget, qtbot, "cxr instructx2x")
    qtbot.waitUntil(lambda: "cxr instructx2x guidance map" in viewer.layers, timeout=10_000)
    heatmap = viewer.layers["cxr instructx2x guidance map"]
    assert heatmap.data.shape == source.data.shape and heatmap.data.max() <= 1
    np.testing.assert_array_equal(heatmap.scale, source.scale)
    region = viewer.layers["edit_mask"].data > 0
    np.testing.assert_array_equal(result.data[~region], before[~region])
    np.testing.assert_array_equal(source.data, before)
    assert result.metadata["edit"]["parameters"]["threshold"] == 0.2


def test_masks_widget_brain_mask_and_inpainting_mask(brain_widget, qtbot, monkeypatch):
    from napari_medit.catalogue import MedEditParams
    from napari_medit.masks import native_inpainting_mask

    viewer, _ = brain_widget
    _, masks = viewer.window.add_plugin_dock_widget(PLUGIN, "Masks")
    masks.image.value, masks.method.value = masks.viewer.layers["t1"], "mededit"
    masks.add_brain_mask()
    auto = viewer.layers["t1 brain_mask (auto)"].data > 0
    reference = viewer.layers["brain_mask"].data > 0
    dice = 2 * (auto & reference).sum() / (auto.sum() + reference.sum())
    assert dice > 0.85, dice
    np.testing.assert_array_equal(viewer.layers["t1 brain_mask (auto)"].scale, viewer.layers["t1"].scale)
    # The preview follows the Edit widget: its model (as the place where edits run answered for it)...
    _, widget = brain_widget
    qtbot.waitUntil(lambda: "demo-brain" in widget.client.facts, timeout=60_000)
    resolution = widget.client.facts["demo-brain"].resolution
    masks.show_inpainting_mask()
    shown = viewer.layers["t1 inpainting_mask"].data > 0
    lesion = viewer.layers["lesion_mask"].data > 0
    expected = native_inpainting_mask(lesion, reference, MedEditParams().kernel_size(resolution), resolution)
    np.testing.assert_array_equal(shown, expected)
    assert (shown & ~lesion).any() and not (shown & ~reference).any()  # dilated, within the brain
    assert f"on the {resolution} px model grid; demo-brain on local" in masks.status.value
    # ... and its MedEdit dilation, in model-grid pixels.
    widget.parameter("dilation").value = 5
    masks.show_inpainting_mask()
    narrower = viewer.layers["t1 inpainting_mask"].data > 0
    np.testing.assert_array_equal(narrower, native_inpainting_mask(lesion, reference, 5, resolution))
    assert narrower.sum() < shown.sum() and "dilation 5 px" in masks.status.value
    widget.parameter("dilation").value = 0  # automatic again
    # A model the place where edits run has not answered for yet: said, nothing drawn.
    shown_errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown_errors.append)
    widget.client.facts.clear()
    masks.show_inpainting_mask()
    assert shown_errors == [
        "the Edit widget's model demo-brain is still loading on local: try again in a moment"
    ]
    assert masks.check() == []
    viewer.layers["brain_mask"].data = np.zeros_like(viewer.layers["brain_mask"].data)
    assert masks.check() == ["brain_mask ('brain_mask') is empty: paint the region first"]


def test_a_step_whose_progress_bar_hands_over_the_outcome_neither_hides_it_nor_writes_into_it(
    brain_widget, monkeypatch
):
    """napari's progress bar processes Qt events when it moves, so the edit's outcome can be handled in
    the middle of a step's own handling. The step then stops there: the status keeps the outcome, and
    the estimate it carries is not written into the layer (the preview, about to become the result)."""
    from napari_medit.results import EditError, EditProgress

    viewer, widget = brain_widget
    source = viewer.layers["t1"]
    widget._run = (source, "mededit")
    preview = widget._preview = widget._add_preview(source)
    before = preview.data.copy()
    step_text = widget.client.step_text

    def handing_over_the_outcome(progress):
        widget._on_outcome(EditError("the worker stopped"))
        return step_text(progress)

    monkeypatch.setattr(widget.client, "step_text", handing_over_the_outcome)
    estimate = np.full((1, *source.data.shape[1:]), 7.0, np.float32)
    widget._on_step(EditProgress(5, 5, [source.data.shape[0] // 2], 0, estimate=estimate))
    assert widget.status.value == "failed"
    np.testing.assert_array_equal(preview.data, before)


def test_every_control_says_what_it_is(brain_widget):
    """Every field of every form is named as the catalogue names it (a check box by its text), no
    group is labelled with a class name, and a value decided at run time reads 'automatic', not 0."""
    from magicgui.widgets import CheckBox

    from napari_medit.catalogue import METHODS, RunOptions

    _, widget = brain_widget
    for form in (*(widget.form(name) for name in METHODS), widget.run_options):
        for control in form:
            shown = control.text if isinstance(control, CheckBox) else control.label
            assert shown.startswith(control.name.replace("_", " ")), control.name
    classes = {RunOptions.__name__, *(spec.params.__name__ for spec in METHODS.values())}
    assert not classes & {control.label for control in widget}
    assert (widget.parameter_box.label, widget.run_options_box.label) == ("parameters", "run options")
    assert widget.run_options.batch_size.label == "batch size (0: automatic)"
    widget.method.value = "mededit"
    assert widget.parameter("dilation").label == "dilation (0: automatic)"  # MedEdit's 25 px at 128, scaled
    assert widget.run_options.seed.label == "seed"  # a 0 that means 0
    assert widget.run_options.samples.min == 1 and widget.run_options.samples.value == 1


def test_forms_asked_for_before_their_turn_are_built_at_once_and_kept(make_napari_viewer, qtbot, monkeypatch):
    # The parameter forms are built in the event-loop turns after the widget opens; a script that
    # sets them first gets them at once, and the later turns neither rebuild nor reset them.
    from napari_medit.catalogue import SCHEDULER_ENVIRON

    monkeypatch.setenv(SCHEDULER_ENVIRON, "")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Edit")
    widget.compute.value = Compute.scheduler  # with no address: nothing connects
    widget.run_options.seed.value = 7
    widget.parameter("steps").value = 3
    qtbot.waitUntil(lambda: not widget._later, timeout=10_000)
    assert widget.run_options.seed.value == 7 and widget.parameter("steps").value == 3
    assert [len(widget.run_options_box), len(widget.parameter_box)] == [1, 1]
    order = [control.label for control in widget]
    assert order.index("view") < order.index("run options") < len(order) - 3  # then Run, Cancel, status
    assert widget.status.value == "type the scheduler's address"


def test_parameter_forms_hold_each_papers_defaults_with_their_sources(brain_widget):
    from napari_medit.catalogue import METHODS
    from napari_medit.widgets.forms import form_values

    _, widget = brain_widget
    for name, method in METHODS.items():
        form = widget.form(name)
        values = form_values(form)
        assert not values.pop("preset", None)  # the method's own paper defaults
        assert method.make_params(values) == method.make_params({})  # followers resolved alike
        assert all(w.tooltip for w in form), name
    widget.method.value = "radedit"
    assert not widget.form("radedit").native.isHidden() and widget.form("mededit").native.isHidden()
    widget.parameter("steps").value = 50
    assert widget.parameter("skip").value == 18  # the reference code's 36 of 100
    widget.method.value = "mededit"
    widget.parameter("dilation").value = 9
    assert widget.request()["dilation"] == 9
    widget.parameter("dilation").value = 0
    assert widget.request()["dilation"] is None  # 0: MedEdit's own, scaled to the model
    # A preset fills the form with its values (the request names it for the provenance); back to defaults.
    widget.method.value = "repaint"
    widget.parameter("preset").value = "mededit-paper"
    request = widget.request()
    assert (
        request["preset"],
        request["steps"],
        request["jump_length"],
        request["jump_n_sample"],
        request["start"].value,
    ) == ("mededit-paper", 1000, 1, 1, "noised_input")
    widget.parameter("preset").value = ""
    assert (widget.parameter("steps").value, widget.parameter("start").value.value) == (250, "noise")


def test_current_slice_scope_edits_only_the_slice_in_view(brain_widget, qtbot):
    viewer, widget = brain_widget
    source = viewer.layers["t1"]
    lesion_slices = np.flatnonzero(viewer.layers["lesion_mask"].data.any(axis=(1, 2)))
    in_view = int(lesion_slices[len(lesion_slices) // 2])
    viewer.dims.set_point(0, source.data_to_world([in_view, 0, 0])[0])
    widget.scope.value = Scope.current
    widget.parameter("steps").value = 3
    result = run_and_wait(widget, qtbot, "t1 mededit")
    changed = np.flatnonzero((result.data != source.data).any(axis=(1, 2)))
    assert list(changed) == [in_view]
    assert result.metadata["edit"]["slices"] == [in_view] and result.metadata["edit"]["axis"] == "axial"


def test_a_coronal_slice_range_edits_those_array_slices(brain_widget, qtbot):
    """Coronal slices reach the model head up; the range the user picks is in the layer's own indices."""
    from napari_medit.editing import plane_axis
    from napari_medit.io.layers import from_layer

    viewer, widget = brain_widget
    source = viewer.layers["t1"]
    widget.axis.value = "coronal"
    array_axis, _ = plane_axis(from_layer(source.data, source.metadata, file_order=False).affine, "coronal")
    touched = np.flatnonzero(np.moveaxis(viewer.layers["lesion_mask"].data, array_axis, 0).any(axis=(1, 2)))
    widget.scope.value = Scope.range
    assert not widget.first.native.isHidden() and widget.first.max == source.data.shape[array_axis] - 1
    widget.first.value, widget.last.value = int(touched[0]), int(touched[0]) + 1
    widget.parameter("steps").value = 3
    result = run_and_wait(widget, qtbot, "t1 mededit")
    changed = np.flatnonzero(np.moveaxis(result.data != source.data, array_axis, 0).any(axis=(1, 2)))
    assert set(changed) <= {touched[0], touched[0] + 1} and len(changed) > 0
    assert result.metadata["edit"]["axis"] == "coronal"


def test_a_bad_slice_range_notifies(brain_widget, monkeypatch, qtbot):
    viewer, widget = brain_widget
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)  # the chosen model loaded
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget.scope.value = Scope.range
    widget.first.value, widget.last.value = 40, 30
    names = [layer.name for layer in viewer.layers]
    widget.run()
    assert shown == ["the first slice (40) is after the last (30)"]
    assert [layer.name for layer in viewer.layers] == names and widget.run_button.enabled


def test_masks_widget_loads_mask_files_on_the_image_grid(brain_widget, tmp_path, monkeypatch):
    from pathlib import Path

    import nibabel as nib

    viewer, _ = brain_widget
    _, masks = viewer.window.add_plugin_dock_widget(PLUGIN, "Masks")
    masks.image.value, masks.method.value = masks.viewer.layers["t1"], "mededit"
    assert masks.role.choices == ("pathology_mask", "brain_mask")
    samples = Path(__file__).parents[1] / "napari_medit" / "sample_data"
    layer = masks.load_mask(samples / "lesion_mask.nii.gz", "pathology_mask")
    assert layer.name == "t1 pathology_mask"
    # shown like the image
    np.testing.assert_array_equal(layer.data > 0, viewer.layers["lesion_mask"].data > 0)
    np.testing.assert_array_equal(layer.scale, viewer.layers["t1"].scale)

    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    lesion = nib.load(samples / "lesion_mask.nii.gz")
    shifted = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(lesion.dataobj), lesion.affine + _translation(5.0)), shifted)
    cropped = tmp_path / "cropped.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(lesion.dataobj)[:-1], lesion.affine), cropped)
    names = [layer.name for layer in viewer.layers]
    assert masks.load_mask(shifted, "brain_mask") is None
    assert masks.load_mask(cropped, "brain_mask") is None
    assert masks.load_mask(tmp_path / "missing.nii.gz", "brain_mask") is None
    assert [layer.name for layer in viewer.layers] == names
    assert "shifted.nii.gz is not on the image's grid" in shown[0] and "resample" in shown[0]
    assert "cropped.nii.gz has shape" in shown[1]
    assert "missing.nii.gz" in shown[2]


def _translation(millimetres: float) -> np.ndarray:
    offset = np.zeros((4, 4))
    offset[0, 3] = millimetres
    return offset


def test_the_widgets_import_without_torch():
    """Opening a dock widget must not import torch on the GUI thread (seconds); the Edit widget imports
    the engine in a background worker instead."""
    import subprocess
    import sys

    code = (
        "import sys; import napari_medit.widgets.edit, napari_medit.widgets.masks, "
        "napari_medit.widgets.data, napari_medit.widgets.compare; print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "False\n"
    )


CLOSE_SCRIPT = """
import sys, threading, time
import napari
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

during_run = sys.argv[1] == "run"
viewer = napari.Viewer(show=True)
if during_run:
    viewer.open_sample("napari-medit", "brain")
_, widget = viewer.window.add_plugin_dock_widget("napari-medit", "Edit")
app = QApplication.instance()
if during_run:
    deadline = time.monotonic() + 120
    while not widget.ready and time.monotonic() < deadline:
        app.processEvents(); time.sleep(0.01)
    widget.method.value, widget.model.value = "mededit", "demo-brain"
    widget.image.value = viewer.layers["t1"]
    widget.parameter("steps").value = 400
    widget.run()
    bar = widget.client.progress_bar  # napari's progress bar comes in the turn after the click
    while (bar is None or bar.n < 2) and time.monotonic() < deadline:
        app.processEvents(); time.sleep(0.01)  # the run is denoising
        bar = widget.client.progress_bar
    run_done = widget.client.run_done
def close_now():
    started = time.monotonic()
    viewer.close()  # on the GUI thread: the widget lets its engine go in the background
    print(f"close took {time.monotonic() - started:.3f} s")
QTimer.singleShot(200, close_now)  # mid warm-up or mid-run
napari.run()
if during_run:
    print("run stopped:", run_done.wait(30))
for thread in threading.enumerate():
    if thread.name in ("napari-medit warm-up", "napari-medit connect", "napari-medit close"):
        thread.join(120)  # let the warm-up finish with nothing left to report to, the worker stop
import psutil
# the worker process stopped with napari
print("processes left:", len(psutil.Process().children(recursive=True)))
print("clean exit")
"""


def test_switching_compute_mid_connect_leaves_no_worker_process(make_napari_viewer, qtbot):
    """The worker process the widget was starting is stopped by the abandoned attempt itself, behind
    the GUI, while the widget connects to the new place."""
    import psutil

    def workers() -> set[int]:
        found = set()
        for child in psutil.Process().children(recursive=True):
            try:
                if "dask" in child.cmdline() and "worker" in child.cmdline():
                    found.add(child.pid)
            except psutil.Error:  # gone meanwhile
                pass
        return found

    before = workers()
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Edit")  # starts a worker process
    qtbot.waitUntil(lambda: bool(workers() - before), timeout=60_000)
    assert not widget.ready  # still connecting there
    widget.compute.value = Compute.this_process
    qtbot.waitUntil(lambda: widget.ready, timeout=120_000)
    assert widget.client.place is None
    qtbot.waitUntil(lambda: not workers() - before, timeout=60_000)


@pytest.mark.parametrize("moment", ["warm-up", "run"])
def test_closing_the_viewer_mid_warm_up_or_mid_run_exits_cleanly(moment, tmp_path):
    """Closing napari while the Edit widget works in the background used to abort the process
    ('wrapped C/C++ object of type WorkerBaseSignals has been deleted', then 'Aborted')."""
    import subprocess
    import sys

    script = tmp_path / "close.py"
    script.write_text(CLOSE_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), moment.split("-")[0]], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "clean exit" in done.stdout
    if moment == "run":
        assert "run stopped: True" in done.stdout  # cancelled and waited for, not left running
    assert "processes left: 0" in done.stdout
    # the GUI thread does not wait for the run to stop (up to a step) nor the worker (up to 10 s): napari
    # closes within a second
    (took,) = [float(line.split()[2]) for line in done.stdout.splitlines() if line.startswith("close took")]
    assert took < 1.0, done.stdout  # 0.16 s mid warm-up, 0.40 s mid-run here
    for sign in ("has been deleted", "Traceback", "Aborted"):
        assert sign not in done.stderr, done.stderr[-2000:]


def test_every_parameter_can_be_set_from_the_widget(brain_widget):
    """The widget's forms are the catalogue's: set every parameter and run option, and the request
    carries them; left alone, they give the catalogue's defaults (the CLI and manifest test:
    test_catalogue)."""
    from test_catalogue import OTHER_RUN, OTHER_VALUES

    from napari_medit.catalogue import METHODS

    _, widget = brain_widget
    for name, spec in METHODS.items():
        widget.method.value = name
        assert spec.make_params(
            {k: v for k, v in widget.request().items() if k in OTHER_VALUES}
        ) == spec.make_params({})
        for field in spec.params.__dataclass_fields__:
            widget.parameter(field).value = OTHER_VALUES[field]
        request = widget.request()
        assert {k: request[k] for k in spec.params.__dataclass_fields__} == {
            k: OTHER_VALUES[k] for k in spec.params.__dataclass_fields__
        }
    from napari_medit.widgets.edit import RUN_FORM_FIELDS

    assert set(RUN_FORM_FIELDS) == set(OTHER_RUN) - {"axis", "slices"}  # those two: the scope widgets
    for field in RUN_FORM_FIELDS:
        getattr(widget.run_options, field).value = OTHER_RUN[field]
    widget.axis.value, widget.scope.value = "coronal", Scope.range
    widget.first.value, widget.last.value = 3, 4
    request = widget.request()
    assert {field: request[field] for field in RUN_FORM_FIELDS} == {f: OTHER_RUN[f] for f in RUN_FORM_FIELDS}
    assert request["axis"] == "coronal"
    assert request["slices"][1] - request["slices"][0] == 2


def test_masks_widget_works_without_torch():
    """'Show MedEdit inpainting mask' and the model's resolution come from the catalogue and the model
    folder's JSON: the Masks widget never imports torch on the GUI thread."""
    import subprocess
    import sys

    code = """
import sys
import napari
viewer = napari.Viewer(show=False)
viewer.open_sample("napari-medit", "brain")
_, masks = viewer.window.add_plugin_dock_widget("napari-medit", "Masks")
masks.image.value, masks.method.value = masks.viewer.layers["t1"], "mededit"
masks.show_inpainting_mask()
print(int(viewer.layers["t1 inpainting_mask"].data.sum() > 0), "torch" in sys.modules)
viewer.close()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split()[-2:] == ["1", "False"], done.stderr[-2000:]
