"""Accounting helpers for tests that stream through a real worker: what Kafka, Postgres, Redis hold."""

from __future__ import annotations

import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import OffsetSpec
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from storage.db import get_engine
from storage.schema import review_sentiment as t
from storage.trends import HOUR, MINUTE
from stream.services import trend_counters
from stream.settings import Settings

FIGURES: list[dict] = []  # fault-test figures, printed at the end of the pytest run


def produce(settings: Settings, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(acks="all", max_request_size=2_000_000, **settings.kafka.client_options())
    for key, value in records:
        producer.send(settings.kafka.reviews_topic, key=key, value=value)
    producer.flush(30)
    producer.close()


def rows_for(settings: Settings, uid: str) -> list:
    with get_engine(settings.postgres.url.get_secret_value()).connect() as conn:
        return conn.execute(select(t).where(t.c.source.like(f"src-{uid}-%"))).all()


def assert_redis_matches_sql(settings: Settings, uid: str) -> None:
    counters = trend_counters(settings)  # the worker's own Redis settings (a cluster too)
    rows = rows_for(settings, uid)
    for resolution, width in ((MINUTE, 120), (HOUR, 3)):
        for source in {r.source for r in rows}:
            redis_counts: Counter[tuple[datetime, str]] = Counter()
            for b in counters.read(resolution, width, source=source):
                for label, n in b.counts.items():
                    if n:
                        redis_counts[(b.start, label)] = n
            sql_counts: Counter[tuple[datetime, str]] = Counter()
            for r in rows:
                if r.source == source:
                    start = r.created_at.astimezone(UTC).replace(second=0, microsecond=0)
                    if resolution == HOUR:
                        start = start.replace(minute=0)
                    sql_counts[(start, r.label)] += 1
            assert redis_counts == sql_counts, (resolution, source)
    # The drift monitor's per-hour confidence sum is counted exactly once too (this test's key prefix).
    for b in counters.read(HOUR, 3):
        in_hour = [r.score for r in rows if b.start <= r.created_at < b.start + timedelta(hours=1)]
        assert b.total == len(in_hour) and abs(b.confidence_sum - sum(in_hour)) < 1e-3 * max(len(in_hour), 1), b


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics, parsed by prometheus_client: {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def rewind_group(settings: Settings) -> None:
    """Move the worker group's committed offsets back to the start of every partition (a stopped group only)."""
    admin = KafkaAdminClient(**settings.kafka.client_options())
    try:
        tps = [TopicPartition(settings.kafka.reviews_topic, p) for p in range(settings.kafka.partitions)]
        admin.reset_group_offsets(settings.worker.app_id, dict.fromkeys(tps, OffsetSpec.EARLIEST))
    finally:
        admin.close()


def committed_to_end(settings: Settings) -> bool:
    opts = settings.kafka.client_options()
    admin = KafkaAdminClient(**opts)
    consumer = KafkaConsumer(**opts)
    try:
        committed = admin.list_group_offsets(settings.worker.app_id).get(settings.worker.app_id, {})
        tps = [TopicPartition(settings.kafka.reviews_topic, p) for p in range(settings.kafka.partitions)]
        end = consumer.end_offsets(tps)
        return all(tp in committed and committed[tp].offset >= end[tp] for tp in tps)
    finally:
        admin.close()
        consumer.close()
