"""Temperature scaling: the fit, the ECE, the artifact entry and the predictor applying it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sentiment_model.artifact import RUN_INFO_FILE, RunInfo, write_calibration, write_run_info
from sentiment_model.errors import UserError
from sentiment_model.predictor import Predictor
from training.calibration import T_MAX, T_MIN, calibrate, ece, fit_temperature, nll, softmax

TEXTS = ["love it", "terrible service and slow delivery", "ok", "the battery works great", "worst app", "fine"]


def sampled_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's probabilities: a perfectly calibrated set by construction."""
    u = rng.random(len(probs))[:, None]
    return (u > probs.cumsum(axis=1)).sum(axis=1).clip(0, probs.shape[1] - 1)


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_a_known_temperature(true_t: float) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20_000, 3))
    labels = sampled_labels(softmax(logits, true_t), rng)  # calibrated at true_t, so the fit must find it
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    assert nll(logits, labels, t) <= min(nll(logits, labels, t * 1.1), nll(logits, labels, t / 1.1))
    assert fit_temperature(logits, labels) == t  # deterministic


def test_ece_of_a_perfectly_calibrated_set_is_about_zero_and_of_an_overconfident_one_is_not() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(100_000, 3))
    labels = sampled_labels(softmax(logits), rng)
    assert ece(softmax(logits), labels) < 0.01
    assert ece(softmax(logits, 0.3), labels) > 0.1  # the same set, sharpened: over-confident
    cal = calibrate({"validation": (logits * 3, labels)})  # logits 3x too large: T ~ 3 undoes it
    assert cal.temperature == pytest.approx(3, rel=0.05)
    assert cal.scores["validation"]["ece_after"] < 0.01 < cal.scores["validation"]["ece_before"]


def test_ece_by_hand() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.2, 0.7, 0.1]])
    labels = np.array([0, 1, 1, 1])  # bin of 0.9: accuracy 0.5; bin of 0.7: accuracy 1.0
    assert ece(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.3)


finite = st.floats(-50, 50, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 40), k=st.integers(2, 5))
def test_ece_in_unit_interval_and_fit_always_a_positive_finite_temperature(data: st.DataObject, n: int,
                                                                          k: int) -> None:
    logits = data.draw(arrays(np.float64, (n, k), elements=finite))
    labels = data.draw(arrays(np.int64, n, elements=st.integers(0, k - 1)))
    t = fit_temperature(logits, labels)
    assert math.isfinite(t) and T_MIN <= t <= T_MAX
    for temp in (1.0, t):
        assert 0.0 <= ece(softmax(logits, temp), labels) <= 1.0
        assert math.isfinite(nll(logits, labels, temp))


def test_fit_refuses_nan_logits_and_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[0.0, np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def test_a_validation_split_without_errors_or_rows_keeps_t_at_one() -> None:
    """Perfectly separated validation logits: the NLL falls as T -> 0, so a fit would make every score 1.0."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    separable = np.eye(3)[labels] * 4.0 + rng.normal(0, 0.1, (200, 3))
    assert fit_temperature(separable, labels) < 0.1  # what the bare fit would serve
    cal = calibrate({"validation": (separable, labels)})
    assert cal.temperature == 1.0 and "not fitted" in cal.note and cal.record()["note"] == cal.note
    few = calibrate({"validation": (separable[:20], (labels[:20] + 1) % 3)})
    assert few.temperature == 1.0 and few.note
    noisy = separable.copy()
    noisy[:40] = rng.normal(0, 1, (40, 3))
    assert calibrate({"validation": (noisy, labels)}).note is None


def test_predictor_applies_temperature_to_probabilities_never_to_labels(model_copy: Path) -> None:
    raw = Predictor(model_copy, device="cpu", threads=1)
    assert raw.temperature == 1.0 and not (model_copy / RUN_INFO_FILE).exists()  # no record: T = 1
    logits = raw.predict_logits(TEXTS)
    assert torch.allclose(raw.predict_probs(TEXTS), torch.softmax(logits, -1), atol=1e-6)

    write_run_info(model_copy, {"run_id": "r1", "config": {"name": "x"}})
    write_calibration(model_copy, {"temperature": 2.5})
    assert json.loads((model_copy / RUN_INFO_FILE).read_text())["run_id"] == "r1"  # the rest of the record kept
    assert [p.name for p in model_copy.glob(".*tmp")] == []
    scaled = Predictor(model_copy, device="cpu", threads=1)
    assert scaled.temperature == 2.5
    assert torch.equal(scaled.predict_logits(TEXTS), logits)  # evaluation and distillation see raw logits
    probs = scaled.predict_probs(TEXTS)
    assert torch.allclose(probs, torch.softmax(logits / 2.5, -1), atol=1e-6)
    assert not torch.allclose(probs, torch.softmax(logits, -1), atol=1e-4)
    assert [p.label for p in scaled.predict(TEXTS)] == [p.label for p in raw.predict(TEXTS)]
    assert max(p.score for p in scaled.predict(TEXTS)) < max(p.score for p in raw.predict(TEXTS))


@pytest.mark.parametrize("entry", [{"temperature": -1}, {"temperature": "hot"}, {"temperature": float("nan")},
                                   {"temperature": True}, "not an object", {"temperature": 0}])
def test_a_bad_temperature_serves_at_one(tmp_path: Path, entry: object) -> None:
    write_run_info(tmp_path, {"run_id": "r1", "calibration": entry})
    assert RunInfo.read(tmp_path).temperature == 1.0
    assert RunInfo.read(tmp_path).run_id == "r1"


def test_write_calibration_refuses_an_unreadable_record(tmp_path: Path) -> None:
    (tmp_path / RUN_INFO_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        write_calibration(tmp_path, {"temperature": 2.0})
    assert (tmp_path / RUN_INFO_FILE).read_text() == "{not json"  # left as it was
