"""``stress-test --demo``: phantom cases and small models made to fail the way the paper's did.

The models under test (bundled in ``napari_medit/models/stress-*``, trained by
``napari-medit train stress-acquisition | stress-drain | stress-lungs``):

- ``napari_medit.stress.demo:acquisition_classifier``: an effusion classifier trained where
  every positive carries an acquisition signature (collimation and a corner marker, as a
  different hospital's films would) and no negative does, as DeGrave et al.'s COVID-19 sets
  came from two hospitals;
- ``napari_medit.stress.demo:drain_classifier``: a pneumothorax classifier trained where every
  pneumothorax carries a chest drain and nothing else does;
- ``napari_medit.stress.demo:lung_segmenter``: a lung segmenter trained on healthy phantoms only.

Each returns a torch module that keeps the stress-test contract (``stress.models``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..backends.registry import BUNDLED
from ..sample_data.cxr_phantom import generate_cxr_phantom, to_uint8
from .scenarios import EditMethod, Scenario

DEMO_SIZE = 128  # the phantom cases' pixels; the biased models trained on phantoms rendered so too
SHORTCUT_RATE = 1.0  # the biased training sets: every positive carries the shortcut, no negative does
MODEL_FOLDERS = {"acquisition": "stress-acquisition", "drain": "stress-drain", "lungs": "stress-lungs"}


def acquisition_signature(image: np.ndarray) -> np.ndarray:
    """Another hospital's films: a collimated (bright) band along the top and a bright square marker."""
    out = np.array(image, copy=True)
    size = out.shape[-1]
    band, marker = max(1, round(0.05 * size)), max(2, round(0.06 * size))
    out[..., :band, :] = 235
    out[..., 2 * band : 2 * band + marker, size - 2 * band - marker : size - 2 * band] = 255
    return out


def demo_case(
    scenario: Scenario, seed: int, size: int = DEMO_SIZE
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One case a scenario starts from: (uint8 image, its masks by role)."""
    rng = np.random.default_rng(seed)
    side = str(rng.choice(["left", "right"]))
    if scenario is Scenario.acquisition:  # positives from the 'other hospital'
        phantom = generate_cxr_phantom(size, seed, effusion=side)
        image = acquisition_signature(to_uint8(phantom.image))
    elif scenario is Scenario.manifestation:  # a treated pneumothorax: the drain is in
        phantom = generate_cxr_phantom(size, seed, pneumothorax=side, chest_drain=side)
        image = to_uint8(phantom.image)
    else:  # healthy lungs
        phantom = generate_cxr_phantom(size, seed)
        image = to_uint8(phantom.image)
    masks = {"lung_mask": phantom.masks["lungs"]}
    if scenario is Scenario.manifestation:
        masks["drain_mask"] = phantom.masks["drain"]
    return image, masks


def write_demo_cases(scenario: Scenario, count: int, folder: Path, first_seed: int = 10_000) -> Path:
    """``count`` cases as PNGs and ``cases.csv`` (id, image, masks) in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        image, masks = demo_case(scenario, first_seed + index)
        case = f"{scenario.value}-{index:03d}"
        Image.fromarray(image).save(folder / f"{case}.png")
        row = {"id": case, "image": f"{case}.png"}
        for role, mask in masks.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{case}_{role}.png")
            row[role] = f"{case}_{role}.png"
        rows.append(row)
    table = folder / "cases.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return table


def demo_addition(model, index: int, side: str, seed: int = 0, **run) -> tuple[np.ndarray, np.ndarray, dict]:
    """The population scenario's instruction edit of demo case ``index``, asking for an effusion on
    ``side``, with the seed its stress test gives that case (``run.case_seed`` of ``seed``):
    (source, edited, the case's masks). ``run``: further run options (precision, steps)."""
    from ..editing import edit
    from .run import case_seed
    from .scenarios import SCENARIOS

    spec = SCENARIOS[Scenario.population]
    image, masks = demo_case(Scenario.population, 10_000 + index)
    case = f"population-{index:03d}-{side}"
    result = edit(
        "instructx2x",
        image,
        model=model,
        prompt=spec.instruction.format(side=side),
        roi_mask=spec.edit_masks(masks)["edit_mask"],
        seed=case_seed(seed, case),
        **run,
    )
    return image, result.image.array, masks


# ---------------------------------------------------------------- the biased models


def classifier_network(resolution: int):
    from monai.networks.nets import Classifier

    return Classifier(
        in_shape=(1, resolution, resolution),
        classes=1,
        channels=(16, 32, 64, 64),
        strides=(2, 2, 2, 2),
        num_res_units=1,
    )


def segmenter_network():
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64), strides=(2, 2), num_res_units=1
    )


def as_contract(network, resolution: int):
    """The network as the stress test's contract wants it: [0, 1] images in, probabilities out."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network, self.input_size = network.eval(), resolution

        def forward(self, x):
            return torch.sigmoid(self.network(x * 2 - 1))  # trained on [-1, 1], as napari-medit's models

    return Probabilities()


def _load(kind: str, build):
    from safetensors.torch import load_file

    from .models import ModelUnderTestError

    folder = BUNDLED / MODEL_FOLDERS[kind]
    if not (folder / "model.json").is_file():
        raise ModelUnderTestError(
            f"{folder}: the demo model is missing; train it with "
            f"`napari-medit train stress-{kind} --out {folder}`"
        )
    config = json.loads((folder / "model.json").read_text())
    network = build(config["resolution"])
    network.load_state_dict(load_file(folder / "model.safetensors"))
    return as_contract(network, config["resolution"])


def acquisition_classifier():
    return _load("acquisition", classifier_network)


def drain_classifier():
    return _load("drain", classifier_network)


def lung_segmenter():
    return _load("lungs", lambda resolution: segmenter_network())


DEMO_MODELS = {
    Scenario.acquisition: "napari_medit.stress.demo:acquisition_classifier",
    Scenario.manifestation: "napari_medit.stress.demo:drain_classifier",
    Scenario.population: "napari_medit.stress.demo:lung_segmenter",
}

# How --demo makes each scenario's counterfactuals. demo-cxr's RadEdit removes findings well but cannot
# add an effusion to a healthy lung (its edit-friendly inversion holds the lung as it was: 0 of 12 edits
# reached p(effusion) > 0.01), so the population demo adds it with the instruction model.
DEMO_EDITORS = {
    Scenario.acquisition: (EditMethod.radedit, "demo-cxr"),
    Scenario.manifestation: (EditMethod.radedit, "demo-cxr"),
    Scenario.population: (EditMethod.instructx2x, "demo-cxr-instruct"),
}
