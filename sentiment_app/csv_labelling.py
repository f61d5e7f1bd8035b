"""Offline labelling of a CSV with the model the workers serve (the `classify` command and the dashboard)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from sentiment_model.errors import UserError
from sentiment_model.predictor import Predictor, predictor_from_settings
from stream.serving import serving_model
from stream.settings import Settings


def load_predictor(settings: Settings, model_dir: Path | None = None) -> Predictor:
    """``model_dir``'s model, else the one the workers serve (``stream.serving.serving_model``)."""
    if model_dir is not None:
        return predictor_from_settings(settings.model, model_dir)
    ref, _ = serving_model(settings)
    return predictor_from_settings(settings.model, ref.artifact_dir, ref.version)


def classify_csv(predictor: Predictor, src: Path, dst: Path, text_col: str = "text", chunk: int = 256,
                 on_progress: Callable[[int], None] | None = None) -> int:
    """Append label, score and the three probabilities to every row; returns the rows written."""
    with src.open(encoding="utf-8", newline="") as fin, dst.open("w", encoding="utf-8", newline="") as fout:
        reader = csv.DictReader(fin)
        if reader.fieldnames is None or text_col not in reader.fieldnames:
            raise UserError(f"{src} has no column {text_col!r}; columns: {reader.fieldnames}")
        extra = ["label", "score", "p_negative", "p_neutral", "p_positive"]
        writer = csv.DictWriter(fout, fieldnames=[*reader.fieldnames, *extra])
        writer.writeheader()
        done = 0
        rows: list[dict[str, str]] = []
        for row in [*reader, None]:
            if row is not None:
                rows.append(row)
            if rows and (row is None or len(rows) >= chunk):
                for r, p in zip(rows, predictor.predict([r[text_col] or "" for r in rows]), strict=True):
                    writer.writerow({**r, "label": p.label, "score": f"{p.score:.4f}",
                                     **{f"p_{k}": f"{v:.4f}" for k, v in p.probs.items()}})
                done += len(rows)
                rows = []
                if on_progress:
                    on_progress(done)
    return done
