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
    "label_smoothing", "clean", "distill", "sources", "seed", "train_rows",
    "steps", "best_step", "val_macro_recall", "val_macro_f1", "test_accuracy", "test_macro_f1",
    "test_macro_recall", "temperature", "val_ece_before", "val_ece_after", "test_ece_before", "test_ece_after",
    "train_samples_per_s", "train_time_s", "wall_time_s", "device", "run_dir",
]  # temperature, *_ece_*: training.calibration (blank in rows written before it)
MAIN_METRICS = ("test_accuracy", "test_macro_f1", "test_macro_recall")
# One row per (run, split, domain): a mixture run's sources scored one by one, or any model scored on the
# test splits of a mixture config (`sentiment domains`), so models trained on different data compare per domain.
DOMAIN_COLUMNS = ["run_id", "name", "seed", "split", "domain", "rows", "over_window", "accuracy", "macro_f1",
                  "macro_recall", "scored_on"]


def append_row(csv_path: Path, row: dict[str, Any], columns: list[str] = COLUMNS) -> None:
    """Append one run; the header is written when the file is new. Unknown keys are ignored.

    A file written before a column was added is rewritten once under the current header (old rows get
    blanks there), so a row never lands under the wrong column.
    """
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    if not new:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        if header != columns:
            old = read_runs(csv_path)
            with csv_path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(old)
    with csv_path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k)) for k in columns})


def domains_csv(csv_path: Path) -> Path:
    """The per-domain table kept beside a tracker CSV (``experiments.csv`` -> ``experiments_domains.csv``)."""
    return csv_path.with_name(f"{csv_path.stem}_domains.csv")


def append_domain_rows(csv_path: Path, run: dict[str, Any], scores: dict[str, dict[str, dict[str, Any]]],
                       scored_on: str = "") -> None:
    """``scores``: split -> domain -> metrics (``training.evaluate.domain_scores``); ``run``: run_id, name, seed."""
    for split, per_domain in scores.items():
        for domain, m in per_domain.items():
            append_row(domains_csv(csv_path), {**run, "split": split, "domain": domain, "scored_on": scored_on,
                                               **{k: m.get(k) for k in DOMAIN_COLUMNS[5:10]}}, DOMAIN_COLUMNS)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def domain_table_rows(rows: list[dict[str, Any]], run_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Test rows of the per-domain tracker, grouped by domain so the models sit beside each other, then one
    ``mean`` row per run over its domains (each domain counts once, whatever its size)."""
    tests = [r for r in rows if r.get("split") == "test" and (run_ids is None or r["run_id"] in run_ids)]
    latest = {(r["run_id"], r["domain"]): r for r in tests}  # a model scored twice: its latest figures
    domains = list(dict.fromkeys(r["domain"] for r in latest.values()))
    out = [r for d in domains for r in latest.values() if r["domain"] == d]
    for run_id in dict.fromkeys(r["run_id"] for r in out):
        mine = [r for r in out if r["run_id"] == run_id]
        if len(mine) > 1:
            out.append({**mine[0], "domain": f"mean ({len(mine)} domains)", "rows": "", "over_window": "",
                        **{k: sum(float(r[k]) for r in mine) / len(mine) for k in ("macro_f1", "macro_recall",
                                                                                   "accuracy")}})
    return out


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
