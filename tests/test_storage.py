"""Postgres and Redis sinks against the real servers: idempotent writes, exact-once counts, read-only SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import exc, func, select

from storage.db import get_engine
from storage.readonly_query import QueryError, SqlRefused, run
from storage.reviews import LabelledReview, count_by_label, insert_reviews
from storage.schema import review_sentiment
from storage.trends import HOUR, MINUTE, TrendCounters, bucket_key
from tests.support import TEST_REDIS_URL


def review(rid: str, label: str = "positive", source: str = "src", when: datetime | None = None,
           text: str = "fine", version: str = "v1") -> LabelledReview:
    probs = {"negative": 0.1, "neutral": 0.2, "positive": 0.7}
    return LabelledReview(rid, text, source, when or datetime.now(UTC), label, 0.7, probs["negative"],
                          probs["neutral"], probs["positive"], version, {"k": [1, "two"]}, "reviews", 0, 1)


def test_insert_is_idempotent_and_returns_the_stored_row(migrated_db: str, uid: str) -> None:
    engine = get_engine(migrated_db)
    first = [review(f"{uid}-{i}", label="negative") for i in range(3)]
    stored = insert_reviews(engine, first)
    assert sorted(s.review_id for s in stored) == [f"{uid}-{i}" for i in range(3)]
    # A replay with a different label (say, a new model) changes nothing and reports what is stored.
    again = insert_reviews(engine, [review(f"{uid}-0", label="positive", version="v2"), review(f"{uid}-3")])
    assert {(s.review_id, s.label) for s in again} == {(f"{uid}-0", "negative"), (f"{uid}-3", "positive")}
    with engine.connect() as conn:
        rows = conn.execute(select(review_sentiment).where(review_sentiment.c.review_id.like(f"{uid}-%"))).all()
    assert len(rows) == 4
    row0 = next(r for r in rows if r.review_id == f"{uid}-0")
    assert (row0.label, row0.model_version, row0.metadata) == ("negative", "v1", {"k": [1, "two"]})
    assert row0.processed_at is not None


def test_duplicate_ids_within_one_batch_store_one_row(migrated_db: str, uid: str) -> None:
    engine = get_engine(migrated_db)
    stored = insert_reviews(engine, [review(f"{uid}-d", text="first"), review(f"{uid}-d", text="second")])
    assert len(stored) == 1
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).where(review_sentiment.c.review_id == f"{uid}-d")).scalar()
    assert n == 1


def test_label_outside_the_three_is_refused_by_postgres(migrated_db: str, uid: str) -> None:
    with pytest.raises(exc.IntegrityError):
        insert_reviews(get_engine(migrated_db), [review(f"{uid}-x", label="mixed")])


def test_trend_counters_count_each_review_once_with_expiry(migrated_db: str, uid: str) -> None:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    counters = TrendCounters(client, prefix=f"t-{uid}", minute_ttl_s=3600, hour_ttl_s=7200)
    now = datetime.now(UTC).replace(second=30)
    rows = insert_reviews(get_engine(migrated_db), [
        review(f"{uid}-a", "negative", "app", now), review(f"{uid}-b", "positive", "app", now),
        review(f"{uid}-c", "negative", "web", now - timedelta(minutes=1)),
    ])
    assert counters.count(rows) == 3
    assert counters.count(rows) == 0  # a replayed batch adds nothing
    assert counters.count(rows[:1]) == 0
    minutes = counters.read(MINUTE, 2, end=now)
    assert [b.counts for b in minutes] == [
        {"negative": 1, "neutral": 0, "positive": 0}, {"negative": 1, "neutral": 0, "positive": 1}]
    assert counters.read(MINUTE, 1, source="app", end=now)[0].counts == {"negative": 1, "neutral": 0, "positive": 1}
    hour = counters.read(HOUR, 1, end=now)[0]
    assert hour.total == 3 and hour.share("negative") == pytest.approx(2 / 3)
    assert counters.sources(MINUTE, 2) == ["app", "web"]
    # every key expires: a fixed time after its bucket ends
    minute_key = bucket_key(f"t-{uid}", MINUTE, now.replace(second=0))
    assert 3600 < client.ttl(minute_key) <= 3600 + 60
    assert 7200 < client.ttl(bucket_key(f"t-{uid}", HOUR, now.replace(minute=0, second=0))) <= 7200 + 3600
    assert all(client.ttl(k) > 0 for k in client.scan_iter(f"t-{uid}:*"))


def test_reviews_older_than_retention_are_not_counted(migrated_db: str, uid: str) -> None:
    counters = TrendCounters(redis.Redis.from_url(TEST_REDIS_URL), prefix=f"t-{uid}", minute_ttl_s=60,
                             hour_ttl_s=3600)
    old = datetime.now(UTC) - timedelta(days=3)
    rows = insert_reviews(get_engine(migrated_db), [review(f"{uid}-old", when=old)])
    assert counters.count(rows) == 0
    assert list(counters.client.scan_iter(f"t-{uid}:*")) == []


def test_user_sql_is_read_only_with_a_timeout(migrated_db: str, uid: str) -> None:
    from stream.settings import PostgresSettings

    engine = get_engine(migrated_db)
    reader = get_engine(PostgresSettings(url=migrated_db).dsn("reader"))  # as `sentiment sql` runs it
    insert_reviews(engine, [review(f"{uid}-q", "neutral", f"src-{uid}")])
    result = run(reader, f"SELECT label, reviews FROM sentiment_hourly WHERE source = 'src-{uid}'", 100, 30_000)
    assert result.columns == ["label", "reviews"] and result.rows == [("neutral", 1)]
    with pytest.raises(SqlRefused, match="DELETE is not a query"):
        run(reader, f"DELETE FROM review_sentiment WHERE review_id = '{uid}-q'", 100, 30_000)
    with pytest.raises(QueryError, match="statement timeout"):
        run(reader, "SELECT pg_sleep(2)", 100, timeout_ms=100)
    assert count_by_label(engine, since=datetime.now(UTC) - timedelta(minutes=5)).get("neutral", 0) >= 1


def test_alembic_sees_every_table_and_the_migrations_match_them(pg_url: str) -> None:
    """`alembic check`: the migrated schema and ``storage.tables.metadata`` (Alembic's target) agree."""
    from alembic import command
    from sqlalchemy import inspect

    from storage.migrate import alembic_config
    from storage.tables import include_name, metadata

    tables = {t for t in inspect(get_engine(pg_url)).get_table_names() if include_name(t, "table", {})}
    assert tables - {"alembic_version"} == set(metadata.tables)  # none defined outside the metadata
    command.check(alembic_config(pg_url))  # raises AutogenerateDiffsDetected on any pending change
