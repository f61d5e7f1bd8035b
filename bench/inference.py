"""Inference benchmark: throughput of each serving path on the same texts, the int8 model's macro-F1
against fp32 on a labelled set, and the process's memory across model hot swaps.

    python bench/inference.py --json bench/results/inference.json [--model runs/<run_id>/model]

Paths: cpu fp32, cpu int8 (dynamic quantisation of the Linear layers), and cuda (bf16 autocast) when a
GPU is present. Texts: TweetEval test from ../shared/data ($SENTIMENT_SHARED_DATA); without it, synthetic
texts and no F1. Model: --model, else the newest fine-tuned run under runs/ (or models/runs/), else a
DistilBERT-base-sized model with random weights (speed only: F1 is then not measured).
Each path labels the same texts through ``sentiment_model.predictor.Predictor`` (length-sorted dynamic padding,
the model's training-time cleaning), i.e. exactly what the worker does, without Kafka and the sinks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from sentiment_model.artifact import RunInfo  # noqa: E402
from sentiment_model.predictor import Predictor, cores_given, release_memory  # noqa: E402

SHARED = Path(os.environ.get("SENTIMENT_SHARED_DATA", REPO.parent / "shared" / "data"))
LABEL_IDS = {"negative": 0, "neutral": 1, "positive": 2}  # TweetEval's label ids


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def tweeteval_test() -> tuple[list[str], list[int]] | None:
    folder = SHARED / "tweeteval_sentiment"
    if not (folder / "test_text.txt").exists():
        return None
    texts = (folder / "test_text.txt").read_text(encoding="utf-8").splitlines()
    labels = [int(x) for x in (folder / "test_labels.txt").read_text().split()]
    return texts, labels


def newest_run_model() -> Path | None:
    roots = (REPO / "runs", REPO / "models" / "runs")
    found = sorted((p for root in roots for p in root.glob("*/model/training_run.json")),
                   key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def throughput(predictor: Predictor, texts: list[str], batch: int) -> float:
    predictor.predict_probs(texts[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        predictor.predict_probs(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - start)


def labels_of(predictor: Predictor, texts: list[str], chunk: int = 512) -> list[int]:
    out: list[int] = []
    for i in range(0, len(texts), chunk):
        out += [LABEL_IDS[p.label] for p in predictor.predict(texts[i:i + chunk])]
    return out


def swap_rss(model_dir: Path, kw: dict, swaps: int) -> dict[str, float]:
    """RSS after the 1st and the last of ``swaps`` hot swaps, done the way the worker does them."""
    from storage.registry import ModelRef
    from stream.pipeline import BatchProcessor, ModelFollower

    state = {"ref": ModelRef("v0", model_dir)}
    follower = ModelFollower(lambda: state["ref"], lambda ref: Predictor(ref.artifact_dir, version=ref.version, **kw),
                             interval_s=0.001)
    proc = BatchProcessor(Predictor(model_dir, version="v0", **kw), None, None, None, follower=follower)  # type: ignore[arg-type]
    me, rss = psutil.Process(), []
    for swap in range(1, swaps + 1):
        state["ref"] = ModelRef(f"v{swap}", model_dir)
        time.sleep(0.002)
        proc.label([])
        proc.predictor.predict(["warm the new model up", "and again"])
        rss.append(me.memory_info().rss / 2**20)
    del proc
    release_memory()
    return {"swaps": swaps, "rss_after_first_mb": round(rss[0], 1), "rss_after_last_mb": round(rss[-1], 1),
            "ratio": round(rss[-1] / rss[0], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--model", type=Path, help="fine-tuned model dir (default: the newest run's model)")
    ap.add_argument("--events", type=int, default=1000, help="texts per throughput measurement")
    ap.add_argument("--f1-rows", type=int, default=0, help="labelled rows for the F1 comparison (0: all)")
    ap.add_argument("--batch", type=int, default=32, help="texts per forward pass on the CPU")
    ap.add_argument("--cuda-batch", type=int, nargs="+", default=[256], help="texts per forward pass on a GPU: "
                    "one cuda path per value (e.g. 64 256 1024)")
    ap.add_argument("--paths", default="cpu_fp32,cpu_int8,cuda", help="which serving paths to measure (comma list)")
    ap.add_argument("--speed-only", action="store_true", help="throughput only: no F1, no hot-swap memory check")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores given)")
    ap.add_argument("--swaps", type=int, default=10, help="hot swaps for the memory check (0: skip)")
    args = ap.parse_args()

    model_dir = args.model or newest_run_model()
    f1_possible = model_dir is not None and not args.speed_only
    if model_dir is None:
        from bench.pipeline import distilbert_base_random

        model_dir = distilbert_base_random(REPO / ".stack" / "bench-model")
        log("no fine-tuned model found: random DistilBERT-base weights, speed only (F1 not measured)")
    max_length = RunInfo.read(model_dir).max_length or 128
    data = tweeteval_test()
    if data is None:
        from bench.private_stack import texts as speed_texts  # synthetic tweets of about 40 tokens

        log(f"{SHARED / 'tweeteval_sentiment'} not found: synthetic texts, F1 not measured")
        texts = speed_texts("test")
        labels: list[int] = []
        f1_possible = False
    else:
        texts, labels = data
    bench_texts = [texts[i % len(texts)] for i in range(args.events)]
    threads = args.threads or cores_given()
    log(f"model {model_dir} (max_length {max_length}); {len(bench_texts)} texts; {threads} threads")

    wanted = set(args.paths.split(","))
    paths: dict[str, dict] = {name: {"device": "cpu", "quantize": q} for name, q in
                              (("cpu_fp32", "none"), ("cpu_int8", "int8"), ("cpu_onnx_fp32", "onnx"),
                               ("cpu_onnx_int8", "onnx-int8")) if name in wanted}  # all four: bench/cpu_paths.py
    if torch.cuda.is_available() and "cuda" in wanted:
        for b in args.cuda_batch:  # the first keeps the old name; the others are named by their batch
            paths["cuda_autocast" if b == args.cuda_batch[0] else f"cuda_autocast_b{b}"] = {
                "device": "cuda", "cuda_batch_size": b}
    result: dict = {"model": str(model_dir), "max_length": max_length, "threads": threads,
                    "events": len(bench_texts), "paths": {}}
    rows = len(texts) if args.f1_rows <= 0 else min(args.f1_rows, len(texts))
    preds: dict[str, list[int]] = {}
    for name, kw in paths.items():
        p = Predictor(model_dir, max_length=max_length, batch_size=args.batch, threads=threads, **kw)
        batch = p.batch_size
        rate = throughput(p, bench_texts, batch)
        entry: dict = {"serving_path": p.path, "batch": batch, "reviews_per_s": round(rate, 1)}
        log(f"{name}: {rate:.1f} reviews/s ({p.path})")
        if f1_possible:
            t0 = time.perf_counter()
            preds[name] = labels_of(p, texts[:rows])
            entry["macro_f1"] = round(float(f1_score(labels[:rows], preds[name], average="macro")), 4)
            entry["f1_rows_per_s"] = round(rows / (time.perf_counter() - t0), 1)
            log(f"{name}: macro-F1 {entry['macro_f1']:.4f} on {rows} TweetEval test rows")
        result["paths"][name] = entry
        del p
        release_memory()

    fp32, int8 = result["paths"].get("cpu_fp32"), result["paths"].get("cpu_int8")
    if fp32 and int8:
        result["int8_over_fp32_throughput"] = round(int8["reviews_per_s"] / fp32["reviews_per_s"], 2)
    if f1_possible and fp32 and int8:
        result["f1_rows"] = rows
        result["int8_minus_fp32_macro_f1_points"] = round(100 * (int8["macro_f1"] - fp32["macro_f1"]), 2)
        agree = sum(a == b for a, b in zip(preds["cpu_fp32"], preds["cpu_int8"], strict=True)) / rows
        result["int8_fp32_label_agreement"] = round(agree, 4)
    else:
        result["f1_note"] = "not measured: no fine-tuned model or no labelled TweetEval test set"
    if "cuda_autocast" not in paths:
        result["cuda_note"] = "no GPU on this machine (or not asked for): the cuda path is unmeasured"
    if args.swaps and not args.speed_only:
        result["hot_swap_rss"] = swap_rss(model_dir, {"device": "cpu", "threads": threads, "max_length": max_length},
                                          args.swaps)
        log(f"RSS across {args.swaps} swaps: {result['hot_swap_rss']}")
    result.update(cpu_count=os.cpu_count(), torch=torch.__version__,
                  when=datetime.now(UTC).isoformat(timespec="seconds"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
