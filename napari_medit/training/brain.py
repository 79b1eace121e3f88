"""Train a MedEdit-style conditional DDPM on brain MRI slices.

The network (MONAI DiffusionModelUNet) sees [x_t, pathology mask, brain mask]
and predicts the noise, as in MedEdit. Training pairs come from axial slices
of the given volumes. Volumes without a pathology mask get synthetic lesions:
a lobulated blob inside the brain, painted darker (T1 hypointensity) with soft
edges, the tissue around it pushed outwards (mass effect); the model learns to
draw a lesion where the pathology mask says and normal tissue elsewhere.

Slices are normalised and resampled with the editing engine's own code
(IntensityWindow, Grid), so training and editing see the same inputs.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_erosion, binary_fill_holes, gaussian_filter, map_coordinates

from ..io import RADIOLOGICAL_AXIAL, MedicalImage, read_image
from ..preprocessing import Grid, IntensityWindow
from .loop import TrainConfig, extra_levels, noised, train


def network(resolution: int) -> dict:
    """DiffusionModelUNet settings: the 64 px demo's three levels, plus one level of 128 channels per
    doubling above 64 px, so the attention level always works on a grid of at most 16 x 16."""
    channels = [32, 64, 64] + [128] * extra_levels(resolution)
    return dict(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        channels=channels,
        attention_levels=[False] * (len(channels) - 1) + [True],
        num_res_blocks=1,
        num_head_channels=32,
    )


# MedEdit: 1000 steps, linear betas 1e-4..2e-2
SCHEDULER = {
    "class": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "schedule": "linear_beta",
    "beta_start": 1e-4,
    "beta_end": 2e-2,
}
HEALTHY_FRACTION = 0.3  # slices trained with an empty pathology mask: normal tissue stays normal


@dataclass
class Subject:
    t1: np.ndarray  # (slices, H, W) axial, radiological, normalised to [0, 1]
    brain: np.ndarray
    lesion: np.ndarray | None


def load_subjects(data: str | Path | None) -> list[Subject]:
    """Volumes from a folder of NIfTI files (``*t1*`` with optional ``*brain_mask*``,
    ``*lesion_mask*`` beside them), a CSV (columns image, brain_mask, pathology_mask), or
    the bundled sample when ``data`` is None."""
    if data is None:
        from ..sample_data import load_brain

        sample = load_brain()
        rows = [(sample["t1"], sample["brain_mask"], None)]
    else:
        rows = [tuple(read_image(p) if p else None for p in row) for row in _table(Path(data))]
    subjects = []
    for image, brain, lesion in rows:
        if image.array.ndim != 3:
            raise ValueError(
                f"{image.metadata.get('path')}: training needs 3D volumes, got {image.array.shape}"
            )
        axial = image.reoriented(RADIOLOGICAL_AXIAL)
        window = IntensityWindow.of(axial.array)
        t1 = window.to_unit(axial.array).astype(np.float32)
        brain_mask = _as_axial(brain, image) if brain is not None else derive_brain_mask(t1)
        subjects.append(Subject(t1, brain_mask, _as_axial(lesion, image) if lesion is not None else None))
    return subjects


def _table(data: Path) -> list[tuple[str, str | None, str | None]]:
    if data.suffix.lower() == ".csv":
        with open(data, newline="") as f:
            return [
                (
                    str(data.parent / r["image"]),
                    _opt(data.parent, r.get("brain_mask")),
                    _opt(data.parent, r.get("pathology_mask")),
                )
                for r in csv.DictReader(f)
            ]
    if not data.is_dir():
        raise ValueError(f"{data}: give a folder of NIfTI volumes or a CSV listing them")
    images = sorted(p for p in data.glob("*.nii*") if "mask" not in p.name.lower())
    if not images:
        raise ValueError(f"{data}: no NIfTI volumes (files named *mask* are taken as masks)")
    rows = []
    for image in images:
        stem = image.name.split(".nii")[0]
        brain = next(iter(data.glob(f"{stem}*brain_mask*.nii*")), None) or next(
            iter(data.glob("brain_mask.nii*")), None
        )
        lesion = next(iter(data.glob(f"{stem}*lesion_mask*.nii*")), None)
        rows.append((str(image), str(brain) if brain else None, str(lesion) if lesion else None))
    return rows


def _opt(root: Path, value: str | None) -> str | None:
    return str(root / value) if value else None


def _as_axial(mask: MedicalImage, image: MedicalImage) -> np.ndarray:
    if mask.array.shape != image.array.shape:
        raise ValueError(
            f"{mask.metadata.get('path')}: mask shape {mask.array.shape} != image {image.array.shape}"
        )
    return MedicalImage(mask.array > 0, image.affine).reoriented(RADIOLOGICAL_AXIAL).array


def derive_brain_mask(unit: np.ndarray) -> np.ndarray:
    """A starting brain mask when none is given: threshold, fill, erode away thin rims."""
    mask = unit > 0.1
    mask = np.stack([binary_fill_holes(s) for s in mask])
    return binary_erosion(mask, iterations=1)


def synthetic_lesion(image: np.ndarray, brain: np.ndarray, rng: np.random.Generator):
    """(image with a lesion and mass effect, lesion mask) for one (H, W) slice in [0, 1]."""
    inside = np.argwhere(binary_erosion(brain, iterations=max(2, brain.shape[0] // 12)))
    if len(inside) == 0:
        return image, np.zeros_like(brain)
    centre = inside[rng.integers(len(inside))].astype(float)
    size = brain.shape[0] * rng.uniform(0.04, 0.10)
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]].astype(float)
    field = np.zeros(image.shape)
    for _ in range(rng.integers(1, 4)):  # a few overlapping ellipses: a lobulated outline
        offset = rng.normal(0, size * 0.4, 2)
        ry, rx = size * rng.uniform(0.6, 1.2, 2)
        field = np.maximum(
            field, 1 - ((yy - centre[0] - offset[0]) / ry) ** 2 - ((xx - centre[1] - offset[1]) / rx) ** 2
        )
    lesion = (field > 0) & brain
    # Mass effect: sample the image from points pulled towards the centre (tissue pushed out).
    distance = np.hypot(yy - centre[0], xx - centre[1]) + 1e-6
    push = rng.uniform(0.2, 0.5) * size * np.exp(-((distance / (2.5 * size)) ** 2))
    warped = map_coordinates(
        image,
        [yy - push * (yy - centre[0]) / distance, xx - push * (xx - centre[1]) / distance],
        order=1,
        mode="nearest",
    )
    warped = np.where(brain, warped, image)
    softness = gaussian_filter(lesion.astype(float), 1.0)
    intensity = rng.uniform(0.15, 0.45)  # T1-hypointense, like most white-matter lesions
    return (warped * (1 - softness) + intensity * softness).astype(np.float32), lesion


def batches(
    subjects: list[Subject], resolution: int, batch_size: int, seed: int, start_step: int
) -> Iterator[dict]:
    """Batch ``step`` depends on (seed, step) alone, so a resumed run sees what an unbroken one would."""
    from monai.transforms import Compose, RandAffined, RandFlipd

    keys = ("image", "pathology", "brain")
    augment = Compose(
        [
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            RandAffined(
                keys=keys,
                prob=0.7,
                rotate_range=0.15,
                scale_range=0.1,
                mode=("bilinear", "nearest", "nearest"),
                padding_mode="zeros",
            ),
        ]
    )
    candidates = [
        (i, k)
        for i, s in enumerate(subjects)
        for k in np.flatnonzero(s.brain.reshape(len(s.brain), -1).sum(1) > 200)
    ]
    step = start_step
    while True:
        rng = np.random.default_rng([seed, step])
        augment.set_random_state(seed=int(rng.integers(2**31)))
        items = []
        for _ in range(batch_size):
            i, k = candidates[rng.integers(len(candidates))]
            subject = subjects[i]
            image, brain = subject.t1[k], subject.brain[k]
            lesion = subject.lesion[k] if subject.lesion is not None else np.zeros_like(brain)
            if subject.lesion is None and rng.random() > HEALTHY_FRACTION:
                image, lesion = synthetic_lesion(image, brain, rng)
            grid = Grid(*image.shape, resolution)
            sample = {
                name: grid.to_model(array[None], soft=name != "image")[0].numpy()
                for name, array in (
                    ("image", image),
                    ("pathology", lesion.astype(np.float32)),
                    ("brain", brain.astype(np.float32)),
                )
            }
            sample = augment(sample)
            items.append(torch.cat([torch.as_tensor(np.asarray(sample[k])) for k in keys]))
        stacked = torch.stack(items).float()
        step += 1
        # Masks stay coverage fractions on the model grid, as the editing engine gives them.
        yield {"image": stacked[:, :1], "conditions": stacked[:, 1:]}


def train_brain(config: TrainConfig, data=None, resolution: int = 64, resume: bool = False) -> Path:
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    from ..backends import save_model
    from ..editing import MonaiDenoiser

    subjects = load_subjects(data)
    torch.manual_seed(config.seed)
    settings = network(resolution)
    unet = DiffusionModelUNet(**settings).to(config.device)
    scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if k != "class"})
    alphas = scheduler.alphas_cumprod.to(config.device)

    def loss_fn(batch, generator):
        x_t, t, noise = noised(batch["image"].to(config.device), alphas, generator)
        eps = unet(torch.cat([x_t, batch["conditions"].to(config.device)], dim=1), timesteps=t)
        return torch.nn.functional.mse_loss(eps, noise)

    denoiser = MonaiDenoiser(
        unet,
        scheduler,
        resolution=resolution,
        name="demo-brain",
        condition_names=("pathology_mask", "brain_mask"),
    )
    model_config = {
        "name": config.out.name,
        "resolution": resolution,
        "value_range": [0, 1],
        "condition_names": ["pathology_mask", "brain_mask"],
        "network": settings,
        "scheduler": SCHEDULER,
        "trained_on": "bundled MNI152 sample" if data is None else str(data),
    }

    def validate(step):
        save_model(config.out, denoiser, model_config, config.save_float16)
        _validation_image(denoiser, subjects[0], resolution, config.out / f"validation_{step:06d}.png")

    train(
        config,
        {"unet": unet},
        loss_fn,
        lambda start: batches(subjects, resolution, config.batch_size, config.seed, start),
        validate,
        resume,
    )
    return save_model(config.out, denoiser, model_config, config.save_float16)


def _validation_image(denoiser, subject: Subject, resolution: int, path: Path) -> None:
    """A MedEdit edit of a mid-brain slice with a synthetic lesion mask, beside the source."""
    from PIL import Image

    from ..editing import edit

    k = int(np.argmax(subject.brain.reshape(len(subject.brain), -1).sum(1)))
    rng = np.random.default_rng(0)
    _, lesion = synthetic_lesion(subject.t1[k], subject.brain[k], rng)
    result = edit(
        "mededit",
        subject.t1[k],
        model=denoiser,
        pathology_mask=lesion,
        brain_mask=subject.brain[k],
        steps=100,
        seed=0,
    )
    row = np.concatenate([subject.t1[k], result.image.array, lesion.astype(np.float32)], axis=1)
    Image.fromarray((np.clip(row, 0, 1) * 255).astype(np.uint8)).save(path)
