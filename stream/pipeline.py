"""One micro-batch, start to finish: judge, label, store, count.

Runs on a worker thread (never the event loop). ``process`` returns only when every record of the
batch is either a row in Postgres (and counted in Redis) or a dead letter in Kafka; only then does
the agent acknowledge the batch. A sink that is down is retried with backoff, never skipped, so a
crash or outage at any point replays the batch, and the sinks' idempotency absorbs the replay.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis
from kafka.errors import KafkaError
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from storage.db import is_transient
from storage.reviews import LabelledReview, StoredLabel, insert_reviews
from storage.trends import TrendCounters
from stream.dlq import DeadLetter, DeadLetterWriter
from stream.events import RawRecord, Rejection, ValidEvent, parse_record
from stream.predictor import Prediction, Predictor

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stopping(Exception):
    """The worker is shutting down while a sink is still unavailable: leave the batch unacknowledged."""


@dataclass
class BatchResult:
    labelled: int = 0
    dead_lettered: int = 0
    newly_counted: int = 0
    infer_s: float = 0.0
    total_s: float = 0.0


class Retrier:
    """Retries an operation while its failure is transient, with capped exponential backoff."""

    def __init__(self, max_backoff_s: float = 30.0, stop: threading.Event | None = None) -> None:
        self.max_backoff_s = max_backoff_s
        self.stop = stop or threading.Event()

    def __call__(self, what: str, fn: Callable[[], T], transient: Callable[[BaseException], bool]) -> T:
        delay = 0.25
        while True:
            try:
                return fn()
            except Exception as e:
                if not transient(e):
                    raise
                log.warning("%s failed (%s: %s); retrying in %.1fs", what, type(e).__name__,
                            str(e).splitlines()[0] if str(e) else "", delay)
            if self.stop.wait(delay):
                raise Stopping(what)
            delay = min(delay * 2, self.max_backoff_s)


def _redis_transient(e: BaseException) -> bool:
    return isinstance(e, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError)


def _kafka_transient(e: BaseException) -> bool:
    return isinstance(e, KafkaError)


class BatchProcessor:
    def __init__(
        self,
        predictor: Predictor,
        engine: Engine,
        trends: TrendCounters,
        dead_letters: DeadLetterWriter,
        max_text_chars: int = 20_000,
        max_metadata_bytes: int = 16_384,
        retrier: Retrier | None = None,
        postgres_address: str = "postgres",
        redis_address: str = "redis",
    ) -> None:
        self.predictor = predictor
        self.engine = engine
        self.trends = trends
        self.dead_letters = dead_letters
        self.max_text_chars = max_text_chars
        self.max_metadata_bytes = max_metadata_bytes
        self.retry = retrier or Retrier()
        self.postgres_address = postgres_address
        self.redis_address = redis_address

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        started = time.perf_counter()
        result = BatchResult()
        valid: list[tuple[RawRecord, ValidEvent]] = []
        rejected: list[DeadLetter] = []
        for record in records:
            judged = parse_record(record, self.max_text_chars, self.max_metadata_bytes)
            if isinstance(judged, Rejection):
                rejected.append(DeadLetter.of(record, judged))
            else:
                valid.append((record, judged))

        t0 = time.perf_counter()
        predictions = self._predict(valid, rejected)
        result.infer_s = time.perf_counter() - t0

        pairs = [
            (record, _labelled(record, event, pred, self.predictor.version))
            for (record, event), pred in zip(valid, predictions, strict=True)
            if pred is not None
        ]
        before = len(rejected)
        stored = self._store(pairs, rejected)
        result.labelled = len(pairs) - (len(rejected) - before)
        if rejected:
            self.retry(f"dead-letter topic {self.dead_letters.topic}", lambda: self.dead_letters.write(rejected),
                       _kafka_transient)
        result.newly_counted = self.retry(f"Redis at {self.redis_address}", lambda: self.trends.count(stored),
                                          _redis_transient)
        result.dead_lettered = len(rejected)
        result.total_s = time.perf_counter() - started
        return result

    def _predict(self, valid: list[tuple[RawRecord, ValidEvent]], rejected: list[DeadLetter]
                 ) -> list[Prediction | None]:
        """Label the batch; if the model fails on it, label one by one and dead-letter the culprits."""
        texts = [event.text for _, event in valid]
        try:
            return list(self.predictor.predict(texts))
        except Exception:
            log.exception("model failed on a batch of %d; retrying one by one", len(texts))
        out: list[Prediction | None] = []
        for record, event in valid:
            try:
                out.append(self.predictor.predict([event.text])[0])
            except Exception as e:
                rejected.append(DeadLetter.of(record, Rejection("model_error", f"{type(e).__name__}: {e}")))
                out.append(None)
        return out

    def _store(self, pairs: list[tuple[RawRecord, LabelledReview]], rejected: list[DeadLetter]
               ) -> list[StoredLabel]:
        """Insert the batch; a row Postgres refuses is dead-lettered instead of blocking the stream."""
        what = f"Postgres at {self.postgres_address}"
        reviews = [review for _, review in pairs]
        try:
            return self.retry(what, lambda: insert_reviews(self.engine, reviews), is_transient)
        except sa_exc.DBAPIError as e:
            log.warning("Postgres refused the batch (%s); inserting row by row", type(e.orig).__name__)
        stored: list[StoredLabel] = []
        for record, review in pairs:
            try:
                stored += self.retry(what, lambda r=review: insert_reviews(self.engine, [r]), is_transient)
            except sa_exc.DBAPIError as e:
                detail = str(e.orig).splitlines()[0] if e.orig else str(e)
                rejected.append(DeadLetter.of(record, Rejection("storage_rejected", detail)))
        return stored


def _labelled(record: RawRecord, event: ValidEvent, pred: Prediction, version: str) -> LabelledReview:
    return LabelledReview(
        review_id=event.review_id,
        text=event.text,
        source=event.source,
        created_at=event.created_at,
        label=pred.label,
        score=pred.score,
        p_negative=pred.probs["negative"],
        p_neutral=pred.probs["neutral"],
        p_positive=pred.probs["positive"],
        model_version=version,
        metadata=event.metadata,
        kafka_topic=record.topic,
        kafka_partition=record.partition,
        kafka_offset=record.offset,
    )
