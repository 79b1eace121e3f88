import numpy as np
import pytest

from napari_medit.sample_data.cxr_phantom import (
    FINDINGS,
    CXRPhantom,
    generate_cxr_phantom,
    to_uint8,
)

SIZE = 128
FINDING_MASKS = ("effusion", "opacity", "pneumothorax")


@pytest.fixture(scope="module")
def normal() -> CXRPhantom:
    return generate_cxr_phantom(SIZE, seed=3)


def test_findings_constant():
    assert FINDINGS == ("effusion", "cardiomegaly", "opacity", "pneumothorax", "chest_drain")


@pytest.mark.parametrize("size", [32, 64, 97])
def test_shape_dtype_range(size):
    p = generate_cxr_phantom(size, seed=1, effusion="both", pneumothorax="left", chest_drain="right")
    assert p.image.shape == (size, size)
    assert p.image.dtype == np.float32
    assert np.isfinite(p.image).all()
    assert p.image.min() >= 0.0 and p.image.max() <= 1.0
    for name, mask in p.masks.items():
        assert mask.shape == (size, size), name
        assert mask.dtype == bool, name


def test_same_seed_is_bit_identical():
    kwargs = dict(effusion="right", opacity="left", chest_drain="left")
    a = generate_cxr_phantom(SIZE, seed=7, **kwargs)
    b = generate_cxr_phantom(SIZE, seed=7, **kwargs)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.masks.keys() == b.masks.keys()
    for name in a.masks:
        assert np.array_equal(a.masks[name], b.masks[name]), name
    assert a.findings == b.findings


def test_different_seed_differs(normal):
    other = generate_cxr_phantom(SIZE, seed=4)
    assert np.abs(other.image - normal.image).mean() > 0.01
    assert not np.array_equal(other.masks["lungs"], normal.masks["lungs"])


def test_intensity_ordering(normal):
    img, masks = normal.image, normal.masks
    lungs = img[masks["lungs"]].mean()
    heart = img[masks["heart"]].mean()
    # Mediastinum/spine: central columns at lung height, excluding the heart.
    rows = np.flatnonzero(masks["lungs"].any(axis=1))
    half = SIZE // 2
    strip = np.zeros_like(masks["lungs"])
    strip[rows[0] : rows[-1], half - SIZE // 40 : half + SIZE // 40] = True
    mediastinum = img[strip & ~masks["heart"]].mean()
    outside = img[~masks["body"]].mean()
    assert outside < 0.05
    assert outside < lungs < heart
    assert lungs < mediastinum
    assert heart - lungs > 0.2


def test_normal_has_empty_finding_masks(normal):
    masks = normal.masks
    for name in ("lungs", "heart", "body"):
        assert masks[name].any(), name
    assert not masks["finding"].any()
    assert not masks["drain"].any()
    assert not any(name in masks for name in FINDING_MASKS)
    assert normal.findings["effusion"] is None and normal.findings["cardiomegaly"] is False


@pytest.mark.parametrize(
    "kwargs, present",
    [
        (dict(effusion="left"), {"effusion"}),
        (dict(effusion="both"), {"effusion"}),
        (dict(opacity="right", opacity_kind="nodule"), {"opacity"}),
        (dict(opacity="left", opacity_kind="consolidation"), {"opacity"}),
        (dict(pneumothorax="right"), {"pneumothorax"}),
        (dict(chest_drain="left"), {"drain"}),
    ],
)
def test_requested_finding_masks(kwargs, present):
    p = generate_cxr_phantom(SIZE, seed=5, **kwargs)
    for name in present:
        assert p.masks[name].sum() > 10, name
        assert (p.masks["finding"] >= p.masks[name]).all(), name
    for name in set(FINDING_MASKS) - present:
        assert name not in p.masks
    if "drain" not in present:
        assert not p.masks["drain"].any()
    assert p.masks["finding"].any()


def test_findings_record_is_json_serialisable():
    import json

    p = generate_cxr_phantom(
        64,
        seed=2,
        effusion="both",
        cardiomegaly=True,
        opacity="left",
        pneumothorax="right",
        chest_drain="right",
    )
    record = json.loads(json.dumps(p.findings))
    assert record["seed"] == 2 and record["size"] == 64
    assert record["effusion"] == "both" and record["chest_drain"] == "right"


def test_effusion_is_denser_on_matched_anatomy(normal):
    p = generate_cxr_phantom(SIZE, seed=3, effusion="right")
    mask = p.masks["effusion"]
    assert np.array_equal(p.masks["lungs"], normal.masks["lungs"])  # same anatomy
    assert p.image[mask].mean() > normal.image[mask].mean() + 0.1
    # The effusion is in the patient's right lung = the image's left half.
    cols = np.flatnonzero(mask.any(axis=0))
    assert cols.max() < SIZE // 2


def test_opacity_is_denser_and_pneumothorax_darker(normal):
    opacity = generate_cxr_phantom(SIZE, seed=3, opacity="left")
    mask = opacity.masks["opacity"]
    assert opacity.image[mask].mean() > normal.image[mask].mean() + 0.05
    assert np.flatnonzero(mask.any(axis=0)).min() > SIZE // 2  # patient's left = image right

    ptx = generate_cxr_phantom(SIZE, seed=3, pneumothorax="right")
    mask = ptx.masks["pneumothorax"]
    assert ptx.image[mask].mean() < normal.image[mask].mean()


@pytest.mark.parametrize("seed", range(4))
def test_cardiothoracic_ratio(seed):
    normal = generate_cxr_phantom(SIZE, seed=seed)
    enlarged = generate_cxr_phantom(SIZE, seed=seed, cardiomegaly=True)
    assert 0.35 < normal.findings["cardiothoracic_ratio"] < 0.5
    assert enlarged.findings["cardiothoracic_ratio"] > 0.52
    assert enlarged.masks["heart"].sum() > normal.masks["heart"].sum()
    assert (enlarged.masks["finding"] == enlarged.masks["heart"]).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_drain_mostly_inside_body(side):
    p = generate_cxr_phantom(SIZE, seed=6, chest_drain=side)
    drain = p.masks["drain"]
    assert drain.any()
    assert (drain & p.masks["body"]).sum() / drain.sum() > 0.7
    assert (drain & p.masks["lungs"]).any()
    # Enters through the patient's chest wall on the requested side.
    cols = np.flatnonzero(drain.any(axis=0))
    assert (cols.mean() < SIZE / 2) == (side == "right")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=16),
        dict(size=31),
        dict(size=64.0),
        dict(size=64, seed=-1),
        dict(size=64, effusion="middle"),
        dict(size=64, opacity="both"),
        dict(size=64, pneumothorax="Left"),
        dict(size=64, chest_drain="centre"),
        dict(size=64, cardiomegaly="yes"),
        dict(size=64, effusion="left", effusion_size=2.0),
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        generate_cxr_phantom(**kwargs)


def test_to_uint8_rounds_and_clips():
    out = to_uint8(np.array([0.0, 0.5, 1.0, 1.5, -0.2, 0.999], dtype=np.float32))
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 128, 255, 255, 0, 255]
