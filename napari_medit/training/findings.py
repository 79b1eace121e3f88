"""Train the findings classifier (``demo-cxr-findings``) on phantoms.

Each phantom carries each finding (pleural effusion, cardiomegaly, pneumothorax, opacity)
with probability 0.35, independently, on a random side, with random sizes; a chest drain
appears in 20% of phantoms whatever their findings, so the drain is not a shortcut to
pneumothorax (the stress tests' biased classifiers are trained the other way). Half the
effusions are drawn only inside the healthy lung border, so that the classifier judges fluid
density rather than the blunted angle alone; without them it called fewer than 2 in 12 of the
population stress test's added effusions (which keep the lung border by design) effusions. Images are
normalised exactly as ``FindingsClassifier`` reads them. Loss: binary cross-entropy per finding.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..findings import FindingsClassifier, network_arguments
from ..instructions import Finding
from ..sample_data.cxr_phantom import generate_cxr_phantom, to_uint8
from .loop import TrainConfig, train

FINDINGS = tuple(f.value for f in Finding)
FINDING_PROBABILITY, DRAIN_PROBABILITY = 0.35, 0.2
BORDER_KEPT_PROBABILITY = 0.5  # of effusions drawn inside the healthy lung border (see below)


def random_phantom(rng: np.random.Generator, size: int):
    """(uint8 image, 0/1 label per finding)."""
    present = {name: rng.random() < FINDING_PROBABILITY for name in FINDINGS}
    side = lambda: str(rng.choice(["left", "right"]))  # noqa: E731
    findings = dict(
        cardiomegaly=present["cardiomegaly"],
        pneumothorax=side() if present["pneumothorax"] else None,
        opacity=side() if present["opacity"] else None,
        chest_drain=side() if rng.random() < DRAIN_PROBABILITY else None,
    )
    seed = int(rng.integers(2**31))
    phantom = generate_cxr_phantom(size, seed, effusion=side() if present["effusion"] else None, **findings)
    image = phantom.image
    if present["effusion"] and rng.random() < BORDER_KEPT_PROBABILITY:
        image = _effusion_inside_the_lung_border(phantom, generate_cxr_phantom(size, seed, **findings))
    return to_uint8(image), np.array([present[name] for name in FINDINGS], np.float32)


def _effusion_inside_the_lung_border(effusion, healthy) -> np.ndarray:
    """The effusion phantom inside the healthy lungs eroded as the population stress test keeps
    their border, the healthy phantom (same seed, so the same anatomy) elsewhere: fluid density
    without the blunted costophrenic angle, as an edit that keeps the lung border adds it."""
    from ..stress.scenarios import SCENARIOS, Scenario

    inside = SCENARIOS[Scenario.population].edit_masks({"lung_mask": healthy.masks["lungs"]})["edit_mask"]
    return np.where(inside, effusion.image, healthy.image)


def batches(classifier: FindingsClassifier, batch_size: int, seed: int, start_step: int) -> Iterator[dict]:
    step = start_step
    while True:
        rng = np.random.default_rng([seed, step])
        step += 1
        images, labels = zip(
            *(random_phantom(rng, classifier.resolution) for _ in range(batch_size)), strict=True
        )
        yield {
            "image": classifier.to_input(np.stack(images)).float(),
            "labels": torch.from_numpy(np.stack(labels)),
        }


def train_findings(config: TrainConfig, resolution: int = 64, resume: bool = False) -> Path:
    from monai.networks.nets import Classifier

    torch.manual_seed(config.seed)
    network = Classifier(**network_arguments(resolution, len(FINDINGS))).to(config.device)
    classifier = FindingsClassifier(network, FINDINGS, resolution, name=config.out.name)

    def loss_fn(batch, generator):
        logits = network(batch["image"].to(config.device))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"].to(config.device))

    def validate(step):
        classifier.save(
            config.out, {"trained_on": "napari-medit chest phantoms", "validation": _validation(classifier)}
        )

    train(
        config,
        {"classifier": network},
        loss_fn,
        lambda start: batches(classifier, config.batch_size, config.seed, start),
        validate,
        resume,
    )
    network.eval()
    return classifier.save(
        config.out, {"trained_on": "napari-medit chest phantoms", "validation": _validation(classifier)}
    )


def _validation(classifier: FindingsClassifier, count: int = 200) -> dict[str, float]:
    """AUROC per finding on held-out phantoms (a seed no training batch uses)."""
    from ..metrics import auroc

    rng = np.random.default_rng([987654321])
    images, labels = zip(*(random_phantom(rng, classifier.resolution) for _ in range(count)), strict=True)
    scores = classifier.predict(np.stack(images))
    labels = np.stack(labels)
    return {name: round(auroc(labels[:, i] > 0, scores[:, i]), 4) for i, name in enumerate(FINDINGS)}
