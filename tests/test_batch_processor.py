"""BatchProcessor against the real services: a sink that is down is waited for, never skipped; a row
Postgres refuses is dead-lettered instead of blocking the stream."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import select

from sentiment_model.predictor import Prediction, Predictor
from storage.db import get_engine
from storage.schema import review_sentiment as t
from storage.trends import TrendCounters
from stream.dlq import DeadLetter, DeadLetterWriter, read_dead_letters
from stream.events import RawRecord, Rejection
from stream.pipeline import BatchProcessor, Retrier, Stopping, Unpinned
from stream.settings import Settings
from tests.support import free_port


def records(topic: str, uid: str, n: int) -> list[RawRecord]:
    return [RawRecord(topic, 0, i, int(time.time() * 1000), None,
                      json.dumps({"review_id": f"{uid}-{i}", "text": f"text {i}", "source": f"s-{uid}"}).encode())
            for i in range(n)]


def processor(settings: Settings, predictor: Predictor, redis_url: str, stop: threading.Event) -> BatchProcessor:
    return BatchProcessor(
        predictor, get_engine(settings.postgres.url.get_secret_value()),
        TrendCounters(redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1),
                      prefix=settings.redis.key_prefix),
        DeadLetterWriter(settings.kafka.dlq_topic, settings.kafka.client_options()),
        retrier=Retrier(max_backoff_s=0.5, stop=stop),
    )


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (make up installs it)")
def test_redis_outage_is_waited_out_then_counted_once(topics: Settings, uid: str, tiny_model: Path,
                                                      tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    stop = threading.Event()
    proc = processor(topics, Predictor(tiny_model, device="cpu", threads=1), url, stop)
    result: dict[str, object] = {}
    batch = records(topics.kafka.reviews_topic, uid, 20)
    worker = threading.Thread(target=lambda: result.update(r=proc.process(batch)))
    worker.start()
    time.sleep(2.0)  # the batch is stored in Postgres and now waits for Redis
    assert worker.is_alive()
    with get_engine(topics.postgres.url.get_secret_value()).connect() as conn:
        assert len(conn.execute(select(t.c.review_id).where(t.c.source == f"s-{uid}")).all()) == 20
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        worker.join(30)
        assert not worker.is_alive()
        assert result["r"].labelled == 20 and result["r"].newly_counted == 20
        assert any("Redis at" in m or "failed" in m for m in caplog.messages)
        assert sum(b.total for b in TrendCounters(redis.Redis.from_url(url), prefix=topics.redis.key_prefix)
                   .read("h", 1, source=f"s-{uid}")) == 20
    finally:
        server.terminate()
        server.wait(10)


def test_stopping_during_an_outage_leaves_the_batch_unacknowledged(topics: Settings, uid: str,
                                                                    tiny_model: Path) -> None:
    stop = threading.Event()
    proc = processor(topics, Predictor(tiny_model, device="cpu", threads=1), f"redis://127.0.0.1:{free_port()}/0",
                     stop)
    threading.Timer(1.0, stop.set).start()
    with pytest.raises(Stopping):
        proc.process(records(topics.kafka.reviews_topic, uid, 3))


class BadLabelFor:
    """Wraps the real predictor and returns a label Postgres's check constraint refuses for one text."""

    def __init__(self, inner: Predictor, poison: str) -> None:
        self.inner, self.poison, self.version = inner, poison, "poison-test"

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        preds = self.inner.predict(texts)
        return [Prediction("sarcastic", p.score, p.probs) if text == self.poison else p
                for text, p in zip(texts, preds, strict=True)]


def test_a_row_postgres_refuses_is_dead_lettered_and_the_rest_stored(topics: Settings, uid: str,
                                                                     tiny_model: Path) -> None:
    stop = threading.Event()
    proc = processor(topics, Predictor(tiny_model, device="cpu", threads=1), topics.redis.url.get_secret_value(),
                     stop)
    proc.predictor = BadLabelFor(proc.predictor, "text 3")  # type: ignore[assignment]
    result = proc.process(records(topics.kafka.reviews_topic, uid, 6))
    assert (result.labelled, result.dead_lettered) == (5, 1)
    with get_engine(topics.postgres.url.get_secret_value()).connect() as conn:
        ids = {r for (r,) in conn.execute(select(t.c.review_id).where(t.c.source == f"s-{uid}"))}
    assert ids == {f"{uid}-{i}" for i in (0, 1, 2, 4, 5)}
    letters = read_dead_letters(topics.kafka.dlq_topic, topics.kafka.client_options())
    assert [(d.reason, d.record.offset) for d in letters] == [("storage_rejected", 3)]
    assert "review_sentiment_label_check" in letters[0].detail


# Issue 13: a record that used to crash the worker is dead-lettered, and the valid rows of its batch stored.
REPRODUCTIONS: list[tuple[str, bytes, str]] = [
    ("created_at -1e308", b'{"text": "x", "created_at": -1e308}', "validation_error"),
    ("created_at 1e20", b'{"text": "x", "created_at": 1e20}', "validation_error"),
    ("id of 4,301 digits", b'{"text": "x", "review_id": ' + b"7" * 4301 + b"}", "invalid_json"),
    ("metadata int of 4,301 digits", b'{"text": "x", "metadata": {"n": ' + b"7" * 4301 + b"}}", "invalid_json"),
    ("metadata nested 500 levels (3 KB)", b'{"text": "x", "metadata": ' + b'{"a":' * 500 + b"1" + b"}" * 501,
     "invalid_json"),
    ("NaN in metadata (jsonb refuses it)", b'{"text": "x", "metadata": {"a": NaN}}', "validation_error"),
    ("NUL in a metadata key", b'{"text": "x", "metadata": {"k\\u0000": 1}}', "nul_character"),
]


@pytest.mark.parametrize(("name", "value", "reason"), REPRODUCTIONS, ids=[r[0] for r in REPRODUCTIONS])
def test_a_record_that_crashed_the_worker_is_dead_lettered_and_its_batch_stored(
        name: str, value: bytes, reason: str, topics: Settings, uid: str, tiny_model: Path) -> None:
    proc = processor(topics, Predictor(tiny_model, device="cpu", threads=1), topics.redis.url.get_secret_value(),
                     threading.Event())
    batch = records(topics.kafka.reviews_topic, uid, 6)
    batch.insert(3, RawRecord(topics.kafka.reviews_topic, 0, 99, int(time.time() * 1000), b"\xff" * 64, value))
    result = proc.process(batch)
    assert (result.labelled, result.dead_lettered) == (6, 1)
    with get_engine(topics.postgres.url.get_secret_value()).connect() as conn:
        ids = {r for (r,) in conn.execute(select(t.c.review_id).where(t.c.source == f"s-{uid}"))}
    assert ids == {f"{uid}-{i}" for i in range(6)}
    letters = read_dead_letters(topics.kafka.dlq_topic, topics.kafka.client_options())
    assert [(d.reason, d.record.offset, d.raw_value(), d.record.key) for d in letters] == [
        (reason, 99, value, b"\xff" * 64)]


class Unusable:
    """The real predictor, except that one text gets a NaN probability (Redis cannot count it)."""

    def __init__(self, inner: Predictor, poison: str) -> None:
        self.inner, self.poison, self.version = inner, poison, "nan-test"

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [Prediction(p.label, float("nan"), p.probs) if text == self.poison else p
                for text, p in zip(texts, self.inner.predict(texts), strict=True)]


def test_a_prediction_that_cannot_be_counted_is_dead_lettered_before_it_is_stored(
        topics: Settings, uid: str, tiny_model: Path) -> None:
    proc = processor(topics, Predictor(tiny_model, device="cpu", threads=1), topics.redis.url.get_secret_value(),
                     threading.Event())
    proc.predictor = Unusable(proc.predictor, "text 2")  # type: ignore[assignment]
    result = proc.process(records(topics.kafka.reviews_topic, uid, 5))
    assert (result.labelled, result.dead_lettered, result.newly_counted) == (4, 1, 4)
    letters = read_dead_letters(topics.kafka.dlq_topic, topics.kafka.client_options())
    assert [(d.reason, d.record.offset) for d in letters] == [("model_error", 2)]
    with get_engine(topics.postgres.url.get_secret_value()).connect() as conn:
        assert conn.execute(select(t.c.review_id).where(t.c.review_id == f"{uid}-2")).first() is None


def test_a_row_that_cannot_even_be_sent_is_dead_lettered_naming_the_exception(
        topics: Settings, uid: str, tiny_model: Path) -> None:
    """The store step's own safety net: a row whose values raise while being serialised (here metadata
    nested past the interpreter's recursion limit, built by hand since parse_record refuses it)."""
    proc = processor(topics, Predictor(tiny_model, device="cpu", threads=1), topics.redis.url.get_secret_value(),
                     threading.Event())
    labelled = proc.label(records(topics.kafka.reviews_topic, uid, 4))
    deep: dict = {}
    for _ in range(5000):
        deep = {"a": deep}
    rec, review = labelled.pairs[1]
    labelled.pairs[1] = (rec, replace(review, metadata=deep))
    result = proc.store(labelled)
    assert (result.labelled, result.dead_lettered, result.newly_counted) == (3, 1, 3)
    letters = read_dead_letters(topics.kafka.dlq_topic, topics.kafka.client_options())
    assert [(d.reason, d.record.offset) for d in letters] == [("storage_failed:RecursionError", 1)]
    assert letters[0].detail.startswith("RecursionError")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (make up installs it)")
def test_redis_refusing_a_batch_is_not_pinned_on_a_record(topics: Settings, uid: str, tiny_model: Path,
                                                          tmp_path: Path) -> None:
    """A Redis that refuses the counting script (EVAL disabled by its operator) fails the whole batch: the
    processor raises Unpinned (the worker then stops without acking) instead of dead-lettering rows."""
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--dir", str(tmp_path), "--rename-command", "EVAL", "",
                               "--rename-command", "EVALSHA", ""], stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        proc = processor(topics, Predictor(tiny_model, device="cpu", threads=1), url, threading.Event())
        with pytest.raises(Unpinned, match="refused to count"):
            proc.process(records(topics.kafka.reviews_topic, uid, 3))
        assert read_dead_letters(topics.kafka.dlq_topic, topics.kafka.client_options()) == []
    finally:
        server.terminate()
        server.wait(10)


def test_a_dead_letter_built_from_hostile_data_is_always_written(topics: Settings) -> None:
    """Headers are bounded bytes whatever the detail holds; a record too large for the dead-letter topic keeps
    its position, reason, size and SHA-256 (the value stays in the source topic)."""
    writer = DeadLetterWriter(topics.kafka.dlq_topic, topics.kafka.client_options())
    big = b"v" * 2_500_000
    hostile_detail = "\ud800\x00" + "d" * 1_000_000
    letters = [
        DeadLetter.of(RawRecord(topics.kafka.reviews_topic, 0, 1, None, b"\xff" * 10, b"x"),
                      Rejection("invalid_json", hostile_detail)),
        DeadLetter.of(RawRecord(topics.kafka.reviews_topic, 0, 2, 1, b"k", big), Rejection("record_too_large", "big")),
    ]
    assert all(len(v) <= 8000 for d in letters for _, v in d.headers())
    assert writer.write(letters) == 2
    writer.close()
    read = {d.record.offset: d for d in read_dead_letters(topics.kafka.dlq_topic, topics.kafka.client_options())}
    assert read[1].record.key == b"\xff" * 10 and read[1].raw_value() == b"x"
    assert read[1].detail.startswith("?") and len(read[1].detail) == 2000
    assert read[2].raw_value() is None and read[2].record.key == b"k" and read[2].reason == "record_too_large"
    consumer = KafkaConsumer(**topics.kafka.client_options(), enable_auto_commit=False)
    tp = TopicPartition(topics.kafka.dlq_topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records = [r for batch in consumer.poll(timeout_ms=5000).values() for r in batch]
    consumer.close()
    h = dict(records[-1].headers)
    assert h["dlq.value_bytes"] == b"2500000"
    assert h["dlq.value_sha256"] == hashlib.sha256(big).hexdigest().encode()
