"""Fault tests against the real local stack (`make chaos`; also part of `make test`): crashes, outages,
scale-out and hostile input. Each prints what was sent, stored, dead-lettered, lost, duplicated, the
Redis-vs-SQL mismatches (all three must be 0) and the recovery time."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from storage.db import get_engine
from storage.schema import review_sentiment as t
from stream.dlq import read_dead_letters
from stream.services import create_topics
from stream.settings import Settings
from tests.accounting import FIGURES, assert_redis_matches_sql, committed_to_end, rows_for
from tests.support import REPO, WorkerProcess, free_port, wait_until

pytestmark = pytest.mark.chaos
STACK = [str(REPO / "ops" / "stack.sh")]


def stream_events(settings: Settings, uid: str, n_valid: int, bad_every: int, rate: float
                  ) -> tuple[threading.Thread, dict[str, int]]:
    """Produce n_valid valid events (and one bad record every `bad_every`) at `rate`/s in the background."""
    from kafka import KafkaProducer

    sent = {"valid": 0, "bad": 0}

    def run() -> None:
        producer = KafkaProducer(acks="all", linger_ms=10, **settings.kafka.client_options())
        rng = random.Random(uid)
        start = time.monotonic()
        for i in range(n_valid):
            rid = f"{uid}-{i}"
            text = f"review {i}: " + " ".join(rng.choice(["good", "bad", "slow", "fine", "love", "broken"])
                                              for _ in range(rng.randint(1, 20)))
            producer.send(settings.kafka.reviews_topic, key=rid.encode(),
                          value=json.dumps({"review_id": rid, "text": text, "source": f"src-{uid}-{i % 3}"}).encode())
            sent["valid"] += 1
            if bad_every and i % bad_every == 0:
                producer.send(settings.kafka.reviews_topic, value=b'{"text": ' + str(i).encode())
                sent["bad"] += 1
            ahead = (i + 1) / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        producer.flush(60)
        producer.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, sent


def account(settings: Settings, uid: str, sent: dict[str, int], recovery_s: float, scenario: str) -> dict:
    """Figures for the scenario; asserts nothing was lost, duplicated or miscounted."""
    rows = rows_for(settings, uid)
    ids = [r.review_id for r in rows]
    letters = read_dead_letters(settings.kafka.dlq_topic, settings.kafka.client_options())
    mismatch = 0
    try:
        assert_redis_matches_sql(settings, uid)
    except AssertionError:
        mismatch = 1
    figures = {
        "scenario": scenario, "sent": sent["valid"] + sent["bad"], "rows": len(rows),
        "dead_lettered": len(letters), "lost": sent["valid"] - len(set(ids)) + sent["bad"] - len(letters),
        "duplicated": len(ids) - len(set(ids)), "redis_sql_mismatches": mismatch,
        "recovery_s": round(recovery_s, 1),
    }
    FIGURES.append(figures)  # printed in the run's summary (tests/conftest.py)
    assert (figures["lost"], figures["duplicated"], figures["redis_sql_mismatches"]) == (0, 0, 0), figures
    return figures


def caught_up(settings: Settings, uid: str, n_valid: int, n_bad: int) -> Callable[[], bool]:
    engine = get_engine(settings.postgres.url.get_secret_value())

    def check() -> bool:
        with engine.connect() as conn:
            n = conn.execute(select(func.count()).where(t.c.source.like(f"src-{uid}-%"))).scalar_one()
        return n >= n_valid and committed_to_end(settings) and len(
            read_dead_letters(settings.kafka.dlq_topic, settings.kafka.client_options())) >= n_bad

    return check


@pytest.fixture
def chaos_settings(topics: Settings) -> Settings:
    # bigger batches: 20,000 events through the tiny model in well under a minute
    return topics.model_copy(update={"worker": topics.worker.model_copy(update={"batch_max": 256})})


def test_kill_9_three_times_loses_and_duplicates_nothing(chaos_settings: Settings, uid: str, worker_factory) -> None:
    s = chaos_settings
    worker = worker_factory(s)
    producer, sent = stream_events(s, uid, 20_000, bad_every=200, rate=800)
    rng = random.Random(uid)
    for _ in range(3):
        time.sleep(rng.uniform(4, 9))
        worker.proc.kill()  # SIGKILL: no shutdown, no commit
        worker.proc.wait(10)
        worker.start()
    producer.join(120)
    restarted = time.monotonic()
    wait_until(caught_up(s, uid, 20_000, sent["bad"]), 300, "the worker to catch up after 3 kills", worker.log)
    account(s, uid, sent, time.monotonic() - restarted, "kill -9 x3")


@pytest.mark.parametrize("service", ["postgres", "redis", "kafka"])
def test_outage_is_waited_out(service: str, chaos_settings: Settings, uid: str, worker_factory) -> None:
    s = chaos_settings
    worker = worker_factory(s)
    producer, sent = stream_events(s, uid, 5_000, bad_every=100, rate=500)
    wait_until(lambda: len(rows_for(s, uid)) > 200, 120, "the worker to be streaming", worker.log)
    subprocess.run([*STACK, "down", service], check=True, capture_output=True)
    time.sleep(0 if service == "kafka" else 15)  # kafka: a restart
    subprocess.run([*STACK, "up", service], check=True, capture_output=True)
    back = time.monotonic()
    producer.join(180)
    wait_until(caught_up(s, uid, 5_000, sent["bad"]), 300, f"catching up after the {service} outage", worker.log)
    assert worker.proc.poll() is None, "the worker must ride out the outage, not exit"
    if service != "kafka":
        assert "retrying in" in worker.log_path.read_text()
    account(s, uid, sent, time.monotonic() - back, f"{service} {'restart' if service == 'kafka' else 'down 15 s'}")


def test_sigterm_during_an_outage_loses_nothing(chaos_settings: Settings, uid: str, worker_factory) -> None:
    """A worker asked to stop while a sink is down gives up its batch in hand unacknowledged and acknowledges
    nothing it takes after (its take stays open, acks off, until faust stops it): a restarted worker then
    stores every event once. The events keep arriving throughout."""
    s = chaos_settings
    worker = worker_factory(s)
    producer, sent = stream_events(s, uid, 3_000, bad_every=100, rate=300)
    wait_until(lambda: len(rows_for(s, uid)) > 200, 120, "the worker to be streaming", worker.log)
    subprocess.run([*STACK, "down", "redis"], check=True, capture_output=True)
    try:
        wait_until(lambda: "retrying in" in worker.log_path.read_text(), 60, "the worker to retry Redis", worker.log)
        time.sleep(2)  # more events reach the stopping worker's buffers
        assert worker.stop(timeout=60) == 0, worker.log()
        assert "stopping with a batch unacknowledged" in worker.log_path.read_text()
    finally:
        subprocess.run([*STACK, "up", "redis"], check=True, capture_output=True)
    back = time.monotonic()
    worker.start()
    producer.join(180)
    wait_until(caught_up(s, uid, 3_000, sent["bad"]), 300, "catching up after the stop", worker.log)
    account(s, uid, sent, time.monotonic() - back, "SIGTERM during a Redis outage")


def test_three_workers_six_partitions_one_killed(topics: Settings, uid: str, tmp_path: Path) -> None:
    from stream.services import kafka_admin

    admin = kafka_admin(topics)
    admin.delete_topics([topics.kafka.reviews_topic], raise_errors=False)
    admin.close()
    time.sleep(2)
    s = topics.model_copy(update={"kafka": topics.kafka.model_copy(update={"partitions": 6})})
    create_topics(s, partitions=6)
    workers = [WorkerProcess(s.model_copy(update={"worker": s.worker.model_copy(update={"metrics_port": free_port()})}),
                             tmp_path / f"w{i}.log").start() for i in range(3)]
    try:
        producer, sent = stream_events(s, uid, 6_000, bad_every=300, rate=400)
        time.sleep(8)
        workers[1].proc.kill()
        killed = time.monotonic()
        producer.join(120)
        wait_until(caught_up(s, uid, 6_000, sent["bad"]), 300, "the survivors to take over",
                   lambda: workers[0].log() + workers[2].log())
        account(s, uid, sent, time.monotonic() - killed, "3 workers, 6 partitions, one killed")
        assert all(w.proc.poll() is None for w in (workers[0], workers[2]))
    finally:
        for w in workers:
            w.stop()


HOSTILE: list[tuple[str, bytes, str]] = [
    ("invalid json", b"{oops", "invalid_json"),
    ("truncated json", b'{"text": "abc"', "invalid_json"),
    ("trailing garbage", b'{"text": "abc"} xyz', "invalid_json"),
    ("nan literal", b'{"text": NaN}', "validation_error"),
    ("deep nesting", b"[" * 50_000 + b"]" * 50_000, "invalid_json"),
    ("empty value", b"", "empty_message"),
    ("whitespace value", b"   ", "invalid_json"),
    ("json null", b"null", "not_an_object"),
    ("json array", b'[{"text": "x"}]', "not_an_object"),
    ("json string", b'"text"', "not_an_object"),
    ("json number", b"42", "not_an_object"),
    ("invalid utf-8", b'{"text": "\xff\xfe"}', "invalid_utf8"),
    ("overlong utf-8", b'{"text": "\xc0\xaf"}', "invalid_utf8"),
    ("latin-1 bytes", "{\"text\": \"café\"}".encode("latin-1"), "invalid_utf8"),
    ("lone surrogate", b'{"text": "\\udc00"}', "validation_error"),
    ("missing text", b'{"source": "x"}', "validation_error"),
    ("null text", b'{"text": null}', "validation_error"),
    ("empty text", b'{"text": ""}', "validation_error"),
    ("blank text", b'{"text": " \\t\\n "}', "validation_error"),
    ("number text", b'{"text": 3.14}', "validation_error"),
    ("list text", b'{"text": ["a", "b"]}', "validation_error"),
    ("object text", b'{"text": {"a": 1}}', "validation_error"),
    ("bool id", b'{"text": "x", "review_id": false}', "validation_error"),
    ("object id", b'{"text": "x", "review_id": {"a": 1}}', "validation_error"),
    ("huge id", json.dumps({"text": "x", "review_id": "i" * 1000}).encode(), "validation_error"),
    ("number source", b'{"text": "x", "source": 7}', "validation_error"),
    ("huge source", json.dumps({"text": "x", "source": "s" * 500}).encode(), "validation_error"),
    ("1 MB text", json.dumps({"text": "y" * 1_000_000}).encode(), "text_too_long"),
    ("NUL in text", b'{"text": "a\\u0000b"}', "nul_character"),
    ("NUL in source", b'{"text": "a", "source": "s\\u0000"}', "nul_character"),
    ("NUL in metadata", b'{"text": "a", "metadata": {"k\\u0000": 1}}', "nul_character"),
    ("huge metadata", json.dumps({"text": "x", "metadata": {"blob": "z" * 100_000}}).encode(), "metadata_too_large"),
    ("metadata not object", b'{"text": "x", "metadata": "m"}', "validation_error"),
    ("unparseable time", b'{"text": "x", "created_at": "next tuesday"}', "validation_error"),
    ("time before 2000", b'{"text": "x", "created_at": "1970-01-01T00:00:00Z"}', "validation_error"),
    ("time far ahead", b'{"text": "x", "created_at": "2999-01-01T00:00:00Z"}', "validation_error"),
    ("negative epoch", b'{"text": "x", "created_at": -5}', "validation_error"),
    ("bool time", b'{"text": "x", "created_at": true}', "validation_error"),
]

# Valid but nasty: stored and labelled, byte for byte.
NASTY_VALID = [
    "'; DROP TABLE review_sentiment; --", "$(rm -rf /) `reboot` && echo pwned | tee /etc/passwd",
    "<script>alert(1)</script>", "Robert'); DELETE FROM review_sentiment WHERE ('1'='1",
    "control \x01\x02\x1b[31m chars \x7f", "emoji 🚀🔥 and RTL \u202e override", "tab\tnew\nline\r\n",
    "%s %d {0} ${HOME} \\x00 not a NUL", "ünïcödé ñ 日本語 العربية", "a" * 19_999,
]


def test_hostile_input_is_dead_lettered_and_valid_rows_kept_byte_for_byte(topics: Settings, uid: str,
                                                                           worker_factory) -> None:
    from kafka import KafkaProducer

    assert len(HOSTILE) >= 30
    s = topics
    worker = worker_factory(s)
    producer = KafkaProducer(acks="all", max_request_size=3_000_000, **s.kafka.client_options())
    expected: dict[str, str] = {}
    n_bad = 0
    for i in range(300):
        rid = f"{uid}-{i}"
        text = NASTY_VALID[i % len(NASTY_VALID)] if i % 3 == 0 else f"plain review {i}"
        source = f"src-{uid}-{i % 3}"
        meta = {"q": "' OR 1=1 --", "n": i, "nested": {"deep": ["$(x)"]}}
        producer.send(s.kafka.reviews_topic, key=rid.encode(),
                      value=json.dumps({"review_id": rid, "text": text, "source": source, "metadata": meta}).encode())
        expected[rid] = text
        if i % 8 == 0:
            _, value, _ = HOSTILE[n_bad % len(HOSTILE)]
            producer.send(s.kafka.reviews_topic, value=value)
            n_bad += 1
    # a duplicate id with a different text: the first stays
    producer.send(s.kafka.reviews_topic, key=f"{uid}-1".encode(),
                  value=json.dumps({"review_id": f"{uid}-1", "text": "other", "source": f"src-{uid}-1"}).encode())
    # every hostile kind at least once
    for _, value, _ in HOSTILE[n_bad:]:
        producer.send(s.kafka.reviews_topic, value=value)
        n_bad += 1
    producer.flush(60)
    producer.close()
    pid = worker.proc.pid
    wait_until(caught_up(s, uid, 300, n_bad), 240, "hostile traffic to be judged", worker.log)
    assert worker.proc.poll() is None and worker.proc.pid == pid, "the worker must never restart"
    rows = {r.review_id: r for r in rows_for(s, uid)}
    assert {rid: r.text for rid, r in rows.items()} == expected
    assert rows[f"{uid}-0"].metadata == {"q": "' OR 1=1 --", "n": 0, "nested": {"deep": ["$(x)"]}}
    letters = read_dead_letters(s.kafka.dlq_topic, s.kafka.client_options())
    by_value: dict[bytes, set[str]] = {}
    for d in letters:
        by_value.setdefault(d.raw_value(), set()).add(d.reason)
    for name, value, reason in HOSTILE:
        assert by_value.get(value) == {reason}, name
    account(s, uid, {"valid": 300, "bad": n_bad}, 0.0, f"hostile input ({len(HOSTILE)} kinds)")
