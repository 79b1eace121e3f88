"""RadEdit's three stress tests (seed 000, Secs. 5.2-5.4), stated once and torch-free.

Each scenario says what the editor does to each image (its RadEdit edit and keep masks,
built from the masks the data carries, and its prompt), which edits count as having done
what was asked (the filter), what the model under test is (a classifier or a segmenter),
and how it is measured:

- acquisition: a finding removed inside the lungs, everything outside them kept (so an
  acquisition signature such as a marker or collimation stays); a classifier that learned
  the hospital keeps predicting the finding.
- manifestation: the pneumothorax removed from the lungs, the chest drain kept; a
  classifier that learned drains keeps predicting pneumothorax.
- population: an abnormality added inside the lungs, the lung border kept, so the original
  lung mask is still the truth; a segmenter trained on healthy lungs loses Dice and gains AHD.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

LUNG_MARGIN = 0.02  # acquisition: the keep mask starts this fraction of the width outside the lungs
DRAIN_MARGIN = 0.01  # manifestation: the drain is kept with this margin around it
LUNG_BORDER = 0.03  # population: this band inside the lung border is kept
REMOVAL_THRESHOLD = 0.5  # a removal is kept when the filter's probability of the finding is below this
ADDITION_RISE = (
    0.2  # an addition is kept when it raised the filter's probability by this (the paper's S >= 0.2)
)


class Scenario(str, enum.Enum):
    acquisition = "acquisition"
    manifestation = "manifestation"
    population = "population"


class EditMethod(str, enum.Enum):
    """How the counterfactuals are made: the paper's RadEdit (edit and keep masks, a prompt), or
    InstructX2X with the scenario's edit region as its region (for additions; an instruction model)."""

    radedit = "radedit"
    instructx2x = "instructx2x"


class Task(str, enum.Enum):
    """What the model under test does."""

    classifier = "classifier"  # image -> probability of the finding
    segmenter = "segmenter"  # image -> lung mask probabilities


@dataclass(frozen=True)
class ScenarioSpec:
    scenario: Scenario
    says: str
    reference: str
    task: Task
    prompt: str  # the editor's RadEdit prompt
    finding: str  # the finding the edit removes or adds: the filter reads its probability
    removes: bool  # True: the edit removes ``finding``; False: adds it
    needs: tuple[str, ...]  # the masks every case must carry
    metric: str
    source_text: str  # what the images the scenario starts from show: the editing score's real text
    instruction: str | None = (
        None  # for instructx2x: the instruction, '{side}' filled per case (additions only)
    )

    def edit_masks(self, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """RadEdit's edit and keep masks for one case, from the masks it carries."""
        from scipy.ndimage import binary_dilation, binary_erosion

        lungs = np.asarray(masks["lung_mask"]) > 0
        width = lungs.shape[-1]
        pixels = lambda fraction: max(1, round(fraction * width))  # noqa: E731
        if self.scenario is Scenario.acquisition:
            return {"edit_mask": lungs, "keep_mask": ~binary_dilation(lungs, iterations=pixels(LUNG_MARGIN))}
        if self.scenario is Scenario.manifestation:
            drain = binary_dilation(np.asarray(masks["drain_mask"]) > 0, iterations=pixels(DRAIN_MARGIN))
            return {"edit_mask": lungs & ~drain, "keep_mask": drain}
        inside = binary_erosion(lungs, iterations=pixels(LUNG_BORDER))
        return {"edit_mask": inside, "keep_mask": ~inside}

    def edit_job(self, method: EditMethod, index: int, masks: dict[str, np.ndarray]) -> tuple[str, dict]:
        """The prompt and the masks by role for one case's edit with ``method``. An added finding
        goes on the right for even cases, the left for odd ones."""
        regions = self.edit_masks(masks)
        if method is EditMethod.radedit:
            return self.prompt, regions
        if self.instruction is None:
            raise ValueError(
                f"the {self.scenario.value} scenario removes a finding whose side the data does not "
                f"state, which an instruction needs; use --method radedit"
            )
        # InstructX2X changes nothing outside its region, so the scenario's keep mask holds by construction
        return self.instruction.format(side=("right", "left")[index % 2]), {"roi_mask": regions["edit_mask"]}

    @property
    def filter_threshold(self) -> float:
        return REMOVAL_THRESHOLD if self.removes else ADDITION_RISE

    def filter_rule(self, threshold: float) -> str:
        """The filter in words, as the report states it."""
        if self.removes:
            return f"p({self.finding}) of the edit < {threshold}"
        return f"p({self.finding}) of the edit - p({self.finding}) of the original >= {threshold}"

    def kept(self, original: float, edited: float, threshold: float) -> bool:
        """The filter: did the edit do what was asked, by an independent classifier's probabilities
        of the finding before and after?

        A removal's edit is scored as a negative, so the classifier must call it one. An addition's
        label is never scored (the lung mask is the truth), so it need only move the classifier
        towards the finding, as RadEdit's editing score asks the embeddings to move towards the text.
        """
        return edited < threshold if self.removes else edited - original >= threshold


SCENARIOS: dict[Scenario, ScenarioSpec] = {
    s.scenario: s
    for s in (
        ScenarioSpec(
            Scenario.acquisition,
            "the finding removed inside the lungs, everything outside them kept",
            "RadEdit Sec. 5.2 (COVID-19 across two hospitals)",
            Task.classifier,
            "No findings",
            "effusion",
            True,
            ("lung_mask",),
            "accuracy",
            "Pleural effusion",
        ),
        ScenarioSpec(
            Scenario.manifestation,
            "the pneumothorax removed, the chest drain kept",
            "RadEdit Sec. 5.3 (pneumothorax and chest drains)",
            Task.classifier,
            "No findings",
            "pneumothorax",
            True,
            ("lung_mask", "drain_mask"),
            "accuracy",
            "Pneumothorax",
        ),
        ScenarioSpec(
            Scenario.population,
            "an abnormality added inside the lungs, the lung border kept",
            "RadEdit Sec. 5.4 (lung segmentation of abnormal lungs)",
            Task.segmenter,
            "Pleural effusion",
            "effusion",
            False,
            ("lung_mask",),
            "Dice and AHD",
            "No findings",
            instruction="add a {side} pleural effusion",
        ),
    )
}

POSITIVE = 0.5  # a classifier's probability at or above this is a positive prediction


def scenario(name: str | Scenario) -> ScenarioSpec:
    try:
        return SCENARIOS[Scenario(name)]
    except ValueError:
        raise ValueError(
            f"unknown scenario {name!r}; choose one of: {', '.join(s.value for s in Scenario)}"
        ) from None


# ---------------------------------------------------------------- metrics


# A PA film shows the patient's right on the image's left: where a finding on each side appears.
SIDE_ON_IMAGE = {"right": "image left", "left": "image right"}


def where_it_changed(source: np.ndarray, edited: np.ndarray, lungs: np.ndarray) -> tuple[str | None, bool]:
    """Where an edit changed a chest film: the image half holding the centroid of |edited - source|
    ('image left' or 'image right'; None when nothing changed), and whether that centroid lies in
    the lower half of the lungs' height (their base, where an effusion collects)."""
    change = np.abs(np.asarray(edited, np.float64) - np.asarray(source, np.float64))
    if change.sum() == 0:
        return None, False
    rows, columns = np.indices(change.shape)
    y, x = ((axis * change).sum() / change.sum() for axis in (rows, columns))
    lung_rows = np.flatnonzero(np.asarray(lungs).any(axis=1))
    half = "image left" if x < change.shape[1] / 2 else "image right"
    return half, bool(y > (lung_rows.min() + lung_rows.max()) / 2)


def positive_rate(probabilities) -> float:
    """The fraction of cases a classifier calls positive."""
    values = np.asarray(probabilities, float)
    return float((values >= POSITIVE).mean()) if values.size else float("nan")


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2 |P & T| / (|P| + |T|); 1 for two empty masks."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (prediction & truth).sum() / total)


def average_hausdorff(prediction: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """The average Hausdorff distance between two masks' borders, in the units of ``spacing``:
    the mean of (the mean distance from each border pixel of one to the other's border), both ways.
    Infinite when exactly one mask is empty."""
    from scipy.ndimage import binary_erosion, distance_transform_edt

    borders = [np.asarray(m, bool) & ~binary_erosion(np.asarray(m, bool)) for m in (prediction, truth)]
    if not borders[0].any() and not borders[1].any():
        return 0.0
    if not borders[0].any() or not borders[1].any():
        return float("inf")
    a_to_b = distance_transform_edt(~borders[1], sampling=spacing)[borders[0]].mean()
    b_to_a = distance_transform_edt(~borders[0], sampling=spacing)[borders[1]].mean()
    return float((a_to_b + b_to_a) / 2)
