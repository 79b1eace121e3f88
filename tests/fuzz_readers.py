"""Seeded mutations of small real image files, read by napari-medit's reader in this process.

    python tests/fuzz_readers.py FIRST COUNT FOLDER

Case ``i`` mutates the base file ``FORMATS[i % len(FORMATS)]`` with ``random.Random(i)``: the same
index gives the same bytes on every machine. One line per case on stdout, written before the next
case starts, so the test that runs this (test_fuzz_readers.py) knows which case killed or hung the
process: ``index<TAB>outcome<TAB>detail``, outcome ``read`` (with a sane geometry), ``refused``
(ImageReadError) or ``WRONG`` (anything else: a bug).
"""

from __future__ import annotations

import gzip
import random
import struct
import sys
import traceback
import zlib
from pathlib import Path

import numpy as np

FORMATS = ("nii", "nii.gz", "mgh", "mgz", "png", "png16", "jpg", "dcm", "ct.dcm")


def base_files(folder: Path) -> dict[str, bytes]:
    """The unmutated files: small crops of the bundled samples and pydicom's own test files."""
    import nibabel as nib
    from PIL import Image
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    samples = Path(__file__).parents[1] / "napari_medit" / "sample_data"
    t1 = nib.load(samples / "brain_t1.nii.gz")
    crop = np.asarray(t1.dataobj)[50:66, 60:80, 50:62].astype(np.int16)
    files = {}
    for name, image in (
        ("nii", nib.Nifti1Image(crop, t1.affine)),
        ("mgh", nib.MGHImage(crop.astype(np.float32), t1.affine)),
    ):
        image.to_filename(folder / f"base.{name}")
        files[name] = (folder / f"base.{name}").read_bytes()
    files["nii.gz"], files["mgz"] = files["nii"], files["mgh"]  # mutated uncompressed, then compressed
    Image.fromarray(crop[8].astype(np.uint8)).save(folder / "base.png")
    Image.fromarray(crop[8].astype(np.uint16) * 50).save(folder / "base16.png")
    Image.fromarray(crop[8].astype(np.uint8)).save(folder / "base.jpg", quality=90)
    files["png"], files["png16"] = (folder / "base.png").read_bytes(), (folder / "base16.png").read_bytes()
    files["jpg"] = (folder / "base.jpg").read_bytes()
    files["dcm"] = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    files["ct.dcm"] = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    return files


# Header fields worth setting to absurd values: (offset, struct format) per format.
NIFTI_FIELDS = (
    [(40 + 2 * k, "<h") for k in range(1, 5)]
    + [(76 + 4 * k, "<f") for k in range(1, 4)]
    + [(280 + 4 * k, "<f") for k in range(12)]
    + [(252, "<h"), (254, "<h"), (70, "<h"), (72, "<h"), (108, "<f"), (112, "<f"), (116, "<f")]
)
MGH_FIELDS = [(4 * k, ">i") for k in range(6)] + [(30 + 4 * k, ">f") for k in range(3 + 9 + 3)] + [(28, ">h")]
ABSURD = (0, -1, -30000, 30000, 2**31 - 1, float("nan"), float("inf"), 1e30, 1e-30)


def mutate(kind: str, data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    how = rng.choice(("header", "body", "truncate", "insert", "field", "field", "field"))
    head = {"nii": 352, "nii.gz": 352, "mgh": 284, "mgz": 284}.get(kind, min(len(data), 1024))
    if how == "header":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(head)] ^= 1 << rng.randrange(8)
    elif how == "body":
        for _ in range(rng.randint(1, 32)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif how == "truncate":
        data = data[: rng.randrange(len(data))]
    elif how == "insert":
        at = rng.randrange(len(data))
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:
        data = bytearray(_absurd_field(kind, bytes(data), rng))
    return bytes(data)


def _absurd_field(kind: str, data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    if kind.startswith(("nii", "mgh", "mgz")):
        offset, fmt = rng.choice(NIFTI_FIELDS if kind.startswith("nii") else MGH_FIELDS)
        value = rng.choice(ABSURD)
        if fmt[-1] in "hi":
            value = int(value) if np.isfinite(value) else 30000
            value = max(
                min(value, 32767 if fmt[-1] == "h" else 2**31 - 1), -32768 if fmt[-1] == "h" else -(2**31)
            )
        struct.pack_into(fmt, data, offset, value)
        return bytes(data)
    if kind.startswith("png"):  # IHDR: width, height, bit depth, colour type; its CRC made right again
        width, height = rng.choice(((30000, 30000), (0, 40), (1, 2**31 - 1), (65535, 65535), (48, 40)))
        struct.pack_into(">II", data, 16, width, height)
        if rng.random() < 0.3:
            data[24] = rng.choice((3, 7, 32))
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
        return bytes(data)
    if kind.endswith("dcm"):
        return _absurd_dicom(data, rng)
    # JPEG: the frame header's height and width (SOF0 after its marker)
    at = bytes(data).find(b"\xff\xc0")
    if at > 0:
        struct.pack_into(">HH", data, at + 5, rng.choice((0, 65535)), rng.choice((0, 65535)))
    return bytes(data)


def _absurd_dicom(data: bytes, rng: random.Random) -> bytes:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    field = rng.choice(
        (
            "Rows",
            "Columns",
            "BitsAllocated",
            "NumberOfFrames",
            "PixelSpacing",
            "SamplesPerPixel",
            "ImageOrientationPatient",
            "ImagePositionPatient",
            "RescaleSlope",
            "PhotometricInterpretation",
        )
    )
    value = {
        "Rows": rng.choice((0, 65535)),
        "Columns": rng.choice((0, 65535)),
        "BitsAllocated": rng.choice((0, 3, 64)),
        "NumberOfFrames": rng.choice(("0", "100000", "-3")),
        "PixelSpacing": rng.choice((["0", "0"], ["nan", "1"], ["-1", "1"])),
        "SamplesPerPixel": rng.choice((0, 3, 9)),
        "ImageOrientationPatient": rng.choice((["0"] * 6, ["1", "0", "0", "1", "0", "0"], ["nan"] * 6)),
        "ImagePositionPatient": ["nan", "0", "1e300"],
        "RescaleSlope": rng.choice(("0", "nan", "1e308")),
        "PhotometricInterpretation": rng.choice(("RGB", "PALETTE COLOR", "YBR_FULL", "NONSENSE")),
    }[field]
    setattr(ds, field, value)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def case_file(index: int, folder: Path, files: dict[str, bytes]) -> Path:
    kind = FORMATS[index % len(FORMATS)]
    rng = random.Random(index)
    data = mutate(kind, files[kind], rng)
    if kind in ("nii.gz", "mgz"):
        data = gzip.compress(data, mtime=0)
        if rng.random() < 0.2:  # and sometimes the compressed stream itself
            data = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 0xFF
            data = bytes(data)
    ending = {"png16": "png", "ct.dcm": "dcm"}.get(kind, kind)
    path = folder / f"case{index:05d}.{ending}"
    path.write_bytes(data)
    return path


def run(first: int, count: int, folder: Path) -> None:
    from napari_medit.io import ImageReadError, read_image
    from napari_medit.io.limits import affine_problem

    files = base_files(folder / "base")
    for index in range(first, first + count):
        path = case_file(index, folder, files)
        try:
            image = read_image(path)
            problem = affine_problem(image.affine)
            if problem or 0 in image.array.shape or image.array.ndim < 2:
                outcome, detail = "WRONG", f"accepted with shape {image.array.shape}: {problem}"
            else:
                outcome, detail = "read", f"shape {image.array.shape}"
        except ImageReadError as exc:
            outcome, detail = "refused", str(exc).splitlines()[0]
        except BaseException as exc:  # noqa: BLE001 - what the fuzz test is looking for
            outcome = "WRONG"
            detail = f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=-2).splitlines()[-3:]}"
        path.unlink()
        print(f"{index}\t{outcome}\t{detail.replace(chr(9), ' ').replace(chr(10), ' ')}", flush=True)


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
