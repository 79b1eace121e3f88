"""Viewer parts napari 0.9 moved (camera under viewer.scene; grid and overlays under viewer.canvas),
found where the running napari keeps them: the widgets support 0.9 and 0.8."""

from __future__ import annotations


def camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def grid(viewer):
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None else viewer.grid


def text_overlay(viewer):
    canvas = getattr(viewer, "canvas", None)
    return canvas.overlays.text if canvas is not None else viewer.text_overlay
