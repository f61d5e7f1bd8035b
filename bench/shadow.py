"""Shadow evaluation against the running stack (`make up`): a real worker serves one trained run and shadows
another on a share of TweetEval tweets; reports agreement, the confusion and the latency cost, and checks
that no row was stored under the candidate and that the trends count exactly the stored rows.

    python bench/shadow.py --production runs/<run_a> --candidate runs/<run_b> --events 3000 --share 0.5 \\
        --json bench/results/shadow.json

The registry lives in a private Postgres schema (dropped afterwards), so the real registry is untouched;
topics, consumer group and Redis prefix are private too. Offline scores are the runs' own test metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from private_stack import SHARED, log, private_stack
from sqlalchemy import func, select

from sentiment_app.lifecycle import promotion
from sentiment_model.artifact import RunInfo
from storage import shadow as shadow_store
from storage.sampling import in_sample
from storage.schema import review_sentiment as t
from storage.trends import HOUR, TrendCounters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--production", type=Path, required=True, help="training run dir served as production")
    ap.add_argument("--candidate", type=Path, required=True, help="training run dir shadowed")
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2, help="the worker's torch threads")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with private_stack("shadow", args.threads) as stack:
        uid, settings, engine = stack.uid, stack.settings, stack.engine
        # offline scores: the runs' own TweetEval test metrics (no re-scoring: the bench measures the stream)
        known = {RunInfo.read(r / "model").run_id: json.loads((r / "test_metrics.json").read_text())
                 for r in (args.production, args.candidate)}

        def run_metrics(model_dir: Path, eval_set: str) -> dict:
            return known[model_dir.name]

        names = []
        for run in (args.production, args.candidate):
            v = promotion.publish(settings, engine, run, "tweeteval-test", evaluate=run_metrics)
            names.append(v.version)
        prod, cand = names
        promotion.promote(settings, engine, prod, evaluate=run_metrics)
        shadow_store.start(engine, cand, args.share)
        log(f"production {prod}, shadow {cand} on {args.share:.0%}")

        lines = [s.strip() for s in (SHARED / "tweeteval_sentiment" / "test_text.txt").read_text().splitlines()
                 if s.strip()]
        texts = [lines[i % len(lines)] for i in range(args.events)]
        ids = [f"{uid}-{i}" for i in range(args.events)]
        stack.produce([{"review_id": rid, "text": txt, "source": f"bench-{uid}"} for rid, txt in zip(ids, texts,
                                                                                                   strict=True)])
        worker = stack.start_worker()
        t0 = time.monotonic()
        expected = sum(in_sample(rid, args.share) for rid in ids)

        def counts() -> tuple[int, int]:
            with engine.connect() as conn:
                n = conn.execute(select(func.count()).select_from(t).where(t.c.source == f"bench-{uid}")).scalar_one()
                s = conn.execute(select(func.count()).select_from(shadow_store.shadow_prediction)
                                 .where(shadow_store.shadow_prediction.c.candidate == cand)).scalar_one()
            return n, s

        while True:
            n, s = counts()
            if n >= args.events and s >= expected:
                break
            if worker.poll() is not None or time.monotonic() - t0 > 1800:
                raise SystemExit(f"worker gone or too slow ({n}/{args.events} rows, {s}/{expected} shadowed):\n"
                                 + stack.worker_log()[-3000:])
            time.sleep(1)
        wall = time.monotonic() - t0
        c = shadow_store.compare(engine, cand)
        with engine.connect() as conn:
            under_candidate = conn.execute(select(func.count()).select_from(t).where(t.c.model_version == cand)
                                           ).scalar_one()
        counters = TrendCounters.from_url(settings.redis.url.get_secret_value(), prefix=settings.redis.key_prefix)
        redis_total = sum(sum(b.counts.values()) for b in counters.read(HOUR, 2, source=f"bench-{uid}"))
        result = {
            "production": prod, "candidate": cand, "share": args.share, "events": args.events,
            "rows_stored": n, "rows_under_candidate": under_candidate, "redis_counted": redis_total,
            "shadowed": c.events, "expected_shadowed": expected, "agreement": c.agreement, "kappa": c.kappa,
            "confusion_rows_production_cols_candidate": c.matrix(), "per_class": c.per_class(),
            "production_ms_per_event": c.production_ms_per_event, "candidate_ms_per_event": c.candidate_ms_per_event,
            "latency_ratio": c.latency_ratio, "added_ms_per_batch": c.added_ms_per_batch, "batches_timed": c.batches,
            "wall_s_worker_start_to_done": wall, "worker_threads": args.threads,
            "offline_test_macro_f1": {v: known[v].get("macro_f1") for v in (prod, cand)},
        }
        log(json.dumps(result, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
