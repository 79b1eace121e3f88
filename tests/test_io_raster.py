import numpy as np
import pytest
from PIL import Image

from napari_medit.io import ImageReadError, read_image, write_image


def test_8_bit_png_round_trip(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.array.dtype == np.uint8
    np.testing.assert_array_equal(image.array, pixels)
    assert image.orientation == "IL"  # rows head -> feet, columns towards the patient's left
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "b.png", image)).array, pixels)


def test_16_bit_png_preserved(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 65536, (16, 12), dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a16.png")
    image = read_image(tmp_path / "a16.png")
    assert image.array.dtype == np.uint16
    np.testing.assert_array_equal(image.array, pixels)
    again = read_image(write_image(tmp_path / "b16.png", image))
    assert again.array.dtype == np.uint16
    np.testing.assert_array_equal(again.array, pixels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_becomes_grayscale(tmp_path, mode):
    rgb = np.zeros((4, 5, len(mode)), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    if mode == "RGBA":
        rgb[..., 3] = 255
    Image.fromarray(rgb, mode).save(tmp_path / "c.png")
    image = read_image(tmp_path / "c.png")
    assert image.array.shape == (4, 5) and image.array.dtype == np.uint8
    assert int(image.array[0, 0]) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)


def test_jpeg(tmp_path):
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "x.jpg")
    image = read_image(tmp_path / "x.jpg")
    assert image.array.shape == (8, 8) and abs(int(image.array.mean()) - 128) <= 1
    assert image.metadata["format"] == "jpeg"


def test_corrupt_png(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ImageReadError, match=r"bad.png: not a readable PNG/JPEG"):
        read_image(bad)


def test_png_writer_refuses_what_it_cannot_hold(tmp_path):
    image = read_image_from(np.zeros((4, 4), np.uint8), tmp_path)
    with pytest.raises(ValueError, match="NIfTI"):
        write_image(tmp_path / "f.png", image.with_array(np.full((4, 4), 0.5)))
    with pytest.raises(ValueError, match="NIfTI"):
        write_image(tmp_path / "neg.png", image.with_array(np.full((4, 4), -3, np.int16)))
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "neg.png").exists()


def test_png_writer_writes_masks_as_8_bit(tmp_path):
    image = read_image_from(np.zeros((4, 4), np.uint8), tmp_path)
    mask = image.with_array(np.eye(4, dtype=np.int64))
    again = read_image(write_image(tmp_path / "mask.png", mask))
    assert again.array.dtype == np.uint8
    np.testing.assert_array_equal(again.array, np.eye(4))


def read_image_from(pixels, folder):
    Image.fromarray(pixels).save(folder / "src.png")
    return read_image(folder / "src.png")
