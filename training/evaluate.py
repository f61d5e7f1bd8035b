"""Score a saved model on any labelled file, with the same metrics and figures as a training run.

The model is loaded through the one predictor, built as the worker builds it (``predictor_from_settings``:
the model's own artifact plus ``SENTIMENT_MODEL__*``), and it gets the texts as the worker does: as they
are, the model's training cleaning applied by the predictor. So a score here is a score of what serves.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sentiment_model.artifact import RunInfo, find_model_dir, require_model_dir
from sentiment_model.cleaning import CleaningConfig
from sentiment_model.predictor import Predictor, predictor_from_settings
from sentiment_model.settings import ModelSettings, model_settings_from_env
from training import metrics as M
from training.config import DataConfig
from training.data import DataError, Split, load_dataset, load_split_file

RAW = CleaningConfig(whitespace=False)  # read texts as they are: the predictor applies the model's cleaning


@dataclass
class DataSpec:
    """What ``evaluate`` reads: a file (CSV/JSONL) or a TweetEval folder and which of its splits."""

    path: str
    format: str = "auto"
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, str] | None = None
    split: str = "test"
    clean: CleaningConfig | None = None  # extra cleaning before the predictor's own (default: none)


def serving_settings(model: ModelSettings | None, batch_size: int | None) -> ModelSettings:
    """The settings the worker serves with (``SENTIMENT_MODEL__*`` unless given), with an offline batch size."""
    settings = model or model_settings_from_env()
    if batch_size:
        settings = settings.model_copy(update={"batch_size": batch_size, "cuda_batch_size": batch_size})
    return settings


def evaluate_model(
    model_dir: str | Path,
    data: DataSpec,
    *,
    model: ModelSettings | None = None,
    batch_size: int | None = None,
    out_dir: str | Path | None = None,
    predictor: Predictor | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, macro recall, per-class scores and confusion matrix of ``model_dir`` on ``data``.

    ``model``: the serving settings (default: ``SENTIMENT_MODEL__*``); ``batch_size`` overrides theirs.
    ``predictor``: one already built from them. With ``out_dir``: also ``metrics.json``,
    ``classification_report.txt`` and ``confusion_matrix.png`` there.
    """
    model_dir = require_model_dir(model_dir)
    if predictor is None:
        predictor = predictor_from_settings(serving_settings(model, batch_size), model_dir)
    split = load_split_file(data.path, fmt=data.format, text_column=data.text_column,
                            label_column=data.label_column, label_map=data.label_map, cleaning=data.clean or RAW,
                            split=data.split)
    start = time.perf_counter()
    preds = predictor.predict_logits(split.texts).argmax(-1).numpy()
    elapsed = time.perf_counter() - start
    result = M.classification_metrics(split.labels, preds)
    result["confusion_matrix"] = M.confusion(split.labels, preds)
    result["rows"] = len(split)
    result["samples_per_s"] = round(len(split) / elapsed, 1) if elapsed else None
    result["model_dir"] = str(model_dir)
    result["data"] = str(data.path)
    result["serving_path"] = predictor.path
    result["max_length"] = predictor.max_length
    result["long_text"] = predictor.long_text.model_dump()
    seen = [predictor.clean(t) for t in split.texts] if predictor.clean else split.texts  # as the model reads them
    too_long = over_window(seen, predictor.tokenizer, predictor.max_length)
    result["by_window"] = window_scores(split.labels, preds, too_long)
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


def window_scores(labels: list[int], preds: np.ndarray, too_long: list[bool]) -> dict[str, dict[str, Any]]:
    """Texts over the window and the rest, scored apart: how long texts are read (``long_text``) shows only in
    the first, and a set of short texts would hide it."""
    out: dict[str, dict[str, Any]] = {}
    for name, want in (("over_window", True), ("within_window", False)):
        rows = [i for i, flag in enumerate(too_long) if flag is want]
        scores = M.classification_metrics([labels[i] for i in rows], np.asarray(preds)[rows]) if rows else {}
        out[name] = {"rows": len(rows), **{k: v for k, v in scores.items() if k != "per_class"}}
    return out


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


def evaluate_domains(model_dir: str | Path, data_cfg: DataConfig, *, model: ModelSettings | None = None,
                     batch_size: int | None = None) -> dict[str, dict[str, Any]]:
    """Score a saved model on the test split of every source of ``data_cfg`` (a mixture or one set).

    The splits are built exactly as training builds them, with the cleaning the model was trained with, so a
    model trained elsewhere (e.g. on TweetEval only) is compared on the very rows a mixture run reports. The
    model runs through the serving predictor (``model``: default ``SENTIMENT_MODEL__*``), as in ``evaluate_model``.
    """
    model_dir = find_model_dir(model_dir)
    cleaning = RunInfo.read(model_dir).cleaning or data_cfg.clean
    test = load_dataset(data_cfg.model_copy(update={"clean": cleaning})).test
    if not len(test):
        raise DataError("the data section has no test split to score; give data.test or a split with test > 0")
    if not test.domains:
        test = Split(test.texts, test.labels, ["data"] * len(test))
    predictor = predictor_from_settings(serving_settings(model, batch_size), model_dir)
    preds = predictor.predict_logits(test.texts).argmax(-1).numpy()
    too_long = over_window(test.texts, predictor.tokenizer, predictor.max_length)
    return domain_scores(test, preds, too_long)
