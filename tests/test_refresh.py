"""`sentiment refresh` against the real Postgres: feedback flows into the next training set (counted), the
candidate and production are scored on the same fixed sets, and a worse candidate is recorded, not promoted."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from sentiment_app.lifecycle.refresh import load_refresh_config, run_refresh
from storage import registry
from storage.db import get_engine
from storage.feedback import add_correction
from storage.reviews import LabelledReview, insert_reviews
from storage.sampling import in_sample
from stream.settings import Settings
from tests.registry_helpers import lifecycle_settings
from tests.support import invoke_cli
from training.config import ConfigError, load_config
from training.data import dedup_key, load_dataset
from training.tiny import synthetic_rows

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
HOLDOUT_SHARE = 0.25  # as in the refresh_workdir fixture (conftest)


def review(rid: str, text: str, label: str) -> LabelledReview:
    probs = {"negative": [0.8, 0.1, 0.1], "neutral": [0.1, 0.8, 0.1], "positive": [0.1, 0.1, 0.8]}[label]
    return LabelledReview(rid, text, "refresh-test", datetime.now(UTC), label, 0.8, *probs, "live-model")


def test_feedback_flows_into_the_next_refresh_and_a_worse_candidate_is_not_promoted(
        reg_url: str, refresh_workdir: Path, uid: str) -> None:
    engine = get_engine(reg_url)
    life = lifecycle_settings(refresh_workdir)
    config = load_refresh_config(refresh_workdir / "refresh.yaml")
    gate_set = str(refresh_workdir / "eval.csv")

    # 1. No feedback, no production: the first refresh is promoted because nothing serves yet.
    first = run_refresh(config, life, engine, run_id="first")
    assert first.promoted and first.reason == "no production model yet" and first.counts.corrections == 0
    assert registry.production(engine, life.model_store()).version == first.candidate

    # 2. People correct 41 reviews: 40 texts the base data lacks, and one base training text relabelled.
    experiment = load_config(refresh_workdir / "experiment.yaml")
    base = load_dataset(experiment.data)
    base_keys = {dedup_key(t) for s in base.splits().values() for t in s.texts}
    new_rows = [(f"{text} case {i}", label) for i, (text, label) in enumerate(synthetic_rows(40, seed=99))]
    assert not {dedup_key(t) for t, _ in new_rows} & base_keys
    wrong = {"negative": "positive", "neutral": "negative", "positive": "neutral"}  # what the live model said
    reviews = [review(f"{uid}-{i}", text, wrong[label]) for i, (text, label) in enumerate(new_rows)]
    relabel_id = next(f"{uid}-base-{k}" for k in range(100) if not in_sample(f"{uid}-base-{k}", HOLDOUT_SHARE))
    base_text, base_label = base.train.texts[0], base.train.labels[0]
    other = ["negative", "neutral", "positive"][(base_label + 1) % 3]
    reviews.append(review(relabel_id, base_text, ["negative", "neutral", "positive"][base_label]))
    insert_reviews(engine, reviews)
    for i, (_, label) in enumerate(new_rows):  # people put the right label back
        add_correction(engine, f"{uid}-{i}", label, "ana")
    add_correction(engine, relabel_id, other, "ana")
    held = [r.review_id for r in reviews if in_sample(r.review_id, HOLDOUT_SHARE)]
    assert 0 < len(held) < 41

    # 3. A refresh whose candidate is worse (one optimizer step): scored on the same sets, recorded, not promoted.
    worse = config.model_copy(update={"overrides": {"max_steps": 1, "learning_rate": 1e-5}})
    second = run_refresh(worse, life, engine, run_id="second")
    c = second.counts
    assert (c.corrections, c.held_out, c.changed_label) == (41, len(held), 41)
    assert c.added_to_train == 40 - len(held) and c.replaced_base_labels == 1
    data = json.loads((second.run_dir / "data.json").read_text())
    assert data["splits"]["train"]["rows"] == len(base.train) + c.added_to_train
    with (second.run_dir / "feedback_train.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 41 - len(held)

    assert not second.promoted and second.production_before == first.candidate
    assert registry.production(engine, life.model_store()).version == first.candidate  # production unchanged
    holdout_set = next(s for s in second.scores if "feedback-holdout" in s)
    assert set(second.scores) == {gate_set, holdout_set}
    for eval_set in (gate_set, holdout_set):  # both models scored on the same fixed sets
        assert set(second.scores[eval_set]) == {second.candidate, first.candidate}
    cand = second.scores[gate_set][second.candidate]["macro_recall"]
    prod = second.scores[gate_set][first.candidate]["macro_recall"]
    assert cand < prod
    with open(holdout_set) as handle:
        assert len(list(csv.DictReader(handle))) == len(held)
    decisions = registry.decisions(engine)
    assert decisions[0]["candidate"] == second.candidate and decisions[0]["promoted"] is False
    assert decisions[0]["candidate_score"] == pytest.approx(cand)
    assert decisions[0]["production_score"] == pytest.approx(prod)
    report = second.report.read_text()
    assert f"candidate `{second.candidate}` not promoted" in report
    assert "| corrected reviews (latest correction each) | 41 |" in report
    assert f"| ... added to train | {c.added_to_train} |" in report


def test_refresh_cli_runs_only_on_drift_when_asked(reg_url: str, refresh_workdir: Path, settings: Settings) -> None:
    s = settings.model_copy(update={
        "postgres": settings.postgres.model_copy(update={"url": SecretStr(reg_url)}),
        "registry": settings.registry.model_copy(update={"store_dir": refresh_workdir / "store"}),
    })
    quiet = invoke_cli(s, "refresh", str(refresh_workdir / "refresh.yaml"), "--if-drift")
    assert quiet.exit_code == 0, quiet.output
    assert "no refresh: no drift score in the last 2 hours" in quiet.output
    assert not (refresh_workdir / "runs").exists()

    ran = invoke_cli(s, "refresh", str(refresh_workdir / "refresh.yaml"), "--run-id", "cli")
    assert ran.exit_code == 0, ran.output
    assert "PROMOTED (no production model yet)" in ran.output and "report: " in ran.output
    assert (refresh_workdir / "runs" / "cli" / "report.md").exists()
    with get_engine(reg_url).connect() as conn:
        assert conn.execute(select(registry.model_version.c.stage)).scalars().all() == ["production"]


def test_a_bad_refresh_config_names_the_key(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "r.yaml").write_text("experiment: x.yaml\nholdout_share: 0.2\n")
    with pytest.raises(ConfigError, match="holdout_share: unknown key"):
        load_refresh_config(tmp_path / "r.yaml")
    out = invoke_cli(settings, "refresh", str(tmp_path / "r.yaml"))
    assert out.exit_code == 2 and "holdout_share: unknown key" in out.output


def test_holdout_membership_is_fixed_per_review() -> None:
    ids = [f"r-{i}" for i in range(4000)]
    share = sum(in_sample(i, 0.2) for i in ids) / len(ids)
    assert 0.17 < share < 0.23
    assert [in_sample(i, 0.2) for i in ids[:50]] == [in_sample(i, 0.2) for i in ids[:50]]
    assert all(not in_sample(i, 0.0) for i in ids[:100])
