"""Derive the bundled brain sample from the MNI152 2009a template that nilearn ships.

Run ``python -m napari_medit.sample_data.derive_brain_sample`` (needs nilearn,
which the ``testing`` extra installs) to rebuild the three committed files:

- ``brain_t1.nii.gz``: the skull-stripped T1 template resampled to 1.5 mm, int16 in [0, 1000];
- ``brain_mask.nii.gz``: nilearn's MNI152 brain mask on the same grid;
- ``lesion_mask.nii.gz``: an example pathology mask, a lobulated lesion in the
  right periventricular white matter, as drawn for MedEdit.

The output is deterministic; a test checks the committed files against it.
See MNI152_LICENSE.txt for the template's terms.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

HERE = Path(__file__).parent
VOXEL_MM = 1.5
MNI_SFORM_CODE = 4  # NIfTI code for "MNI 152" standard space


def derive(out_dir: Path = HERE) -> list[Path]:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template, load_mni152_wm_template

    t1 = load_mni152_template(resolution=1)
    grid = _grid(t1)
    t1_grid = resample_from_to(t1, grid, order=3)
    brain = resample_from_to(load_mni152_brain_mask(resolution=1), grid, order=0).get_fdata() > 0.5
    white_matter = resample_from_to(load_mni152_wm_template(resolution=1), grid, order=1).get_fdata()

    values = np.clip(t1_grid.get_fdata(), 0, None) * brain
    t1_int = np.round(1000.0 * values / values.max()).astype(np.int16)
    lesion = _lesion(grid[1], brain, white_matter)

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, array in (
        ("brain_t1", t1_int),
        ("brain_mask", brain.astype(np.uint8)),
        ("lesion_mask", lesion),
    ):
        image = nib.Nifti1Image(array, grid[1])
        image.set_sform(grid[1], code=MNI_SFORM_CODE)
        image.set_qform(grid[1], code=MNI_SFORM_CODE)
        image.header.set_xyzt_units("mm")
        image.header["descrip"] = b"napari-medit sample, derived from MNI152 2009a"
        path = out_dir / f"{name}.nii.gz"
        # nibabel gzips with a zero mtime, so rebuilding gives byte-identical files.
        nib.save(image, path)
        written.append(path)
    return written


def _grid(template: nib.Nifti1Image) -> tuple[tuple[int, ...], np.ndarray]:
    """A 1.5 mm RAS grid covering the template's field of view."""
    extent = np.array(template.shape) * np.abs(np.diag(template.affine)[:3])
    shape = tuple(int(n) for n in np.floor(extent / VOXEL_MM))
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = template.affine[:3, 3]
    return shape, affine


def _lesion(affine: np.ndarray, brain: np.ndarray, white_matter: np.ndarray) -> np.ndarray:
    """A few overlapping ellipsoids (mm, MNI coordinates) make a lobulated lesion in right WM."""
    lobes = [  # centre (x, y, z), radii (mm)
        ((24.0, -8.0, 24.0), (9.0, 12.0, 8.0)),
        ((29.0, 2.0, 28.0), (6.0, 7.0, 6.0)),
        ((20.0, -18.0, 20.0), (5.0, 6.0, 5.0)),
    ]
    index = np.indices(brain.shape, dtype=np.float64).reshape(3, -1)
    world = (affine[:3, :3] @ index + affine[:3, 3:4]).reshape((3, *brain.shape))
    lesion = np.zeros(brain.shape, dtype=bool)
    for centre, radii in lobes:
        distance = sum(((world[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
        lesion |= distance <= 1.0
    return (lesion & brain & (white_matter > 0.2)).astype(np.uint8)


if __name__ == "__main__":
    for path in derive(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
