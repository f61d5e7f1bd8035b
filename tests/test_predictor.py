"""The shared predictor: batching and length-sorting never change a result; label mapping is explicit."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentiment_model.errors import UserError
from sentiment_model.labels import label_order
from sentiment_model.predictor import Predictor


def test_batched_length_sorted_predictions_equal_one_by_one(tiny_model: Path) -> None:
    predictor = Predictor(tiny_model, device="cpu", batch_size=4, threads=1, max_length=64)
    texts = ["love it", "terrible service and slow delivery " * 5, "ok", "", "the battery works great",
             "never again " * 40, "fine", "worst app"]
    batched = predictor.predict(texts)
    single = [predictor.predict([t])[0] for t in texts]
    for b, s in zip(batched, single, strict=True):
        assert b.label == s.label
        assert b.probs == pytest.approx(s.probs, abs=1e-5)
        assert sum(b.probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert b.score == max(b.probs.values())
    assert predictor.version == tiny_model.name
    assert predictor.predict([]) == []


def test_missing_model_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sentiment train"):
        Predictor(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("id2label", "expected"),
    [
        ({0: "negative", 1: "neutral", 2: "positive"}, ["negative", "neutral", "positive"]),
        ({0: "POSITIVE", 1: "NEGATIVE", 2: "NEUTRAL"}, ["positive", "negative", "neutral"]),
        ({0: "bad", 1: "neutral", 2: "good"}, ["negative", "neutral", "positive"]),
        ({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, ["negative", "neutral", "positive"]),
    ],
)
def test_label_order(id2label: dict[int, str], expected: list[str]) -> None:
    assert label_order(id2label) == expected


def test_label_order_rejects_unmappable_heads() -> None:
    with pytest.raises(UserError, match="cannot map"):
        label_order({0: "joy", 1: "anger", 2: "fear"})
    with pytest.raises(UserError, match="3-class"):
        label_order({0: "negative", 1: "positive"})


def test_serving_reads_the_window_the_model_was_trained_with(tiny_model: Path, tmp_path: Path) -> None:
    """No SENTIMENT_MODEL__MAX_LENGTH: the training record's max_length, else 128; a setting still wins."""
    import json
    import shutil

    from sentiment_model.artifact import RUN_INFO_FILE

    model = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    assert Predictor(model, device="cpu", threads=1).max_length == 128  # no training record
    (model / RUN_INFO_FILE).write_text(json.dumps({"run_id": "r", "config": {"max_length": 64}}), encoding="utf-8")
    assert Predictor(model, device="cpu", threads=1).max_length == 64
    assert Predictor(model, device="cpu", threads=1, max_length=32).max_length == 32
