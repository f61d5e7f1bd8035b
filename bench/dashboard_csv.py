"""Throughput of the dashboard's CSV classification (Classify page) on this machine's CPU.

    python bench/dashboard_csv.py --rows 1000 --json bench/results/dashboard_csv.json

Runs the page's own code path (``sentiment_app.dashboard.classify.classify_upload`` ->
``sentiment_app.csv_labelling.label_csv`` -> the worker's Predictor) on a DistilBERT-base-sized model
with random weights (speed does not depend on the weights) and tweet-length texts (TweetEval test when
../shared/data has it). The model is warmed up first, as it is in a running dashboard after its first
request. Target: >= 1,000 rows/minute. The CPU time and load average are recorded too: on a shared
machine the wall-clock rate depends on the neighbours.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from pipeline import distilbert_base_random, tweet_texts  # noqa: E402

TARGET_ROWS_PER_MINUTE = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--model", type=Path, help="model dir [default: random DistilBERT-base in .stack/]")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--chunk", type=int, help="rows per predict call [default: the page's]")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "dashboard_csv.json")
    args = parser.parse_args()

    import torch

    from sentiment_app.csv_labelling import load_predictor
    from sentiment_app.dashboard.classify import CHUNK, classify_upload
    from stream.settings import Settings

    model_dir = args.model or distilbert_base_random(REPO / ".stack" / "bench-model")
    settings = Settings(model={"dir": model_dir, "device": "cpu", "batch_size": args.batch_size})
    predictor = load_predictor(settings)
    texts = tweet_texts(args.rows)
    upload = io.StringIO()
    csv.writer(upload).writerows([["id", "text"], *[[i, t] for i, t in enumerate(texts)]])
    predictor.predict(texts[:settings.model.batch_size])  # warm-up

    load_before = os.getloadavg()[0]
    cpu_start = time.process_time()
    chunk = args.chunk or CHUNK
    result = classify_upload(predictor, "bench.csv", upload.getvalue().encode(), "text", chunk=chunk,
                             on_progress=lambda done: print(f"  {done}/{args.rows} rows", flush=True))
    cpu_seconds = time.process_time() - cpu_start
    labelled = list(csv.DictReader(io.StringIO(result.data.decode())))
    assert len(labelled) == args.rows and all(r[result.label_col] for r in labelled), "one label per row expected"
    report = {
        "rows": result.rows,
        "seconds": round(result.seconds, 2),
        "rows_per_minute": round(result.rows_per_minute),
        "target_rows_per_minute": TARGET_ROWS_PER_MINUTE,
        "meets_target": result.rows_per_minute >= TARGET_ROWS_PER_MINUTE,
        "cpu_seconds": round(cpu_seconds, 2),
        "rows_per_cpu_minute": round(60 * result.rows / cpu_seconds),
        "load_average_1m_before": round(load_before, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),
        "mean_text_chars": round(sum(map(len, texts)) / len(texts), 1),
        "model": "DistilBERT-base (random weights)" if args.model is None else str(args.model),
        "device": str(predictor.device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "batch_size": settings.model.batch_size,
        "max_length": settings.model.max_length,
        "chunk_rows": chunk,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(f"{report['rows_per_minute']:,} rows/minute: {result.rows} rows in {result.seconds:.1f} s "
          f"({cpu_seconds:.0f} s CPU, {report['torch_threads']} torch threads, load {load_before:.1f}); "
          f"target {TARGET_ROWS_PER_MINUTE:,}: {'met' if report['meets_target'] else 'NOT met'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
