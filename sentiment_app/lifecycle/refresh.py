"""`sentiment refresh`: retrain on base data plus people's corrections, prove the candidate, gate it.

One refresh, start to finish (each step's output is in the refresh's run directory):

1. Feedback: every corrected review, with its latest correction (``storage.feedback``). A fixed slice
   (by a hash of the review id, so a review never moves between slices) is held out for evaluation.
2. Training set: the experiment's base data, where a corrected text *replaces* the base label of the
   same text (compared after cleaning, case and spacing folded), other corrections are added to train,
   and held-out texts are removed from every base split (no leak into training or model selection).
3. A candidate trained with the training package (``run_experiment``), published to the registry.
4. The candidate and the production model scored on the same fixed evaluation sets (the configured ones
   plus the feedback hold-out, named by its content hash so a changed slice is a new set).
5. Promotion through the gate (``sentiment_app.lifecycle.promotion``): recorded whether or not it passes;
   a promotion points ``models_dir/current`` at the new model, as ``sentiment models promote`` does.
6. ``report.md``: what data went in, both models' scores, the decision.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine

from sentiment_app.lifecycle import promotion
from sentiment_app.lifecycle.eval_sets import evaluator
from sentiment_model.cleaning import clean_text
from sentiment_model.labels import LABEL_TO_ID, LABELS
from storage import registry
from storage.feedback import CorrectedReview, corrected_reviews
from storage.registry import Evaluator
from storage.sampling import in_sample
from stream.settings import Settings
from training.config import ConfigError, ExperimentConfig, format_validation_error, load_config, read_yaml
from training.data import LabelledData, Split, dedup_key, load_dataset

log = logging.getLogger(__name__)


class FeedbackSlice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    holdout_share: float = Field(0.2, ge=0.0, lt=1.0, description="corrections kept out of training, for evaluation")


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eval_set: str | None = Field(None, description="the set promotion compares on; default: registry.eval_set")
    metric: Literal["macro_f1", "macro_recall", "accuracy"] = "macro_recall"
    margin: float = Field(0.0, description="candidate must score >= production + margin")


class RefreshConfig(BaseModel):
    """A refresh: which experiment to retrain, how to use feedback, how to judge the candidate."""

    model_config = ConfigDict(extra="forbid")

    name: str = "refresh"
    experiment: Path = Field(description="training config YAML (relative paths: from this file's folder)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted keys over the experiment")
    feedback: FeedbackSlice = Field(default_factory=FeedbackSlice)
    eval_sets: list[str] = Field(default_factory=list, description="fixed sets both models are scored on")
    gate: Gate = Field(default_factory=Gate)
    runs_dir: Path = Path("runs/refresh")


def load_refresh_config(path: str | Path) -> RefreshConfig:
    path = Path(path)
    try:
        config = RefreshConfig.model_validate(read_yaml(path))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None
    if not config.experiment.is_absolute():
        config.experiment = path.parent / config.experiment
    return config


@dataclass
class FeedbackCounts:
    corrections: int = 0  # corrected reviews (latest correction each)
    held_out: int = 0
    added_to_train: int = 0  # corrected texts not in the base data
    replaced_base_labels: int = 0  # base rows whose label a correction replaced
    base_rows_held_out: int = 0  # base rows removed because their text is in the hold-out
    changed_label: int = 0  # corrections that disagree with the model's own label


@dataclass
class MergedData:
    data: LabelledData
    train_feedback: list[CorrectedReview]
    holdout: list[CorrectedReview]
    counts: FeedbackCounts


def merge_feedback(base: LabelledData, feedback: list[CorrectedReview], config: ExperimentConfig,
                   holdout_share: float) -> MergedData:
    """Base data with corrections applied (see the module docstring for the rules)."""
    counts = FeedbackCounts(corrections=len(feedback),
                            changed_label=sum(f.label != f.model_label for f in feedback))
    clean = config.data.clean
    holdout: list[CorrectedReview] = []
    train_fb: list[CorrectedReview] = []
    for f in feedback:
        (holdout if in_sample(f.review_id, holdout_share) else train_fb).append(f)
    held_keys = {dedup_key(clean_text(f.text, clean)) for f in holdout}
    train_labels: dict[str, int] = {}  # key -> label id; for equal texts the latest correction wins
    texts: dict[str, str] = {}
    for f in sorted(train_fb, key=lambda f: f.corrected_at):
        text = clean_text(f.text, clean)
        key = dedup_key(text)
        if key and key not in held_keys:
            train_labels[key], texts[key] = LABEL_TO_ID[f.label], text
    counts.held_out = len(holdout)

    seen: set[str] = set()

    def apply(split: Split) -> Split:
        out = Split()
        for text, label in zip(split.texts, split.labels, strict=True):
            key = dedup_key(text)
            if key in held_keys:
                counts.base_rows_held_out += 1
                continue
            if key in train_labels:
                seen.add(key)
                counts.replaced_base_labels += label != train_labels[key]
                label = train_labels[key]
            out.texts.append(text)
            out.labels.append(label)
        return out

    train, validation, test = apply(base.train), apply(base.validation), apply(base.test)
    for key, label in train_labels.items():
        if key not in seen:
            train.texts.append(texts[key])
            train.labels.append(label)
            counts.added_to_train += 1
    notes = [*base.notes, f"feedback: {counts.corrections} corrected reviews, {counts.held_out} held out, "
             f"{counts.added_to_train} added to train, {counts.replaced_base_labels} base labels replaced"]
    return MergedData(LabelledData(train, validation, test, base.source, notes), train_fb, holdout, counts)


def write_rows(path: Path, rows: list[CorrectedReview]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review_id", "text", "label", "model_label", "corrected_at"])
        for r in rows:
            writer.writerow([r.review_id, r.text, r.label, r.model_label, r.corrected_at.isoformat()])
    return path


def holdout_eval_set(holdout: list[CorrectedReview], store_dir: Path) -> str | None:
    """The hold-out as a labelled CSV named by its content (scores are cached per set name)."""
    if not holdout:
        return None
    body = "\n".join(f"{r.review_id}\t{r.label}\t{r.text}" for r in sorted(holdout, key=lambda r: r.review_id))
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:12]
    path = store_dir / "eval-sets" / f"feedback-holdout-{digest}.csv"
    if not path.exists():
        write_rows(path, holdout)
    return str(path.resolve())


@dataclass
class RefreshResult:
    run_dir: Path
    candidate: str
    production_before: str | None
    promoted: bool
    reason: str
    gate_set: str
    metric: str
    counts: FeedbackCounts
    scores: dict[str, dict[str, dict[str, Any] | None]] = field(default_factory=dict)  # set -> version -> metrics
    report: Path | None = None


def run_refresh(config: RefreshConfig, settings: Settings, engine: Engine, run_id: str | None = None,
                evaluate: Evaluator | None = None) -> RefreshResult:
    """Train, publish, score and gate one candidate; returns what happened (also in ``report.md``).

    ``settings``: the model store, the default gate set, the serving settings the evaluator uses and the
    ``models_dir`` whose ``current`` link follows a promotion. ``evaluate``: default ``eval_sets.evaluator``.
    """
    from training.train import run_experiment

    evaluate = evaluate or evaluator(settings.model)
    store_dir = settings.model_store()

    started = datetime.now(UTC)
    experiment = load_config(config.experiment, config.overrides)
    feedback = corrected_reviews(engine)
    log.info("refresh %s: %d corrected reviews in Postgres", config.name, len(feedback))
    merged = merge_feedback(load_dataset(experiment.data), feedback, experiment, config.feedback.holdout_share)
    result = run_experiment(experiment, run_root=config.runs_dir, run_id=run_id, data=merged.data)
    write_rows(result.run_dir / "feedback_train.csv", merged.train_feedback)
    write_rows(result.run_dir / "feedback_holdout.csv", merged.holdout)

    gate_set = config.gate.eval_set or settings.registry.eval_set
    holdout_set = holdout_eval_set(merged.holdout, store_dir)
    eval_sets = list(dict.fromkeys([gate_set, *config.eval_sets, *([holdout_set] if holdout_set else [])]))
    production = registry.production(engine, store_dir)
    candidate = promotion.publish(settings, engine, result.run_dir, gate_set, evaluate=evaluate)
    scores: dict[str, dict[str, dict[str, Any] | None]] = {}
    for eval_set in eval_sets:
        scores[eval_set] = {}
        for ref in (registry.ModelRef(candidate.version, candidate.artifact_dir), production):
            if ref is None:
                continue
            try:
                registry.score(engine, ref, eval_set, config.gate.metric, evaluate, store_dir)
                scores[eval_set][ref.version] = registry.evaluation(engine, ref.version, eval_set)
            except registry.RegistryError as e:
                log.warning("cannot score %s on %s: %s", ref.version, eval_set, e)
                scores[eval_set][ref.version] = None
    decision = promotion.promote(settings, engine, candidate.version, eval_set=gate_set, metric=config.gate.metric,
                                 margin=config.gate.margin, evaluate=evaluate)
    out = RefreshResult(result.run_dir, candidate.version, decision.production_before, decision.promoted,
                        decision.reason, gate_set, config.gate.metric, merged.counts, scores)
    out.report = write_report(out, config, merged, started)
    return out


def _fmt(metrics: dict[str, Any] | None, key: str) -> str:
    return f"{metrics[key]:.4f}" if metrics and key in metrics else "-"


def write_report(r: RefreshResult, config: RefreshConfig, merged: MergedData, started: datetime) -> Path:
    """One page: the data that went in, both models on every fixed set, the decision."""
    c = r.counts
    data = merged.data
    lines = [
        f"# Refresh `{config.name}`: candidate `{r.candidate}` {'PROMOTED' if r.promoted else 'not promoted'}",
        "",
        f"Started {started:%Y-%m-%d %H:%M} UTC, finished {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        f"Experiment `{config.experiment}`; run directory `{r.run_dir}`.",
        "",
        f"**Decision**: {r.reason} (gate: {r.metric} on `{Path(r.gate_set).name}`, "
        f"margin {config.gate.margin:g}). Production before: `{r.production_before or 'none'}`; "
        f"production now: `{r.candidate if r.promoted else r.production_before or 'none'}`.",
        "",
        "## Data",
        "",
        "| | rows |",
        "| --- | ---: |",
        f"| corrected reviews (latest correction each) | {c.corrections} |",
        f"| ... disagreeing with the model's label | {c.changed_label} |",
        f"| ... held out for evaluation (share {config.feedback.holdout_share:g}) | {c.held_out} |",
        f"| ... added to train | {c.added_to_train} |",
        f"| base rows whose label a correction replaced | {c.replaced_base_labels} |",
        f"| base rows removed (text in the hold-out) | {c.base_rows_held_out} |",
        *(f"| {name} split used | {len(split)} ({', '.join(f'{k} {v}' for k, v in split.counts().items())}) |"
          for name, split in data.splits().items()),
        "",
        "## Scores on the fixed evaluation sets",
        "",
        "| evaluation set | model | accuracy | macro-F1 | macro recall |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for eval_set, by_version in r.scores.items():
        for version, metrics in by_version.items():
            role = "candidate" if version == r.candidate else "production"
            lines.append(f"| `{Path(eval_set).name}` | {role} `{version}` | {_fmt(metrics, 'accuracy')} | "
                         f"{_fmt(metrics, 'macro_f1')} | {_fmt(metrics, 'macro_recall')} |")
    lines += ["", "Per-class recall of the candidate on each set:", ""]
    for eval_set, by_version in r.scores.items():
        metrics = by_version.get(r.candidate) or {}
        per_class = metrics.get("per_class") or {}
        recalls = ", ".join(f"{k} {per_class[k]['recall']:.3f}" for k in LABELS if k in per_class)
        lines.append(f"- `{Path(eval_set).name}`: {recalls or '-'}")
    path = r.run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = asdict(r) | {"run_dir": str(r.run_dir), "report": str(path)}
    (r.run_dir / "refresh.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return path
