"""BatchProcessor against the real services: a sink that is down is waited for, never skipped; a row
Postgres refuses is dead-lettered instead of blocking the stream."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from sentiment_model.predictor import Prediction, Predictor
from storage.db import get_engine
from storage.schema import review_sentiment as t
from storage.trends import TrendCounters
from stream.dlq import DeadLetterWriter, read_dead_letters
from stream.events import RawRecord
from stream.pipeline import BatchProcessor, Retrier, Stopping
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
