"""Closing the loop on real data, against the running stack (`make up`): drift, feedback and a refresh.

A real worker serves a TweetEval-trained model (published and promoted in a private registry) and labels
three streams, each in its own event hour: TweetEval validation tweets (the model's reference data),
TweetEval test tweets (a later period, more negative), and the 300 product reviews shipped in
training/samples (another domain). Per hour it reports the drift score the worker stored. Then an
annotator corrects every product review the model got wrong (`review_feedback`, gold labels), and
`run_refresh` retrains on TweetEval train (optionally capped) plus those corrections, scores candidate and
production on the same fixed sets (TweetEval test as the gate, validation, the feedback hold-out) and
gates the promotion.

    python bench/loop.py --production runs/<run> --train-samples 8000 --json bench/results/loop.json

Everything lives in a private schema, topics and Redis prefix that are removed afterwards.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from private_stack import REPO, log, private_stack, tweets
from sqlalchemy import func, select

from sentiment_app.lifecycle import promotion
from sentiment_app.lifecycle.refresh import load_refresh_config, run_refresh
from sentiment_model.labels import LABELS
from storage.feedback import add_correction
from storage.schema import review_sentiment as t
from storage.trends import HOUR, bucket_start
from stream.drift import latest_score
from stream.services import trend_counters


def stored(engine, source: str) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(t.c.review_id, t.c.label).where(t.c.source == source)).all())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--production", type=Path, required=True, help="training run dir served as production")
    ap.add_argument("--train-samples", type=int, default=None, help="cap on TweetEval train rows in the refresh")
    ap.add_argument("--tweets", type=int, default=2000, help="tweets per TweetEval stream")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    started = time.monotonic()

    with private_stack("loop", args.threads) as stack:
        engine, settings = stack.engine, stack.settings
        known = json.loads((args.production / "test_metrics.json").read_text())
        def own_scores(model_dir: Path, eval_set: str) -> dict:
            return known  # the run's own test scores

        prod = promotion.publish(settings, engine, args.production, "tweeteval-test", evaluate=own_scores)
        promotion.promote(settings, engine, prod.version, evaluate=own_scores)
        log(f"production {prod.version}; writing its drift reference (models trained before profiles existed)")
        subprocess.run([sys.executable, "-m", "sentiment_app", "drift", "profile", str(prod.artifact_dir),
                        "shared:tweeteval_sentiment"], cwd=REPO, check=True)

        now = datetime.now(UTC)
        streams = {  # name -> (event hour, [(text, gold label)])
            "tweeteval-validation": (bucket_start(now - timedelta(hours=3), HOUR),
                                     [(x, LABELS[y]) for x, y in tweets("val")[:args.tweets]]),
            "tweeteval-test": (bucket_start(now - timedelta(hours=2), HOUR),
                               [(x, LABELS[y]) for x, y in tweets("test")[:args.tweets]]),
            "product-reviews": (bucket_start(now - timedelta(hours=1), HOUR),
                                list(csv.reader((REPO / "training/samples/reviews_sample.csv").open()))[1:]),
        }
        worker = stack.start_worker(SENTIMENT_DRIFT__MIN_EVENTS="200", SENTIMENT_DRIFT__CHECK_INTERVAL_S="1")
        gold: dict[str, str] = {}
        for name, (hour, rows) in streams.items():
            events = [{"review_id": f"{stack.uid}-{name}-{i}", "text": text, "source": name,
                       "created_at": (hour + timedelta(minutes=10)).isoformat()} for i, (text, _) in enumerate(rows)]
            gold.update({e["review_id"]: label for e, (_, label) in zip(events, rows, strict=True)})
            stack.produce(events)
            deadline = time.monotonic() + 1800
            while len(stored(engine, name)) < len(rows):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"worker gone or too slow on {name}:\n{stack.worker_log()[-3000:]}")
                time.sleep(1)
            log(f"{name}: {len(rows)} labelled")
        time.sleep(1.5)  # the last batches' hours are scored at the next check: one more event triggers it
        stack.produce([{"review_id": f"{stack.uid}-nudge", "text": "ok", "source": "nudge",
                        "created_at": now.isoformat()}])
        time.sleep(5)
        counters = trend_counters(settings)
        scores = {start: s for start, s in counters.read_drift(4) if s is not None}
        drift = {}
        for name, (hour, rows) in streams.items():
            labels = stored(engine, name)
            s = scores.get(hour)
            drift[name] = {"reviews": len(rows), "accuracy": sum(labels[r] == gold[r] for r in labels) / len(labels),
                           **({k: s[k] for k in ("score", "label_psi", "confidence_drop", "label_mix",
                                                  "mean_confidence", "events")} if s else {"score": None})}
            log(f"{name}: drift {drift[name]}")
        latest = latest_score(counters, hours=2)
        would_refresh = latest is not None and latest.score > settings.drift.threshold

        wrong = {rid: gold[rid] for rid, label in stored(engine, "product-reviews").items() if label != gold[rid]}
        for rid, label in sorted(wrong.items()):
            add_correction(engine, rid, label, "bench-annotator", "gold label of reviews_sample.csv")
        log(f"{len(wrong)} product reviews corrected; refreshing (--if-drift would {'' if would_refresh else 'not '}"
            f"run: latest hour scores {latest.score if latest else None})")

        overrides = {"name": "loop-refresh", "learning_rate": 1.0e-4}
        if args.train_samples:
            overrides["data.max_train_samples"] = args.train_samples
        config_path = stack.tmp / "refresh.yaml"
        config_path.write_text(yaml.safe_dump({
            "name": "bench-loop", "experiment": str(REPO / "configs" / "baseline.yaml"), "overrides": overrides,
            "feedback": {"holdout_share": 0.2}, "eval_sets": ["tweeteval-validation"],
            "gate": {"eval_set": "tweeteval-test", "metric": "macro_recall", "margin": 0.0},
            "runs_dir": str(stack.tmp / "runs")}))
        t0 = time.monotonic()
        result = run_refresh(load_refresh_config(config_path), settings, engine)
        refresh_s = time.monotonic() - t0
        with engine.connect() as conn:
            under_candidate = conn.execute(select(func.count()).select_from(t)
                                           .where(t.c.model_version == result.candidate)).scalar_one()
        scores_out = {Path(k).name: {("candidate" if v == result.candidate else "production"):
                                     {m: (x or {}).get(m) for m in ("accuracy", "macro_f1", "macro_recall")}
                                     for v, x in by.items()} for k, by in result.scores.items()}
        out = {
            "production": prod.version, "drift_threshold": settings.drift.threshold, "drift": drift,
            "refresh_if_drift_would_run": would_refresh, "corrections": len(wrong),
            "refresh": {"candidate": result.candidate, "promoted": result.promoted, "reason": result.reason,
                        "counts": result.counts.__dict__, "scores": scores_out, "wall_s": round(refresh_s, 1),
                        "train_samples_cap": args.train_samples, "rows_labelled_by_candidate": under_candidate},
            "wall_s": round(time.monotonic() - started, 1),
        }
        print(json.dumps(out, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=2) + "\n")
            (args.json.parent / f"{args.json.stem}_report.md").write_text(result.report.read_text())


if __name__ == "__main__":
    main()
