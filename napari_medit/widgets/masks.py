"""The Masks dock widget: make the masks a method needs, a starting brain mask, and check them.

Layers are made on the image's grid (its shape, scale and translate) so what is painted lines
up with what is edited; nothing here changes an existing layer. The maths is in
``napari_medit.masks`` and ``napari_medit.editing.mededit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, PushButton

from ..catalogue import MASK_ROLES, METHODS, name_like
from .common import grey_images, layer_image, show_failure, status_label

if TYPE_CHECKING:
    import napari

INPAINT_COLOR = "#ffe14d"


class MasksWidget(Container):
    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        # the layer itself (a renamed one stays picked); napari calls reset_choices as layers change
        self.image = ComboBox(label="image", choices=lambda _: grey_images(self.viewer))
        self.method = ComboBox(label="method", choices=list(METHODS), value="mededit")
        self.create_button = PushButton(
            text="Create empty masks",
            tooltip="Labels layers on the image's grid, one per mask the method needs",
        )
        self.brain_button = PushButton(
            text="Automatic brain mask",
            tooltip="Otsu threshold, 3 mm opening, largest component, holes filled: "
            "a starting point to correct by hand",
        )
        self.inpaint_button = PushButton(
            text="Show MedEdit inpainting mask",
            tooltip="dilate(pathology) AND brain, the region MedEdit regenerates "
            "(dilation 25 px at 128 px, scaled to the slice)",
        )
        self.check_button = PushButton(text="Check masks")
        self.role = ComboBox(
            label="load as", choices=self._roles, tooltip="the role a mask file plays for the chosen method"
        )
        self.load_button = PushButton(
            text="Load mask file...",
            tooltip="a NIfTI/DICOM/PNG mask on the image's grid (same shape and affine), "
            "or a DICOM SEG of the image (every segment, by its label)",
        )
        self.save_seg_button = PushButton(
            text="Save masks as DICOM SEG...",
            tooltip="the method's painted masks, one segment each, referencing the "
            "image's DICOM instances (DICOM images only)",
        )
        self.status = status_label()
        self.extend(
            [
                self.image,
                self.method,
                self.create_button,
                self.brain_button,
                self.inpaint_button,
                self.role,
                self.load_button,
                self.save_seg_button,
                self.check_button,
                self.status,
            ]
        )
        self.method.changed.connect(lambda _: self.role.reset_choices())
        self.load_button.changed.connect(self._ask_and_load)
        self.save_seg_button.changed.connect(self._ask_and_save_seg)
        self.create_button.changed.connect(self.create_masks)
        self.brain_button.changed.connect(self.add_brain_mask)
        self.inpaint_button.changed.connect(self.show_inpainting_mask)
        self.check_button.changed.connect(self.check)

    def _roles(self, _=None):
        return list(METHODS[self.method.value].masks)

    def _source(self):
        if self.image.value is None or self.image.value not in self.viewer.layers:
            raise ValueError("open or select an image layer first")
        return self.image.value

    def _add_labels(self, data, name, color, source):
        return self.viewer.add_labels(
            np.asarray(data, np.uint8),
            name=name,
            scale=source.scale,
            translate=source.translate,
            colormap={0: "transparent", 1: color, None: color},
        )

    def _mask_layer(self, role: str):
        """The Labels layer for ``role``: the one named '<image> <role>' or, failing that, like the role."""
        labels = {layer.name: layer for layer in self.viewer.layers if type(layer).__name__ == "Labels"}
        exact = f"{self._source().name} {role}"
        name = exact if exact in labels else name_like(role, labels)
        return labels.get(name)

    # ------------------------------------------------------------ actions

    def create_masks(self, _=None):
        try:
            source = self._source()
        except ValueError as exc:
            return self._fail(str(exc))
        made = []
        for role in METHODS[self.method.value].masks:
            if self._mask_layer(role) is None:
                name = f"{source.name} {role}"
                self._add_labels(np.zeros(source.data.shape, np.uint8), name, MASK_ROLES[role].color, source)
                made.append(name)
        self.status.value = f"added {', '.join(made)}" if made else "the masks already exist"

    def _ask_and_load(self, _=None):
        from qtpy.QtWidgets import QFileDialog

        from ..io.formats import open_dialog_filter

        path, _ = QFileDialog.getOpenFileName(
            self.native, f"Open a {self.role.value} file", "", open_dialog_filter()
        )
        if path:
            self.load_mask(path)

    def load_mask(self, path, role: str | None = None):
        """A mask file as a Labels layer for ``role``, shown like the image: refused (one notification,
        nothing added) unless it lies on the image's grid. A DICOM SEG adds one layer per segment."""
        from ..io import ImageReadError, read_image
        from ..io.dicom_seg import is_seg
        from ..io.layers import to_layer_data

        role = role or self.role.value
        if is_seg(path):
            return self.load_seg(path, role)
        try:
            source = self._source()
            mask = read_image(path)
            data, kwargs, _ = to_layer_data(mask, f"{source.name} {role}", "labels")
            problem = grid_problem(kwargs["metadata"]["affine"], data.shape, source)
            if problem:
                raise ValueError(f"{Path(path).name} {problem}: resample it onto the image first")
        except (ValueError, OSError, ImageReadError) as exc:
            return self._fail(str(exc))
        layer = self._add_labels(data > 0, kwargs["name"], MASK_ROLES[role].color, source)
        layer.metadata.update(kwargs["metadata"])
        self.status.value = f"loaded {Path(path).name} as {layer.name}: {int((data > 0).sum())} voxels"
        return layer

    def load_seg(self, path, role: str | None = None) -> list:
        """Every segment of a DICOM SEG as a Labels layer on the image's grid, placed through the
        instances it references; a segment labelled like a role becomes that role's mask, a lone
        other one ``role``'s."""
        from ..io import ImageReadError
        from ..io.dicom_seg import read_seg

        try:
            source = self._source()
            segments = read_seg(path, layer_image(source))
        except (ValueError, OSError, ImageReadError) as exc:
            return self._fail(str(exc))
        layers = []
        for name, mask in segments.items():
            as_role = (
                name if name in MASK_ROLES else (role or self.role.value) if len(segments) == 1 else None
            )
            # read_seg already put the mask on the layer's grid, as the layer is oriented.
            layer = self._add_labels(
                mask.array > 0,
                f"{source.name} {as_role or name}",
                MASK_ROLES[as_role].color if as_role in MASK_ROLES else INPAINT_COLOR,
                source,
            )
            layer.metadata.update({**mask.metadata, "affine": mask.affine})
            layers.append(layer)
        self.status.value = f"loaded {Path(path).name}: {', '.join(layer.name for layer in layers)}"
        return layers

    def _ask_and_save_seg(self, _=None):
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getSaveFileName(
            self.native,
            "Save the masks as DICOM SEG",
            f"{self._source().name} masks.dcm",
            "DICOM SEG (*.dcm)",
        )
        if path:
            self.save_seg(path)

    def save_seg(self, path) -> Path | None:
        """The chosen method's painted masks of the image as one DICOM SEG (empty masks are left out)."""
        from ..io.dicom_seg import write_seg

        try:
            source = self._source()
            masks = {}
            for role in METHODS[self.method.value].masks:
                layer = self._mask_layer(role)
                if layer is not None and np.asarray(layer.data).any():
                    problem = grid_problem(
                        layer.metadata.get("affine", source.metadata.get("affine")), layer.data.shape, source
                    )
                    if problem:
                        raise ValueError(f"{layer.name} {problem}")
                    masks[role] = np.asarray(layer.data) > 0
            if not masks:
                raise ValueError(f"nothing painted in the {self.method.value} masks of {source.name}")
            written = write_seg(path, masks, layer_image(source))
        except (ValueError, OSError) as exc:
            return self._fail(str(exc))
        self.status.value = f"saved {', '.join(masks)} as {written.name}"
        return written

    def add_brain_mask(self, _=None):
        from ..masks import auto_brain_mask

        try:
            source = self._source()
            mask = auto_brain_mask(np.asarray(source.data), spacing=source.scale)
        except ValueError as exc:
            return self._fail(str(exc))
        self._add_labels(mask, f"{source.name} brain_mask (auto)", MASK_ROLES["brain_mask"].color, source)
        self.status.value = f"brain mask: {int(mask.sum())} voxels; correct it by painting"

    def show_inpainting_mask(self, _=None):
        """What MedEdit will regenerate, as the Edit widget will run it: its MedEdit dilation and its
        model's resolution where edits run (a remote worker answers for its model); with no Edit widget
        open, the default dilation at demo-brain's resolution."""
        from .edit import EditWidget

        try:
            source = self._source()
            pathology, brain = self._mask_layer("pathology_mask"), self._mask_layer("brain_mask")
            if pathology is None or brain is None:
                raise ValueError("MedEdit needs a pathology mask and a brain mask layer first")
            edit_widget = EditWidget.of(self.viewer)
            if edit_widget is None:
                values, resolution, sized_by = (
                    {},
                    self._bundled_resolution(),
                    "demo-brain: no Edit widget open",
                )
            else:
                values, resolution, sized_by = edit_widget.mededit_sizing()
            params = METHODS["mededit"].make_params(values)
        except ValueError as exc:
            return self._fail(str(exc))
        masks = {"pathology_mask": np.asarray(pathology.data) > 0, "brain_mask": np.asarray(brain.data) > 0}
        # the catalogue's own hook: exactly the mask MedEdit will use
        inpaint = METHODS["mededit"].prepare_masks(masks, params, resolution, masks["brain_mask"].shape)[
            "inpaint_mask"
        ]
        name = f"{source.name} inpainting_mask"
        if name in self.viewer.layers:
            self.viewer.layers[name].data = inpaint.astype(np.uint8)
        else:
            layer = self._add_labels(inpaint, name, INPAINT_COLOR, source)
            layer.opacity = 0.4
        self.status.value = (
            f"inpainting mask: {int(inpaint.sum())} voxels (dilation {params.kernel_size(resolution)} px "
            f"on the {resolution} px model grid; {sized_by})"
        )

    @staticmethod
    def _bundled_resolution() -> int:
        from ..backends.registry import BUNDLED, describe

        return int(describe(BUNDLED / "demo-brain")["resolution"])

    def check(self, _=None) -> list[str]:
        """Every problem the chosen method's masks have, as one notification; [] when they are fine."""
        from napari.utils import notifications

        from ..masks import mask_problem, outside_brain_problem

        try:
            source = self._source()
        except ValueError as exc:
            self._fail(str(exc))
            return [str(exc)]
        problems, layers = [], {}
        spec = METHODS[self.method.value]
        for role in spec.masks:
            layer = self._mask_layer(role)
            if layer is None:
                if role in spec.required_masks:
                    problems.append(f"no {role} layer: use 'Create empty masks'")
                continue
            layers[role] = layer
            problem = mask_problem(f"{role} ('{layer.name}')", layer.data, source.data.shape)
            if problem is None and (
                not np.allclose(layer.scale, source.scale)
                or not np.allclose(layer.translate, source.translate)
            ):
                problem = f"{role} ('{layer.name}') is not placed like the image (scale/translate differ)"
            if problem:
                problems.append(problem)
        if {"pathology_mask", "brain_mask"} <= set(layers) and not problems:
            problem = outside_brain_problem(layers["pathology_mask"].data, layers["brain_mask"].data)
            if problem:
                problems.append(problem)
        if problems:
            notifications.show_warning("; ".join(problems))
            self.status.value = f"{len(problems)} problem(s)"
        else:
            self.status.value = "masks OK"
        return problems

    def _fail(self, message: str):
        show_failure(self.status, message)


def grid_problem(mask_affine, mask_shape, image_layer) -> str | None:
    """Why a mask (display-oriented affine and shape) does not lie on ``image_layer``'s grid, or None."""
    if tuple(mask_shape) != tuple(image_layer.data.shape):
        return f"has shape {tuple(mask_shape)} but the image has {tuple(image_layer.data.shape)}"
    image_affine = image_layer.metadata.get("affine")
    if image_affine is not None and not np.allclose(mask_affine, image_affine, atol=1e-3):
        return "is not on the image's grid (its affine differs)"
    return None
