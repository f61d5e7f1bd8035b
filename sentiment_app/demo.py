"""`make demo`: the main job end to end on the local stack, narrated.

Makes sure a model serves (the one ``stream.serving.serving_model`` picks; else it fine-tunes the
offline MiniLM encoder briefly on the project's own labelled sample, publishes it to the registry and
promotes it, so `sentiment models list` shows what `sentiment status` serves), starts a worker, streams the
sample reviews in (with a few broken records, as any producer might send), and prints what landed
in Postgres, in Redis and in the dead-letter topic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaProducer
from rich.console import Console
from sqlalchemy import func, select

from sentiment_app.terminal_text import PlainTable as Table  # every cell literal, no control characters
from storage.db import get_engine
from storage.schema import review_sentiment as t
from storage.trends import MINUTE
from stream.dlq import read_dead_letters
from stream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "reviews.jsonl"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
console = Console()


def ensure_model(settings: Settings) -> Path:
    """The model that serves, registered; else train the demo model, publish and promote it (``current`` follows).

    A model served only through the ``current`` link (an older demo's, say) is published and promoted too, so
    `sentiment models list` shows what `sentiment status` serves.
    """
    from sentiment_model.errors import ModelNotFoundError
    from stream.serving import serving_model

    try:
        ref, source = serving_model(settings)
    except ModelNotFoundError:
        ref, source = None, None
    if ref is not None and source == "current":
        return _register(settings, ref.artifact_dir.resolve(), fallback=ref.artifact_dir)
    if ref is not None:
        return ref.artifact_dir
    from training.config import load_config
    from training.train import run_experiment

    console.rule("no model yet: fine-tuning the offline MiniLM encoder on the project's sample (a few minutes)")
    result = run_experiment(load_config(DEMO_CONFIG), settings.runs_dir())
    console.print(f"model trained: test macro-F1 {result.test.get('macro_f1', float('nan')):.3f}")
    return _register(settings, result.run_dir)


def _register(settings: Settings, run_dir: Path, fallback: Path | None = None) -> Path:
    """Publish ``run_dir`` and promote it (forced: it is the demo's model); its artifact in the store.

    With ``fallback`` (a model already served through ``current``), a registry refusal is reported and the
    fallback kept: the demo goes on with the model it has.
    """
    from sentiment_app.lifecycle import promotion
    from sentiment_app.lifecycle.eval_sets import eval_spec
    from storage.registry import RegistryError

    try:
        eval_set = settings.registry.eval_set
        eval_spec(eval_set)
    except RegistryError:
        eval_set = "sample"  # the configured set's data is not on this machine
    engine = get_engine(settings.postgres.url.get_secret_value())
    try:
        version = promotion.publish(settings, engine, run_dir, eval_set)
        decision = promotion.promote(settings, engine, version.version, force=True)
    except RegistryError as e:
        if fallback is None:
            raise
        console.print(f"serving {fallback} unregistered: {e}", markup=False)
        return fallback
    console.print(f"registered {version.version} (macro-F1 {version.score:.3f} on {eval_set}) and promoted it: "
                  f"{decision.reason}; {settings.models_dir / 'current'} points at it", markup=False)
    return version.artifact_dir


def _stream_sample(settings: Settings, tag: str) -> tuple[list[str], int]:
    """Send the sample file line by line, ids made unique to this run; returns (ids sent, broken lines)."""
    producer = KafkaProducer(acks="all", **settings.kafka.client_options())
    ids, broken = [], 0
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
            event["review_id"] = f"{event['review_id']}-{tag}"
            value, key = json.dumps(event, ensure_ascii=False).encode(), event["review_id"].encode()
            ok = isinstance(event.get("text"), str) and event["text"].strip()
        except (json.JSONDecodeError, KeyError, TypeError):
            value, key, ok = line.encode(), None, False
        producer.send(settings.kafka.reviews_topic, key=key, value=value)
        if ok:
            ids.append(event["review_id"])
        else:
            broken += 1
    producer.flush(30)
    producer.close()
    return ids, broken


def run_demo(settings: Settings, timeout_s: float = 300) -> None:
    from stream.services import check_kafka, check_postgres, check_redis, create_topics, trend_counters

    for check in (check_postgres, check_redis):
        check(settings)
    create_topics(settings)
    check_kafka(settings)
    model_dir = ensure_model(settings)
    console.rule(f"starting a worker with the model at {model_dir}")
    log_path = REPO / ".stack" / "logs" / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env(), "SENTIMENT_MODEL__DIR": str(model_dir)}
    worker = subprocess.Popen([sys.executable, "-m", "sentiment_app", "worker"], cwd=Path.cwd(), env=env,
                              stdout=log_path.open("ab"), stderr=subprocess.STDOUT)
    try:
        tag = time.strftime("%H%M%S")
        ids, broken = _stream_sample(settings, tag)
        console.print(f"sent {len(ids)} reviews and {broken} broken records to '{settings.kafka.reviews_topic}'")
        engine = get_engine(settings.postgres.url.get_secret_value())
        deadline = time.monotonic() + timeout_s
        with console.status("waiting for the worker to label them...") as status:
            while True:
                with engine.connect() as conn:
                    done = conn.execute(select(func.count()).where(t.c.review_id.in_(ids))).scalar_one()
                status.update(f"labelled {done}/{len(ids)} (worker log: {log_path})")
                if done == len(ids):
                    break
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the worker did not label the reviews in time; see {log_path}")
                time.sleep(0.5)

        table = Table(title="labelled reviews in Postgres (table review_sentiment)")
        for col in ("source", "label", "score", "expected", "text"):
            table.add_column(col, overflow="fold")
        with engine.connect() as conn:
            rows = conn.execute(select(t.c.source, t.c.label, t.c.score, t.c.metadata, t.c.text)
                                .where(t.c.review_id.in_(ids)).order_by(t.c.source, t.c.label)).all()
        for r in rows:  # `expected`, the sample's gold label, is an unknown top-level field: kept in metadata
            table.add_row(r.source, r.label, f"{r.score:.2f}", r.metadata.get("expected", ""), r.text)
        console.print(table)
        graded = [r for r in rows if "expected" in r.metadata]
        console.print(f"{sum(r.label == r.metadata['expected'] for r in graded)}/{len(graded)} labels as expected")

        counters = trend_counters(settings)
        trends = Table(title="trend counters in Redis, last 5 minutes (sentiment trends --minutes 5)")
        for col in ("minute (UTC)", "source", "negative", "neutral", "positive"):
            trends.add_column(col)
        for source in [None, *counters.sources(MINUTE, 5)]:
            for b in counters.read(MINUTE, 5, source=source):
                if b.total:
                    trends.add_row(b.start.strftime("%H:%M"), source or "(all)",
                                   *(str(b.counts[k]) for k in ("negative", "neutral", "positive")))
        console.print(trends)

        letters = read_dead_letters(settings.kafka.dlq_topic, settings.kafka.client_options(), limit=broken)
        dlq = Table(title=f"dead letters (sentiment dlq), latest {broken}")
        for col in ("position", "reason", "detail"):
            dlq.add_column(col, overflow="fold")
        for d in letters:
            dlq.add_row(d.position, d.reason, d.detail)
        console.print(dlq)
        console.print("Try: sentiment trends --minutes 10 | sentiment reviews --label negative | "
                      "sentiment sql \"SELECT * FROM sentiment_hourly\" | sentiment worker (to keep it running)")
    finally:
        worker.terminate()
        worker.wait(60)
