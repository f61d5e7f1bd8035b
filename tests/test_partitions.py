"""review_sentiment in month partitions (migration 0006): ids stored once across partitions, retention, migration.

Retention and the migration change a whole database, so those tests run in scratch databases of their own
(created here, dropped afterwards), never in the shared test database.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import redis
from alembic import command
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, exc, make_url, pool, select, text

from storage import partitions
from storage.db import get_engine
from storage.feedback import add_correction
from storage.migrate import alembic_config, upgrade
from storage.reviews import LabelledReview, StoredLabel, insert_reviews
from storage.roles import Role
from storage.schema import review_key, review_sentiment
from storage.trends import TrendCounters
from stream.pipeline import _about_postgres
from stream.settings import PostgresSettings
from tests.support import TEST_REDIS_URL


def review(rid: str, when: datetime, label: str = "positive", source: str = "src", text: str = "fine"
           ) -> LabelledReview:
    return LabelledReview(rid, text, source, when, label, 0.7, 0.1, 0.2, 0.7, "v1", {"k": 1}, "reviews", 0, 1)


def month_start(t: datetime, back: int = 0) -> datetime:
    y, m = divmod(t.year * 12 + t.month - 1 - back, 12)
    return datetime(y, m + 1, 1, tzinfo=UTC)


@pytest.fixture
def scratch_db(migrated_db: str) -> Iterator[str]:
    """An empty database of this cluster (roles already set up by ``migrated_db``), dropped afterwards."""
    with scratch_database(migrated_db) as url:
        yield url


@contextmanager
def scratch_database(migrated_db: str) -> Iterator[str]:
    name = f"sentiment_test_p_{uuid.uuid4().hex[:8]}"
    admin = create_engine(migrated_db, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(migrated_db).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def engine_of(url: str, role: Role = "operator") -> Engine:
    """An engine that keeps no connection open (a scratch database can then be dropped)."""
    return create_engine(PostgresSettings(url=url).dsn(role), poolclass=pool.NullPool)


def stored_rows(engine, ids: list[str]) -> list[tuple[str, datetime, str, str]]:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT review_id, created_at, text, tableoid::regclass::text FROM review_sentiment "
            "WHERE review_id = ANY(:ids) ORDER BY review_id"), {"ids": ids}).all()


def test_rows_go_to_their_month_and_users_see_one_table(migrated_db: str, uid: str) -> None:
    engine = get_engine(migrated_db)
    boundary = month_start(datetime.now(UTC))
    insert_reviews(engine, [review(f"{uid}-a", boundary - timedelta(microseconds=1)),
                            review(f"{uid}-b", boundary)])
    rows = stored_rows(engine, [f"{uid}-a", f"{uid}-b"])
    before, at = month_start(boundary, 1), boundary
    assert [r.tableoid for r in rows] == [f"review_sentiment_p{before:%Y%m}", f"review_sentiment_p{at:%Y%m}"]
    # The reader role queries the parent and the views as before.
    reader = get_engine(PostgresSettings(url=migrated_db).dsn("reader"))
    with reader.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM review_label WHERE review_id LIKE :p"), {"p": f"{uid}-%"})
        assert n.scalar_one() == 2
        assert conn.execute(text("SELECT count(*) FROM sentiment_hourly WHERE source = 'src'")).scalar_one() >= 2


def test_replay_across_a_partition_boundary_is_stored_once_and_counted_once(migrated_db: str, uid: str) -> None:
    engine = get_engine(PostgresSettings(url=migrated_db).dsn("worker"))  # as the worker: no DDL rights
    counters = TrendCounters(redis.Redis.from_url(TEST_REDIS_URL), prefix=f"t-{uid}", hour_ttl_s=90 * 86400,
                             seen_ttl_s=90 * 86400)
    boundary = month_start(datetime.now(UTC))
    when = {f"{uid}-{i}": boundary + delta for i, delta in enumerate(
        [timedelta(microseconds=-1), timedelta(0), timedelta(minutes=-30), timedelta(minutes=30),
         timedelta(hours=-1), timedelta(hours=1)])}
    events = [review(rid, t, label=("negative", "positive")[i % 2]) for i, (rid, t) in enumerate(when.items())]
    counted = counters.count(insert_reviews(engine, events[:3]))
    # The whole batch again, in another order, with the ids first stored before the boundary now dated after it
    # (a producer that re-sent them): every id keeps its first row, in its first month.
    replay = [review(e.review_id, boundary + (boundary - e.created_at) + timedelta(seconds=1), text="again")
              if e.created_at < boundary else e for e in reversed(events)]
    for batch in (events, replay, replay[2:]):
        stored = insert_reviews(engine, batch)
        assert {(s.review_id, s.created_at) for s in stored} == {(b.review_id, when[b.review_id]) for b in batch}
        counted += counters.count(stored)
    assert counted == len(events)
    rows = stored_rows(engine, list(when))
    assert [(r.review_id, r.created_at, r.text) for r in rows] == [(i, when[i], "fine") for i in sorted(when)]
    assert {r.tableoid for r in rows} == {f"review_sentiment_p{month_start(boundary, 1):%Y%m}",
                                          f"review_sentiment_p{boundary:%Y%m}"}
    with engine.connect() as conn:
        claims = conn.execute(select(review_key.c.review_id, review_key.c.created_at)
                              .where(review_key.c.review_id.in_(list(when)))).all()
    assert dict(claims) == when
    hours = [counters.hour(boundary + timedelta(hours=h)).total for h in (-1, 0, 1)]
    assert hours == [3, 2, 1]  # [-1h, -30m, -1us], [0, +30m], [+1h]


def test_a_row_deleted_by_hand_takes_its_claim_and_ids_and_times_never_change(migrated_db: str, uid: str) -> None:
    engine = get_engine(migrated_db)  # the operator: the only role that may delete or update
    when = month_start(datetime.now(UTC))
    insert_reviews(engine, [review(f"{uid}-x", when), review(f"{uid}-y", when)])
    with engine.begin() as conn, pytest.raises(exc.IntegrityError, match="cannot change"):
        conn.execute(text("UPDATE review_sentiment SET created_at = created_at - interval '1 day' "
                          "WHERE review_id = :r"), {"r": f"{uid}-x"})
    with engine.begin() as conn:
        conn.execute(text("UPDATE review_sentiment SET label = 'neutral' WHERE review_id = :r"), {"r": f"{uid}-x"})
        conn.execute(text("DELETE FROM review_sentiment WHERE review_id = :r"), {"r": f"{uid}-y"})
        assert conn.execute(select(review_key.c.review_id).where(review_key.c.review_id.like(f"{uid}-%"))
                            ).scalars().all() == [f"{uid}-x"]
    again = insert_reviews(engine, [review(f"{uid}-y", when - timedelta(days=1), text="again")])
    assert [(s.review_id, s.created_at) for s in again] == [(f"{uid}-y", when - timedelta(days=1))]


def test_concurrent_writers_of_the_same_ids_on_both_sides_store_each_once(migrated_db: str, uid: str) -> None:
    engine = get_engine(PostgresSettings(url=migrated_db).dsn("worker"))
    boundary = month_start(datetime.now(UTC))
    ids = [f"{uid}-{i}" for i in range(40)]
    sides = [[review(i, boundary + timedelta(seconds=(-1) ** k * (n + 1))) for n, i in enumerate(ids)]
             for k in range(2)]
    results: list[list[StoredLabel]] = []
    errors: list[BaseException] = []

    def write(batch: list[LabelledReview]) -> None:
        try:
            results.append(insert_reviews(engine, batch))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(side,)) for side in sides for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors
    rows = stored_rows(engine, ids)
    assert sorted(r.review_id for r in rows) == sorted(ids)
    winners = {r.review_id: r.created_at for r in rows}
    for result in results:  # every writer reports the row that won, whichever side it wrote
        assert {s.review_id: s.created_at for s in result} == winners


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(st.sampled_from("abcdefgh"), st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2026, 12, 1), timezones=st.just(UTC))), min_size=1, max_size=12),
       cut=st.integers(0, 12))
def test_any_times_any_order_store_each_id_once_in_its_first_month(
        partitioned_scratch: str, events: list[tuple[str, datetime]], cut: int) -> None:
    """Ids and producer times (events allow 2000 to now), sent in two batches and then all again."""
    engine = engine_of(partitioned_scratch, "worker")
    run = uuid.uuid4().hex[:8]
    batch = [review(f"{run}-{i}", t) for i, t in events]
    first: dict[str, datetime] = {}
    for r in batch:
        first.setdefault(r.review_id, r.created_at)
    for part in (batch[:cut], batch[cut:], batch):
        stored = insert_reviews(engine, part)
        assert {(s.review_id, s.created_at) for s in stored} == {(r.review_id, first[r.review_id]) for r in part}
    rows = stored_rows(engine, list(first))
    assert [(r.review_id, r.created_at, r.tableoid) for r in rows] == [
        (i, first[i], f"review_sentiment_p{first[i]:%Y%m}") for i in sorted(first)]
    engine.dispose()


@pytest.fixture(scope="module")
def partitioned_scratch(migrated_db: str) -> Iterator[str]:
    """A scratch database at head, for the property test's many months."""
    with scratch_database(migrated_db) as url:
        upgrade(url)
        yield url


def test_a_month_is_created_on_demand_by_the_worker_without_ddl_rights(scratch_db: str, uid: str) -> None:
    upgrade(scratch_db)
    worker = engine_of(scratch_db, "worker")
    old = datetime(2021, 3, 31, 23, 59, 59, tzinfo=UTC)
    insert_reviews(worker, [review(f"{uid}-old", old)])
    assert stored_rows(worker, [f"{uid}-old"])[0].tableoid == "review_sentiment_p202103"
    with worker.connect() as conn, pytest.raises(exc.ProgrammingError, match="permission denied"):
        conn.execute(text("CREATE TABLE review_sentiment_p209901 PARTITION OF review_sentiment "
                          "FOR VALUES FROM ('2099-01-01') TO ('2099-02-01')"))
    with worker.begin() as conn, pytest.raises(exc.ProgrammingError, match="permission denied"):
        conn.execute(text("UPDATE review_partition_policy SET retention_days = 1"))
    with pytest.raises(exc.DataError, match="more than a year ahead") as far:
        insert_reviews(worker, [review(f"{uid}-far", datetime.now(UTC) + timedelta(days=800))])
    assert not _about_postgres(far.value)  # the pipeline dead-letters such a row


def test_retention_drops_whole_old_months_with_their_claims(scratch_db: str, uid: str) -> None:
    upgrade(scratch_db)
    operator, worker = engine_of(scratch_db), engine_of(scratch_db, "worker")
    now = datetime.now(UTC)
    this_month = month_start(now)
    old = {f"{uid}-old{i}": month_start(now, 14) + timedelta(days=i) for i in range(3)}  # 14 months ago
    edge = {f"{uid}-edge": month_start(now, 2) + timedelta(days=1)}  # partly inside 45 days: kept
    new = {f"{uid}-new": now}
    insert_reviews(worker, [review(rid, t) for rid, t in {**old, **edge, **new}.items()])
    add_correction(operator, f"{uid}-old0", "negative", "ana")
    add_correction(operator, f"{uid}-new", "negative", "ana")
    names = {p.name for p in partitions.partitions(operator)}
    assert {f"review_sentiment_p{month_start(now, 14):%Y%m}", f"review_sentiment_p{this_month:%Y%m}",
            f"review_sentiment_p{month_start(now, -3):%Y%m}"} <= names  # three months ahead exist

    dropped = partitions.apply_retention(operator, 45)
    assert f"review_sentiment_p{month_start(now, 14):%Y%m}" in dropped
    assert f"review_sentiment_p{month_start(now, 2):%Y%m}" not in dropped
    cutoff = now - timedelta(days=45)
    assert all(p.month + timedelta(days=31) > cutoff for p in partitions.partitions(operator))  # none left behind
    with operator.connect() as conn:
        assert sorted(conn.execute(select(review_sentiment.c.review_id)).scalars()) == [f"{uid}-edge", f"{uid}-new"]
        assert sorted(conn.execute(select(review_key.c.review_id)).scalars()) == [f"{uid}-edge", f"{uid}-new"]
        assert conn.execute(text("SELECT review_id FROM review_feedback")).scalars().all() == [f"{uid}-new"]
    assert partitions.maintain(worker) == []  # the worker may run it (as its maintenance thread does)

    # A replay of a dropped month is refused as data (dead-lettered by the pipeline), not stored again;
    # the batch's other rows go in when the pipeline retries them one by one.
    with pytest.raises(exc.DataError, match="older than the retention of 45 days") as refused:
        insert_reviews(worker, [review(rid, t) for rid, t in old.items()])
    assert not _about_postgres(refused.value)
    assert stored_rows(worker, list(old)) == []
    # A replay of kept reviews still stores nothing twice.
    assert [s.review_id for s in insert_reviews(worker, [review(f"{uid}-edge", now)])] == [f"{uid}-edge"]
    assert len(stored_rows(worker, [f"{uid}-edge"])) == 1
    partitions.apply_retention(operator, 0)  # forever again: old months may be stored anew
    insert_reviews(worker, [review(f"{uid}-old0", old[f"{uid}-old0"])])
    assert len(stored_rows(worker, [f"{uid}-old0"])) == 1


def test_the_worker_maintenance_thread_creates_months_ahead_and_stops(scratch_db: str) -> None:
    upgrade(scratch_db)
    operator = engine_of(scratch_db)
    with operator.begin() as conn:
        ahead = f"review_sentiment_p{month_start(datetime.now(UTC), -3):%Y%m}"
        conn.execute(text(f"DROP TABLE {ahead}"))
    stop = threading.Event()
    thread = partitions.start_maintenance(engine_of(scratch_db, "worker"), stop, 0.05)
    deadline = time.monotonic() + 30
    while ahead not in {p.name for p in partitions.partitions(operator)} and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join(timeout=30)
    assert ahead in {p.name for p in partitions.partitions(operator)}
    assert not thread.is_alive()


POPULATE = """
INSERT INTO review_sentiment (review_id, text, source, created_at, label, score, p_negative, p_neutral, p_positive,
                              model_version, metadata, kafka_topic, kafka_partition, kafka_offset, processed_at)
SELECT 'r-' || g, 'text ' || g || repeat(' word', g % 7), 'src' || (g % 5),
       timestamptz '2025-06-01 00:00:00+00' + (g % 400) * interval '1 day' + (g % 86400) * interval '1 second',
       (ARRAY['negative', 'neutral', 'positive'])[1 + g % 3], 0.5 + (g % 50) / 100.0, 0.1, 0.2, 0.7,
       'v' || (g % 4), jsonb_build_object('g', g), 'reviews', g % 3, g, timestamptz '2026-01-01' + g * interval '1 ms'
FROM generate_series(1, :n) g"""
# Every column of every row, in one digest; the views' contents likewise.
DIGEST = "SELECT count(*), md5(string_agg(r::text, '|' ORDER BY review_id)) FROM review_sentiment r"
VIEW_DIGEST = ("SELECT md5(string_agg(v::text, '|' ORDER BY v::text)) FROM {view} v")


def test_migration_keeps_every_row_of_a_populated_table(scratch_db: str, capsys: pytest.CaptureFixture) -> None:
    n = 30_000
    upgrade(scratch_db, "0005")
    engine = engine_of(scratch_db)
    with engine.begin() as conn:
        conn.execute(text(POPULATE), {"n": n})
        # Rows outside what events allow today (before 2000, far ahead) and on a month's first instant.
        conn.execute(text("INSERT INTO review_sentiment (review_id, text, source, created_at, label, score, "
                          "p_negative, p_neutral, p_positive, model_version) VALUES "
                          "('x-1999', 'old', 'src0', '1999-12-31 23:59:59.999999+00', 'neutral', 1, 0, 1, 0, 'v0'), "
                          "('x-2040', 'far', 'src0', '2040-01-01 00:00:00+00', 'neutral', 1, 0, 1, 0, 'v0'), "
                          "('x-edge', 'edge', 'src0', '2026-01-01 00:00:00+00', 'neutral', 1, 0, 1, 0, 'v0')"))
        conn.execute(text("INSERT INTO review_feedback (review_id, label, author) "
                          "SELECT 'r-' || g, 'negative', 'ana' FROM generate_series(1, :n, 97) g"), {"n": n})
        before = conn.execute(text(DIGEST)).one()
        views = {v: conn.execute(text(VIEW_DIGEST.format(view=v))).scalar_one()
                 for v in ("sentiment_hourly", "sentiment_hourly_total", "review_label")}
        feedback = conn.execute(text("SELECT md5(string_agg(f::text, '|' ORDER BY id)) FROM review_feedback f")
                                ).scalar_one()
    assert before[0] == n + 3

    started = time.perf_counter()
    upgrade(scratch_db)
    took = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nmigration 0006 of {before[0]:,} rows: {took:.1f}s")

    with engine.connect() as conn:
        assert conn.execute(text(DIGEST)).one() == before
        assert {v: conn.execute(text(VIEW_DIGEST.format(view=v))).scalar_one() for v in views} == views
        assert conn.execute(text("SELECT md5(string_agg(f::text, '|' ORDER BY id)) FROM review_feedback f")
                            ).scalar_one() == feedback
        assert conn.execute(text("SELECT count(*) FROM review_key k JOIN review_sentiment r USING (review_id, "
                                 "created_at)")).scalar_one() == n + 3
        assert conn.execute(text("SELECT count(*) FROM ONLY review_sentiment")).scalar_one() == 0
        months = conn.execute(text("SELECT count(DISTINCT tableoid) FROM review_sentiment")).scalar_one()
    assert months == 14 + 2  # 2025-06 .. 2026-07 (400 days), 1999-12 and 2040-01
    # A stored id is still stored once, whatever month it is replayed in.
    worker = engine_of(scratch_db, "worker")
    again = insert_reviews(worker, [review("r-1", datetime.now(UTC), label="negative")])
    assert [(s.review_id, s.created_at.year) for s in again] == [("r-1", 2025)]

    command.downgrade(alembic_config(scratch_db), "0005")  # and back, still every row
    with engine.connect() as conn:
        assert conn.execute(text(DIGEST)).one() == before
    engine.dispose()
