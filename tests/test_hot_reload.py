"""Hot reload: a running worker follows promotions between batches, with no event lost or labelled twice,
and swapping models again and again does not grow its memory."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import psutil
import pytest
from kafka import KafkaProducer
from pydantic import SecretStr
from sqlalchemy import func, select

from sentiment_app.lifecycle import promotion
from sentiment_model.predictor import Predictor
from storage import registry
from storage.db import get_engine
from storage.registry import ModelRef
from storage.schema import review_sentiment as t
from stream.pipeline import BatchProcessor, ModelFollower
from stream.settings import Settings
from tests.accounting import rows_for, scrape
from tests.registry_helpers import fake_run, fixed_scores
from tests.support import WORDS, wait_until


@pytest.fixture
def settings(settings: Settings, reg_url: str, tmp_path: Path) -> Settings:
    """The conftest settings, but no pinned model: the worker serves and follows the registry."""
    return settings.model_copy(update={
        "postgres": settings.postgres.model_copy(update={"url": SecretStr(reg_url)}),
        "model": settings.model.model_copy(update={"dir": None, "version": None}),
        "models_dir": tmp_path / "models",
        "registry": settings.registry.model_copy(update={"store_dir": tmp_path / "store"}),
    })


class SteadyProducer(threading.Thread):
    """Sends keyed reviews at a steady rate until stopped; remembers every id sent."""

    def __init__(self, settings: Settings, uid: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.uid, self.rate = settings, uid, rate
        self.sent: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        producer = KafkaProducer(acks="all", linger_ms=5, **self.settings.kafka.client_options())
        start = time.monotonic()
        while not self.stop.is_set():
            rid = f"{self.uid}-{len(self.sent)}"
            text = " ".join(WORDS[(len(self.sent) * 7 + k) % len(WORDS)] for k in range(3 + len(self.sent) % 20))
            producer.send(self.settings.kafka.reviews_topic, key=rid.encode(),
                          value=json.dumps({"review_id": rid, "text": text, "source": f"src-{self.uid}-0"}).encode())
            self.sent.append(rid)
            ahead = len(self.sent) / self.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        producer.flush(30)
        producer.close()


@pytest.mark.parametrize("overlap_io", ["off", "on"])  # on: batch N stored while N+1 is labelled (the GPU mode)
def test_a_promotion_reaches_a_streaming_worker_without_gap_or_overlap(
        topics: Settings, uid: str, tmp_path: Path, worker_factory, overlap_io: str) -> None:
    settings = topics.model_copy(update={"worker": topics.worker.model_copy(update={"overlap_io": overlap_io})})
    engine = get_engine(settings.postgres.url.get_secret_value())
    a, b = f"{uid}-a", f"{uid}-b"
    ev = fixed_scores({a: 0.6, b: 0.7})
    for seed, name in enumerate((a, b)):
        promotion.publish(settings, engine, fake_run(tmp_path / "runs", name, seed), "sample", evaluate=ev)
    promotion.promote(settings, engine, a, evaluate=ev)

    producer = SteadyProducer(settings, uid, rate=60)
    producer.start()
    worker = worker_factory(settings)
    try:
        def count(version: str) -> int:
            return sum(1 for r in rows_for(settings, uid) if r.model_version == version)

        wait_until(lambda: count(a) >= 100, 120, f"rows labelled by {a}", worker.log)
        assert promotion.promote(settings, engine, b, evaluate=ev).promoted
        promoted_at = registry.get_version(engine, b).promoted_at
        wait_until(lambda: count(b) > 0, 30, f"rows labelled by {b}", worker.log)
        time.sleep(2)  # keep streaming across the switch
    finally:
        producer.stop.set()
        producer.join(30)
    wait_until(lambda: len(rows_for(settings, uid)) >= len(producer.sent), 60, "every event stored", worker.log)

    rows = rows_for(settings, uid)
    assert sorted(r.review_id for r in rows) == sorted(producer.sent)  # none lost, none twice
    with engine.connect() as conn:
        first_b = conn.execute(select(func.min(t.c.processed_at)).where(t.c.model_version == b)).scalar_one()
    assert (first_b - promoted_at).total_seconds() <= 10, (first_b, promoted_at)
    for partition in {r.kafka_partition for r in rows}:  # by offset: a...a b...b, one switch, never back
        seq = "".join("a" if r.model_version == a else "b"
                      for r in sorted(rows, key=lambda r: r.kafka_offset) if r.kafka_partition == partition)
        assert re.fullmatch(r"a+b+", seq), (partition, seq)
    metrics = scrape(settings.worker.metrics_port)
    assert metrics["sentiment_events_consumed_total"] == len(producer.sent)  # each event processed once
    assert metrics[f'sentiment_model_info{{version="{b}"}}'] == 1
    full_log = worker.log_path.read_text(errors="replace")
    assert "following the model registry" in full_log and f"model switched {a} -> {b}" in full_log
    assert "serving path cpu onnxruntime" in full_log  # the default CPU path, also for the promoted model
    assert f"storing {'overlapped with' if overlap_io == 'on' else 'after'} labelling" in full_log
    print(f"first row by {b} {(first_b - promoted_at).total_seconds():.1f}s after the promotion; "
          f"{len(rows)} events, none lost or repeated")


def _medium_model(path: Path, seed: int) -> Path:
    """A MiniLM-sized model (6 layers, 384 wide, ~40 MB): big enough that a leaked copy per swap shows."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from tests.support import make_tiny_model

    make_tiny_model(path, seed)  # tokenizer files
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=len((path / "vocab.txt").read_text().split()), dim=384, hidden_dim=1536,
                              n_layers=6, n_heads=12, id2label={0: "negative", 1: "neutral", 2: "positive"},
                              label2id={"negative": 0, "neutral": 1, "positive": 2})
    DistilBertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.mark.slow  # ten model loads
def test_ten_swaps_keep_memory_bounded(tmp_path: Path) -> None:
    dirs = [_medium_model(tmp_path / f"m{i}", i) for i in range(2)]
    production = {"ref": ModelRef("v0", dirs[0])}
    follower = ModelFollower(lambda: production["ref"], lambda ref: Predictor(ref.artifact_dir, device="cpu",
                             threads=1, version=ref.version), interval_s=0.001)
    first = Predictor(dirs[0], device="cpu", threads=1, version="v0")
    proc = BatchProcessor(first, None, None, None, follower=follower)  # type: ignore[arg-type]  # no sinks needed
    del first
    me = psutil.Process()
    rss: list[float] = []
    for swap in range(1, 11):
        production["ref"] = ModelRef(f"v{swap}", dirs[swap % 2])
        time.sleep(0.002)
        proc.label([])  # between batches: polls, loads, swaps, frees
        assert proc.predictor.version == f"v{swap}" and proc.swaps == swap
        proc.predictor.predict(["the battery works great", "never again"])
        rss.append(me.memory_info().rss / 2**20)
    ratio = rss[-1] / rss[0]
    print(f"RSS after swap 1: {rss[0]:.0f} MiB, after swap 10: {rss[-1]:.0f} MiB, ratio {ratio:.3f}")
    assert ratio <= 1.2, rss
