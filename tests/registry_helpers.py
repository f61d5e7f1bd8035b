"""Helpers for the model-registry tests: a private Postgres schema per test, fake training runs.

The registry has one production version per database, so every test migrates its own schema
(``search_path`` set in the URL) and drops it afterwards; tests never see each other's versions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from stream.settings import Settings
from tests.support import TEST_DB_URL, make_tiny_model


@contextmanager
def registry_schema(uid: str) -> Iterator[str]:
    """A fresh schema in the test database, migrated to head; yields its SQLAlchemy URL."""
    from storage.db import get_engine
    from storage.migrate import upgrade

    schema = f"reg_{uid}"
    admin = create_engine(TEST_DB_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in TEST_DB_URL else "?"
    url = f"{TEST_DB_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def fake_run(root: Path, run_id: str, seed: int, clean: dict[str, bool] | None = None) -> Path:
    """A training-run directory as ``run_experiment`` leaves it (model/ with training_run.json), tiny model."""
    run_dir = root / run_id
    model_dir = make_tiny_model(run_dir / "model", seed=seed)
    info = {"run_id": run_id, "config": {"base_model": "tiny-distilbert", "max_length": 64,
                                         "data": {"clean": clean or {"whitespace": True}}},
            "test_metrics": {"macro_f1": 0.5}}
    (model_dir / "training_run.json").write_text(json.dumps(info))
    return run_dir


def fixed_scores(scores: dict[str, float], calls: list[tuple[str, str]] | None = None
                 ) -> Callable[[Path, str], dict[str, Any]]:
    """An evaluator returning set macro-F1s per artifact dir name (the version), recording each call."""

    def evaluate(model_dir: Path, eval_set: str) -> dict[str, Any]:
        if calls is not None:
            calls.append((model_dir.name, eval_set))
        f1 = scores[model_dir.name]
        return {"macro_f1": f1, "accuracy": f1, "macro_recall": f1, "rows": 300}

    return evaluate


def lifecycle_settings(root: Path, store: Path | None = None) -> Settings:
    """Settings for the lifecycle calls (publish, promote, rollback): the `current` link under ``root``, the
    model store ``store`` (default ``root/store``)."""
    return Settings(registry={"store_dir": store or root / "store"}, models_dir=root / "models")
