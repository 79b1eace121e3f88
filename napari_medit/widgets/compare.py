"""The Compare dock widget: an edit against its source (before/after, opacity, difference map, side by
side), and saving it with its provenance.

Results are the layers the Edit widget adds: their metadata holds the provenance ('edit') and the
source layer's name ('source_layer'). Only visibility, opacity, napari's grid and the viewed plane
(napari's dims order: a coronal view across axial edits shows whether neighbouring slices agree)
change here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, PushButton

from ._viewer_parts import grid, plane_view
from .common import show_failure, status_label

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-medit"


class CompareWidget(Container):
    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        # the result layer itself (a renamed one stays picked)
        self.result = ComboBox(label="result", choices=self._results)
        self.before_after = PushButton(
            text="Before / after", tooltip="show the source or the edit, in the same place"
        )
        self.opacity = FloatSlider(label="edit opacity", min=0.0, max=1.0, step=0.05, value=1.0)
        self.difference = CheckBox(
            text="difference map", value=False, tooltip="edit - source: green brighter, pink darker"
        )
        self.side_by_side = CheckBox(
            text="side by side",
            value=False,
            tooltip="source and edit in two linked views (napari's grid mode)",
        )
        self.view = plane_view(self.viewer, lambda text: setattr(self.status, "value", text))
        self.save_button = PushButton(
            text="Save result...",
            tooltip="NIfTI with the source file's affine, or PNG; the provenance goes next to it as JSON",
        )
        self.status = status_label()
        self.extend(
            [
                self.result,
                self.before_after,
                self.opacity,
                self.difference,
                self.side_by_side,
                self.view,
                self.save_button,
                self.status,
            ]
        )
        self.before_after.changed.connect(self.toggle_before_after)
        self.opacity.changed.connect(self._set_opacity)
        self.difference.changed.connect(self._show_difference)
        self.side_by_side.changed.connect(self.set_side_by_side)
        self.save_button.changed.connect(self._ask_and_save)
        self.result.changed.connect(self._result_changed)
        self._hidden_for_side_by_side: list[str] = []

    def _results(self, _=None):
        return [(layer.name, layer) for layer in self.viewer.layers if "source_layer" in layer.metadata]

    def reset_choices(self, event=None):
        """napari calls it as layers come and go: a new result is picked, to compare it at once."""
        known = set(map(id, self.result.choices))
        super().reset_choices(event)
        new = [layer for layer in self.result.choices if id(layer) not in known]
        if new:
            self.result.value = new[-1]

    def _picked(self):
        """The picked result layer while it is open, else None."""
        layer = self.result.value
        return layer if layer is not None and layer in self.viewer.layers else None

    def _pair(self):
        """(result, source) layers; ValueError naming what is missing."""
        result = self._picked()
        if result is None:
            raise ValueError("no result to compare: run an edit first")
        source = result.metadata["source_layer"]
        if source not in self.viewer.layers:
            raise ValueError(f"the source layer '{source}' of '{result.name}' is no longer open")
        return result, self.viewer.layers[source]

    def _difference_layer(self):
        result = self._picked()
        name = None if result is None else f"{result.name} difference"
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _result_changed(self, _=None):
        result = self._picked()
        if result is not None:
            self.opacity.value = result.opacity
            difference = self._difference_layer()
            self.difference.value = bool(difference is not None and difference.visible)

    # ------------------------------------------------------------ comparing

    def toggle_before_after(self, _=None):
        try:
            result, source = self._pair()
        except ValueError as exc:
            return self._fail(str(exc))
        result.visible = not result.visible
        source.visible = True
        self.status.value = f"showing {result.name if result.visible else source.name}"

    def _set_opacity(self, value: float):
        result = self._picked()
        if result is not None:
            result.opacity = value

    def _show_difference(self, shown: bool):
        difference = self._difference_layer()
        if difference is not None:
            difference.visible = shown
        elif shown:
            result = self._picked()
            self._fail("no result picked" if result is None else f"'{result.name} difference' is not open")

    def set_side_by_side(self, on: bool):
        """Source and result in napari's grid, everything else hidden meanwhile (and shown again after)."""
        if on:
            try:
                result, source = self._pair()
            except ValueError as exc:
                self.side_by_side.value = False
                return self._fail(str(exc))
            self._hidden_for_side_by_side = [
                layer.name for layer in self.viewer.layers if layer.visible and layer not in (result, source)
            ]
            for name in self._hidden_for_side_by_side:
                self.viewer.layers[name].visible = False
            result.visible = source.visible = True
            grid(self.viewer).enabled = True
            self.viewer.reset_view()  # both views whole
        else:
            grid(self.viewer).enabled = False
            self.viewer.reset_view()
            for name in self._hidden_for_side_by_side:
                if name in self.viewer.layers:
                    self.viewer.layers[name].visible = True
            self._hidden_for_side_by_side = []

    # ------------------------------------------------------------ saving

    def _ask_and_save(self, _=None):
        from qtpy.QtWidgets import QFileDialog

        from ..io.dicom import SOURCE_FILES
        from ..io.formats import save_dialog_filter

        layer = self._picked()
        dicom = layer is not None and SOURCE_FILES in layer.metadata
        path, _ = QFileDialog.getSaveFileName(
            self.native,
            "Save the edited image",
            f"{layer.name if layer is not None else 'edit'}.{'dcm' if dicom else 'nii.gz'}",
            # A DICOM source: DICOM first (a 2D result is one file, a series the folder NAME beside it).
            save_dialog_filter(dicom=dicom),
        )
        if path:
            self.save(path)

    def save(self, path: str | Path) -> list[Path]:
        """The result through napari-medit's writer, and its provenance as ``<name>.json`` beside it.
        A ``.dcm`` path writes DICOM derived from the source's instances: that file for a 2D image,
        the folder of that name without ``.dcm`` for a series."""
        from ..jobs import suffixed, write_text_atomically

        try:
            result, _ = self._pair()
        except ValueError as exc:
            self._fail(str(exc))
            return []
        path = Path(path)
        try:
            if path.suffix.lower() == ".dcm":
                written, path = self._save_dicom(result, path)
            else:
                written = [Path(p) for p in result.save(str(path), plugin=PLUGIN)]
        except Exception as exc:  # noqa: BLE001 - the writer's message says what is wrong
            self._fail(f"could not save {path.name}: {exc.__cause__ or exc}")
            return []
        if not written:
            self._fail(
                f"could not save {path.name}: choose a .nii.gz, .nii, .mgz, .mgh or (2D images) .png file"
            )
            return []
        sidecar = write_text_atomically(
            suffixed(path, "", ".json"), json.dumps(result.metadata["edit"], indent=2)
        )
        shown = f"{len(written)} DICOM files in {path.name}" if path.is_dir() else written[0].name
        self.status.value = f"saved {shown} and {sidecar.name}"
        return [*written, sidecar]

    @staticmethod
    def _save_dicom(result, path: Path) -> tuple[list[Path], Path]:
        from ..io.dicom_derived import write_dicom
        from ..io.layers import from_layer

        image = from_layer(result.data, result.metadata, result.scale, result.translate)
        target = path if image.array.ndim == 2 else path.with_suffix("")
        return write_dicom(target, image), target

    def _fail(self, message: str):
        show_failure(self.status, message)
