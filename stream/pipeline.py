"""One micro-batch, start to finish: judge, label, store, count.

Runs on a worker thread (never the event loop). ``process`` returns only when every record of the
batch is either a row in Postgres (and counted in Redis) or a dead letter in Kafka; only then does
the agent acknowledge the batch. A sink that is down is retried with backoff, never skipped, so a
crash or outage at any point replays the batch, and the sinks' idempotency absorbs the replay.

``process`` is ``store(label(records))``; the two halves are public so that a GPU worker can store
batch N while batch N+1 is on the GPU (``stream.app``). Model hot reload happens at the start of
``label``, between batches and on the labelling thread: each batch is labelled by exactly one model, and
each row records which one (``model_version``), so a switch neither loses nor relabels an event.
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
from storage.registry import ModelRef
from storage.reviews import LabelledReview, StoredLabel, insert_reviews
from storage.trends import TrendCounters
from stream.dlq import DeadLetter, DeadLetterWriter
from stream.drift import DriftMonitor
from stream.events import RawRecord, Rejection, ValidEvent, parse_record
from stream.predictor import Prediction, Predictor, release_memory

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


@dataclass
class Labelled:
    """A judged and labelled batch, not yet stored (the half-way point of ``process``)."""

    pairs: list[tuple[RawRecord, LabelledReview]]
    rejected: list[DeadLetter]
    infer_s: float
    started: float


class ModelFollower:
    """Keeps a worker on the registry's production model: polled between batches, at most every interval.

    The poll is one indexed SELECT; a new version is loaded on the calling (labelling) thread, so the
    event loop never blocks and the swap happens before the next batch. Registry trouble never stops the
    stream: the worker keeps serving the model it has and says why in the log.
    """

    def __init__(self, production: Callable[[], ModelRef | None], load: Callable[[ModelRef], Predictor],
                 interval_s: float = 5.0, on_swap: Callable[[str], None] | None = None) -> None:
        self.production = production
        self.load = load
        self.interval_s = interval_s
        self.on_swap = on_swap
        self._next_check = time.monotonic() + interval_s
        self._failed: str | None = None  # a version that would not load: not retried until production moves
        self._warned = False

    def poll(self, serving: str) -> Predictor | None:
        """A freshly loaded predictor when production is no longer ``serving``; else None."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + self.interval_s
        try:
            ref = self.production()
        except sa_exc.ProgrammingError as e:  # registry tables missing: an older schema
            if not self._warned:
                log.warning("model registry unavailable (%s); run `sentiment init` to add it. Serving %s",
                            str(e.orig).splitlines()[0] if e.orig else e, serving)
                self._warned = True
            return None
        except Exception as e:
            log.warning("cannot read the model registry (%s: %s); still serving %s", type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "", serving)
            return None
        if ref is None or ref.version in (serving, self._failed):
            return None
        started = time.perf_counter()
        try:
            predictor = self.load(ref)
        except Exception:
            log.exception("cannot load production model %s from %s; still serving %s", ref.version,
                          ref.artifact_dir, serving)
            self._failed = ref.version
            return None
        log.info("loaded production model %s in %.1fs", ref.version, time.perf_counter() - started)
        return predictor


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
        follower: ModelFollower | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.predictor = predictor
        self.drift = drift
        if drift is not None:
            drift.set_model(predictor.version, predictor.model_dir)
        self.follower = follower
        self.swaps = 0
        self.engine = engine
        self.trends = trends
        self.dead_letters = dead_letters
        self.max_text_chars = max_text_chars
        self.max_metadata_bytes = max_metadata_bytes
        self.retry = retrier or Retrier()
        self.postgres_address = postgres_address
        self.redis_address = redis_address

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        return self.store(self.label(records))

    def label(self, records: Sequence[RawRecord]) -> Labelled:
        """Judge every record and label the valid ones, all with the same model."""
        started = time.perf_counter()
        self._follow_registry()
        valid: list[tuple[RawRecord, ValidEvent]] = []
        rejected: list[DeadLetter] = []
        for record in records:
            judged = parse_record(record, self.max_text_chars, self.max_metadata_bytes)
            if isinstance(judged, Rejection):
                rejected.append(DeadLetter.of(record, judged))
            else:
                valid.append((record, judged))

        t0 = time.perf_counter()
        predictor = self.predictor
        predictions = self._predict(predictor, valid, rejected)
        infer_s = time.perf_counter() - t0
        pairs = [
            (record, _labelled(record, event, pred, predictor.version))
            for (record, event), pred in zip(valid, predictions, strict=True)
            if pred is not None
        ]
        return Labelled(pairs, rejected, infer_s, started)

    def store(self, labelled: Labelled) -> BatchResult:
        """Write the rows, dead-letter what failed, count the stored rows; retried until done or stopping."""
        result = BatchResult(infer_s=labelled.infer_s)
        rejected = list(labelled.rejected)
        before = len(rejected)
        stored = self._store(labelled.pairs, rejected)
        result.labelled = len(labelled.pairs) - (len(rejected) - before)
        if rejected:
            self.retry(f"dead-letter topic {self.dead_letters.topic}", lambda: self.dead_letters.write(rejected),
                       _kafka_transient)
        result.newly_counted = self.retry(f"Redis at {self.redis_address}", lambda: self.trends.count(stored),
                                          _redis_transient)
        result.dead_lettered = len(rejected)
        if self.drift is not None:
            self.drift.observe(stored)
        result.total_s = time.perf_counter() - labelled.started
        return result

    def _follow_registry(self) -> None:
        """Swap in the production model if it changed; the old one is freed before the next batch."""
        if self.follower is None:
            return
        new = self.follower.poll(self.predictor.version)
        if new is None:
            return
        old = self.predictor.version
        self.predictor = new  # the old model's last reference: freed here
        del new
        release_memory()
        self.swaps += 1
        log.info("model switched %s -> %s between batches (swap %d)", old, self.predictor.version, self.swaps)
        if self.drift is not None:
            self.drift.set_model(self.predictor.version, self.predictor.model_dir)
        if self.follower.on_swap is not None:
            self.follower.on_swap(self.predictor.version)

    @staticmethod
    def _predict(predictor: Predictor, valid: list[tuple[RawRecord, ValidEvent]], rejected: list[DeadLetter]
                 ) -> list[Prediction | None]:
        """Label the batch; if the model fails on it, label one by one and dead-letter the culprits."""
        texts = [event.text for _, event in valid]
        try:
            return list(predictor.predict(texts))
        except Exception:
            log.exception("model failed on a batch of %d; retrying one by one", len(texts))
        out: list[Prediction | None] = []
        for record, event in valid:
            try:
                out.append(predictor.predict([event.text])[0])
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
