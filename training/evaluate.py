"""Score a saved model on any labelled file, with the same metrics and figures as a training run."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training import metrics as M
from training.config import CleaningConfig, DataConfig
from training.data import Split, load_dataset, load_split_file
from training.distill import model_dir_of, predict_logits, trained_max_length


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


def over_window(texts: list[str], tokenizer: Any, max_length: int) -> list[bool]:
    """Which texts have more tokens (special tokens included) than the model reads: their ends are cut off."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]] if texts else []
    return [n > max_length for n in lengths]


def domain_scores(split: Split, preds: np.ndarray | list[int], too_long: list[bool]) -> dict[str, dict[str, Any]]:
    """Metrics per source of a mixed split (domain -> rows, over_window, accuracy, macro-F1, macro recall, ...).

    A mixture's pooled score is dominated by its biggest test set; each domain's own row is what users meet.
    """
    preds = np.asarray(preds)
    out: dict[str, dict[str, Any]] = {}
    for name, rows in split.domain_rows().items():
        labels = [split.labels[i] for i in rows]
        out[name] = {"rows": len(rows), "over_window": int(sum(too_long[i] for i in rows)),
                     **M.classification_metrics(labels, preds[rows])}
    return out


def evaluate_domains(model_dir: str | Path, data_cfg: DataConfig, *, batch_size: int = 64,
                     max_length: int | None = None) -> dict[str, dict[str, Any]]:
    """Score a saved model on the test split of every source of ``data_cfg`` (a mixture or one set).

    The splits are built exactly as training builds them, with the cleaning the model was trained with, so a
    model trained elsewhere (e.g. on TweetEval only) is compared on the very rows a mixture run reports.
    """
    from transformers import AutoTokenizer

    model_dir = model_dir_of(model_dir)
    cleaning = training_cleaning(model_dir) or data_cfg.clean
    test = load_dataset(data_cfg.model_copy(update={"clean": cleaning})).test
    if not len(test):
        raise ValueError("the data section has no test split to score; give data.test or a split with test > 0")
    if not test.domains:
        test = Split(test.texts, test.labels, ["data"] * len(test))
    max_length = max_length or trained_max_length(model_dir)
    logits = predict_logits(model_dir, test.texts, max_length=max_length, batch_size=batch_size, desc="domains")
    too_long = over_window(test.texts, AutoTokenizer.from_pretrained(model_dir), max_length)
    return domain_scores(test, logits.argmax(-1), too_long)
