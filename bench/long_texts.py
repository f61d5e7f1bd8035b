"""How should a text longer than the model's window be read? Head (the tokenizer's cut), head + tail, or
windows whose logits are averaged (``sentiment_model.long_text``), measured on constructed long texts.

The open data has almost no text over 64 tokens (bench/results/training/domains.md), so long texts are
built from the test splits of ``configs/general.yaml`` (the very rows no model here was trained on: TSE test,
SST test, the PhraseBank 15% test split), one ``random.Random(seed)`` for everything:

- ``concat``: one label's sentences of one domain, drawn without replacement and joined until the text
  reaches a target length drawn uniformly from 80-400 tokens (the model's tokenizer, after its cleaning);
  label = that label. The sentiment is spread over the whole text.
- ``end``: neutral sentences of the domain up to such a target length, then one sentence of the label:
  the verdict sits after a long neutral preamble.
- ``start``: the mirror (the label's sentence first, then the neutral filler): built so that head-only
  reading is not handicapped by construction.

Every strategy reads the same texts through the serving predictor (``Predictor``, fp32, 1 torch thread,
``max_length`` 64 as trained); short texts (the domains' own test rows that fit the window) must come out
with identical logits whatever the strategy, which the script checks.

    python bench/long_texts.py --model tweeteval-best=models/runs/20261202-081900-tweeteval-best \\
        --model general-mix-tw28k=models/runs/20261202-092721-general-mix-tw28k \\
        --json bench/results/training/long_texts.json

The two ``windows`` rows share one forward pass over the windows (``Predictor._rows`` + the predictor's loop, as
``Predictor.predict_logits`` runs them) and differ only in ``average_per_text``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sentiment_model.artifact import find_model_dir  # noqa: E402
from sentiment_model.long_text import LongTextConfig, average_per_text  # noqa: E402
from sentiment_model.predictor import Predictor  # noqa: E402
from training import metrics as M  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import load_dataset  # noqa: E402
from training.evaluate import RAW  # noqa: E402

DOMAINS = ("tse", "sst", "phrasebank")
NEUTRAL = 1
STRATEGIES: dict[str, LongTextConfig] = {
    "head (today)": LongTextConfig(strategy="head"),
    "tail only": LongTextConfig(strategy="head_tail", head=0.0),
    "head_tail 1/4": LongTextConfig(strategy="head_tail", head=0.25),
    "head_tail 1/2": LongTextConfig(strategy="head_tail", head=0.5),
    "windows, mean logits": LongTextConfig(strategy="windows", overlap=0.25, max_windows=8, average="logits"),
    "windows, mean probs": LongTextConfig(strategy="windows", overlap=0.25, max_windows=8, average="probs"),
}


def long_logits(p: Predictor, texts: list[str], cache: dict) -> torch.Tensor:
    """``p.predict_logits(texts)`` with ``p.long_text``; the windows' own logits computed once for both averages."""
    cfg = p.long_text
    if cfg.strategy != "windows":
        return p.predict_logits(texts)
    key = (cfg.overlap, cfg.max_windows)
    if key not in cache:
        cleaned = [p.clean(t) for t in texts] if p.clean else texts
        rows, owner = p._rows(cleaned, one=False)  # as the serving predictor reads them
        with torch.inference_mode():
            cache[key] = (p._logits(rows), owner, len(rows))
    logits, owner, _ = cache[key]
    return average_per_text(logits, owner, len(texts), cfg.average)


def token_len(p: Predictor, texts: list[str]) -> list[int]:
    """Tokens the model would need for each text (special tokens included), after its cleaning."""
    cleaned = [p.clean(t) for t in texts] if p.clean else texts
    return [len(ids) for ids in p.tokenizer(cleaned, verbose=False)["input_ids"]]


def build(pools: dict[str, dict[int, list[str]]], p: Predictor, per_label: int, seed: int,
          lo: int, hi: int) -> list[dict]:
    """The constructed long texts (see the module docstring): dicts of set, domain, label, text, tokens."""
    rng = random.Random(seed)
    size = {d: {c: token_len(p, pool) for c, pool in by_label.items()} for d, by_label in pools.items()}
    rows = []

    def fill(domain: str, label: int, target: int, taken: set[int]) -> list[str]:
        pool, lens, out, n = pools[domain][label], size[domain][label], [], 2
        order = [i for i in rng.sample(range(len(pool)), len(pool)) if i not in taken]
        for i in order:
            if n >= target:
                break
            out.append(pool[i])
            taken.add(i)
            n += lens[i] - 2
        return out

    for domain in DOMAINS:
        for label in (0, 1, 2):
            for _ in range(per_label):
                target = rng.randint(lo, hi)
                rows.append({"set": "concat", "domain": domain, "label": label,
                             "text": " ".join(fill(domain, label, target, set()))})
                verdict_i = rng.randrange(len(pools[domain][label]))
                verdict = pools[domain][label][verdict_i]
                taken = {verdict_i} if label == NEUTRAL else set()
                filler = fill(domain, NEUTRAL, target - size[domain][label][verdict_i], taken)
                rows.append({"set": "end", "domain": domain, "label": label, "text": " ".join([*filler, verdict])})
                rows.append({"set": "start", "domain": domain, "label": label, "text": " ".join([verdict, *filler])})
    for row, n in zip(rows, token_len(p, [r["text"] for r in rows]), strict=True):
        row["tokens"] = n
    return rows


def scores(labels: list[int], preds: np.ndarray) -> dict[str, float]:
    m = M.classification_metrics(labels, preds)
    return {"rows": len(labels), "macro_f1": round(m["macro_f1"], 4), "accuracy": round(m["accuracy"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=run or model dir (repeatable)")
    ap.add_argument("--config", default="configs/general.yaml", help="the data section whose test splits are used")
    ap.add_argument("--per-label", type=int, default=60, help="texts per label, domain and set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-tokens", type=int, default=80)
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--short-check", type=int, default=600, help="short test rows per domain checked for equality")
    ap.add_argument("--only", action="append", choices=list(STRATEGIES), help="score only these strategies")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    data = load_config(REPO / args.config).data
    test = load_dataset(data.model_copy(update={"clean": RAW})).test.by_domain()  # the predictor cleans
    pools = {d: {c: [t for t, y in zip(test[d].texts, test[d].labels, strict=True) if y == c] for c in (0, 1, 2)}
             for d in DOMAINS}
    result: dict = {"seed": args.seed, "per_label": args.per_label, "target_tokens": [args.min_tokens, args.max_tokens],
                    "max_length": args.max_length, "torch_threads": 1, "models": {}}
    rows: list[dict] | None = None
    for spec in args.model:
        name, _, path = spec.partition("=")
        p = Predictor(find_model_dir(path), device="cpu", max_length=args.max_length, batch_size=32, threads=1)
        if rows is None:
            rows = build(pools, p, args.per_label, args.seed, args.min_tokens, args.max_tokens)
            long_rows = [r for r in rows if r["tokens"] > args.max_length]
            lens = np.array([r["tokens"] for r in rows])
            result["constructed"] = {"texts": len(rows), "over_window": len(long_rows),
                                     "tokens_min_median_max": [int(lens.min()), int(np.median(lens)), int(lens.max())]}
            print(json.dumps(result["constructed"]), flush=True)
            rng = random.Random(args.seed)
            short = []  # (text, label, domain): test rows that fit the window, shuffled, capped per domain
            for d in DOMAINS:
                pairs = list(zip(test[d].texts, test[d].labels, strict=True))
                rng.shuffle(pairs)
                fits = [n <= args.max_length for n in token_len(p, [t for t, _ in pairs])]
                short += [(t, y, d) for (t, y), ok in zip(pairs, fits, strict=True) if ok][:args.short_check]
        texts = [r["text"] for r in rows]
        out: dict = {}
        short_ref = None
        cache: dict = {}
        for label, cfg in STRATEGIES.items():
            if args.only and label not in args.only:
                continue
            p.long_text = cfg
            start = time.perf_counter()
            preds = long_logits(p, texts, cache).argmax(-1).numpy()
            secs = time.perf_counter() - start
            short_logits = p.predict_logits([t for t, _, _ in short])
            if short_ref is None:
                short_ref = short_logits
                out["short texts"] = {d: scores([y for _, y, dd in short if dd == d],
                                                short_logits.argmax(-1).numpy()[[dd == d for _, _, dd in short]])
                                      for d in DOMAINS}
            entry: dict = {"seconds": round(secs, 1),  # windows: the second average reuses the first's pass
                           "rows_read": next(iter(cache.values()))[2] if cfg.strategy == "windows" else len(texts),
                           "short_texts_same_labels": bool(torch.equal(short_logits.argmax(-1), short_ref.argmax(-1))),
                           "short_texts_max_prob_diff": float((short_logits.softmax(-1) - short_ref.softmax(-1))
                                                              .abs().max())}
            for set_name in ("concat", "end", "start", "all"):
                idx = [i for i, r in enumerate(rows) if r["tokens"] > args.max_length and set_name in (r["set"], "all")]
                entry[set_name] = scores([rows[i]["label"] for i in idx], preds[idx])
                if set_name == "concat":
                    entry["concat_by_domain"] = {
                        d: scores([rows[i]["label"] for i in idx if rows[i]["domain"] == d],
                                  preds[[i for i in idx if rows[i]["domain"] == d]]) for d in DOMAINS}
            out[label] = entry
            print(name, label, json.dumps(entry), flush=True)
        result["models"][name] = out
    result["short_texts_rows"] = len(short)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
