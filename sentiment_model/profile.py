"""The drift reference a model carries (``reference_profile.json``), written by training, read by the worker.

What the model predicts on data like its training data (its validation split): the label mix and the mean
top-class probability. ``stream.drift`` compares live hours with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sentiment_model.labels import LABELS

PROFILE_FILE = "reference_profile.json"


@dataclass(frozen=True)
class ReferenceProfile:
    """What the model predicts on data like its training data (written next to the model by training)."""

    label_mix: dict[str, float]
    mean_confidence: float
    rows: int
    source: str = "validation"
    training_label_mix: dict[str, float] | None = None

    @classmethod
    def from_probabilities(cls, probs: Sequence[Sequence[float]], labels: Sequence[str] = LABELS,
                           training_counts: dict[str, int] | None = None, source: str = "validation"
                           ) -> ReferenceProfile:
        """From class probabilities (rows in ``labels`` order) on held-out data like the training data."""
        counts = dict.fromkeys(labels, 0)
        confidence = 0.0
        for row in probs:
            best = max(range(len(labels)), key=lambda i: row[i])
            counts[labels[best]] += 1
            confidence += float(row[best])
        n = max(len(probs), 1)
        train_total = sum((training_counts or {}).values())
        return cls({k: v / n for k, v in counts.items()}, confidence / n, len(probs), source,
                   {k: v / train_total for k, v in training_counts.items()} if training_counts and train_total
                   else None)

    def write(self, model_dir: Path) -> Path:
        path = Path(model_dir) / PROFILE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, model_dir: Path) -> ReferenceProfile | None:
        path = Path(model_dir) / PROFILE_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text(encoding="utf-8")))
