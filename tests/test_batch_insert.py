"""The one-statement batch insert (storage.reviews.insert_reviews: the columns sent as arrays, unnest, the claims
and the rows in one statement), as the worker role: every value comes back exactly as sent, whatever the text,
source or metadata hold; a batch mixing new, replayed and repeated ids stores each once and reports the winner;
a value Postgres cannot hold is a row's problem (dead-lettered by the pipeline), never "Postgres refused"."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import exc, text

from storage.db import get_engine
from storage.reviews import LabelledReview, insert_reviews
from stream.pipeline import _about_postgres
from stream.settings import PostgresSettings

# Postgres text holds any Unicode scalar value but NUL (and lone surrogates are not UTF-8): the parser refuses those.
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=80)
NAME = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=20)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | TEXT
                    | st.floats(-1e9, 1e9, width=32),  # jsonb keeps numbers as numeric: 1e17 comes back an int
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)
PROB = st.floats(0.0, 1.0, width=32)
WHEN = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2026, 11, 1), timezones=st.just(UTC))


@st.composite
def reviews(draw: Any) -> list[LabelledReview]:
    out = []
    for i in range(draw(st.integers(1, 6))):
        p = draw(st.tuples(PROB, PROB, PROB))
        kafka = draw(st.one_of(st.none(), st.tuples(NAME, st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1))))
        out.append(LabelledReview(f"r{i}-" + draw(NAME), draw(TEXT.filter(bool)), draw(NAME), draw(WHEN),
                                  draw(st.sampled_from(("negative", "neutral", "positive"))), p[0], *p,
                                  draw(NAME), draw(st.dictionaries(TEXT, JSON, max_size=4)),
                                  *(kafka or (None, None, None))))
    return out


@pytest.fixture(scope="module")
def worker_engine(migrated_db: str):
    return get_engine(PostgresSettings(url=migrated_db).dsn("worker"))


def stored(engine, ids: list[str]) -> dict[str, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT review_id, text, source, created_at, label, score, p_negative, p_neutral, p_positive, "
            "model_version, metadata, kafka_topic, kafka_partition, kafka_offset FROM review_sentiment "
            "WHERE review_id = ANY(:ids)"), {"ids": ids}).all()
    return {r[0]: tuple(r) for r in rows}


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=reviews())
def test_every_value_comes_back_as_sent(worker_engine, batch: list[LabelledReview]) -> None:
    run = uuid.uuid4().hex[:8]
    batch = [LabelledReview(**{**r.__dict__, "review_id": f"{run}-{r.review_id}"}) for r in batch]
    first = {}
    for r in batch:
        first.setdefault(r.review_id, r)
    result = insert_reviews(worker_engine, batch)
    assert sorted((s.review_id, s.label, s.source, s.created_at) for s in result) == sorted(
        (r.review_id, r.label, r.source, r.created_at) for r in first.values())
    rows = stored(worker_engine, list(first))
    for rid, r in first.items():
        assert rows[rid] == (rid, r.text, r.source, r.created_at, r.label, pytest.approx(r.score, rel=1e-6),
                             pytest.approx(r.p_negative, rel=1e-6), pytest.approx(r.p_neutral, rel=1e-6),
                             pytest.approx(r.p_positive, rel=1e-6), r.model_version, r.metadata, r.kafka_topic,
                             r.kafka_partition, r.kafka_offset)


def test_new_replayed_and_repeated_ids_in_one_batch_store_each_once(worker_engine, uid: str) -> None:
    now = datetime.now(UTC)

    def r(rid: str, label: str, when: datetime) -> LabelledReview:
        return LabelledReview(f"{uid}-{rid}", "t", "s", when, label, 0.5, 0.2, 0.3, 0.5, "v", {}, None, None, None)

    insert_reviews(worker_engine, [r("old", "negative", now - timedelta(days=40))])
    out = insert_reviews(worker_engine, [r("new", "positive", now), r("old", "positive", now),
                                         r("new", "neutral", now - timedelta(days=1))])
    assert sorted((s.review_id, s.label, s.created_at) for s in out) == [
        (f"{uid}-new", "positive", now), (f"{uid}-old", "negative", now - timedelta(days=40))]
    assert len(stored(worker_engine, [f"{uid}-new", f"{uid}-old"])) == 2


@pytest.mark.parametrize("bad", [
    {"text": "nul \x00 inside"},
    {"metadata": {"k": float("nan")}},
    {"label": "great"},
])
def test_a_value_postgres_cannot_hold_is_the_rows_problem(worker_engine, uid: str, bad: dict[str, Any]) -> None:
    good = LabelledReview(f"{uid}-ok", "fine", "s", datetime.now(UTC), "positive", 0.7, 0.1, 0.2, 0.7, "v", {})
    with pytest.raises(exc.StatementError) as refused:
        insert_reviews(worker_engine, [good, LabelledReview(**{**good.__dict__, "review_id": f"{uid}-bad", **bad})])
    assert not _about_postgres(refused.value)  # the pipeline retries row by row and dead-letters this one
    assert stored(worker_engine, [f"{uid}-ok", f"{uid}-bad"]) == {}  # one transaction: nothing of the batch
    assert [s.review_id for s in insert_reviews(worker_engine, [good])] == [f"{uid}-ok"]


def test_whole_and_fractional_probabilities_mix_in_one_batch(worker_engine, uid: str) -> None:
    """One array per column holds one type: an int probability (1, 0) beside floats must not sink the batch."""
    now = datetime.now(UTC)
    batch = [LabelledReview(f"{uid}-int", "t", "s", now, "positive", 1, 0, 0, 1, "v", {}),
             LabelledReview(f"{uid}-float", "t", "s", now, "neutral", 0.5, 0.25, 0.5, 0.25, "v", {})]
    assert sorted(s.score for s in insert_reviews(worker_engine, batch)) == [0.5, 1.0]
