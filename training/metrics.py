"""Scores and figures. Macro-averaged recall is TweetEval's official sentiment metric; macro-F1 is ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
)

from sentiment_model.labels import LABELS

IDS = list(range(len(LABELS)))


def classification_metrics(labels: np.ndarray | list[int], preds: np.ndarray | list[int]) -> dict[str, Any]:
    """accuracy, macro_f1, macro_recall and per-class precision/recall/F1/support."""
    y, p = np.asarray(labels), np.asarray(preds)
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=IDS, zero_division=0)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y, p)),
        "macro_f1": float(f1_score(y, p, labels=IDS, average="macro", zero_division=0)),
        "macro_recall": float(recall_score(y, p, labels=IDS, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(LABELS)
        },
    }
    return out


def flat_metrics(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """The scalar metrics only (what ``Trainer`` logs per evaluation)."""
    m = classification_metrics(labels, preds)
    flat = {k: v for k, v in m.items() if k != "per_class"}
    for name, scores in m["per_class"].items():
        flat[f"f1_{name}"] = scores["f1"]
    return flat


def report_text(labels: np.ndarray | list[int], preds: np.ndarray | list[int]) -> str:
    return classification_report(labels, preds, labels=IDS, target_names=list(LABELS), digits=4, zero_division=0)


def confusion(labels: np.ndarray | list[int], preds: np.ndarray | list[int]) -> list[list[int]]:
    return confusion_matrix(labels, preds, labels=IDS).tolist()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: list[list[int]], path: Path, title: str) -> None:
    plt = _pyplot()
    cm = np.asarray(matrix)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(IDS, LABELS)
    ax.set_yticks(IDS, LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training loss and validation loss/metrics against optimizer steps."""
    plt = _pyplot()
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "eval_loss" not in h]
    evals = [h for h in history if "eval_loss" in h]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        ax1.plot(*zip(*train, strict=True), label="train loss", lw=1)
    if evals:
        ax1.plot([h["step"] for h in evals], [h["eval_loss"] for h in evals], "o-", label="validation loss")
        for key in ("eval_accuracy", "eval_macro_f1", "eval_macro_recall"):
            ax2.plot([h["step"] for h in evals], [h.get(key, np.nan) for h in evals], "o-",
                     label=key.removeprefix("eval_"))
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation score")
    ax2.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
