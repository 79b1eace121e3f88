"""Which counterfactuals are kept: edits that did not do what was asked are dropped (RadEdit Sec. 4.4).

Two judges, both independent of the model under test:

- ``EditingScoreFilter``: RadEdit's own, the BioViL-T editing score
  S = cos(E_I(edit) - E_I(real), E_T(edit text) - E_T(real text)), kept when S >= 0.2, with any
  image-text encoder that keeps ``metrics.ImageTextEncoder``'s contract (``--filter-encoder
  module:function``; ``napari_medit.stress.biovil:biovil_t`` wraps Microsoft's hi-ml-multimodal).
- ``ClassifierFilter``: a findings classifier (``demo-cxr-findings`` by default), with the rule
  ``ScenarioSpec.kept`` states: a removal must be called negative, an addition must have raised the
  finding's probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import EDITING_SCORE_THRESHOLD, ImageTextEncoder, editing_score
from .scenarios import ScenarioSpec


@dataclass
class ClassifierFilter:
    classifier: Any  # napari_medit.findings.FindingsClassifier
    spec: ScenarioSpec
    threshold: float

    def describe(self) -> dict:
        return {
            "kind": "classifier",
            "judge": self.classifier.name,
            "finding": self.spec.finding,
            "threshold": self.threshold,
            "keeps": self.spec.filter_rule(self.threshold),
        }

    def judge(self, source: np.ndarray, edited: np.ndarray) -> dict:
        before, after = (
            self.classifier.probabilities(image)[self.spec.finding] for image in (source, edited)
        )
        return {
            "filter_probability_original": round(before, 4),
            "filter_probability": round(after, 4),
            "filter_says": f"p={after:.2f} (was {before:.2f})",
            "kept": self.spec.kept(before, after, self.threshold),
        }


@dataclass
class EditingScoreFilter:
    encoder: ImageTextEncoder
    name: str
    spec: ScenarioSpec
    threshold: float = EDITING_SCORE_THRESHOLD

    def describe(self) -> dict:
        return {
            "kind": "editing score",
            "judge": self.name,
            "real_text": self.spec.source_text,
            "edit_text": self.spec.prompt,
            "threshold": self.threshold,
            "keeps": (
                f"editing score S('{self.spec.source_text}' -> '{self.spec.prompt}') >= {self.threshold}"
            ),
        }

    def judge(self, source: np.ndarray, edited: np.ndarray) -> dict:
        score = editing_score(self.encoder, source, edited, self.spec.source_text, self.spec.prompt)
        # NaN (no change at all) is never kept
        return {
            "editing_score": round(score, 4) if np.isfinite(score) else score,
            "filter_says": f"S={score:.2f}",
            "kept": bool(score >= self.threshold),
        }


def load_encoder(spec: str) -> ImageTextEncoder:
    """``module:function`` returning an image-text encoder (``embed_images``, ``embed_texts``)."""
    from .models import ModelUnderTestError, import_callable

    encoder = import_callable(spec, "image-text encoder", "an image-text encoder")()
    missing = [name for name in ("embed_images", "embed_texts") if not callable(getattr(encoder, name, None))]
    if missing:
        raise ModelUnderTestError(
            f"image-text encoder {spec!r}: it has no {' or '.join(missing)}; it must offer "
            "embed_images(images) -> (N, D) and embed_texts(texts) -> (N, D)"
        )
    return encoder
