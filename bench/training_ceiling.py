"""How far can the trained models go on TweetEval test without another training run?

For each run directory it scores the selected model on validation and test once (logits cached as
``.npz``), then reports, in macro-averaged recall:

- each model alone;
- probability-averaging ensembles: every combination of 2-5 models ranked by validation (the honest
  choice), all mean-pooling runs, all runs, and the best any combination reaches on test (a ceiling);
- a per-class bias on the log-probabilities (prior correction), chosen on validation and, as a ceiling,
  on test itself.

The ceilings are peeks at test; they bound what selection on validation could find, nothing more.

    python bench/training_ceiling.py runs/2026*-tweeteval-* --cache /tmp/logits --out bench/results/training/ceiling.txt
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sentiment_model.predictor import predictor_from_settings
from sentiment_model.settings import ModelSettings
from training.data import load_split_file
from training.evaluate import RAW

SPLITS = ("validation", "test")


def macro_recall(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in range(3)]))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def scores(run: Path, data: str, cache: Path) -> dict[str, np.ndarray]:
    """Logits (our label order) and gold ids of the run's model on validation and test, cached."""
    dest = cache / f"{run.name}.npz"
    if dest.exists():
        return dict(np.load(dest))
    predictor = predictor_from_settings(ModelSettings(batch_size=128), run / "model")  # the serving path, fp32
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        labelled = load_split_file(data, fmt="tweeteval", cleaning=RAW, split=split)  # the predictor cleans
        out[split] = predictor.predict_logits(labelled.texts).numpy()
        out[f"{split}_y"] = np.array(labelled.labels)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(dest, **out)
    return out


def name_of(run: Path) -> str:
    return run.name.split("-", 2)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (with model/)")
    parser.add_argument("--data", default="../shared/data/tweeteval_sentiment")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/training-ceiling"))
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    runs = {name_of(r): scores(r, args.data, args.cache) for r in args.runs if (r / "model").is_dir()}
    first = next(iter(runs.values()))
    yv, yt = first["validation_y"], first["test_y"]
    probs = {n: {s: np.exp(log_softmax(d[s])) for s in SPLITS} for n, d in runs.items()}
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    def ens(names: tuple[str, ...], split: str) -> np.ndarray:
        return sum(probs[n][split] for n in names).argmax(1)

    say(f"{len(runs)} models; val {len(yv)}, test {len(yt)} tweets; macro recall")
    say("\nsingle models                       val     test")
    for n in runs:
        say(f"  {n:32s} {macro_recall(yv, ens((n,), 'validation')):.4f}  {macro_recall(yt, ens((n,), 'test')):.4f}")

    names = [n for n in runs if "freeze" not in n]
    combos = [c for k in range(2, min(5, len(names)) + 1) for c in itertools.combinations(names, k)]
    ranked = sorted(combos, key=lambda c: -macro_recall(yv, ens(c, "validation")))
    say(f"\nensembles (mean of probabilities), {len(combos)} combinations of 2-5 unfrozen models")
    for c in ranked[:5]:
        say(f"  best on val: val {macro_recall(yv, ens(c, 'validation')):.4f} test "
            f"{macro_recall(yt, ens(c, 'test')):.4f}  {' + '.join(c)}")
    groups = {"all mean-pooling runs": tuple(n for n in names if "mean" in n), "all unfrozen runs": tuple(names)}
    for label, c in groups.items():
        if len(c) > 1:
            say(f"  {label} ({len(c)}): val {macro_recall(yv, ens(c, 'validation')):.4f} "
                f"test {macro_recall(yt, ens(c, 'test')):.4f}")
    best_test = max(combos, key=lambda c: macro_recall(yt, ens(c, "test")))
    say(f"  ceiling (best combination on TEST): {macro_recall(yt, ens(best_test, 'test')):.4f}  "
        f"{' + '.join(best_test)}")

    grid = np.linspace(-1.5, 1.5, 31)
    say("\nper-class bias on log-probabilities (negative, 0, positive), grid -1.5..1.5 step 0.1")
    say("  model                            none    val-chosen (bias)        test-chosen ceiling")
    for n, d in runs.items():
        v, t = log_softmax(d["validation"]), log_softmax(d["test"])
        trials = [(macro_recall(yv, (v + b).argmax(1)), macro_recall(yt, (t + b).argmax(1)), b)
                  for b in (np.array([b0, 0.0, b2]) for b0 in grid for b2 in grid)]
        on_val, on_test = max(trials, key=lambda r: r[0]), max(trials, key=lambda r: r[1])
        say(f"  {n:32s} {macro_recall(yt, t.argmax(1)):.4f}  {on_val[1]:.4f} ({on_val[2][0]:+.1f},{on_val[2][2]:+.1f})"
            f"          {on_test[1]:.4f} ({on_test[2][0]:+.1f},{on_test[2][2]:+.1f})")
    say(f"\n{time.perf_counter() - start:.0f} s")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
