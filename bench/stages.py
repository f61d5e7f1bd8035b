"""The worker's two halves alone: ``BatchProcessor.label`` (parse, tokenise, forward) and ``.store`` (Postgres,
Redis), one thread, no Faust, on the null model (bench/pipeline_null.py), in a private stack.

    python bench/stages.py --events 20000 --rounds 2 [--json FILE]

Prints, per round, events/s through both halves in turn and each half's wall and CPU microseconds per event (this
process, all threads): what a worker could do if Faust and the GIL cost nothing, to hold the end-to-end figure
of bench/pipeline.py against.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pipeline_null import null_model, uptime  # noqa: E402
from private_stack import log, private_stack  # noqa: E402
from private_stack import texts as bench_texts  # noqa: E402

from sentiment_model.predictor import predictor_from_settings  # noqa: E402
from stream.dlq import DeadLetterWriter  # noqa: E402
from stream.events import RawRecord  # noqa: E402
from stream.pipeline import BatchProcessor  # noqa: E402
from stream.services import trend_counters  # noqa: E402


def records(texts: list[str], tag: str) -> list[RawRecord]:
    return [RawRecord("bench", 0, i, None, None, json.dumps({"review_id": f"{tag}-{i}", "text": t,
                                                             "source": "bench"}).encode()) for i, t in enumerate(texts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    texts = bench_texts("train")
    texts = (texts * (args.events // len(texts) + 1))[:args.events]
    rounds = []
    with tempfile.TemporaryDirectory() as tmp, private_stack("stages") as stack:
        s = stack.settings
        batch = s.worker.batch_max
        predictor = predictor_from_settings(s.model.model_copy(update={"threads": 1}), null_model(Path(tmp) / "null"),
                                            "null")
        proc = BatchProcessor(predictor, stack.engine, trend_counters(s),
                              DeadLetterWriter(s.kafka.dlq_topic, s.kafka.client_options()))
        proc.store(proc.label(records(texts[:batch], "warm")))
        for r in range(args.rounds):
            recs = records(texts, f"r{r}")
            label = [0.0, 0.0]
            store = [0.0, 0.0]
            t0 = time.perf_counter()
            for i in range(0, len(recs), batch):
                w, c = time.perf_counter(), time.process_time()
                labelled = proc.label(recs[i:i + batch])
                label[0] += time.perf_counter() - w
                label[1] += time.process_time() - c
                w, c = time.perf_counter(), time.process_time()
                proc.store(labelled)
                store[0] += time.perf_counter() - w
                store[1] += time.process_time() - c
            n = len(recs)
            row = {"per_s": round(n / (time.perf_counter() - t0), 1),
                   "label_us_wall": round(label[0] * 1e6 / n, 1), "label_us_cpu": round(label[1] * 1e6 / n, 1),
                   "store_us_wall": round(store[0] * 1e6 / n, 1), "store_us_cpu": round(store[1] * 1e6 / n, 1)}
            log(f"round {r + 1}: {row}")
            rounds.append(row)
    result = {"rounds": rounds, "events": args.events, "micro_batch": batch,
              "model_batch": s.model.batch_size, "uptime": uptime(),
              "command": "python bench/stages.py " + " ".join(sys.argv[1:])}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
