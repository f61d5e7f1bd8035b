"""One micro-batch, start to finish: judge, label, store, count.

Runs on a worker thread (never the event loop). ``process`` returns only when every record of the
batch is either a row in Postgres (and counted in Redis) or a dead letter in Kafka; only then does
the agent acknowledge the batch. A sink that is down is retried with backoff, never skipped, so a
crash or outage at any point replays the batch, and the sinks' idempotency absorbs the replay.

``process`` is ``store(label(records))``; the two halves are public so that a GPU worker can store
batch N while batch N+1 is on the GPU (``stream.app``). Model hot reload happens at the start of
``label``, between batches and on the labelling thread: each batch is labelled by exactly one model, and
each row records which one (``model_version``), so a switch neither loses nor relabels an event.

Shadow evaluation (``storage.shadow``): when the registry has an active shadow deployment, ``label``
also runs the candidate on the batch's sampled reviews (after production, both timed) and ``store``
records the comparison after the production rows are stored and counted, never as review labels. A
candidate that fails to load, to predict or to be recorded is dropped with a log line; production goes on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import redis
from kafka.errors import KafkaError
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from sentiment_model.artifact import is_model_dir
from sentiment_model.labels import LABELS
from sentiment_model.predictor import Prediction, Predictor, release_memory
from storage.db import is_transient
from storage.registry import ModelRef
from storage.reviews import LabelledReview, StoredLabel, insert_reviews
from storage.sampling import in_sample
from storage.shadow import ShadowBatch, ShadowDeployment, ShadowPrediction
from storage.shadow import record as record_shadow
from storage.trends import TrendCounters
from stream.dlq import DeadLetter, DeadLetterWriter
from stream.drift import DriftMonitor
from stream.events import RawRecord, Rejection, ValidEvent, describe, parse_record

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stopping(Exception):
    """The worker is shutting down while a sink is still unavailable: leave the batch unacknowledged."""


class Unpinned(Exception):
    """A failure that no single record explains (a sink refusing everything, a bug): the worker must stop
    without acknowledging the batch, so that a restarted worker replays it (``stream.app``)."""


@dataclass
class BatchResult:
    labelled: int = 0
    dead_lettered: int = 0
    newly_counted: int = 0
    infer_s: float = 0.0
    total_s: float = 0.0
    shadow_candidate: str | None = None  # shadow evaluation: the candidate, the reviews it labelled,
    shadowed: int = 0  # how many of those it labelled as production did, and its model time
    shadow_agreed: int = 0
    shadow_infer_s: float = 0.0


@dataclass
class Shadow:
    """The candidate a worker runs in shadow, and the deployment that asked for it."""

    deployment: ShadowDeployment
    predictor: Predictor


@dataclass
class ShadowLabelled:
    """The candidate's labels of a batch's sampled reviews, and the batch's timing."""

    deployment_id: int
    candidate: str
    predictions: list[ShadowPrediction]
    batch: ShadowBatch


@dataclass
class Labelled:
    """A judged and labelled batch, not yet stored (the half-way point of ``process``)."""

    pairs: list[tuple[RawRecord, LabelledReview]]
    rejected: list[DeadLetter]
    infer_s: float
    started: float
    shadow: ShadowLabelled | None = None


class ModelFollower:
    """Keeps a worker on the registry's production model: polled between batches, at most every interval.

    The poll is one indexed SELECT; a new version is loaded on the calling (labelling) thread, so the
    event loop never blocks and the swap happens before the next batch. Registry trouble never stops the
    stream: the worker keeps serving the model it has and says why in the log.
    """

    def __init__(self, production: Callable[[], ModelRef | None], load: Callable[[ModelRef], Predictor],
                 interval_s: float = 5.0, on_swap: Callable[[str], None] | None = None,
                 shadow: Callable[[], ShadowDeployment | None] | None = None,
                 on_shadow: Callable[[ShadowDeployment | None], None] | None = None) -> None:
        self.production = production
        self.load = load
        self.interval_s = interval_s
        self.on_swap = on_swap
        self._next_check = time.monotonic() + interval_s
        self._failed: str | None = None  # a version that would not load: not retried until production moves
        self._warned = False
        self.shadow = shadow  # the active shadow deployment, if any (None: this worker never shadows)
        self.on_shadow = on_shadow
        self._next_shadow_check = 0.0  # at the first batch: a restarted worker shadows its replay too
        self._shadow_failed: int | None = None  # a deployment whose candidate failed: not retried
        self._shadow_skipped: int | None = None  # a deployment of the version being served (said once)
        self._shadow_warned = False

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

    def poll_shadow(self, serving: str, current: Shadow | None) -> Shadow | None:
        """The shadow to run from the next batch on (``current`` itself when nothing changed; None: none).

        One indexed SELECT at most every interval. A candidate is loaded like production (same device and
        serving path); if it cannot be, that deployment is dropped and production goes on unchanged.
        """
        if self.shadow is None:
            return current
        now = time.monotonic()
        promoted = current is not None and current.deployment.candidate == serving  # never shadow production itself
        if now < self._next_shadow_check and not promoted:
            return current
        self._next_shadow_check = now + self.interval_s
        try:
            dep = self.shadow()
        except sa_exc.ProgrammingError:  # no shadow tables yet: an older schema, so nothing to shadow
            return None
        except Exception as e:
            if not self._shadow_warned:
                log.warning("cannot read the shadow deployment (%s: %s); keeping the current one", type(e).__name__,
                            str(e).splitlines()[0] if str(e) else "")
                self._shadow_warned = True
            return current
        self._shadow_warned = False
        if dep is None or dep.id == self._shadow_failed:
            return None
        if dep.candidate == serving:
            if self._shadow_skipped != dep.id:
                log.info("shadow deployment %d: %s is the production model now; not shadowing it", dep.id, serving)
                self._shadow_skipped = dep.id
            return None
        if current is not None and current.deployment.candidate == dep.candidate:
            return current if current.deployment == dep else Shadow(dep, current.predictor)  # e.g. a new share
        if dep.artifact_dir is None or not is_model_dir(dep.artifact_dir):
            log.warning("shadow candidate %s: %s is not readable on this machine; not shadowing it", dep.candidate,
                        dep.artifact_dir)
            self._shadow_failed = dep.id
            return None
        started = time.perf_counter()
        try:
            predictor = self.load(ModelRef(dep.candidate, dep.artifact_dir))
        except Exception:
            log.exception("cannot load shadow candidate %s from %s; not shadowing it (production unaffected)",
                          dep.candidate, dep.artifact_dir)
            self._shadow_failed = dep.id
            return None
        log.info("loaded shadow candidate %s in %.1fs", dep.candidate, time.perf_counter() - started)
        return Shadow(dep, predictor)

    def shadow_failed(self, deployment_id: int) -> None:
        """The candidate failed while running: do not load it again for this deployment."""
        self._shadow_failed = deployment_id


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
    return isinstance(e, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError | redis.OutOfMemoryError
                      | redis.exceptions.ClusterDownError | redis.exceptions.TryAgainError)  # OOM: noeviction


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
        self.shadow: Shadow | None = None  # set by the follower when the registry asks for a shadow run
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
            judged = parse_record(record, self.max_text_chars, self.max_metadata_bytes)  # never raises
            if isinstance(judged, Rejection):
                rejected.append(DeadLetter.of(record, judged))
            else:
                valid.append((record, judged))

        t0 = time.perf_counter()
        predictor = self.predictor
        predictions = self._predict(predictor, valid, rejected)
        infer_s = time.perf_counter() - t0
        pairs: list[tuple[RawRecord, LabelledReview]] = []
        for (record, event), pred in zip(valid, predictions, strict=True):
            if pred is None:
                continue
            try:
                pairs.append((record, _labelled(record, event, pred, predictor.version)))
            except Exception as e:
                rejected.append(DeadLetter.of(record, Rejection.failure("label", e)))
        shadow = self._shadow_label(pairs, infer_s) if self.shadow is not None and pairs else None
        return Labelled(pairs, rejected, infer_s, started, shadow)

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
        countable = _countable(stored)
        try:
            result.newly_counted = self.retry(f"Redis at {self.redis_address}", lambda: self.trends.count(countable),
                                              _redis_transient)
        except Stopping:
            raise
        except Exception as e:  # one script counts the whole batch: no single record explains its failure
            raise Unpinned(f"Redis at {self.redis_address} refused to count a batch ({describe(e, 200)})") from e
        if labelled.shadow is not None:
            self._store_shadow(labelled.shadow, {s.review_id for s in stored}, result)
        result.dead_lettered = len(rejected)
        if self.drift is not None:
            try:
                self.drift.observe(countable)
            except Exception as e:  # drift is a by-product: it never holds up the stream
                log.warning("drift: cannot observe a batch (%s)", describe(e, 200))
        result.total_s = time.perf_counter() - labelled.started
        return result

    def _follow_registry(self) -> None:
        """Swap in the production model if it changed; the old one is freed before the next batch."""
        if self.follower is None:
            return
        new = self.follower.poll(self.predictor.version)
        if new is not None:
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
        self._follow_shadow()

    def _follow_shadow(self) -> None:
        """Start, change or stop the shadow run as the registry says (between batches)."""
        assert self.follower is not None
        before = self.shadow
        after = self.follower.poll_shadow(self.predictor.version, before)
        if after is before:
            return
        self._set_shadow(after)
        if after is not None:
            log.info("shadow evaluation: %s on %.0f%% of reviews (deployment %d), beside production %s",
                     after.deployment.candidate, after.deployment.share * 100, after.deployment.id,
                     self.predictor.version)

    def _set_shadow(self, shadow: Shadow | None) -> None:
        before, self.shadow = self.shadow, shadow
        if before is not None and (shadow is None or shadow.predictor is not before.predictor):
            log.info("shadow evaluation of %s stopped (deployment %d)", before.deployment.candidate,
                     before.deployment.id)
            del before
            release_memory()
        if self.follower is not None and self.follower.on_shadow is not None:
            self.follower.on_shadow(shadow.deployment if shadow else None)

    def _drop_shadow(self, shadow: Shadow, why: str) -> None:
        """A candidate that fails is dropped for its deployment; production goes on as it was."""
        log.error("shadow candidate %s %s; shadow evaluation of it dropped (production unaffected)",
                  shadow.deployment.candidate, why, exc_info=True)
        if self.follower is not None:
            self.follower.shadow_failed(shadow.deployment.id)
        if self.shadow is shadow:
            self._set_shadow(None)

    def _shadow_label(self, pairs: list[tuple[RawRecord, LabelledReview]], production_s: float
                      ) -> ShadowLabelled | None:
        """Label the batch's sampled reviews with the shadow candidate; None if it fails (then it is dropped)."""
        shadow = self.shadow
        assert shadow is not None
        dep = shadow.deployment
        sample = [review for _, review in pairs if in_sample(review.review_id, dep.share)]
        t0 = time.perf_counter()
        try:
            preds = list(shadow.predictor.predict([r.text for r in sample])) if sample else []
            if len(preds) != len(sample):
                raise ValueError(f"{len(preds)} predictions for {len(sample)} texts")
        except Exception as e:
            self._drop_shadow(shadow, f"failed on a batch of {len(sample)} ({type(e).__name__}: {e})")
            return None
        candidate_s = time.perf_counter() - t0
        first = pairs[0][0]
        batch = ShadowBatch(dep.candidate, first.topic, first.partition, first.offset, self.predictor.version,
                            len(pairs), len(sample), production_s * 1000, candidate_s * 1000)
        predictions = [ShadowPrediction(r.review_id, r.model_version, r.label, p.label, p.score)
                       for r, p in zip(sample, preds, strict=True)]
        return ShadowLabelled(dep.id, dep.candidate, predictions, batch)

    def _store_shadow(self, shadow: ShadowLabelled, stored_ids: set[str], result: BatchResult) -> None:
        """Record the comparison for the reviews whose production row is stored (never as review labels)."""
        predictions = [p for p in shadow.predictions if p.review_id in stored_ids]
        try:
            self.retry(f"Postgres at {self.postgres_address} (shadow results)",
                       lambda: record_shadow(self.engine, shadow.candidate, predictions, shadow.batch), is_transient)
        except Stopping:
            raise
        except Exception as e:
            current = self.shadow
            if current is not None and current.deployment.id == shadow.deployment_id:
                self._drop_shadow(current, f"results cannot be recorded ({type(e).__name__})")
            return
        result.shadow_candidate = shadow.candidate
        result.shadowed = len(predictions)
        result.shadow_agreed = sum(p.candidate_label == p.production_label for p in predictions)
        result.shadow_infer_s = shadow.batch.candidate_ms / 1000

    @staticmethod
    def _predict(predictor: Predictor, valid: list[tuple[RawRecord, ValidEvent]], rejected: list[DeadLetter]
                 ) -> list[Prediction | None]:
        """Label the batch; if the model fails on it, label one by one and dead-letter the culprits.

        A prediction Postgres or Redis could not hold (a label outside LABELS, a NaN probability) counts as
        the model failing on that text: it is checked here, before anything is stored or counted.
        """
        texts = [event.text for _, event in valid]
        try:
            batch = list(predictor.predict(texts))
            if len(batch) != len(texts):
                raise ValueError(f"{len(batch)} predictions for {len(texts)} texts")
            problems = [_prediction_problem(p) for p in batch]
            if not any(problems):
                return batch
            log.warning("model gave unusable predictions in a batch of %d; retrying one by one", len(texts))
        except Exception:
            log.exception("model failed on a batch of %d; retrying one by one", len(texts))
        out: list[Prediction | None] = []
        for record, event in valid:
            try:
                pred = list(predictor.predict([event.text]))[0]
                problem = _prediction_problem(pred)
                if problem is not None:
                    raise ValueError(problem)
                out.append(pred)
            except Exception as e:
                rejected.append(DeadLetter.of(record, Rejection("model_error", describe(e))))
                out.append(None)
        return out

    def _store(self, pairs: list[tuple[RawRecord, LabelledReview]], rejected: list[DeadLetter]
               ) -> list[StoredLabel]:
        """Insert the batch; a row Postgres refuses (or that cannot be sent) is dead-lettered instead.

        A failure that is about Postgres rather than the data (permissions, a missing table) is no row's
        fault: it raises ``Unpinned`` instead of dead-lettering every row.
        """
        what = f"Postgres at {self.postgres_address}"
        reviews = [review for _, review in pairs]
        try:
            return self.retry(what, lambda: insert_reviews(self.engine, reviews), is_transient)
        except Stopping:
            raise
        except Exception as e:
            if _about_postgres(e):
                raise Unpinned(f"{what} refused a batch ({_db_detail(e)})") from e
            log.warning("Postgres refused the batch (%s); inserting row by row", _db_detail(e))
        stored: list[StoredLabel] = []
        for record, review in pairs:
            try:
                stored += self.retry(what, lambda r=review: insert_reviews(self.engine, [r]), is_transient)
            except Stopping:
                raise
            except Exception as e:
                if _about_postgres(e):
                    raise Unpinned(f"{what} refused a row ({_db_detail(e)})") from e
                db = isinstance(e, sa_exc.DBAPIError)
                reason = "storage_rejected" if db else f"storage_failed:{type(e).__name__}"
                rejected.append(DeadLetter.of(record, Rejection(reason, _db_detail(e))))
        return stored


_DATA_SQLSTATES = ("22", "23", "54")  # data exception, integrity violation, program limit (e.g. index row size)


def _about_postgres(e: BaseException) -> bool:
    """True when Postgres refused for a reason no row explains (SQLSTATE outside the data classes)."""
    if not isinstance(e, sa_exc.DBAPIError):
        return False  # raised while building or sending one row's values (RecursionError, ValueError...)
    sqlstate = getattr(e.orig, "sqlstate", None)
    if sqlstate is None:  # raised by the driver before Postgres saw it: a value it cannot adapt, or a bug
        return isinstance(e, sa_exc.ProgrammingError | sa_exc.InternalError | sa_exc.NotSupportedError)
    return not str(sqlstate).startswith(_DATA_SQLSTATES)


def _db_detail(e: BaseException) -> str:
    orig = getattr(e, "orig", None)
    target = orig if isinstance(e, sa_exc.StatementError) and isinstance(orig, BaseException) else e
    return describe(target).splitlines()[0]  # describe() is never empty: "Type: message"


def _prediction_problem(p: Prediction) -> str | None:
    """Why a prediction cannot be counted, or None (a label outside LABELS is Postgres's to refuse, per row)."""
    if not isinstance(p.label, str):
        return f"label is a {type(p.label).__name__}, not a string"
    values = [p.score, *(p.probs[k] for k in LABELS)]
    if not all(isinstance(v, int | float) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        return "a probability is not a finite number in [0, 1]"
    return None


_LATEST_COUNTABLE = datetime.max.replace(tzinfo=UTC) - timedelta(days=2)


def _countable(rows: list[StoredLabel]) -> list[StoredLabel]:
    """The stored rows as the Redis counter can take them, whoever wrote them (no NaN, no year 9999)."""
    out = []
    for row in rows:
        if row.created_at > _LATEST_COUNTABLE:
            log.warning("review %r: created_at %s cannot be bucketed; not counted", row.review_id[:80],
                        row.created_at)
            continue
        out.append(row if math.isfinite(row.score) else replace(row, score=0.0))
    return out


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
