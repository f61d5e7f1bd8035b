"""The Faust worker: consume reviews in micro-batches, label them off the event loop, ack when stored.

Offset semantics (faust-streaming 0.15, see README "Delivery guarantees"): we use ``noack_take``
so that nothing is acknowledged until ``BatchProcessor.process`` has returned, i.e. until every
record of the batch is a row in Postgres and counted in Redis, or a dead letter. A crash before
that replays the batch; the sinks are idempotent. One actor per agent: scale with partitions and
worker processes (concurrency > 1 can commit past an event still in flight).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faust

from storage.db import get_engine, safe_address
from stream import metrics
from stream.dlq import DeadLetterWriter
from stream.events import RawRecord
from stream.pipeline import BatchProcessor, Retrier, Stopping
from stream.predictor import Predictor, resolve_model_dir
from stream.services import redis_address, trend_counters
from stream.settings import Settings

log = logging.getLogger(__name__)


def build_processor(settings: Settings, stop: threading.Event) -> BatchProcessor:
    m = settings.model
    predictor = Predictor(resolve_model_dir(settings), device=m.device, max_length=m.max_length,
                          batch_size=m.batch_size, threads=m.threads, version=m.version)
    pg_url = settings.postgres.url.get_secret_value()
    return BatchProcessor(
        predictor=predictor,
        engine=get_engine(pg_url),
        trends=trend_counters(settings),
        dead_letters=DeadLetterWriter(settings.kafka.dlq_topic, settings.kafka.client_options()),
        max_text_chars=settings.worker.max_text_chars,
        max_metadata_bytes=settings.worker.max_metadata_bytes,
        retrier=Retrier(settings.worker.retry_max_backoff_s, stop),
        postgres_address=safe_address(pg_url),
        redis_address=redis_address(settings.redis.url.get_secret_value()),
    )


def _raw(event: faust.types.EventT) -> RawRecord:
    m = event.message
    ts = int(m.timestamp * 1000) if m.timestamp else None
    return RawRecord(m.topic, m.partition, m.offset, ts, m.key, m.value)


def create_app(settings: Settings) -> faust.App:
    w, k = settings.worker, settings.kafka
    datadir = Path(tempfile.gettempdir()) / "sentiment-faust" / w.app_id  # no tables: nothing to keep
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        w.app_id,
        broker=[f"kafka://{host}" for host in k.bootstrap_servers.split(",")],
        store="memory://",
        datadir=datadir,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        broker_session_timeout=w.session_timeout_s,
        broker_heartbeat_interval=min(3.0, w.session_timeout_s / 3),
        web_enabled=False,  # metrics come from stream.metrics; faust's web server is not needed
        stream_buffer_maxsize=max(4 * w.batch_max, 1024),
    )
    topic = app.topic(k.reviews_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
    stop = threading.Event()
    state: dict[str, BatchProcessor] = {}

    @app.agent(topic, concurrency=1)
    async def classify(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()
        if "processor" not in state:
            state["processor"] = await loop.run_in_executor(executor, build_processor, settings, stop)
            metrics.serve(w.metrics_port)
            metrics.set_model(state["processor"].predictor.version)
        processor = state["processor"]
        async for events in stream.noack_take(w.batch_max, within=w.batch_within_s):
            records = [_raw(e) for e in events]
            try:
                result = await loop.run_in_executor(executor, processor.process, records)
            except Stopping:
                log.warning("stopping with a batch of %d unacknowledged; it will be replayed", len(events))
                return
            for event in events:
                await stream.ack(event)
            metrics.observe_batch(records, result.labelled, result.dead_lettered, result.infer_s, result.total_s)
            last_offsets = {e.message.tp: e.message.offset for e in events}
            for tp, offset in last_offsets.items():
                metrics.observe_lag(tp.topic, tp.partition, app.consumer.highwater(tp), offset)
            log.info("batch of %d: %d labelled, %d dead-lettered in %.0f ms (model %.0f ms)", len(events),
                     result.labelled, result.dead_lettered, result.total_s * 1000, result.infer_s * 1000)

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


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    wait_for_kafka(settings)
    app = create_app(settings)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
