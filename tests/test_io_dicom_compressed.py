"""Compressed DICOM through napari-medit's reader: each lossless transfer syntax decodes to exactly
the pixels of an uncompressed copy of the same image, in single files and in series folders.

Test files come from pydicom's own test data (looked up locally, never downloaded) or are encoded
here: RLE by pydicom, JPEG Lossless, JPEG-LS and JPEG 2000 by imagecodecs (the `testing` extra;
pydicom has no JPEG Lossless or JPEG-LS encoder).
"""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dicom_slice, save
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from napari_medit.io import ImageReadError, read_image

LOSSLESS = {
    "jpeg-lossless-sv1": JPEGLosslessSV1,  # .70, what most scanners write
    "jpeg-lossless-p14": JPEGLossless,  # .57
    "jpeg-ls": JPEGLSLossless,  # .80
    "jpeg2000": JPEG2000Lossless,  # .90
    "rle": RLELossless,  # .5
}


def local_test_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom no longer ships {name}"
    return Path(path)


def uncompressed_copy(ds: pydicom.Dataset, path: Path) -> Path:
    """``ds`` saved with its pixels decoded by pydicom's own pure-numpy RLE decoder (or as it is)."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(decoding_plugin="pydicom")
    ds.save_as(path, enforce_file_format=True)
    return path


def compress(ds: pydicom.Dataset, syntax, near: int = 0) -> pydicom.Dataset:
    """``ds`` with its pixel data encoded in ``syntax``, as a scanner or PACS would store it."""
    if syntax == RLELossless:
        ds.compress(syntax)
        return ds
    import imagecodecs

    bits, pixels = int(ds.BitsStored), ds.pixel_array
    # JPEG and JPEG-LS code unsigned samples: signed pixels go in as their two's-complement bit pattern.
    samples = pixels.view(f"u{pixels.itemsize}") & ((1 << bits) - 1)
    if syntax in (JPEGLosslessSV1, JPEGLossless):
        # Selection value 1 is the first-order predictor (.70); predictor 6 needs the general syntax (.57).
        predictor = 1 if syntax == JPEGLosslessSV1 else 6
        frame = imagecodecs.jpeg8_encode(samples, lossless=True, bitspersample=bits, predictor=predictor)
    elif syntax == JPEG2000Lossless:
        # A bare codestream (DICOM does not take JP2 boxes); few resolution levels so small images fit.
        frame = imagecodecs.jpeg2k_encode(
            pixels,
            codecformat=imagecodecs.JPEG2K.CODEC.J2K,
            reversible=True,
            bitspersample=bits,
            resolutions=2,
        )
    else:
        frame = imagecodecs.jpegls_encode(samples, level=near)
    ds.PixelData = encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def synthetic_slices():
    rng = np.random.default_rng(3)
    ramp = np.add.outer(np.arange(24) * 37, np.arange(20) * 11)
    return {
        # 12 bits stored in 16, unsigned: a typical MR slice.
        "mr_uint12": np.clip(ramp + rng.normal(0, 300, ramp.shape), 0, 4095).astype(np.uint16),
        # 16 bits signed with a rescale to Hounsfield units: a typical CT slice.
        "ct_int16": (ramp * 4 - 1024 + rng.integers(-200, 200, ramp.shape)).astype(np.int16),
    }


def ct_or_mr(pixels: np.ndarray, **kwargs) -> pydicom.Dataset:
    if pixels.dtype == np.int16:
        return dicom_slice(pixels, modality="CT", slope=1, intercept=-1024, **kwargs)
    return dicom_slice(pixels, **kwargs)


# ---------------------------------------------------------------- files pydicom ships


@pytest.mark.parametrize(
    "compressed, syntax, reference",
    [
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", JPEG2000Lossless, "MR_small.dcm"),
        ("MR_small_RLE.dcm", RLELossless, "MR_small.dcm"),
        # GDCM's JPEG Lossless encoding of an RGB test card, against pydicom's own RLE decoding of it.
        ("SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1, "SC_rgb_rle.dcm"),
    ],
)
def test_shipped_lossless_files_match_their_uncompressed_copy(tmp_path, compressed, syntax, reference):
    path = local_test_file(compressed)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    raw = uncompressed_copy(pydicom.dcmread(local_test_file(reference)), tmp_path / "raw.dcm")
    expected = read_image(raw)
    image = read_image(path)
    assert image.array.dtype == expected.array.dtype
    np.testing.assert_array_equal(image.array, expected.array)
    np.testing.assert_array_equal(image.affine, expected.affine)


@pytest.mark.parametrize(
    "name, syntax, decode",
    [
        ("JPEGLSNearLossless_08.dcm", JPEGLSNearLossless, "jpegls_decode"),
        ("JPEGLSNearLossless_16.dcm", JPEGLSNearLossless, "jpegls_decode"),
        ("JPEG2000.dcm", JPEG2000, "jpeg2k_decode"),
    ],
)
def test_shipped_lossy_files_open_as_a_second_decoder_sees_them(name, syntax, decode):
    """No uncompressed original ships for these: an independent decoder (imagecodecs) is the reference."""
    import imagecodecs

    path = local_test_file(name)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    image = read_image(path)
    reference = getattr(imagecodecs, decode)(get_frame(ds.PixelData, 0))
    if ds.PixelRepresentation == 1:  # the codestream holds the two's-complement bit pattern
        bits = int(ds.BitsStored)
        reference = reference.astype(np.int64)
        reference = np.where(reference >= 1 << (bits - 1), reference - (1 << bits), reference)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    assert image.array.shape == (ds.Rows, ds.Columns)
    np.testing.assert_array_equal(image.array, reference * slope + intercept)


# ---------------------------------------------------------------- files encoded here


@pytest.mark.parametrize("syntax", LOSSLESS.values(), ids=LOSSLESS.keys())
@pytest.mark.parametrize("kind", ["mr_uint12", "ct_int16"])
def test_each_lossless_syntax_decodes_to_the_uncompressed_pixels(tmp_path, syntax, kind):
    pixels = synthetic_slices()[kind]
    raw = save(ct_or_mr(pixels), tmp_path / "raw.dcm")
    packed = save(compress(ct_or_mr(pixels), syntax), tmp_path / "packed.dcm")
    assert pydicom.dcmread(packed, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    expected, image = read_image(raw), read_image(packed)
    assert image.array.dtype == expected.array.dtype
    np.testing.assert_array_equal(image.array, expected.array)
    np.testing.assert_array_equal(image.affine, expected.affine)
    assert image.metadata["dicom"] == expected.metadata["dicom"]


@pytest.mark.parametrize("kind", ["mr_uint12", "ct_int16"])
def test_jpeg_ls_near_lossless_stays_within_its_bound(tmp_path, kind):
    pixels = synthetic_slices()[kind]
    expected = read_image(save(ct_or_mr(pixels), tmp_path / "raw.dcm"))
    image = read_image(save(compress(ct_or_mr(pixels), JPEGLSNearLossless, near=3), tmp_path / "near.dcm"))
    error = np.abs(image.array.astype(np.int64) - expected.array.astype(np.int64))
    assert 0 < error.max() <= 3  # lossy, but never by more than the encoder's NEAR parameter


@pytest.mark.filterwarnings("ignore:The number of bytes of compressed pixel data matches")  # tiny RLE slices
@pytest.mark.parametrize("syntax", [*LOSSLESS.values(), "mixed"], ids=[*LOSSLESS.keys(), "mixed"])
def test_series_of_compressed_slices(oblique_series, syntax):
    """A series folder whose slices are compressed ('mixed': each slice in another syntax)."""
    folder = oblique_series["folder"]
    expected = read_image(folder)
    for k, path in enumerate(sorted(folder.glob("*.dcm"))):
        chosen = list(LOSSLESS.values())[k % len(LOSSLESS)] if syntax == "mixed" else syntax
        save(compress(pydicom.dcmread(path), chosen), path)
    image = read_image(folder)
    np.testing.assert_array_equal(image.array, expected.array)
    np.testing.assert_array_equal(image.affine, expected.affine)
    assert image.metadata["files"] == expected.metadata["files"]


# ---------------------------------------------------------------- what a user sees when decoding fails


def test_missing_decoder_is_one_line_naming_the_syntax_and_the_fix(monkeypatch):
    # An environment without the decoder packages, simulated by emptying pydicom's plugin registry.
    decoder = get_decoder(JPEGLSLossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"gdcm": ("gdcm>=3.0.10",)})
    path = local_test_file("MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)" in message
    assert "pip install python-gdcm" in message


def test_syntax_nothing_decodes_names_it_and_says_to_convert(tmp_path):
    ds = pydicom.dcmread(local_test_file("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video: no pixel decoder exists
    path = tmp_path / "video.dcm"
    ds.save_as(path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message and "video.dcm" in message
    assert "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)" in message
    assert "uncompressed transfer syntax" in message


def test_damaged_compressed_data_names_the_syntax(tmp_path):
    ds = pydicom.dcmread(local_test_file("MR_small_jpeg_ls_lossless.dcm"))
    frame = get_frame(ds.PixelData, 0)
    ds.PixelData = encapsulate([frame[:40]])  # a frame cut short, as after a failed transfer
    path = tmp_path / "cut.dcm"
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"cut\.dcm: cannot decode its JPEG-LS Lossless") as info:
        read_image(path)
    assert "\n" not in str(info.value)
