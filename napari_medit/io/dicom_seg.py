"""Edit masks as DICOM Segmentation objects (PS3.3 A.51), through highdicom.

One SEG holds every mask of an edit, one segment per role (edit, keep,
pathology, brain, roi), and references the source instances it was painted
on. Reading places each SEG frame by the instance it references (or, for an
edit written by napari-medit, by the instance that edit was derived from),
never by frame order; a SEG of another series is placed by geometry when it
shares the image's frame of reference and grid, and refused otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from .._version import __version__
from ..catalogue import MASK_ROLES
from .dicom import LPS_TO_RAS
from .dicom_derived import SOFTWARE, source_files
from .image import ImageReadError, MedicalImage

SERIES_NUMBER_OFFSET = 2000  # after the source's and its derived series' (+1000)


@dataclass(frozen=True)
class SegmentMeaning:
    """What a segment of a role says it is, in the codes DICOM SEG readers show (CID 7150 / 7151)."""

    category: pydicom.sr.coding.Code
    type: pydicom.sr.coding.Code


SEGMENT_MEANINGS: dict[str, SegmentMeaning] = {
    "edit_mask": SegmentMeaning(codes.cid7150.SpatialAndRelationalConcept, codes.DCM.ImageRegion),
    "keep_mask": SegmentMeaning(codes.cid7150.SpatialAndRelationalConcept, codes.DCM.ImageRegion),
    "roi_mask": SegmentMeaning(codes.cid7150.SpatialAndRelationalConcept, codes.DCM.ImageRegion),
    "pathology_mask": SegmentMeaning(codes.cid7150.MorphologicallyAbnormalStructure, codes.SCT.Lesion),
    "brain_mask": SegmentMeaning(codes.cid7150.AnatomicalStructure, codes.SCT.Brain),
    "lung_mask": SegmentMeaning(codes.cid7150.AnatomicalStructure, codes.SCT.Lung),
}


def segment_label(role: str) -> str:
    """'edit_mask' -> 'edit': the label a SEG viewer shows, and the name the mask comes back as."""
    return role.removesuffix("_mask")


def is_seg(path: str | Path) -> bool:
    try:
        return (
            pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).get("SOPClassUID")
            == SegmentationStorage
        )
    except Exception:  # noqa: BLE001 - whatever cannot be read as a SEG is not one
        return False


def write_seg(path: str | Path, masks: Mapping[str, np.ndarray], image: MedicalImage) -> Path:
    """Write ``masks`` (role -> array on ``image``'s grid, as ``image`` is oriented) as one DICOM SEG
    referencing ``image``'s source instances. Written beside ``path`` and renamed when complete."""
    import highdicom as hd

    path = Path(path).expanduser()
    unknown = sorted(set(masks) - set(SEGMENT_MEANINGS))
    if unknown:
        raise ValueError(f"no segment for {unknown[0]!r}; masks are {', '.join(MASK_ROLES)}")
    if not masks:
        raise ValueError("no masks to write")
    files = source_files(image.in_source_orientation())
    frames = []
    for role, mask in masks.items():
        mask = np.asarray(mask)
        if mask.shape != image.array.shape[: image.spatial_ndim]:
            raise ValueError(f"{role} has shape {mask.shape} but the image has {image.array.shape}")
        if not mask.any():
            raise ValueError(f"{role} is empty: paint it, or leave it out of the SEG")
        in_file_order = MedicalImage(mask > 0, image.affine, image.metadata).in_source_orientation().array
        frames.append(in_file_order.reshape(len(files), *in_file_order.shape[-2:]))
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment_label(role),
            segmented_property_category=SEGMENT_MEANINGS[role].category,
            segmented_property_type=SEGMENT_MEANINGS[role].type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, role in enumerate(masks, start=1)
    ]
    number = sources[0].get("SeriesNumber")
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.stack(frames, axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=(int(number) if number not in (None, "") else 0) + SERIES_NUMBER_OFFSET,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SOFTWARE,
        manufacturer_model_name=SOFTWARE,
        software_versions=__version__,
        device_serial_number="0",
        content_label="EDIT_MASKS",
        content_description=f"{SOFTWARE} edit masks",
        series_description=f"{SOFTWARE} masks of {sources[0].get('SeriesDescription', '') or 'series'}"[:64],
        omit_empty_frames=False,  # one frame per source instance: the SEG alone opens on the full grid
    )
    if "FrameOfReferenceUID" not in sources[0]:
        # A projection radiograph: highdicom 0.28 writes its Pixel Measures without the SliceThickness its
        # own reader demands (and a radiograph does not have); the SEG references the image's spacing anyway.
        del seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
        if "PatientOrientation" in sources[0]:
            seg.PatientOrientation = sources[0].PatientOrientation
    from . import replacing

    with replacing(path) as temporary:
        seg.save_as(temporary, enforce_file_format=True)
    return path


def read_seg(path: str | Path, image: MedicalImage | None = None) -> dict[str, MedicalImage]:
    """The segments of a DICOM SEG as masks, named by role ('edit_mask', ...) or by their own label.

    With ``image`` (a DICOM image, as oriented for display or editing) the masks are on its grid, placed
    through the instances the SEG references. Without, they are on the SEG's own geometry.
    """
    import highdicom as hd

    path = Path(path).expanduser()
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:
        raise ImageReadError(
            f"{path}: not a readable DICOM SEG ({str(exc).splitlines()[0] if str(exc) else exc})"
        ) from exc
    numbers = list(seg.get_segment_numbers())
    names = [_mask_name(seg.get_segment_description(n).segment_label) for n in numbers]
    if image is None:
        stacked, reference = _own_geometry(seg, path)
    else:
        reference = image.in_source_orientation()
        stacked = _on_image(seg, path, reference, numbers)
    masks = {}
    for index, name in enumerate(names):
        array = stacked[..., index].astype(np.uint8).reshape(reference.array.shape[: reference.spatial_ndim])
        mask = MedicalImage(
            array, reference.affine, {**reference.metadata, "format": "dicom-seg", "path": str(path)}
        )
        orientation = image.metadata.get("display_orientation") if image is not None else None
        masks[name] = mask.reoriented(tuple(orientation)) if orientation else mask
    return masks


def _mask_name(label: str) -> str:
    return next((role for role in MASK_ROLES if segment_label(role) == label.strip().lower()), label)


def _on_image(seg, path: Path, reference: MedicalImage, numbers: list[int]) -> np.ndarray:
    """(slices, rows, cols, segments) on ``reference``'s file-order grid, by referenced instance."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files(reference)]
    own = [str(ds.SOPInstanceUID) for ds in headers]
    # An edit napari-medit wrote references, slice for slice, the instance it was derived from.
    ancestors = [
        str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) if ds.get("SourceImageSequence") else ""
        for ds in headers
    ]
    referenced = {str(sop) for _, _, sop in seg.get_source_image_uids()}
    for uids in (own, ancestors):
        if referenced and referenced <= set(uids):
            return seg.get_pixels_by_source_instance(
                source_sop_instance_uids=uids,
                segment_numbers=numbers,
                assert_missing_frames_are_empty=True,
                ignore_spatial_locations=True,
                dtype=np.uint8,
            )
    series = {str(s) for _, s, _ in seg.get_source_image_uids()}
    raise ImageReadError(
        f"{path}: this SEG segments other images (series {', '.join(sorted(series))}) than the open one "
        f"(series {headers[0].get('SeriesInstanceUID')}); open it on the series it references"
    )


def _own_geometry(seg, path: Path) -> tuple[np.ndarray, MedicalImage]:
    """(slices, rows, cols, segments) and an empty image carrying the SEG's own grid."""
    import highdicom as hd

    try:
        volume = seg.get_volume(combine_segments=False, dtype=np.uint8)
    except Exception:  # noqa: BLE001 - projection radiographs have no frame of reference: one frame per referenced instance
        uids = list(dict.fromkeys(str(sop) for _, _, sop in seg.get_source_image_uids()))
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, dtype=np.uint8)
        pixels = pixels[0] if len(uids) == 1 else pixels
        return pixels, MedicalImage(np.zeros(pixels.shape[:-1]), np.eye(4))
    # napari-medit's readers stack slices along +(row x column) cosines, a left-handed frame in LPS.
    volume = volume.ensure_handedness(hd.AxisHandedness.LEFT_HANDED, flip_axis=0)
    array = volume.array
    if array.ndim == 3:  # one segment: highdicom drops the segment axis
        array = array[..., None]
    return array, MedicalImage(np.zeros(array.shape[:-1]), LPS_TO_RAS @ volume.affine)
