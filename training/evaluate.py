"""Score a saved model on any labelled file, with the same metrics and figures as a training run."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import metrics as M
from training.config import CleaningConfig
from training.data import load_split_file
from training.distill import predict_logits


@dataclass
class DataSpec:
    """What ``evaluate`` reads: a file (CSV/JSONL) or a TweetEval folder and which of its splits."""

    path: str
    format: str = "auto"
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, str] | None = None
    split: str = "test"
    clean: CleaningConfig | None = None


def training_cleaning(model_dir: Path) -> CleaningConfig | None:
    """Apply the cleaning the model was trained with, when the model says so."""
    info = model_dir / "training_run.json"
    if not info.exists():
        return None
    clean = json.loads(info.read_text()).get("config", {}).get("data", {}).get("clean")
    return CleaningConfig.model_validate(clean) if clean else None


def evaluate_model(
    model_dir: str | Path,
    data: DataSpec,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, macro recall, per-class scores and confusion matrix of ``model_dir`` on ``data``.

    With ``out_dir``: also ``metrics.json``, ``classification_report.txt`` and ``confusion_matrix.png`` there.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    cleaning = data.clean or training_cleaning(model_dir) or CleaningConfig()
    split = load_split_file(data.path, fmt=data.format, text_column=data.text_column,
                            label_column=data.label_column, label_map=data.label_map, cleaning=cleaning,
                            split=data.split)
    start = time.perf_counter()
    logits = predict_logits(model_dir, split.texts, max_length=max_length, batch_size=batch_size, desc="evaluate")
    preds = logits.argmax(-1)
    elapsed = time.perf_counter() - start
    result = M.classification_metrics(split.labels, preds)
    result["confusion_matrix"] = M.confusion(split.labels, preds)
    result["rows"] = len(split)
    result["samples_per_s"] = round(len(split) / elapsed, 1) if elapsed else None
    result["model_dir"] = str(model_dir)
    result["data"] = str(data.path)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (out / "classification_report.txt").write_text(M.report_text(split.labels, preds), encoding="utf-8")
        M.plot_confusion(result["confusion_matrix"], out / "confusion_matrix.png", f"{model_dir.name} on {data.path}")
    return result
