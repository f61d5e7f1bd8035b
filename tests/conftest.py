"""Fixtures for tests against the real local stack (`make up`): Kafka, Postgres and Redis on loopback.

Each test gets its own topics, consumer group, Redis key prefix and review source, so tests never see
each other's data and need no cleanup between them. Postgres tests use the `sentiment_test` database.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TEST_DB_URL = os.environ.get(
    "SENTIMENT_TEST_POSTGRES_URL", "postgresql+psycopg://sentiment:sentiment@127.0.0.1:5432/sentiment_test"
)
TEST_REDIS_URL = os.environ.get("SENTIMENT_TEST_REDIS_URL", "redis://127.0.0.1:6379/1")
WORDS = [
    "the", "a", "an", "and", "or", "but", "not", "no", "very", "really", "so", "too", "is", "was", "are",
    "be", "it", "this", "that", "i", "you", "we", "they", "my", "our", "good", "great", "love", "excellent",
    "amazing", "happy", "best", "fine", "okay", "ok", "average", "bad", "terrible", "awful", "hate", "worst",
    "poor", "slow", "broken", "product", "service", "app", "phone", "battery", "delivery", "food", "staff",
    "price", "quality", "works", "failed", "refund", "again", "never", "always", "would", "recommend", "buy",
    "returned"
]


def make_tiny_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer randomly initialised DistilBERT with a small WordPiece vocab: fast, offline, 3 labels."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz0123456789",
             *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"], *".,!?'-"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    DistilBertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(seed)
    config = DistilBertConfig(
        vocab_size=len(vocab), dim=32, hidden_dim=64, n_layers=2, n_heads=2, max_position_embeddings=256,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    DistilBertForSequenceClassification(config).save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def migrated_db() -> str:
    """The test database, migrated to head once per session; its roles set up as `sentiment init` does."""
    from storage.migrate import upgrade
    from storage.roles import provision
    from stream.settings import PostgresSettings

    pg = PostgresSettings(url=TEST_DB_URL)
    provision(pg.dsn(), pg.role_dsns(), pg.statement_timeout_ms)
    upgrade(TEST_DB_URL)
    return TEST_DB_URL


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(uid: str, migrated_db: str, tiny_model: Path) -> Settings:
    """Settings isolated to this test: own topics, consumer group, key prefix; the tiny model."""
    return Settings(
        kafka={"reviews_topic": f"t-{uid}-reviews", "dlq_topic": f"t-{uid}-dlq", "partitions": 2},
        postgres={"url": migrated_db},
        redis={"url": TEST_REDIS_URL, "key_prefix": f"t-{uid}"},
        model={"dir": tiny_model, "version": f"tiny-{uid}", "batch_size": 16},
        worker={"app_id": f"t-{uid}-worker", "batch_max": 32, "batch_within_s": 0.2, "metrics_port": free_port()},
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a worker subprocess needs to see the same settings (one torch thread: tests share cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}
    env.update(settings.to_env())
    env.update(SENTIMENT_MODEL__THREADS="1", SENTIMENT_WORKER__RETRY_MAX_BACKOFF_S="2",
               SENTIMENT_WORKER__SESSION_TIMEOUT_S="6", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def topics(settings: Settings) -> Iterator[Settings]:
    """Create this test's topics; delete them afterwards."""
    from stream.services import create_topics, kafka_admin

    create_topics(settings)
    yield settings
    admin = kafka_admin(settings)
    try:
        admin.delete_topics([settings.kafka.reviews_topic, settings.kafka.dlq_topic], raise_errors=False)
    finally:
        admin.close()


class WorkerProcess:
    """`sentiment worker` as a real subprocess, with its log kept for the assertion messages."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "worker"], cwd=REPO, env=settings_env(self.settings),
            stdout=log, stderr=subprocess.STDOUT,
        )
        return self

    def stop(self, sig: int = 15, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def factory(settings: Settings) -> WorkerProcess:
        w = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w.start()

    yield factory
    for w in started:
        w.stop()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, on_fail: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_fail()}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault tests' figures (sent, stored, lost, duplicated, recovery time) in every run's log."""
    from tests.accounting import FIGURES

    if FIGURES:
        terminalreporter.section("fault-test figures")
        for f in FIGURES:
            terminalreporter.write_line(f"{f['scenario']}: " + ", ".join(f"{k}={v}" for k, v in f.items()
                                                                          if k != "scenario"))


def invoke_cli(settings: Settings, *args: str):
    """`sentiment ARGS` in-process (typer's CliRunner) with these settings as SENTIMENT_* variables."""
    from typer.testing import CliRunner

    from stream.cli import app
    from stream.settings import get_settings

    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args), env={**settings.to_env(), "COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
