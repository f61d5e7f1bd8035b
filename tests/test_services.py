"""The real services answer: a round trip through each, and a clear error when one is not there."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import redis
from kafka import KafkaConsumer, KafkaProducer
from sqlalchemy import text

from storage.db import get_engine
from stream.settings import Settings
from tests.support import REPO, settings_env


def test_kafka_produce_and_consume(topics: Settings) -> None:
    opts = topics.kafka.client_options()
    topic = topics.kafka.reviews_topic
    producer = KafkaProducer(acks="all", **opts)
    payloads = [f"hello-{i}-{uuid.uuid4().hex}".encode() for i in range(5)]
    for p in payloads:
        producer.send(topic, key=b"k", value=p)  # one key: one partition, so order holds
    producer.flush(10)
    producer.close()
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10_000,
                             group_id=f"g-{uuid.uuid4().hex}", **opts)
    got = []
    for msg in consumer:
        got.append(msg.value)
        if len(got) == len(payloads):
            break
    consumer.close()
    assert got == payloads


def test_postgres_round_trip(migrated_db: str) -> None:
    engine = get_engine(migrated_db)
    name = f"tmp_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TEMP TABLE {name} (k text primary key, v jsonb)"))
        conn.execute(text(f"INSERT INTO {name} VALUES (:k, CAST(:v AS jsonb))"), {"k": "a", "v": '{"x": [1, 2]}'})
        assert conn.execute(text(f"SELECT v FROM {name} WHERE k = 'a'")).scalar_one() == {"x": [1, 2]}
        # the migration ran: the table and the views exist
        assert conn.execute(text("SELECT count(*) FROM information_schema.views WHERE table_name IN "
                                 "('sentiment_hourly', 'sentiment_hourly_total', 'recent_negative') "
                                 "AND table_schema = current_schema()")).scalar() == 3


def test_redis_round_trip(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"t-{uuid.uuid4().hex}"
    client.set(key, "värde", ex=30)
    assert client.get(key) == "värde".encode()
    assert 0 < client.ttl(key) <= 30
    client.delete(key)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sentiment_app", *args], cwd=REPO, env={**env, "COLUMNS": "200"},
                          capture_output=True,
                          text=True, timeout=60)


def test_status_reports_healthy_stack(topics: Settings) -> None:
    result = _cli(["status"], settings_env(topics))
    assert result.returncode == 0, result.stdout + result.stderr
    for service in ("Kafka", "Postgres", "Redis", "Model"):
        assert re.search(rf"│ {service}\s+│[^│]+│ ok ", result.stdout), result.stdout
    assert re.search(r"│ Workers\s+│[^│]+│ degraded │.*0 worker", result.stdout), result.stdout  # none running
    assert re.search(r"│ Drift\s+│[^│]+│ ok\s+│ no score in the last 2 hours", result.stdout), result.stdout


def test_service_down_names_service_address_and_fix(settings: Settings) -> None:
    env = settings_env(settings)
    env["SENTIMENT_REDIS__URL"] = "redis://127.0.0.1:6399/0"
    env["SENTIMENT_POSTGRES__URL"] = "postgresql+psycopg://sentiment:sentiment@127.0.0.1:5499/sentiment"
    env["SENTIMENT_KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:9099"
    for args, service, address in (
        (["trends"], "Redis", "127.0.0.1:6399"),
        (["reviews"], "Postgres", "127.0.0.1:5499/sentiment"),
        (["init"], "Postgres", "127.0.0.1:5499/sentiment"),
        (["dlq"], "Kafka", "127.0.0.1:9099"),
    ):
        result = _cli(args, env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert f"{service} is not reachable at {address}" in result.stderr
        assert "make up" in result.stderr
        assert "Traceback" not in result.stderr
    status = _cli(["status"], env)
    assert status.returncode == 1
    assert status.stdout.count("DOWN") == 5  # Kafka, Postgres, Redis, the workers (via Kafka), drift (via Redis)
