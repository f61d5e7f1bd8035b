"""The Faust worker: consume reviews in micro-batches, label them off the event loop, ack when stored.

Offset semantics (faust-streaming 0.15, see README "Delivery guarantees"): we use ``noack_take``
so that nothing is acknowledged until ``BatchProcessor.process`` has returned, i.e. until every
record of the batch is a row in Postgres and counted in Redis, or a dead letter. A crash before
that replays the batch; the sinks are idempotent. One actor per agent: scale with partitions and
worker processes (concurrency > 1 can commit past an event still in flight).

Model: ``SENTIMENT_MODEL__DIR`` when set (served as is, the registry is not followed); else the
registry's production version, else ``models_dir/current``. Unless a dir is pinned, the worker
follows the registry: between batches, at most every ``reload_interval_s``, it checks which version is
production and switches to it before the next batch (``stream.pipeline.ModelFollower``). Such a worker
also runs the registry's active shadow candidate, if any, on its share of reviews (``storage.shadow``);
a worker with a pinned dir does not shadow.

The agent's body only hands each batch on, so faust fills the next batch while earlier ones are worked on:
taking batch N+1 (event loop), labelling N (one thread) and, with ``overlap_io`` (default on), storing N-1 (a
second thread) run at once. Acknowledgements still happen in batch order, each only after its batch is stored.

Nothing escapes the agent loop (faust's supervisor would restart the agent and skip the batch in hand):
a record's own failure is dead-lettered inside ``BatchProcessor``; anything else ends the process with
one log line and exit code 70 before the batch is acknowledged (``stream.shutdown.die``). SIGTERM ends a
worker within ``session_timeout_s`` whatever it is doing (``stream.shutdown.Lifeline``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import faust
from sqlalchemy import Engine

from sentiment_model.predictor import predictor_from_settings
from storage import partitions
from storage.db import get_engine, is_transient, safe_address
from storage.registry import ModelRef
from stream import metrics
from stream.dlq import DeadLetterWriter
from stream.drift import DriftMonitor, refresh_starter
from stream.events import RawRecord, describe
from stream.pipeline import BatchProcessor, BatchResult, ModelFollower, Retrier, Stopping
from stream.services import redis_address, trend_counters
from stream.serving import registry_production, serving_model
from stream.settings import Settings
from stream.shutdown import Lifeline, die, end_process

log = logging.getLogger(__name__)


def _startup_model(settings: Settings, engine: Engine, retrier: Retrier) -> ModelRef:
    """The model to start with (``serving_model``), waiting out a Postgres that is not up yet."""
    from sqlalchemy import exc as sa_exc

    def production() -> ModelRef | None:
        try:
            return retrier("Postgres (model registry)", lambda: registry_production(engine, settings.model_store()),
                           is_transient)
        except sa_exc.ProgrammingError:
            log.warning("no model registry in Postgres yet (run `sentiment init`); using %s/current",
                        settings.models_dir)
            return None

    return serving_model(settings, production)[0]


def build_processor(settings: Settings, stop: threading.Event) -> BatchProcessor:
    m = settings.model
    pg_url = settings.postgres.dsn("worker")  # inserts reviews and shadow rows, reads the registry
    engine = get_engine(pg_url)
    retrier = Retrier(settings.worker.retry_max_backoff_s, stop)
    partitions.start_maintenance(engine, stop)  # months ahead and retention, through the operator's functions
    start = _startup_model(settings, engine, retrier)
    predictor = predictor_from_settings(m, start.artifact_dir, start.version)
    follower = None
    if m.dir is not None:
        log.info("serving SENTIMENT_MODEL__DIR=%s as %s; not following the model registry (nor shadowing)", m.dir,
                 predictor.version)
    else:
        from storage import shadow

        follower = ModelFollower(
            production=lambda: registry_production(engine, settings.model_store()),
            load=lambda ref: predictor_from_settings(m, ref.artifact_dir, ref.version),
            interval_s=settings.worker.reload_interval_s,
            on_swap=metrics.set_model,
            shadow=lambda: shadow.active(engine, settings.model_store()),
            on_shadow=metrics.set_shadow,
        )
        log.info("following the model registry's production version (checked every %.0fs)",
                 settings.worker.reload_interval_s)
    d = settings.drift
    trends = trend_counters(settings)
    drift = DriftMonitor(
        trends, d.threshold, d.min_events, d.confidence_weight, d.check_interval_s, on_score=metrics.set_drift,
        on_drift=refresh_starter(trends, d.refresh_config, d.refresh_cooldown_s, settings.models_dir / "refresh-logs")
        if d.refresh_config else None)
    return BatchProcessor(
        predictor=predictor,
        engine=engine,
        trends=trends,
        dead_letters=DeadLetterWriter(settings.kafka.dlq_topic, settings.kafka.client_options()),
        max_text_chars=settings.worker.max_text_chars,
        max_metadata_bytes=settings.worker.max_metadata_bytes,
        retrier=retrier,
        postgres_address=safe_address(pg_url),
        redis_address=redis_address(settings.redis.url.get_secret_value()),
        follower=follower,
        drift=drift,
    )


def _raw(event: faust.types.EventT) -> RawRecord:
    m = event.message
    ts = int(m.timestamp * 1000) if m.timestamp else None
    return RawRecord(m.topic, m.partition, m.offset, ts, m.key, m.value)


def _fatal(what: str, error: BaseException) -> NoReturn:
    """End the process for an error no record explains: one line saying what failed, and where."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    die(f"{what}: {describe(error)}{where}")


def stop_deadline(settings: Settings) -> float:
    """Seconds a stop may take before the process ends anyway: within the session timeout."""
    return max(1.0, settings.worker.session_timeout_s - 1.0)


def faust_app_options(settings: Settings) -> dict[str, object]:
    """The worker's Faust options (also bench/faust_bare.py's, so that its ceiling is this worker's)."""
    w = settings.worker
    return dict(
        store="memory://",
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        broker_session_timeout=w.session_timeout_s,
        broker_heartbeat_interval=min(3.0, w.session_timeout_s / 3),
        web_enabled=False,  # metrics come from stream.metrics; faust's web server is not needed
        stream_buffer_maxsize=max(4 * w.batch_max, 1024),
        stream_wait_empty=False,  # a stop does not wait for unacknowledged events: they are replayed
    )


def create_app(settings: Settings, lifeline: Lifeline | None = None) -> faust.App:
    w, k = settings.worker, settings.kafka
    lifeline = lifeline or Lifeline(stop_deadline(settings))
    datadir = Path(tempfile.gettempdir()) / "sentiment-faust" / w.app_id  # no tables: nothing to keep
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        w.app_id,
        broker=[f"kafka://{host}" for host in k.bootstrap_servers.split(",")],
        broker_credentials=k.faust_credentials(),
        datadir=datadir,
        **faust_app_options(settings),
    )
    topic = app.topic(k.reviews_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")  # judge + label (+ store)
    store_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")  # store, with overlap_io
    stop = lifeline.stop
    state: dict[str, BatchProcessor] = {}

    def observe(events: list[faust.types.EventT], records: list[RawRecord], result: BatchResult) -> None:
        metrics.observe_batch(records, result.labelled, result.dead_lettered, result.infer_s, result.total_s)
        if result.shadow_candidate is not None:
            metrics.observe_shadow(result.shadow_candidate, result.shadowed, result.shadow_agreed,
                                   result.shadow_infer_s)
        last_offsets = {e.message.tp: e.message.offset for e in events}
        for tp, offset in last_offsets.items():
            metrics.observe_lag(tp.topic, tp.partition, app.consumer.highwater(tp), offset)
        log.info("batch of %d: %d labelled, %d dead-lettered in %.0f ms (model %.0f ms)", len(events),
                 result.labelled, result.dead_lettered, result.total_s * 1000, result.infer_s * 1000)

    @app.agent(topic, concurrency=1)
    async def classify(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        try:
            if "processor" not in state:
                state["processor"] = await loop.run_in_executor(executor, build_processor, settings, stop)
                metrics.serve(w.metrics_port, w.metrics_address)
                metrics.set_model(state["processor"].predictor.version)
        except Stopping:
            return
        except Exception as e:
            _fatal("the worker cannot start", e)
        processor = state["processor"]
        overlap = w.overlap_io == "on" or (w.overlap_io == "auto" and processor.predictor.device.type == "cuda")
        log.info("micro-batches of up to %d events; storing %s labelling", w.batch_max,
                 "overlapped with" if overlap else "after")

        async def store_and_ack(events: list[faust.types.EventT], records: list[RawRecord], labelled) -> None:
            try:
                result = await loop.run_in_executor(store_executor if overlap else executor, processor.store,
                                                    labelled)
                for event in events:
                    await stream.ack(event)
            except Stopping:
                raise
            except Exception as e:
                _fatal("a batch cannot be stored", e)
            lifeline.in_flight -= 1
            try:
                observe(events, records, result)
            except Exception as e:  # metrics are a by-product: the batch is stored and acknowledged
                log.warning("cannot record a batch's metrics (%s)", describe(e, 200))

        async def handle(events: list[faust.types.EventT], before: asyncio.Future[None] | None) -> None:
            """Label one batch, then, once the batch before it is acknowledged, store and acknowledge it."""
            try:
                records = [_raw(e) for e in events]
                labelled = await loop.run_in_executor(executor, processor.label, records)
            except Stopping:
                raise
            except Exception as e:
                _fatal("a batch cannot be labelled", e)
            if before is not None:  # acks stay in batch order; a batch before that stopped stops this one too
                await before
            await store_and_ack(events, records, labelled)

        # The agent's body hands each batch on and goes back to taking: faust's take buffer fills only while
        # the body is not running, so taking batch N+1 overlaps labelling N and (overlap_io) storing N-1.
        in_flight: collections.deque[asyncio.Future[None]] = collections.deque()
        depth = 2 if overlap else 1  # batches handed on and not yet acknowledged while the next is taken
        takes = stream.noack_take(w.batch_max, within=w.batch_within_s)
        try:
            async for events in takes:
                lifeline.in_flight += 1
                in_flight.append(asyncio.ensure_future(handle(events, in_flight[-1] if in_flight else None)))
                while in_flight and (len(in_flight) > depth or in_flight[0].done()):
                    await in_flight.popleft()
        except Stopping:
            log.warning("stopping with a batch unacknowledged; it will be replayed")
            # Closing the take would turn faust's acks back on while its drainer still reads the stream: keep it
            # open (``takes`` referenced, acks off) until faust cancels this agent as it stops.
            await asyncio.Event().wait()
        except Exception as e:  # faust's own stream machinery: nothing may escape to its supervisor
            _fatal("the stream failed", e)
        finally:
            for task in in_flight:  # unacknowledged: replayed by the next worker
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved (a Stopping passed on from the batch before), not logged again
                task.cancel()

    @app.on_before_shutdown.connect
    async def _stop_retrying(app: faust.App, **kwargs: object) -> None:
        stop.set()

    return app


def wait_for_kafka(settings: Settings, max_backoff_s: float = 15.0) -> None:
    """Faust gives up at start-up if no broker answers; a worker should wait for one instead."""
    from stream.services import ServiceUnavailable, check_kafka

    delay = 1.0
    while True:
        try:
            check_kafka(settings)
            return
        except ServiceUnavailable as e:
            log.warning("waiting: %s; retrying in %.0fs", str(e).splitlines()[0], delay)
        time.sleep(delay)
        delay = min(delay * 2, max_backoff_s)


class _Worker(faust.Worker):
    """faust's worker, with SIGTERM/SIGINT also arming the stop deadline (``Lifeline``)."""

    lifeline: Lifeline

    def _on_sigterm(self) -> None:
        self.lifeline.request_stop("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self.lifeline.request_stop("SIGINT")
        super()._on_sigint()


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    wait_for_kafka(settings)
    lifeline = Lifeline(stop_deadline(settings))
    app = create_app(settings, lifeline)
    worker = _Worker(app, loglevel=loglevel, quiet=True)
    worker.lifeline = lifeline
    try:
        worker.execute_from_commandline()
    except SystemExit as e:  # faust has stopped and committed: end now (see stream.shutdown)
        end_process(e.code if isinstance(e.code, int) else int(e.code is not None))
