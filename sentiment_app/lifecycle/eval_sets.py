"""The evaluation-set catalogue, and the evaluator publish and the promotion gate score with.

The evaluator loads a model exactly as a worker does (``predictor_from_settings`` with the serving
``ModelSettings``: same max length, same int8 or GPU path), so the gate scores what would serve.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sentiment_model.settings import ModelSettings
from storage.registry import Evaluator, RegistryError
from training.evaluate import DataSpec, evaluate_model
from training.paths import resolve_path

# Named evaluation sets (a DataSpec each). Any other name is read as a path to a labelled CSV/JSONL file
# or a TweetEval folder (its test split).
EVAL_SETS: dict[str, dict[str, str]] = {
    "tweeteval-test": {"path": "shared:tweeteval_sentiment", "format": "tweeteval", "split": "test"},
    "tweeteval-validation": {"path": "shared:tweeteval_sentiment", "format": "tweeteval", "split": "validation"},
    "sample": {"path": "sample:reviews_sample.csv", "format": "csv"},
}


def eval_spec(name: str) -> DataSpec:
    """The DataSpec behind an evaluation-set name (a built-in name, or a path to labelled data)."""
    spec = DataSpec(**EVAL_SETS[name]) if name in EVAL_SETS else DataSpec(path=name)
    if not resolve_path(spec.path).exists():
        known = ", ".join(EVAL_SETS)
        raise RegistryError(f"evaluation set {name!r}: {resolve_path(spec.path)} not found; use one of {known} "
                            "(tweeteval-* need $SENTIMENT_SHARED_DATA or ../shared/data) or a labelled CSV/JSONL path")
    return spec


def evaluator(model: ModelSettings) -> Evaluator:
    """Score a model dir on a named set through the serving predictor (``model``'s settings, its own artifact)."""
    serving = model.model_copy(update={"dir": None, "version": None})

    def evaluate(model_dir: Path, eval_set: str) -> dict[str, Any]:
        result = evaluate_model(model_dir, eval_spec(eval_set), model=serving)
        return json.loads(json.dumps(result, default=str))  # plain JSON for the jsonb column

    return evaluate
