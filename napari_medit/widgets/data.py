"""The Data dock widget: open chest X-rays and MRI volumes, and show them as radiologists read them.

Files go through napari-medit's reader (spatial metadata kept); contrast presets come from
``napari_medit.io.layers``. The view toggle flips napari's camera, never the data: every
layer (masks, results) flips with it and stays aligned.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, PushButton

from ..io.formats import open_dialog_filter
from ..io.layers import CONTRAST_PRESETS, display_range, from_layer
from ._viewer_parts import camera, text_overlay
from .common import grey_images, show_failure, status_label

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-medit"
RADIOLOGICAL_TEXT = "radiological view: the patient's right on the screen's left"
NEUROLOGICAL_TEXT = "neurological view: the patient's right on the screen's right"


class DataWidget(Container):
    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.open_file_button = PushButton(
            text="Open image file...",
            tooltip="NIfTI, DICOM, PNG/JPEG, read with their spacing and orientation",
        )
        self.open_folder_button = PushButton(
            text="Open DICOM series folder...", tooltip="one series: slices sorted by position into a volume"
        )
        # the layer itself (a renamed one stays picked); napari calls reset_choices as layers change
        self.image = ComboBox(label="image", choices=lambda _: grey_images(self.viewer))
        self.contrast = ComboBox(
            label="contrast",
            choices=list(CONTRAST_PRESETS),
            value="as read",
            tooltip="; ".join(f"{k}: {v}" for k, v in CONTRAST_PRESETS.items()),
        )
        self.radiological = CheckBox(
            text="radiological view",
            value=self._is_radiological(),
            tooltip="napari-medit shows images as radiologists read them, the patient's "
            "right on the screen's left; untick for the neurological convention",
        )
        self.status = status_label()
        self.extend(
            [
                self.open_file_button,
                self.open_folder_button,
                self.image,
                self.contrast,
                self.radiological,
                self.status,
            ]
        )
        self.open_file_button.changed.connect(lambda: self._ask_and_open(folder=False))
        self.open_folder_button.changed.connect(lambda: self._ask_and_open(folder=True))
        self.contrast.changed.connect(self.apply_contrast)
        self.radiological.changed.connect(self.set_radiological)

    # ------------------------------------------------------------ opening

    def _ask_and_open(self, folder: bool):
        from qtpy.QtWidgets import QFileDialog

        if folder:
            path = QFileDialog.getExistingDirectory(self.native, "Open a DICOM series folder")
        else:
            path, _ = QFileDialog.getOpenFileName(
                self.native, "Open a medical image", "", open_dialog_filter()
            )
        if path:
            self.open(path)

    def open(self, path: str | Path) -> list:
        """Read ``path`` with napari-medit's reader; errors become one notification, nothing is added."""
        from napari.utils import notifications

        from ..io import SUPPORTED, can_read

        path = Path(path)
        if not path.exists():
            return self._fail(f"{path} does not exist")
        if not can_read(path):
            return self._fail(f"{path.name} is not an image napari-medit reads: choose a {SUPPORTED} file")
        try:
            layers = self.viewer.open(str(path), plugin=PLUGIN)
        except Exception as exc:  # noqa: BLE001 - napari wraps the reader's message; show it as it is
            cause = exc.__cause__ or exc
            return self._fail(str(cause))
        if layers:
            self.image.reset_choices()  # the new layer among the choices before napari's own reset
            self.image.value = layers[-1]
            self.contrast.value = "as read"
            self.status.value = f"opened {', '.join(layer.name for layer in layers)}"
            notifications.show_info(self.status.value)
        return layers

    # ------------------------------------------------------------ display

    def apply_contrast(self, _=None):
        """Set the chosen image layer's contrast limits to the preset (the data is not touched)."""
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            return
        image = from_layer(layer.data, layer.metadata, layer.scale, layer.translate, file_order=False)
        layer.contrast_limits = display_range(image, self.contrast.value)
        low, high = layer.contrast_limits
        self.status.value = f"{layer.name}: {self.contrast.value}, {low:g} to {high:g}"

    @property
    def camera(self):
        return camera(self.viewer)

    @property
    def text_overlay(self):
        return text_overlay(self.viewer)

    def _is_radiological(self) -> bool:
        return self.camera.orientation[2] == "right"

    def set_radiological(self, radiological: bool = True):
        """Mirror the 2D view left-right through the camera: layers read by napari-medit lie with the
        patient's left along +columns, so 'right' is the radiological convention."""
        depth, vertical, _ = self.camera.orientation
        self.camera.orientation = (depth, vertical, "right" if radiological else "left")
        self.text_overlay.text = RADIOLOGICAL_TEXT if radiological else NEUROLOGICAL_TEXT
        self.text_overlay.position = "top_left"  # clear of napari's notifications, bottom right
        self.text_overlay.visible = True
        self.status.value = self.text_overlay.text

    def _fail(self, message: str) -> list:
        show_failure(self.status, message)
        return []
