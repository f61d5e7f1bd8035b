"""The demo model (`configs/demo.yaml`, what `make demo` trains when no model is registered) must be right on
obvious reviews it never saw: the demo's own reviews (gold label `expected` in examples/reviews.jsonl) and
tests/data/obvious_reviews.csv, a hand-written held-out set. Trains the real MiniLM once (a few minutes).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sentiment_model.labels import LABELS
from sentiment_model.predictor import Predictor
from training.config import load_config
from training.data import dedup_key, load_dataset
from training.train import run_experiment

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
DEMO_REVIEWS = REPO / "examples" / "reviews.jsonl"
OBVIOUS = REPO / "tests" / "data" / "obvious_reviews.csv"

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def demo_reviews() -> list[tuple[str, str]]:
    """(text, expected) for every demo line that carries a gold label; the deliberately broken lines carry none."""
    pairs = []
    for line in DEMO_REVIEWS.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "expected" in event:
            pairs.append((event["text"], event["expected"]))
    return pairs


def obvious_reviews() -> list[tuple[str, str]]:
    with OBVIOUS.open(encoding="utf-8", newline="") as handle:
        return [(row["text"], row["label"]) for row in csv.DictReader(handle)]


def wrong_answers(model: Predictor, pairs: list[tuple[str, str]]) -> list[str]:
    predictions = model.predict([text for text, _ in pairs])
    return [f"{p.label} {p.score:.2f} (expected {gold}): {text}"
            for (text, gold), p in zip(pairs, predictions, strict=True) if p.label != gold]


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    result = run_experiment(load_config(DEMO_CONFIG), tmp_path_factory.mktemp("demo-runs"))
    return Predictor(result.model_dir, device="cpu")


def test_every_well_formed_demo_review_has_a_gold_label() -> None:
    pairs = demo_reviews()
    well_formed = 0
    for line in DEMO_REVIEWS.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        well_formed += isinstance(event.get("text"), str) and bool(event["text"].strip())
    assert len(pairs) == well_formed == 48
    assert {gold for _, gold in pairs} == set(LABELS)


def test_obvious_set_is_large_balanced_and_unique() -> None:
    pairs = obvious_reviews()
    counts = {label: sum(gold == label for _, gold in pairs) for label in LABELS}
    assert len(pairs) >= 150 and sum(counts.values()) == len(pairs)
    assert min(counts.values()) >= len(pairs) // 3 - 5, counts
    assert len({dedup_key(text) for text, _ in pairs}) == len(pairs)


def test_held_out_reviews_are_not_in_the_training_sample() -> None:
    """No demo or held-out sentence (after lower-casing and whitespace folding) among the texts trained on."""
    data = load_dataset(load_config(DEMO_CONFIG).data)
    seen = {dedup_key(text) for text in data.train.texts}
    assert len(data.train) >= 900
    leaked = [text for text, _ in demo_reviews() + obvious_reviews() if dedup_key(text) in seen]
    assert not leaked


def test_demo_model_is_right_on_the_demo_reviews(demo_model: Predictor) -> None:
    wrong = wrong_answers(demo_model, demo_reviews())
    assert len(wrong) <= 3, "\n".join(wrong)


def test_demo_model_is_right_on_obvious_held_out_reviews(demo_model: Predictor) -> None:
    pairs = obvious_reviews()
    wrong = wrong_answers(demo_model, pairs)
    assert 1 - len(wrong) / len(pairs) >= 0.9, "\n".join(wrong)
