"""A private corner of the running stack (`make up`) for a benchmark: its own Postgres schema (migrated,
dropped afterwards), Kafka topics, consumer group, Redis key prefix (its keys deleted afterwards) and model
store, so the real registry and data are untouched; plus a real `sentiment worker` subprocess and a producer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storage.db import get_engine  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from stream.services import create_topics, kafka_admin  # noqa: E402
from stream.settings import Settings  # noqa: E402

SHARED = Path(os.environ.get("SENTIMENT_SHARED_DATA", REPO.parent / "shared" / "data"))


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# Without ../shared/data (e.g. on a lent GPU machine): tweet-like texts of about 40 WordPiece tokens.
_SYNTHETIC = (
    "@airline flight 2417 delayed again for three hours, no updates at the gate and the app keeps saying on time, "
    "staff just shrug and point at the screen #neveragain",
    "honestly the new phone update fixed the battery drain, camera is sharper too. best thing they shipped this "
    "year, still wish the charger came in the box @techsupport",
    "watching the game tonight with friends, not sure who wins but the halftime show better be good this time, "
    "last year was a total mess lol #sundaynight")


def tweets(split: str) -> list[tuple[str, int]]:
    """TweetEval sentiment (text, label id) pairs of one split, from ../shared/data (read, never copied)."""
    folder = SHARED / "tweeteval_sentiment"
    texts = (folder / f"{split}_text.txt").read_text(encoding="utf-8").splitlines()
    labels = (folder / f"{split}_labels.txt").read_text(encoding="utf-8").splitlines()
    return [(t.strip(), int(y)) for t, y in zip(texts, labels, strict=True) if t.strip()]


def texts(split: str = "test") -> list[str]:
    """Tweets for a speed benchmark: TweetEval's when ../shared/data has them, else synthetic ones of about 40
    tokens (e.g. on a lent GPU machine; no labels, so nothing that scores a model may use them)."""
    if not (SHARED / "tweeteval_sentiment").is_dir():
        log(f"{SHARED / 'tweeteval_sentiment'} not found: synthetic tweet-length texts (about 40 tokens)")
        return [f"{_SYNTHETIC[i % 3]} {i}" for i in range(2000)]
    return [t for t, _ in tweets(split)]


@dataclass
class PrivateStack:
    uid: str
    settings: Settings
    engine: Engine
    tmp: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, **env: str) -> subprocess.Popen:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}
        environ.update(self.settings.to_env(), PYTHONUNBUFFERED="1", **env)
        log_file = self._log_path(len(self.workers)).open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "sentiment_app", "worker"], cwd=REPO, env=environ,
                                stdout=log_file, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def _log_path(self, i: int) -> Path:
        """Worker i's log: in the private folder (removed after), or kept under ``BENCH_KEEP_LOGS``."""
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if not keep:
            return self.tmp / f"worker-{i}.log"
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep) / f"{self.uid}-{self.settings.kafka.reviews_topic}-worker-{i}.log"

    def worker_log(self, i: int = -1) -> str:
        return self._log_path(i % len(self.workers)).read_text(errors="replace")

    def produce(self, events: list[dict[str, Any]]) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(acks="all", linger_ms=5, **self.settings.kafka.client_options())
        for event in events:
            producer.send(self.settings.kafka.reviews_topic, key=event["review_id"].encode(),
                          value=json.dumps(event).encode())
        producer.flush(60)
        producer.close()


def delete_redis_prefix(settings: Settings) -> int:
    """Delete every Redis key under the private prefix (what a benchmark's workers counted); returns how many."""
    import redis

    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    try:
        keys = list(client.scan_iter(match=f"{settings.redis.key_prefix}:*", count=5000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
        return len(keys)
    finally:
        client.close()


@contextmanager
def private_stack(tag: str, threads: int = 2, **worker: Any) -> Iterator[PrivateStack]:
    """Settings, schema, topics and store private to one benchmark run; everything is removed afterwards."""
    uid = uuid.uuid4().hex[:8]
    base = Settings()
    url = base.postgres.url.get_secret_value()
    schema = f"bench_{tag}_{uid}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    reg_url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{tag}-"))
    settings = base.model_copy(update={
        "kafka": base.kafka.model_copy(update={"reviews_topic": f"bench-{uid}-reviews", "dlq_topic": f"bench-{uid}-dlq",
                                               "partitions": 2}),
        "postgres": base.postgres.model_copy(update={"url": reg_url}),
        "redis": base.redis.model_copy(update={"key_prefix": f"bench-{uid}"}),
        "model": base.model.model_copy(update={"dir": None, "version": None, "threads": threads}),
        "worker": base.worker.model_copy(update={"app_id": f"bench-{uid}", "metrics_port": 0, **worker}),
        "models_dir": tmp / "models",
        "registry": base.registry.model_copy(update={"store_dir": tmp / "store"}),
    })
    stack = PrivateStack(uid, settings, get_engine(reg_url), tmp)
    try:
        upgrade(reg_url)
        create_topics(settings)
        yield stack
    finally:
        for proc in stack.workers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)
        stack.engine.dispose()
        delete_redis_prefix(settings)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)  # model store copies and worker logs
        adm = kafka_admin(settings)
        try:
            adm.delete_topics([settings.kafka.reviews_topic, settings.kafka.dlq_topic])
        except Exception:
            pass
        finally:
            adm.close()
