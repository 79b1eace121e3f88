"""Viewer parts napari 0.9 moved (camera under viewer.scene; grid and overlays under viewer.canvas),
found where the running napari keeps them: the widgets support 0.9 and 0.8."""

from __future__ import annotations

from magicgui.widgets import ComboBox


def camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def grid(viewer):
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None else viewer.grid


def text_overlay(viewer):
    canvas = getattr(viewer, "canvas", None)
    return canvas.overlays.text if canvas is not None else viewer.text_overlay


# Volumes napari-medit reads are shown with axes (S, P, L) (napari_medit.io.layers): the napari
# dims order that puts each plane's slices on the slider, and the vertical direction that keeps
# the head up in coronal and sagittal views (anterior up in axial ones).
PLANE_VIEWS = {"axial": ((0, 1, 2), "down"), "coronal": ((1, 0, 2), "up"), "sagittal": ((2, 0, 1), "up")}


def show_plane(viewer, plane: str) -> str:
    """Look at the volumes in ``plane`` by rolling napari's dims, never the data; says what it shows.

    Slice-wise edits are made in one plane and their consistency shows across it: after an axial
    edit, the coronal view shows whether neighbouring slices agree."""
    order, vertical = PLANE_VIEWS[plane]
    extra = viewer.dims.ndim - 3  # leading time or channel axes stay on their sliders
    if extra < 0:
        return "2D images have no other plane to look at"
    viewer.dims.order = tuple(range(extra)) + tuple(extra + axis for axis in order)
    view = camera(viewer)
    depth, _, horizontal = view.orientation
    view.orientation = (depth, vertical, horizontal)
    viewer.reset_view()
    return f"{plane} view: the slider moves through {plane} slices"


def plane_view(viewer, report) -> ComboBox:
    """A 'view' picker (axial, coronal, sagittal) that calls ``show_plane``; ``report`` gets its message."""
    picker = ComboBox(
        label="view",
        choices=list(PLANE_VIEWS),
        value="axial",
        tooltip="look at the volumes in another plane: after a slice-wise edit, the planes "
        "across the slices show whether neighbouring slices agree",
    )
    picker.changed.connect(lambda plane: report(show_plane(viewer, plane)))
    return picker
