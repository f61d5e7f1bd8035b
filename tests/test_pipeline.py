"""End to end against real Kafka, Postgres and Redis: the worker labels every valid event, dead-letters
every invalid one with its reason, keeps Redis in step with Postgres, and a full replay changes nothing."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from storage.db import get_engine
from storage.schema import review_sentiment as t
from storage.trends import TrendCounters
from stream.dlq import read_dead_letters
from stream.settings import Settings
from tests.accounting import assert_redis_matches_sql, committed_to_end, produce, rewind_group, rows_for, scrape
from tests.support import wait_until

BAD: list[tuple[bytes, str]] = [
    (b"{not json", "invalid_json"),
    (b"\xc3\x28 invalid utf-8", "invalid_utf8"),
    (b"[]", "not_an_object"),
    (json.dumps({"source": "x"}).encode(), "validation_error"),
    (json.dumps({"text": ""}).encode(), "validation_error"),
    (json.dumps({"text": 12}).encode(), "validation_error"),
    (json.dumps({"text": "x", "created_at": "not a time"}).encode(), "validation_error"),
    (json.dumps({"text": "nul \u0000 inside"}).encode(), "nul_character"),
    (json.dumps({"text": "x" * 20_001}).encode(), "text_too_long"),
]


def make_events(uid: str, n_valid: int) -> tuple[list[tuple[bytes | None, bytes]], dict[str, str], Counter[str]]:
    """(key, value) records, the text expected per explicit id, and the expected dead-letter reasons."""
    rng = random.Random(uid)
    words = ["great", "terrible", "okay", "love", "hate", "slow", "fast", "battery", "delivery", "refund"]
    now = datetime.now(UTC)
    records: list[tuple[bytes | None, bytes]] = []
    expected_text: dict[str, str] = {}
    for i in range(n_valid):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        event: dict[str, object] = {"text": text, "source": f"src-{uid}-{i % 3}"}
        if i % 4:  # every 4th event has no id: the worker derives one from its position
            event["review_id"] = f"{uid}-{i}"
            expected_text[f"{uid}-{i}"] = text
        if i % 2:
            event["created_at"] = (now - timedelta(minutes=rng.randint(0, 90))).isoformat()
        key = str(event["review_id"]).encode() if "review_id" in event else None
        records.append((key, json.dumps(event).encode()))
    # the same id again with another text: the first one stays, nothing is counted twice
    records.append((f"{uid}-1".encode(), json.dumps({"review_id": f"{uid}-1", "text": "changed"}).encode()))
    reasons: Counter[str] = Counter()
    for j in range(3):
        for value, reason in BAD:
            records.insert(rng.randrange(len(records)), (f"bad-{j}".encode(), value))
            reasons[reason] += 1
    return records, expected_text, reasons


def test_worker_labels_dead_letters_and_survives_a_full_replay(topics: Settings, uid: str, worker_factory) -> None:
    settings = topics
    records, expected_text, reasons = make_events(uid, 240)
    n_valid = 240
    produce(settings, records)
    worker = worker_factory(settings)
    opts = settings.kafka.client_options()

    def done() -> bool:
        return len(rows_for(settings, uid)) >= n_valid and len(read_dead_letters(settings.kafka.dlq_topic, opts)) \
            >= sum(reasons.values())

    wait_until(done, 180, "every event labelled or dead-lettered", worker.log)
    wait_until(lambda: committed_to_end(settings), 30, "offsets committed", worker.log)

    rows = rows_for(settings, uid)
    assert len(rows) == n_valid == len({r.review_id for r in rows})
    assert all(r.label in {"negative", "neutral", "positive"} for r in rows)
    assert all(abs(r.p_negative + r.p_neutral + r.p_positive - 1) < 1e-4 for r in rows)
    assert {r.model_version for r in rows} == {settings.model.version}
    by_id = {r.review_id: r for r in rows}
    for rid, text in expected_text.items():
        assert by_id[rid].text == text  # stored byte for byte; the later "changed" duplicate lost
    derived = [r for r in rows if r.review_id not in expected_text]
    assert len(derived) == n_valid // 4
    assert all(r.review_id == f"{r.kafka_topic}:{r.kafka_partition}:{r.kafka_offset}" for r in derived)

    letters = read_dead_letters(settings.kafka.dlq_topic, opts)
    assert Counter(d.reason for d in letters) == reasons
    metrics = scrape(settings.worker.metrics_port)
    assert metrics["sentiment_events_consumed_total"] == len(records)
    assert metrics["sentiment_events_labelled_total"] == n_valid + 1  # + the duplicate id, stored once
    assert metrics["sentiment_events_dead_lettered_total"] == sum(reasons.values())
    assert metrics["sentiment_batch_size_count"] >= len(records) / settings.worker.batch_max
    assert metrics[f'sentiment_model_info{{version="{settings.model.version}"}}'] == 1
    assert all(v == 0 for k, v in metrics.items() if k.startswith("sentiment_consumer_lag"))
    assert {d.raw_value() for d in letters} == {value for value, _ in BAD}
    assert_redis_matches_sql(settings, uid)
    redis_keys = list(TrendCounters.from_url(settings.redis.url.get_secret_value()).client.scan_iter(
        f"{settings.redis.key_prefix}:*"))
    assert redis_keys and all(
        TrendCounters.from_url(settings.redis.url.get_secret_value()).client.ttl(k) > 0 for k in redis_keys)

    # Replay everything: stop the worker, forget the group's offsets, start again from the beginning.
    assert worker.stop() == 0, worker.log()
    rewind_group(settings)
    assert not committed_to_end(settings)
    replay = worker_factory(settings)
    wait_until(lambda: committed_to_end(settings), 180, "the replay to reach the end", replay.log)
    assert "batch of" in replay.log()
    after = rows_for(settings, uid)
    assert sorted((r.review_id, r.label, r.processed_at) for r in after) == sorted(
        (r.review_id, r.label, r.processed_at) for r in rows)
    assert_redis_matches_sql(settings, uid)
    assert Counter(d.reason for d in read_dead_letters(settings.kafka.dlq_topic, opts)) == reasons
    with get_engine(settings.postgres.url.get_secret_value()).connect() as conn:
        assert conn.execute(select(func.count()).where(t.c.source.like(f"src-{uid}-%"))).scalar() == n_valid
