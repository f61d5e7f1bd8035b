"""Hostile input through a running worker (issue 13): generated hostile records among thousands of valid
ones, a failure no record explains (the worker stops without acking; a restart replays), and SIGTERM while
a sink is down. Each run's figures are printed in the pytest summary (tests/conftest.py)."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaAdminClient

from stream.settings import Settings
from stream.shutdown import EXIT_UNPINNED
from tests.accounting import FIGURES, committed_to_end, rows_for
from tests.hostile import (
    CATALOG,
    HostileGenerator,
    account,
    assert_redis_matches_rows,
    produce_with_positions,
    valid_catalog,
)
from tests.support import free_port, wait_until

pytestmark = pytest.mark.chaos


def valid_events(uid: str, n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    rng = random.Random(f"{uid}-{start}")
    now = datetime.now(UTC)
    out = []
    for i in range(start, start + n):
        rid = f"{uid}-{i}"
        event = {"review_id": rid, "text": f"review {i}: " + " ".join(
            rng.choice(["good", "bad", "slow", "fine", "love", "broken"]) for _ in range(rng.randint(1, 12))),
            "source": f"src-{uid}-{i % 3}", "metadata": {"i": i}}
        if i % 2:
            event["created_at"] = (now - timedelta(minutes=rng.randint(0, 90))).isoformat()
        out.append((rid.encode(), json.dumps(event).encode()))
    return out


def committed(settings: Settings) -> dict[int, int]:
    """The group's committed offset per partition (absent: none committed)."""
    admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        offsets = admin.list_group_offsets(settings.worker.app_id).get(settings.worker.app_id, {})
        return {tp.partition: m.offset for tp, m in offsets.items()
                if tp.topic == settings.kafka.reviews_topic and m.offset >= 0}
    finally:
        admin.close()


def settled(settings: Settings):
    """The group committed to the end of the log: the worker acknowledged every record (only ever after
    storing or dead-lettering it, which ``account`` then checks record by record)."""
    return lambda: committed_to_end(settings)


def test_hostile_records_among_5000_valid_through_a_running_worker(topics: Settings, uid: str,
                                                                   worker_factory) -> None:
    s = topics.model_copy(update={"worker": topics.worker.model_copy(update={"batch_max": 128})})
    rng = random.Random(uid)
    gen = HostileGenerator(uid, uid)
    valid = valid_events(uid, 5000)
    hostile = [gen.record() for _ in range(300)] + [(gen.record_key(), v) for _, v in CATALOG] + [
        (None, v) for _, v in valid_catalog(uid)]
    records = list(valid)
    kinds = ["valid"] * len(records)
    for record in hostile:
        at = rng.randrange(len(records) + 1)
        records.insert(at, record)
        kinds.insert(at, "hostile")
    timestamps = [None if k == "valid" else rng.choice([None, 1, 946_684_799_999, 2**40]) for k in kinds]
    worker = worker_factory(s)
    samples: list[tuple[float, dict[int, int]]] = []  # (when read, committed offsets then)
    done = threading.Event()

    def sample_commits() -> None:
        while not done.wait(1.0):
            offsets = committed(s)
            samples.append((time.time(), offsets))

    sampler = threading.Thread(target=sample_commits, daemon=True)
    sampler.start()
    started = time.monotonic()
    sent = produce_with_positions(s, records, timestamps)
    try:
        wait_until(settled(s), 600, "every record stored or dead-lettered, offsets committed", worker.log)
    finally:
        done.set()
        sampler.join(30)
    took = time.monotonic() - started
    assert worker.proc.poll() is None, "the worker must never stop on data"
    log = worker.log_path.read_text(errors="replace")
    assert "Crashed" not in log and "CRITICAL" not in log, worker.log()

    outcome = account(s, sent)
    valid_outcomes = {outcome.by_position[r.position] for r, k in zip(sent, kinds, strict=True) if k == "valid"}
    figures = {"scenario": f"fuzz: {len(hostile)} hostile among {len(valid)} valid", **outcome.figures(),
               "valid_not_stored": sum(outcome.by_position[r.position] != "row"
                                       for r, k in zip(sent, kinds, strict=True) if k == "valid"),
               "seconds": round(took, 1)}
    FIGURES.append(figures)
    print(figures, dict(outcome.reasons))
    assert valid_outcomes == {"row"}, figures
    assert (figures["lost"], figures["duplicated"]) == (0, 0), (figures, outcome.lost[:5], outcome.duplicated[:5])
    assert not any(r.startswith(("judge_failed", "storage_failed", "label_failed")) for r in outcome.reasons), \
        outcome.reasons
    assert assert_redis_matches_rows(s, outcome.rows) >= 1
    # Offsets never passed a record before it was a row or a dead letter: for every sample of the committed
    # offsets, each record below them had been inserted (processed_at) or dead-lettered (failed_at) by then.
    passed = [(r.position, when) for when, offsets in samples for r in sent
              if r.offset < offsets.get(r.partition, 0) and outcome.accounted_at.get(r.position, float("inf")) > when]
    assert len(samples) >= 3 and passed == [], (len(samples), passed[:5])
    figures["commit_samples"] = len(samples)
    assert committed_to_end(s)


@pytest.mark.parametrize("overlap_io", ["off", "on"])
def test_a_failure_no_record_explains_stops_the_worker_without_acking(overlap_io: str, topics: Settings, uid: str,
                                                                      worker_factory) -> None:
    """Postgres without the table (a schema that was never migrated): every insert fails for a reason no
    row explains. The worker exits with one line and code 70, commits nothing past what it stored, and a
    worker on the right database replays the batch: nothing lost, nothing doubled. With ``overlap_io`` on
    (a GPU worker's default) the failing store runs beside the next batch's labelling."""
    s = topics.model_copy(update={"worker": topics.worker.model_copy(update={"overlap_io": overlap_io})})
    url = s.postgres.url.get_secret_value()
    broken = s.model_copy(update={"postgres": s.postgres.model_copy(update={
        "url": type(s.postgres.url)(url + ("&" if "?" in url else "?") + "options=-csearch_path%3Dnowhere")})})
    sent = produce_with_positions(s, valid_events(uid, 200))
    worker = worker_factory(broken)
    rc = worker.proc.wait(180)
    log = worker.log_path.read_text(errors="replace")
    assert rc == EXIT_UNPINNED, worker.log()
    critical = [line for line in log.splitlines() if "CRITICAL" in line]
    # the first statement that misses the schema names it: the partition function, or the table itself
    assert len(critical) == 1 and "refused a batch" in critical[0], critical
    assert "UndefinedFunction" in critical[0] or "UndefinedTable" in critical[0], critical
    assert "Crashed" not in log
    assert committed(s) == {} and rows_for(s, uid) == []

    again = worker_factory(s)
    wait_until(settled(s), 300, "the restarted worker to replay the batch", again.log)
    outcome = account(s, sent)
    assert outcome.figures() == {"sent": 200, "stored": 200, "dead_lettered": 0, "lost": 0, "duplicated": 0}
    assert assert_redis_matches_rows(s, outcome.rows) >= 1


def test_sigterm_while_a_sink_is_down_stops_within_the_session_timeout(topics: Settings, uid: str,
                                                                       worker_factory) -> None:
    """Redis unreachable: the batch is stored in Postgres and waits for Redis. SIGTERM ends the worker within
    session_timeout_s without acknowledging it; with Redis back, a new worker counts it exactly once."""
    s = topics
    no_redis = s.model_copy(update={"redis": s.redis.model_copy(update={
        "url": type(s.redis.url)(f"redis://127.0.0.1:{free_port()}/0")})})
    sent = produce_with_positions(s, valid_events(uid, 100))
    worker = worker_factory(no_redis)
    wait_until(lambda: "Redis at" in worker.log_path.read_text(errors="replace"), 120,
               "the worker to wait for Redis", worker.log)
    time.sleep(1.0)
    t0 = time.monotonic()
    worker.proc.send_signal(15)
    rc = worker.proc.wait(60)
    took = time.monotonic() - t0
    FIGURES.append({"scenario": "SIGTERM while Redis is down", "exit_code": rc, "stop_s": round(took, 1)})
    assert took <= 6.0, (took, worker.log())  # SENTIMENT_WORKER__SESSION_TIMEOUT_S=6 (tests/conftest.py)
    assert committed(s) == {}  # the batch waiting for Redis was never acknowledged

    again = worker_factory(s)
    wait_until(settled(s), 300, "a new worker to finish the batch", again.log)
    outcome = account(s, sent)
    assert (outcome.stored, outcome.lost, outcome.duplicated) == (100, [], [])
    assert assert_redis_matches_rows(s, outcome.rows) >= 1
    assert again.stop() == 0, again.log()
