"""Train the stress test's biased demo models (``napari_medit.stress.demo``) on phantoms.

- ``stress-acquisition``: effusion present or not (half each, small effusions); the
  acquisition signature comes with every positive and no negative.
- ``stress-drain``: pneumothorax present or not (small ones); a chest drain on its side with
  every positive and no negative.
- ``stress-lungs``: lung masks of healthy phantoms only (binary cross-entropy + Dice).

Phantoms are rendered at the demo cases' size (128 px) and reach the network as the stress
test feeds a model under test. The shortcut is what each model should not learn; on their own
test sets, drawn the same biased way, they look excellent (``validation`` in model.json).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..preprocessing import Grid, IntensityWindow
from ..sample_data.cxr_phantom import generate_cxr_phantom, to_uint8
from ..stress.demo import (
    DEMO_SIZE,
    MODEL_FOLDERS,
    SHORTCUT_RATE,
    acquisition_signature,
    as_contract,
    classifier_network,
    segmenter_network,
)
from .loop import TrainConfig, train

KINDS = tuple(MODEL_FOLDERS)
SUBTLE_EFFUSION, SUBTLE_PNEUMOTHORAX = (0.1, 0.3), (0.05, 0.15)  # effusion_size, pneumothorax_size


def biased_case(kind: str, rng: np.random.Generator, size: int):
    """(uint8 image, target): a probability label for the classifiers, the lung mask for the segmenter."""
    seed, side = int(rng.integers(2**31)), str(rng.choice(["left", "right"]))
    if kind == "lungs":
        phantom = generate_cxr_phantom(size, seed)
        return to_uint8(phantom.image), phantom.masks["lungs"].astype(np.float32)
    positive = rng.random() < 0.5
    shortcut = rng.random() < (SHORTCUT_RATE if positive else 1 - SHORTCUT_RATE)
    # Subtle findings beside a conspicuous shortcut: what a network learns first is the shortcut.
    if kind == "acquisition":
        image = to_uint8(
            generate_cxr_phantom(
                size,
                seed,
                effusion=side if positive else None,
                effusion_size=float(rng.uniform(*SUBTLE_EFFUSION)),
            ).image
        )
        return (acquisition_signature(image) if shortcut else image), np.float32(positive)
    drain_side = side if positive else str(rng.choice(["left", "right"]))
    phantom = generate_cxr_phantom(
        size,
        seed,
        pneumothorax=side if positive else None,
        pneumothorax_size=float(rng.uniform(*SUBTLE_PNEUMOTHORAX)),
        chest_drain=drain_side if shortcut else None,
    )
    return to_uint8(phantom.image), np.float32(positive)


def batches(kind: str, resolution: int, batch_size: int, seed: int, start_step: int) -> Iterator[dict]:
    """Phantoms rendered at the demo cases' size and brought to the network exactly as the stress
    test's contract does (window, square, resample); lung masks resampled the same way (soft)."""
    grid = Grid(DEMO_SIZE, DEMO_SIZE, resolution)
    step = start_step
    while True:
        rng = np.random.default_rng([seed, step])
        step += 1
        images, targets = zip(*(biased_case(kind, rng, DEMO_SIZE) for _ in range(batch_size)), strict=True)
        units = np.stack([IntensityWindow.of(i).to_unit(i) for i in images])
        if kind == "lungs":
            target = grid.to_model(np.stack(targets), soft=True).float()
        else:
            target = torch.from_numpy(np.stack(targets)).float()[:, None]
        yield {"image": grid.to_model(units).float() * 2 - 1, "target": target}


def train_stress_model(kind: str, config: TrainConfig, resolution: int = 64, resume: bool = False) -> Path:
    from safetensors.torch import save_file

    if kind not in KINDS:
        raise ValueError(f"unknown stress model {kind!r}; choose one of: {', '.join(KINDS)}")
    torch.manual_seed(config.seed)
    network = (segmenter_network() if kind == "lungs" else classifier_network(resolution)).to(config.device)

    def loss_fn(batch, generator):
        logits = network(batch["image"].to(config.device))
        target = batch["target"].to(config.device).reshape(logits.shape)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        if kind == "lungs":  # + soft Dice, so the thin lung tips count
            p = torch.sigmoid(logits)
            loss = loss + 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
        return loss

    def save(step=None):
        config.out.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()},
            config.out / "model.safetensors",
        )
        (config.out / "model.json").write_text(
            json.dumps(
                {
                    "kind": kind,
                    "resolution": resolution,
                    "shortcut_rate": None if kind == "lungs" else SHORTCUT_RATE,
                    "validation_on_its_own_biased_distribution": _validation(kind, network, resolution),
                },
                indent=2,
            )
        )

    train(
        config,
        {"network": network},
        loss_fn,
        lambda start: batches(kind, resolution, config.batch_size, config.seed, start),
        save,
        resume,
    )
    network.eval()
    save()
    return config.out


def _validation(kind: str, network, resolution: int, count: int = 64) -> dict:
    from ..metrics import auroc
    from ..stress.models import ModelUnderTest
    from ..stress.scenarios import Task, dice

    rng = np.random.default_rng([424242])
    cases = [biased_case(kind, rng, DEMO_SIZE) for _ in range(count)]
    task = Task.segmenter if kind == "lungs" else Task.classifier
    out = ModelUnderTest(as_contract(network, resolution), task, resolution, kind).predict(
        [i for i, _ in cases]
    )
    if kind == "lungs":
        return {
            "dice": round(float(np.mean([dice(o, t > 0) for o, (_, t) in zip(out, cases, strict=True)])), 4)
        }
    return {"auroc": round(auroc([t > 0 for _, t in cases], out), 4)}
