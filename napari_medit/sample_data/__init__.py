"""Sample data that ships with the plugin, usable offline.

- ``brain``: a T1 volume derived from the MNI152 2009a template, its brain
  mask and an example lesion (pathology) mask (see derive_brain_sample.py).
- ``cxr``: a procedural chest radiograph phantom (no real chest X-ray can be
  bundled) with a right pleural effusion, plus example RadEdit edit and keep
  masks around it and the lung mask.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..io import MedicalImage, read_image, write_image
from ..io.raster import RADIOGRAPH_AFFINE

HERE = Path(__file__).parent
SAMPLES = ("brain", "cxr")
BRAIN_FILES = {
    "t1": "brain_t1.nii.gz",
    "brain_mask": "brain_mask.nii.gz",
    "lesion_mask": "lesion_mask.nii.gz",
}
CXR_SIZE, CXR_SEED = 512, 0
FIELD_MM = 410.0  # a phantom spans a typical adult PA field of view
# Edit region = effusion grown by this margin; keep = everything beyond a further gap,
# leaving a band where the model may blend the edit into its surroundings.
EDIT_MARGIN_PX, KEEP_GAP_PX = 12, 8


def load_brain() -> dict[str, MedicalImage]:
    return {name: read_image(HERE / file) for name, file in BRAIN_FILES.items()}


def load_cxr(size: int = CXR_SIZE, seed: int = CXR_SEED) -> dict[str, MedicalImage]:
    from scipy.ndimage import binary_dilation

    from .cxr_phantom import generate_cxr_phantom, to_uint8

    phantom = generate_cxr_phantom(size, seed, effusion="right")
    scale = FIELD_MM / size
    affine = RADIOGRAPH_AFFINE.copy()
    affine[:3, :2] *= scale
    edit = binary_dilation(phantom.masks["effusion"], iterations=max(1, round(EDIT_MARGIN_PX * size / 512)))
    keep = ~binary_dilation(edit, iterations=max(1, round(KEEP_GAP_PX * size / 512)))
    metadata = {"format": "phantom", "modality": "DX", "phantom": phantom.findings}
    image = MedicalImage(to_uint8(phantom.image), affine, {**metadata, "path": "napari-medit cxr phantom"})
    masks = {"edit_mask": edit, "keep_mask": keep, "lung_mask": phantom.masks["lungs"]}
    return {"cxr": image, **{name: image.with_array(m.astype(np.uint8)) for name, m in masks.items()}}


def load(name: str) -> dict[str, MedicalImage]:
    if name == "brain":
        return load_brain()
    if name == "cxr":
        return load_cxr()
    raise ValueError(f"unknown sample '{name}'; choose one of: {', '.join(SAMPLES)}")


def write_sample(name: str, out_dir: str | Path) -> list[Path]:
    """Write a sample's files to ``out_dir`` (brain: t1/brain_mask/lesion_mask.nii.gz; cxr: PNGs)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if name == "brain":
        written = []
        for key, file in BRAIN_FILES.items():
            target = out_dir / f"{key}.nii.gz"
            shutil.copyfile(HERE / file, target)
            written.append(target)
        return written
    images = load(name)
    written = [write_image(out_dir / f"{key}.png", image) for key, image in images.items()]
    findings = out_dir / f"{name}_phantom.json"
    findings.write_text(json.dumps(images["cxr"].metadata["phantom"], indent=2))
    return [*written, findings]
