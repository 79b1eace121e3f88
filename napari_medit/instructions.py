"""Written instructions for chest X-ray edits: what they say, and where on the film they act.

Instruction models (BiomedJourney, InstructX2X) read free text. Two things here need to know
what an instruction means without a model:

- InstructX2X's Region-Specific Editing multiplies its relevance map by an anatomical
  region for the finding the instruction names. Its reference code uses the union of
  MS-CXR boxes per finding; napari-medit defines per-finding templates on the film
  (``region_template``), used when the user gives no region of their own; given the folder of
  InstructX2X's released pseudo masks, its own region instead (``pseudo_mask_region``).
- The demo instruction model is trained on phantom "patient journeys", whose instructions
  are written from the change between two phantoms (``write_instruction``).

Sides are the patient's: the patient's right lies on the image's left (PA view, as read).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class Finding(str, enum.Enum):
    effusion = "effusion"
    cardiomegaly = "cardiomegaly"
    pneumothorax = "pneumothorax"
    opacity = "opacity"


class Change(str, enum.Enum):
    add = "add"
    remove = "remove"
    enlarge = "enlarge"
    shrink = "shrink"


class Side(str, enum.Enum):
    right = "right"
    left = "left"


# The words that name each finding in an instruction (lower case; the first one is written).
FINDING_WORDS: dict[Finding, tuple[str, ...]] = {
    Finding.effusion: ("pleural effusion", "effusion"),
    Finding.cardiomegaly: ("heart", "cardiomegaly", "cardiac silhouette"),
    Finding.pneumothorax: ("pneumothorax",),
    Finding.opacity: ("opacity", "consolidation"),
}
CHANGE_WORDS: dict[Change, tuple[str, ...]] = {
    Change.add: ("add", "new", "develop"),
    Change.remove: ("remove", "resolve", "resolved", "clear"),
    Change.enlarge: ("enlarge", "increase", "grow", "worsen"),
    Change.shrink: ("shrink", "reduce", "decrease", "improve"),
}


@dataclass(frozen=True)
class Instruction:
    """One change to one finding: 'add a small right pleural effusion'."""

    change: Change
    finding: Finding
    side: Side | None = None  # None: both sides, or a finding without one (the heart)
    small: bool = False

    def text(self) -> str:
        if self.finding is Finding.cardiomegaly:  # the heart is enlarged or reduced, not added
            verb = {
                Change.add: "enlarge",
                Change.enlarge: "enlarge",
                Change.remove: "reduce",
                Change.shrink: "reduce",
            }[self.change]
            return f"{verb} the heart" if verb == "enlarge" else "reduce the heart size"
        article = "a" if self.change is Change.add else "the"
        size = "small " if self.small and self.change is Change.add else ""
        side = f"{self.side.value} " if self.side else ""
        name = FINDING_WORDS[self.finding][0]
        if self.change in (Change.enlarge, Change.shrink):
            return f"{'increase' if self.change is Change.enlarge else 'decrease'} the {side}{name}"
        return f"{self.change.value} {article} {size}{side}{name}"


def write_instruction(change: Change, finding: Finding, side: Side | None = None, small: bool = False) -> str:
    """The instruction text for a change, as the demo model was trained to read it."""
    return Instruction(change, finding, side, small).text()


def read_instruction(text: str) -> list[Instruction]:
    """Every finding an instruction names, with its change and side where it says them
    ('remove the right pleural effusion' -> [remove, effusion, right]). Unknown words are ignored."""
    lowered = " " + re.sub(r"[^a-z ]", " ", text.lower()) + " "
    change = next((c for c, words in CHANGE_WORDS.items() if any(f" {w} " in lowered for w in words)), None)
    found = []
    for finding, words in FINDING_WORDS.items():
        for word in words:
            at = lowered.find(f" {word} ")
            if at >= 0:
                before = lowered[:at].split()[-2:]  # 'the right pleural effusion': the side precedes the name
                side = next((Side(w) for w in reversed(before) if w in ("left", "right")), None)
                found.append(Instruction(change or Change.add, finding, side, " small " in lowered))
                break
    return found


# ---------------------------------------------------------------- region templates

# Boxes on the film, (top, bottom, near, far) as fractions of the image height and of the
# width from the midline outwards on the patient's side; several boxes are united. Drawn
# over the bundled phantoms' anatomy and checked against it (tests/test_instructions.py).
_HEMITHORAX = (0.08, 0.92, 0.02, 0.46)
TEMPLATES: dict[Finding, tuple[tuple[float, float, float, float], ...]] = {
    # fluid collects at the base: the lower half of the hemithorax, costophrenic angle included
    Finding.effusion: ((0.45, 0.95, 0.0, 0.47),),
    # air collects at the apex and along the lateral chest wall
    Finding.pneumothorax: ((0.08, 0.40, 0.02, 0.46), (0.08, 0.80, 0.22, 0.47)),
    Finding.opacity: (_HEMITHORAX,),
}
# the cardiac silhouette, (top, bottom, left, right) as fractions of the image (it lies left of centre
# in the patient, so right of centre on the film)
CARDIAC_SILHOUETTE = (0.38, 0.88, 0.28, 0.80)


LUNG_MARGIN = 0.02  # of the image width: a lung mask is widened by this before it cuts a template


def region_template(
    instructions: list[Instruction], shape: tuple[int, int], lungs: np.ndarray | None = None
) -> np.ndarray:
    """The union of the named findings' regions on an image of ``shape`` (bool). With no
    finding named, the whole image (as InstructX2X's reference does without a match). With a
    lung mask, the lung findings' boxes are cut to the (slightly widened) lungs; the heart's is not."""
    height, width = shape
    region = np.zeros(shape, bool)
    if not instructions:
        return ~region
    if lungs is not None:
        from scipy.ndimage import binary_dilation

        lungs = binary_dilation(np.asarray(lungs, bool), iterations=max(1, round(LUNG_MARGIN * width)))
    rows = (np.arange(height) + 0.5) / height
    cols = (np.arange(width) + 0.5) / width
    for item in instructions:
        if item.finding is Finding.cardiomegaly:
            top, bottom, left, right = CARDIAC_SILHOUETTE
            region |= ((rows >= top) & (rows < bottom))[:, None] & ((cols >= left) & (cols < right))[None]
            continue
        for side in [item.side] if item.side else [Side.right, Side.left]:
            # from the midline outwards: the patient's right is the image's left
            outward = 0.5 - cols if side is Side.right else cols - 0.5
            for top, bottom, near, far in TEMPLATES[item.finding]:
                box = ((rows >= top) & (rows < bottom))[:, None] & ((outward >= near) & (outward < far))[None]
                region |= box if lungs is None else box & lungs
    return region


def hemithorax(lungs: np.ndarray, side: Side) -> np.ndarray:
    """One side of a lung mask, split at the midline between the lungs' outer edges."""
    cols = np.flatnonzero(np.asarray(lungs).any(axis=0))
    if cols.size == 0:
        return np.zeros_like(lungs, bool)
    middle = (cols[0] + cols[-1] + 1) / 2
    image_left = np.arange(lungs.shape[1]) < middle
    return np.asarray(lungs, bool) & (image_left if side is Side.right else ~image_left)[None]


PSEUDO_MASK_PREFIX = "pseudo_mask_"  # InstructX2X's inference/masks/pseudo_mask_<Finding>.npy
PSEUDO_MASK_PATTERN = f"{PSEUDO_MASK_PREFIX}*.npy"
# rse_x2x.py's VALID_CATEGORIES, as it lists them (two with a trailing space, which it matches as written).
# An instruction naming one is edited in that category's pseudo mask, pseudo_mask_<Category Title>.npy,
# and in the whole image when that file does not exist (the reference ships 8 of the 31).
PSEUDO_MASK_CATEGORIES = (
    "fracture", "thymoma", "tortuosity of the descending aorta ", "blunting of the costophrenic angle",
    "atelectasis", "hilar congestion", "hernia", "cardiomegaly", "consolidation", "Effusion",
    "tortuosity of the thoracic aorta ", "vascular congestion", "pleural thickening", "granuloma",
    "lung opacity", "contusion", "hypertensive heart disease", "heart failure", "gastric distention",
    "pneumomediastinum", "calcification", "infection", "air collection", "pneumonia",
    "enlargement of the cardiac silhouette", "edema", "emphysema", "scoliosis", "hypoxemia",
    "hematoma", "pneumothorax",
)  # fmt: skip


def pseudo_mask_region(folder: str | Path, text: str, shape: tuple[int, int]) -> np.ndarray:
    """InstructX2X's own region for an instruction, as rse_x2x.py's ``integrate_masks`` builds it: the
    union (maximum) of the pseudo masks of the categories the text names (``PSEUDO_MASK_CATEGORIES``,
    matched case-insensitively anywhere in the text), each resampled bilinearly from its grid to
    ``shape`` and cut at one half; the whole image when the text names no category, or names one
    without a mask file. ValueError names a missing folder or a file that is not a 2D mask."""
    from scipy.ndimage import zoom

    folder = Path(folder).expanduser()
    files = sorted(folder.glob(PSEUDO_MASK_PATTERN)) if folder.is_dir() else []
    if not files:
        raise ValueError(
            f"{folder}: no {PSEUDO_MASK_PATTERN} files there; point pseudo_masks at InstructX2X's "
            "inference/masks folder, or leave it empty for napari-medit's templates"
        )
    lowered = text.lower()
    named = [
        folder / f"{PSEUDO_MASK_PREFIX}{c.title()}.npy"
        for c in PSEUDO_MASK_CATEGORIES
        if c.lower() in lowered
    ]
    if not named or not all(path.is_file() for path in named):
        return np.ones(shape, bool)
    union = np.zeros(shape, np.float64)
    for path in named:
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a NumPy array file ({exc})") from None
        if mask.ndim != 2 or not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ValueError(
                f"{path}: a pseudo mask is one 2D array of values in [0, 1]; this one has shape "
                f"{mask.shape} and values {np.nanmin(mask) if mask.size else 'none'}..."
                f"{np.nanmax(mask) if mask.size else ''}"
            )
        resampled = zoom(
            mask.astype(np.float64),
            (shape[0] / mask.shape[0], shape[1] / mask.shape[1]),
            order=1,
            grid_mode=True,
            mode="nearest",
        )
        union = np.maximum(union, resampled)
    return union >= 0.5
