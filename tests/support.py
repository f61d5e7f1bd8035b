"""Helpers shared by the test modules (plain functions and classes; the fixtures are in conftest.py).

Test modules import from here, never from each other or from conftest.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sentiment_app.dashboard import launch
from storage.db import get_engine
from storage.reviews import LabelledReview, StoredLabel, insert_reviews
from stream.services import trend_counters
from stream.settings import Settings
from training.config import config_from_dict

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

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
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")  # tests copy and tamper with this file
    # transformers 5 ignores vocab_file here (every word became [UNK]): pass the vocabulary itself
    DistilBertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
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


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a worker subprocess needs to see the same settings (one torch thread: tests share cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}
    env.update(settings.to_env())
    env.update(SENTIMENT_MODEL__THREADS="1", SENTIMENT_WORKER__RETRY_MAX_BACKOFF_S="2",
               SENTIMENT_WORKER__SESSION_TIMEOUT_S="6", PYTHONUNBUFFERED="1")
    return env


class WorkerProcess:
    """`sentiment worker` as a real subprocess, with its log kept for the assertion messages."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sentiment_app", "worker"], cwd=REPO, env=settings_env(self.settings),
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


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, on_fail: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_fail()}")


def invoke_cli(settings: Settings, *args: str):
    """`sentiment ARGS` in-process (typer's CliRunner) with these settings as SENTIMENT_* variables."""
    from typer.testing import CliRunner

    from sentiment_app.cli import app
    from stream.settings import get_settings

    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, list(args), env={**settings.to_env(), "COLUMNS": "200"})
    finally:
        get_settings.cache_clear()


# --- dashboard (Streamlit's AppTest) -------------------------------------------------------------------

APP = Path(launch.APP)  # the dashboard script `sentiment dashboard` serves


def open_page(name: str, timeout: float = 30) -> AppTest:
    """The app as `streamlit run` would serve it, opened on one page."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(APP), default_timeout=timeout).switch_page(f"views/{name}.py").run()


def store(settings: Settings, source: str, labels: list[str], text: str = "review") -> list[StoredLabel]:
    """Reviews written as the worker writes them: a Postgres row each, then counted once in Redis."""
    now = datetime.now(UTC)
    reviews = [
        LabelledReview(f"{source}-{i}", f"{text} {i}", source, now, label, 0.9, *(
            [0.9 if label == k else 0.05 for k in ("negative", "neutral", "positive")]), "tiny-test")
        for i, label in enumerate(labels)
    ]
    stored = insert_reviews(get_engine(settings.postgres.url.get_secret_value()), reviews)
    trend_counters(settings).count(stored)
    return stored


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


# --- training -----------------------------------------------------------------------------------------

def tiny_config(workdir: Path, **extra):
    settings = {
        "name": "tiny", "base_model": str(workdir / "distilbert"),
        "data": {"path": str(workdir / "synthetic.csv"), "split": {"validation": 0.1, "test": 0.2}},
        "max_length": 32, "batch_size": 16, "learning_rate": 2e-3, "warmup_ratio": 0.0, "epochs": 10,
        "eval_steps": 25, "save_top_k": 2, "num_threads": 1, "logging_steps": 10,
    }
    settings.update(extra)
    return config_from_dict(settings)
