"""A chest X-ray findings classifier: how likely an image shows each finding.

It measures counterfactuals, it does not make them: BiomedJourney's pathology accuracy is the
AUROC of a classifier on the edited images against the truth, and RadEdit filters edits with
one. ``demo-cxr-findings`` (bundled, ``napari-medit train cxr-findings``) is a MONAI
``Classifier`` trained on phantoms, one sigmoid output per finding; it sees an image as the
editing engine does (the 0.5-99.5 % window, padded to a square, resampled to its resolution).

    classifier-folder/
      classifier.json     {"format": "napari-medit-classifier/1", "findings": [...], "resolution": 64,
                           "network": {...monai Classifier arguments...}}
      model.safetensors   the network's state dict
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .backends.registry import BUNDLED
from .results import ModelLoadError

FORMAT = "napari-medit-classifier/1"
CONFIG_NAME = "classifier.json"
DEMO = "demo-cxr-findings"


def network_arguments(resolution: int, classes: int) -> dict:
    return {
        "in_shape": [1, resolution, resolution],
        "classes": classes,
        "channels": [16, 32, 64, 64],
        "strides": [2, 2, 2, 2],
        "num_res_units": 1,
    }


class FindingsClassifier:
    """Probabilities of ``findings`` for 2D images (any size and intensity scale)."""

    def __init__(self, network, findings, resolution: int, name: str = "classifier"):
        self.network, self.findings, self.resolution, self.name = (
            network.eval(),
            tuple(findings),
            resolution,
            name,
        )

    @classmethod
    def load(cls, path: str | Path = DEMO) -> FindingsClassifier:
        """A classifier folder, or the name of a bundled one (``demo-cxr-findings``)."""
        from monai.networks.nets import Classifier
        from safetensors.torch import load_file

        folder = Path(path).expanduser()
        if not folder.is_dir():
            folder = BUNDLED / str(path)
        config_path, weights = folder / CONFIG_NAME, folder / "model.safetensors"
        if not config_path.is_file() or not weights.is_file():
            raise ModelLoadError(
                f"{path}: not a findings classifier folder (needs {CONFIG_NAME} and "
                f"model.safetensors; train one with `napari-medit train cxr-findings --out DIR`)"
            )
        config = json.loads(config_path.read_text())
        if config.get("format") != FORMAT:
            raise ModelLoadError(
                f"{config_path}: unknown format {config.get('format')!r}; expected {FORMAT!r}"
            )
        network = Classifier(**config["network"])
        try:
            network.load_state_dict(load_file(weights))
        except RuntimeError as exc:
            raise ModelLoadError(
                f"{weights}: weights do not match the network in {CONFIG_NAME} ({str(exc).splitlines()[0]})"
            ) from None
        return cls(network, config["findings"], int(config["resolution"]), config.get("name", folder.name))

    def save(self, folder: Path, config: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        save_file(state, folder / "model.safetensors")
        (folder / CONFIG_NAME).write_text(
            json.dumps(
                {
                    "format": FORMAT,
                    "name": self.name,
                    "findings": list(self.findings),
                    "resolution": self.resolution,
                    "network": network_arguments(self.resolution, len(self.findings)),
                    **(config or {}),
                },
                indent=2,
            )
        )
        return folder

    def to_input(self, images: np.ndarray):
        """(N, H, W) or (H, W) images -> the network's (N, 1, R, R) input in [-1, 1]."""
        from .preprocessing import Grid, IntensityWindow

        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3:
            raise ValueError(f"the classifier reads 2D images; got shape {images.shape}")
        grid = Grid(images.shape[1], images.shape[2], self.resolution)
        units = [IntensityWindow.of(image).to_unit(image) for image in images]
        return grid.to_model(np.stack(units)) * 2 - 1

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, len(findings)) probabilities; a 2D image gives (1, len(findings))."""
        import torch

        with torch.no_grad():
            return torch.sigmoid(self.network(self.to_input(images))).numpy()

    def probabilities(self, image: np.ndarray) -> dict[str, float]:
        """One image's findings by name."""
        return {name: float(p) for name, p in zip(self.findings, self.predict(image)[0], strict=True)}
