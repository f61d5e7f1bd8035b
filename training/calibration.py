"""Temperature scaling: one number T, fitted on the validation split, so a score of 0.9 means right ~90% of the time.

Fine-tuned classifiers are over-confident (Guo et al. 2017, "On Calibration of Modern Neural Networks"); dividing
the logits by one T > 0 before the softmax fixes most of it and never changes the argmax, so labels and
accuracy stay as they are. T minimises the negative log-likelihood on validation logits; it is saved in the
model's ``training_run.json`` (``calibration``) and the predictor applies it in ``predict_probs``.

ECE (expected calibration error) here: 15 equal-width bins on the top-class probability, the sum over bins
of |accuracy - mean confidence| weighted by the bin's share of rows (0 = perfectly calibrated, 1 = worst).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sentiment_model.artifact import RunInfo, find_model_dir, write_calibration
from sentiment_model.errors import UserError
from sentiment_model.predictor import predictor_from_settings
from sentiment_model.profile import ReferenceProfile
from sentiment_model.settings import ModelSettings
from training.config import ExperimentConfig, config_from_dict
from training.data import load_dataset, load_split_file
from training.evaluate import RAW, DataSpec, serving_settings
from training.metrics import _pyplot

BINS = 15
T_MIN, T_MAX = 1e-2, 1e2  # the search range; a fit at either end means the logits carry (almost) no signal
MIN_ROWS = 50  # fewer validation rows than this, or none of them wrong: T is not fitted (kept at 1)
RELIABILITY_PNG = "reliability.png"
CALIBRATION_JSON = "calibration.json"


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],) or not len(y):
        raise ValueError(f"need logits (n, classes) and n labels, n > 0; got {z.shape} and {y.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinity")
    if (y < 0).any() or (y >= z.shape[1]).any():
        raise ValueError(f"labels must lie in 0..{z.shape[1] - 1}")
    return z, y


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    return _nll(*_check(logits, labels), temperature)


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """``nll`` on inputs ``_check`` has passed (the fit evaluates it ~200 times on the same arrays)."""
    z = z / temperature
    m = z.max(axis=1)
    log_norm = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 100) -> float:
    """The T in [T_MIN, T_MAX] that minimises the validation NLL: golden-section search on log T.

    The NLL is convex in 1/T, so it has one minimum along log T and the search is exact and deterministic
    (no learning rate, no random start); 100 steps shrink the interval by 0.618^100.
    """
    z, y = _check(logits, labels)

    def loss(u: float) -> float:
        return _nll(z, y, math.exp(u))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of top-class probability ((0, 1/bins], ..., (1 - 1/bins, 1]): mean confidence,
    accuracy and row count (NaN confidence/accuracy for an empty bin)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, bins) / count
        acc = np.bincount(idx, hit, bins) / count
    return mean_conf, acc, count


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: sum over equal-width top-class-probability bins of share * |acc - conf|."""
    conf, acc, count = reliability_bins(probs, labels, bins)
    full = count > 0
    return float(np.sum(count[full] / count.sum() * np.abs(acc[full] - conf[full])))


@dataclass
class Calibration:
    """T and what it did: ECE and NLL before (T = 1) and after, on validation and any held-out split."""

    temperature: float
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> rows, ece/nll before/after
    data: dict[str, str] = field(default_factory=dict)  # split -> where its rows came from, when known
    note: str | None = None  # why T was not fitted, when it was not

    def record(self) -> dict[str, Any]:
        """The ``calibration`` entry of ``training_run.json`` (the predictor reads ``temperature``)."""
        return {"method": "temperature scaling", "temperature": self.temperature, "fitted_on": "validation",
                "ece_bins": BINS, "scores": self.scores, **({"data": self.data} if self.data else {}),
                **({"note": self.note} if self.note else {})}

    def flat(self) -> dict[str, float | None]:
        """The tracker's columns: temperature and ECE before/after on validation and test."""
        out: dict[str, float | None] = {"temperature": self.temperature}
        for split, prefix in (("validation", "val"), ("test", "test")):
            s = self.scores.get(split, {})
            out[f"{prefix}_ece_before"], out[f"{prefix}_ece_after"] = s.get("ece_before"), s.get("ece_after")
        return out


def calibrate(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Calibration:
    """Fit T on ``splits["validation"]`` (logits, labels); score every split before and after.

    A validation split with no wrong prediction (or too few rows) cannot fix T: its NLL keeps falling as T -> 0,
    and the "fit" would make every score 1.0, the over-confidence this exists to remove. T stays 1 then.
    """
    logits, labels = _check(*splits["validation"])
    wrong = int((logits.argmax(axis=1) != labels).sum())
    note = None
    if len(labels) < MIN_ROWS or wrong == 0:
        temperature = 1.0
        note = (f"not fitted (T = 1): validation has {len(labels)} rows, {wrong} predicted wrong; temperature "
                f"scaling needs >= {MIN_ROWS} rows and some errors")
    else:
        temperature = fit_temperature(logits, labels)
    scores = {}
    for name, (logits, labels) in splits.items():
        scores[name] = {"rows": int(len(labels)), "ece_before": ece(softmax(logits), labels),
                        "ece_after": ece(softmax(logits, temperature), labels),
                        "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, temperature)}
    return Calibration(temperature, scores, note=note)


def plot_reliability(splits: dict[str, tuple[np.ndarray, np.ndarray]], temperature: float, path: Path,
                     title: str, sources: dict[str, str] | None = None) -> Path:
    """One panel per split: accuracy against mean confidence per bin, before (T = 1) and after scaling, over
    grey bars of the share of rows per bin (after), which says which points carry weight."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(splits), figsize=(4.6 * len(splits), 4.6), squeeze=False)
    for ax, (name, (logits, labels)) in zip(axes[0], splits.items(), strict=True):
        _, _, count = reliability_bins(softmax(logits, temperature), labels)
        ax.bar((np.arange(BINS) + 0.5) / BINS, count / count.sum(), width=1 / BINS, color="lightgrey",
               edgecolor="white", label="share of rows (after)")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
        for t, what, style in ((1.0, "before (T = 1)", "o-"), (temperature, f"after (T = {temperature:.2f})", "s-")):
            probs = softmax(logits, t)
            conf, acc, count = reliability_bins(probs, labels)
            full = count > 0
            ax.plot(conf[full], acc[full], style, ms=4, label=f"{what}: ECE {ece(probs, labels):.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.03)
        ax.set_xlabel(f"confidence (top-class probability, {BINS} bins)")
        ax.set_ylabel("accuracy")
        source = (sources or {}).get(name)
        ax.set_title(f"{name}{f': {Path(source).name}' if source else ''} (n={len(labels)})", fontsize=10)
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_calibration(cal: Calibration, model_dir: Path, out_dir: Path,
                     splits: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
    """Save T in the model (atomically) and write ``calibration.json`` and ``reliability.png`` to ``out_dir``.

    The drift reference's mean confidence is recomputed under T: serving applies T, so the reference must
    too, or calibrating alone would read as drift.
    """
    write_calibration(model_dir, cal.record())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CALIBRATION_JSON).write_text(json.dumps(cal.record(), indent=2) + "\n", encoding="utf-8")
    plot_reliability(splits, cal.temperature, out_dir / RELIABILITY_PNG, title, cal.data)
    old = ReferenceProfile.read(model_dir)
    if old is not None and old.source == "validation":
        new = ReferenceProfile.from_probabilities(softmax(splits["validation"][0], cal.temperature).tolist())
        ReferenceProfile(new.label_mix, new.mean_confidence, new.rows, old.source, old.training_label_mix
                         ).write(model_dir)


def output_dir(path: Path, model_dir: Path) -> Path:
    """Where a run's figures go: the run directory (``runs/<run_id>``, beside ``confusion_matrix.png``) when
    ``model_dir`` is a run's ``model/``, else the model directory itself."""
    if model_dir.name == "model" and (model_dir.parent / "config.yaml").exists():
        return model_dir.parent
    return Path(path)


def recorded_config(model_dir: Path) -> ExperimentConfig:
    """The experiment config the model was trained with (``training_run.json``), to rebuild its splits."""
    cfg = dict(RunInfo.read(model_dir).config)
    if not cfg:
        raise UserError(f"{model_dir}: no training config recorded (no training_run.json config); give "
                        "--config CFG, the experiment YAML whose data section holds the validation split")
    cfg.pop("resolved_base_model", None)
    return config_from_dict(cfg, f"{model_dir}/training_run.json config")


def calibrate_saved_model(path: Path, config: ExperimentConfig | None = None, held_out: DataSpec | None = None,
                          *, model: ModelSettings | None = None, batch_size: int | None = None
                          ) -> tuple[Calibration, Path]:
    """Fit T for a saved model (a run or model directory) without retraining, through the serving predictor.

    Validation (and test) come from ``config``'s data section (default: the config the model was trained
    with), built as training builds them; ``held_out`` replaces the config's test split (e.g. a hand-labelled
    file). T goes into the model's ``training_run.json``; ``calibration.json`` and ``reliability.png`` into the
    run directory. Returns the calibration and that directory.
    """
    model_dir = find_model_dir(path)
    cfg = config or recorded_config(model_dir)
    cleaning = RunInfo.read(model_dir).cleaning or cfg.data.clean
    data = load_dataset(cfg.data.model_copy(update={"clean": cleaning}))
    where = str(cfg.data.path or cfg.data.validation or "the config's data sources")
    named = {"validation": (data.validation, where)}
    if held_out is not None:
        named["test"] = (load_split_file(held_out.path, fmt=held_out.format, text_column=held_out.text_column,
                                         label_column=held_out.label_column, label_map=held_out.label_map,
                                         cleaning=held_out.clean or RAW, split=held_out.split), str(held_out.path))
    elif len(data.test):
        named["test"] = (data.test, str(cfg.data.path or cfg.data.test or "the config's data sources"))
    predictor = predictor_from_settings(serving_settings(model, batch_size), model_dir)
    splits = {name: (predictor.predict_logits(split.texts).numpy(), np.asarray(split.labels))
              for name, (split, _) in named.items()}
    cal = calibrate(splits)
    cal.data = {name: source for name, (_, source) in named.items()}
    out_dir = output_dir(path, model_dir)
    save_calibration(cal, model_dir, out_dir, splits, f"{cfg.name} ({model_dir}): reliability")
    return cal, out_dir
