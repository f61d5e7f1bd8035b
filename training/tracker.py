"""Experiment tracker: one CSV row per finished run, so runs can be compared without opening run dirs.

A CSV (not a database) because it diffs, greps and opens in any spreadsheet; MLflow is optional on top.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from sentiment_model.errors import UserError

COLUMNS = [
    "run_id", "finished_at", "name", "base_model", "max_length", "batch_size", "grad_accum", "learning_rate",
    "scheduler", "warmup", "epochs", "max_steps", "freeze_layers", "class_weights", "pooling", "layer_lr_decay",
    "label_smoothing", "clean", "distill", "seed", "train_rows",
    "steps", "best_step", "val_macro_recall", "val_macro_f1", "test_accuracy", "test_macro_f1",
    "test_macro_recall", "train_samples_per_s", "train_time_s", "wall_time_s", "device", "run_dir",
]
MAIN_METRICS = ("test_accuracy", "test_macro_f1", "test_macro_recall")


def append_row(csv_path: Path, row: dict[str, Any]) -> None:
    """Append one run; the header is written when the file is new. Unknown keys are ignored.

    A file written before a column was added is rewritten once under the current header (old rows get
    blanks there), so a row never lands under the wrong column.
    """
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    if not new:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        if header != COLUMNS:
            old = read_runs(csv_path)
            with csv_path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(old)
    with csv_path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def read_runs(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.exists():
        return []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def plot_runs(rows: list[dict[str, str]], path: Path, metrics: tuple[str, ...] = MAIN_METRICS) -> Path:
    """Grouped bar chart of the main test metrics, one group per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not rows:
        raise UserError("no runs to plot; train one first (`sentiment train CONFIG.yaml`)")
    labels = [f"{r['name']}\n{r['run_id'][:15]}" for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.5))
    for i, metric in enumerate(metrics):
        values = [float(r[metric]) if r.get(metric) else np.nan for r in rows]
        bars = ax.bar(x + (i - (len(metrics) - 1) / 2) * width, values, width, label=metric.removeprefix("test_"))
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(x, labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test score")
    ax.set_title("Experiments: test metrics per run")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
