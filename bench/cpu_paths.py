"""The CPU serving paths side by side: torch fp32, torch dynamic int8, ONNX Runtime fp32 and ONNX Runtime int8
(the default, ``quantize=auto``), on the same texts in the same run, with each one's macro-F1.

    python bench/cpu_paths.py [--model DIR] [--threads 1] [--rounds 3] [--f1-rows 3000]

Each path is a ``sentiment_model.predictor.Predictor`` (tokenising, cleaning, length-sorted padding: what the
worker runs), batch 32. Paths are timed in turns (``--rounds``; medians and every round reported) so a load
that comes and goes on a shared machine hits them alike; with one thread the process's CPU time per review is
reported as well, the figure least moved by other processes. ``--profile`` adds torch's op profile of the fp32
and int8 forward passes and their speed at 1 thread and at the cores given: why torch int8 gains what it gains.
Writes ``--json`` and a short ``--md`` (default bench/results/cpu_paths.{json,md}).
Default model: the best TweetEval run (bench/results/training/tweeteval-best-rerun/run_id.txt under models/runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from bench.inference import labels_of, log, newest_run_model, tweeteval_test  # noqa: E402
from sentiment_model.artifact import RunInfo  # noqa: E402
from sentiment_model.predictor import Predictor, cores_given  # noqa: E402

PATHS = {"torch_fp32": "none", "torch_int8": "int8", "onnx_fp32": "onnx", "onnx_int8": "onnx-int8"}
BEST_RUN = REPO / "bench" / "results" / "training" / "tweeteval-best-rerun" / "run_id.txt"


def best_model() -> Path | None:
    if BEST_RUN.exists():
        run = BEST_RUN.read_text().strip()
        for root in (REPO / "models" / "runs", REPO / "runs"):
            if (root / run / "model" / "config.json").exists():
                return root / run / "model"
    return newest_run_model()


def cpu_name() -> str:
    """The CPU's model name and the int8/bf16 instruction sets it has (what ONNX Runtime's kernels use)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                platform.machine())
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    return f"{name} ({', '.join(f for f in ('avx512_vnni', 'avx_vnni', 'avx512_bf16') if f in flags) or 'no VNNI'})"


def rates(predictor: Predictor, texts: list[str], batch: int) -> tuple[float, float]:
    """(reviews per second, reviews per CPU-second of this process), labelling ``texts`` ``batch`` at a time."""
    predictor.predict_probs(texts[:batch])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(texts), batch):
        predictor.predict_probs(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - wall), len(texts) / max(time.process_time() - cpu, 1e-9)


def profile(model_dir: Path, texts: list[str], batch: int, max_length: int, threads: int) -> dict:
    """Share of self CPU time per op in torch's fp32 and int8 forward passes (1 thread), and both passes'
    speed at 1 thread and at ``threads``: where int8's gain goes."""
    out: dict = {}
    for name in ("torch_fp32", "torch_int8"):
        p = Predictor(model_dir, device="cpu", threads=1, batch_size=batch, max_length=max_length,
                      quantize=PATHS[name])
        ids = p._token_ids([p.clean(t) if p.clean else t for t in texts])
        encs = [p._padded(ids, list(range(i, min(i + batch, len(ids))))) for i in range(0, len(ids), batch)]
        with torch.inference_mode():
            p.model(**encs[0])
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for enc in encs:
                    p.model(**enc)
            ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
            total = sum(e.self_cpu_time_total for e in ops)
            speed = {}
            for n in sorted({1, threads}):
                torch.set_num_threads(n)
                start = time.perf_counter()
                for enc in encs:
                    p.model(**enc)
                speed[f"threads_{n}_forward_per_s"] = round(len(texts) / (time.perf_counter() - start), 1)
        out[name] = {"self_cpu_share": {e.key: round(e.self_cpu_time_total / total, 3) for e in ops[:6]},
                     **speed, "mean_tokens_per_row": round(sum(e["input_ids"].shape[1] for e in encs) / len(encs), 1)}
        log(f"profile {name}: {out[name]}")
    return out


def markdown(r: dict, command: str) -> str:
    base = r["paths"]["torch_fp32"]
    lines = [
        "# CPU serving paths (bench/cpu_paths.py)", "",
        f"`{command}`; {r['when']}; {r['machine']}; torch {r['torch']}, onnxruntime {r['onnxruntime']}.",
        f"Model `{r['model']}` (max_length {r['max_length']}), batch {r['batch']}, {r['threads']} thread(s) for "
        f"every path, {r['events']} TweetEval test tweets timed in {r['rounds']} interleaved rounds (medians); "
        f"macro-F1 on the first {r['f1_rows']} rows of the TweetEval test set.", "",
        "| path | serving path | reviews/s | x torch fp32 | reviews/CPU-s | x (CPU time) | macro-F1 | "
        "Δ points | agreement |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, e in r["paths"].items():
        lines.append(f"| {name} | {e['serving_path']} | {e['reviews_per_s']} | {e['over_torch_fp32']} | "
                     f"{e['reviews_per_cpu_s']} | {e['over_torch_fp32_cpu_time']} | {e['macro_f1']} | "
                     f"{e['macro_f1_minus_torch_fp32_points']} | {e['label_agreement_with_torch_fp32']} |")
    rounds = "; ".join(f"{n} {e['rounds_reviews_per_s']}" for n, e in r["paths"].items())
    lines += ["", f"Rounds (reviews/s): {rounds}.",
              f"torch fp32 = {base['reviews_per_s']} reviews/s. Default CPU path (`quantize=auto`): "
              f"{r['default_cpu_path']}."]
    if "profile" in r:
        fp32, int8 = r["profile"]["torch_fp32"], r["profile"]["torch_int8"]
        many = max(int(k.split("_")[1]) for k in fp32 if k.startswith("threads_"))
        ratio = {n: int8[f"threads_{n}_forward_per_s"] / fp32[f"threads_{n}_forward_per_s"] for n in (1, many)}
        linear = int8["self_cpu_share"].get("quantized::linear_dynamic", 0.0)
        lines += ["", f"Finding: torch int8's forward is {ratio[1]:.1f}x fp32 at 1 thread and {ratio[many]:.1f}x at "
                  f"{many} threads on these shared cores (barrier waits hit int8's short ops hardest). In the int8 "
                  f"pass the int8 Linear layers are {linear:.0%} of self CPU time; the rest (attention, GELU, "
                  "LayerNorm, adds) stays fp32 and bounds the gain.", "",
                  "Profile (share of self CPU time, 1 thread; forward passes/s at 1 and at the cores given):", ""]
        lines += [f"- {n}: {json.dumps(v)}" for n, v in r["profile"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="fine-tuned model dir (default: the best TweetEval run's)")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "cpu_paths.json")
    ap.add_argument("--md", type=Path, default=REPO / "bench" / "results" / "cpu_paths.md")
    ap.add_argument("--events", type=int, default=1000, help="texts per timing round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--f1-rows", type=int, default=3000, help="first N TweetEval test rows scored (0: all)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="threads for every path (default 1: fair on shared cores)")
    ap.add_argument("--cache-dir", type=Path, help="ONNX graph cache (default: ~/.cache/sentiment-stream/onnx)")
    ap.add_argument("--profile", action="store_true", help="also profile torch fp32 and int8 (see above)")
    args = ap.parse_args()

    model_dir = args.model or best_model()
    data = tweeteval_test()
    if model_dir is None or data is None:
        sys.exit("needs a fine-tuned model (--model) and ../shared/data/tweeteval_sentiment")
    texts, labels = data
    rows = len(texts) if args.f1_rows <= 0 else min(args.f1_rows, len(texts))
    max_length = RunInfo.read(model_dir).max_length or 128
    bench_texts = [texts[i % len(texts)] for i in range(args.events)]
    loaded = {name: Predictor(model_dir, device="cpu", max_length=max_length, batch_size=args.batch,
                              threads=args.threads, quantize=q, onnx_cache_dir=args.cache_dir)
              for name, q in PATHS.items()}
    timed: dict[str, list[tuple[float, float]]] = {name: [] for name in PATHS}
    for turn in range(args.rounds):
        for name, p in loaded.items():
            timed[name].append(rates(p, bench_texts, args.batch))
            log(f"round {turn + 1} {name}: {timed[name][-1][0]:.1f} reviews/s, {timed[name][-1][1]:.1f}/CPU-s")
    import onnxruntime

    result: dict = {"model": str(model_dir), "max_length": max_length, "batch": args.batch, "threads": args.threads,
                    "events": len(bench_texts), "rounds": args.rounds, "f1_rows": rows, "paths": {}}
    preds = {}
    for name, p in loaded.items():
        wall, cpu = (statistics.median(t[i] for t in timed[name]) for i in (0, 1))
        preds[name] = labels_of(p, texts[:rows])
        result["paths"][name] = {
            "serving_path": p.path, "reviews_per_s": round(wall, 1), "reviews_per_cpu_s": round(cpu, 1),
            "rounds_reviews_per_s": [round(t[0], 1) for t in timed[name]],
            "macro_f1": round(float(f1_score(labels[:rows], preds[name], average="macro")), 4)}
        log(f"{name}: {result['paths'][name]}")
    base = result["paths"]["torch_fp32"]
    for name, e in result["paths"].items():
        e["over_torch_fp32"] = round(e["reviews_per_s"] / base["reviews_per_s"], 2)
        e["over_torch_fp32_cpu_time"] = round(e["reviews_per_cpu_s"] / base["reviews_per_cpu_s"], 2)
        e["macro_f1_minus_torch_fp32_points"] = round(100 * (e["macro_f1"] - base["macro_f1"]), 2)
        e["label_agreement_with_torch_fp32"] = round(
            sum(a == b for a, b in zip(preds["torch_fp32"], preds[name], strict=True)) / rows, 4)
    result["default_cpu_path"] = result["paths"]["onnx_int8"]["serving_path"]
    del loaded, p
    if args.profile:
        result["profile"] = profile(model_dir, texts[:320], args.batch, max_length, cores_given())
    result.update(machine=f"{cpu_name()}, {os.cpu_count()} cores "
                  f"(given {cores_given()}), load average {os.getloadavg()[0]:.1f} at the end",
                  torch=torch.__version__, onnxruntime=onnxruntime.__version__,
                  when=datetime.now(UTC).isoformat(timespec="seconds"))
    command = "python " + " ".join([Path(sys.argv[0]).as_posix().removeprefix(f"{REPO}/"), *sys.argv[1:]])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": command, **result}, indent=2) + "\n")
    args.md.write_text(markdown(result, command))
    print(args.md.read_text())


if __name__ == "__main__":
    main()
