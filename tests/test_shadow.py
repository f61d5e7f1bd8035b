"""Shadow evaluation: a candidate labels a share of live reviews beside production, and only the comparison
is kept; production's rows, counts and pace are untouched, a replay records nothing twice, and a broken
candidate is dropped while production goes on."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr
from rich.console import Console
from sqlalchemy import func, select
from typer.testing import CliRunner

from sentiment_app.lifecycle import promotion
from sentiment_model.labels import LABELS
from sentiment_model.predictor import Prediction, Predictor
from storage import registry
from storage import shadow as shadow_store
from storage.db import get_engine
from storage.registry import RegistryError
from storage.sampling import in_sample
from storage.schema import review_sentiment as t
from storage.shadow import (
    Comparison,
    ShadowBatch,
    ShadowDeployment,
    ShadowPrediction,
    shadow_batch,
    shadow_prediction,
)
from stream.events import RawRecord
from stream.pipeline import BatchProcessor, ModelFollower
from stream.settings import Settings
from tests.accounting import assert_redis_matches_sql, produce, rows_for, scrape
from tests.registry_helpers import fake_run, fixed_scores, lifecycle_settings
from tests.support import WORDS, wait_until

# --- the sampling function and the statistics (no services) ---------------------------------------------


def test_sampling_is_deterministic_proportional_and_nested() -> None:
    ids = [f"review-{i}" for i in range(40_000)]
    for share in (0.05, 0.2, 0.5, 0.9):
        frac = sum(in_sample(i, share) for i in ids) / len(ids)
        assert abs(frac - share) < 0.01, (share, frac)
    assert all(in_sample(i, 1.0) for i in ids[:1000])
    assert not any(in_sample(i, 0.0) for i in ids[:1000])
    small = {i for i in ids if in_sample(i, 0.2)}
    large = {i for i in ids if in_sample(i, 0.5)}
    assert small < large  # a larger share shadows a superset: growing a shadow keeps its reviews
    # the documented rule, independent of the process (no salted hash()): BLAKE2b-64 of the id < share * 2**64
    for rid in ("r-1", "r-2", "ünïcode-ид", "x" * 256):
        h = int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "big")
        for share in (0.1, 0.5, 0.75):
            assert in_sample(rid, share) == (h < share * 2**64)


def test_comparison_statistics() -> None:
    # rows: production label, columns: candidate label
    m = {("negative", "negative"): 40, ("negative", "neutral"): 10, ("neutral", "neutral"): 20,
         ("neutral", "positive"): 5, ("positive", "positive"): 20, ("positive", "negative"): 5}
    c = Comparison("cand", m, {"prod": 100}, batches=10, batch_events=200, batch_shadowed=100,
                   production_ms=400.0, candidate_ms=300.0)
    assert c.events == 100 and c.agreed == 80 and c.agreement == pytest.approx(0.8)
    assert c.matrix() == [[40, 10, 0], [0, 20, 5], [5, 0, 20]]
    pc = c.per_class()
    assert pc["negative"] == {"production": 50, "candidate": 45, "agreement": 0.8, "candidate_agreement": 40 / 45}
    assert pc["neutral"]["agreement"] == pytest.approx(20 / 25) and pc["neutral"]["candidate_agreement"] == 20 / 30
    assert pc["positive"]["agreement"] == pytest.approx(20 / 25) and pc["positive"]["candidate"] == 25
    expected = (50 * 45 + 25 * 30 + 25 * 25) / 100 / 100  # chance agreement from the two label mixes
    assert c.kappa == pytest.approx((0.8 - expected) / (1 - expected))
    assert c.production_ms_per_event == pytest.approx(2.0)  # 400 ms over 200 events
    assert c.candidate_ms_per_event == pytest.approx(3.0)  # 300 ms over the 100 it labelled
    assert c.latency_ratio == pytest.approx(1.5)
    assert c.added_ms_per_batch == pytest.approx(30.0)
    empty = Comparison("cand", {})
    assert empty.events == 0 and empty.agreement is None and empty.kappa is None
    assert empty.latency_ratio is None and empty.added_ms_per_batch is None
    assert all(v["agreement"] is None for v in empty.per_class().values())


# --- the batch processor with fake models (no services) ---------------------------------------------------


class FakePredictor:
    """Labels by text length (mod 3), or by a fixed label; can fail on demand."""

    def __init__(self, version: str, fixed: str | None = None, fail: bool = False) -> None:
        self.version, self.fixed, self.fail = version, fixed, fail
        self.calls: list[int] = []

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        self.calls.append(len(texts))
        if self.fail:
            raise RuntimeError("candidate exploded")
        out = []
        for text in texts:
            label = self.fixed or LABELS[len(text) % 3]
            out.append(Prediction(label, 0.9, {k: 0.9 if k == label else 0.05 for k in LABELS}))
        return out


def _records(n: int, prefix: str = "r") -> list[RawRecord]:
    return [RawRecord("t", 0, i, None, None, json.dumps({"review_id": f"{prefix}-{i}", "text": "x" * (i + 1)}).encode())
            for i in range(n)]


def _processor(tmp_path: Path, candidate: FakePredictor | Exception, share: float = 0.5,
               deployment_id: int = 1) -> tuple[BatchProcessor, dict, list[str]]:
    (tmp_path / "cand").mkdir(exist_ok=True)
    (tmp_path / "cand" / "config.json").write_text("{}")
    state = {"dep": ShadowDeployment(deployment_id, "cand", share, datetime.now(UTC), None, tmp_path / "cand")}
    loads: list[str] = []

    def load(ref):
        loads.append(ref.version)
        if isinstance(candidate, Exception):
            raise candidate
        return candidate

    follower = ModelFollower(lambda: None, load, interval_s=0.001, shadow=lambda: state["dep"])
    proc = BatchProcessor(FakePredictor("prod"), None, None, None, follower=follower)  # type: ignore[arg-type]
    return proc, state, loads


def test_the_candidate_labels_only_the_sample_and_changes_no_production_label(tmp_path: Path) -> None:
    cand = FakePredictor("cand", fixed="neutral")
    proc, _, loads = _processor(tmp_path, cand, share=0.5)
    labelled = proc.label(_records(64))
    assert loads == ["cand"] and proc.shadow is not None
    assert [r.label for _, r in labelled.pairs] == [LABELS[(i + 1) % 3] for i in range(64)]  # production's
    assert {r.model_version for _, r in labelled.pairs} == {"prod"}
    sample = [f"r-{i}" for i in range(64) if in_sample(f"r-{i}", 0.5)]
    s = labelled.shadow
    assert s is not None and [p.review_id for p in s.predictions] == sample and cand.calls == [len(sample)]
    assert all(p.candidate_label == "neutral" and p.production_version == "prod" for p in s.predictions)
    assert s.batch.events == 64 and s.batch.shadowed == len(sample) and s.batch.kafka_offset == 0
    assert s.batch.candidate_ms >= 0 and s.batch.production_ms >= 0


def test_a_candidate_that_fails_is_dropped_and_production_goes_on(tmp_path: Path) -> None:
    cand = FakePredictor("cand", fail=True)
    proc, state, loads = _processor(tmp_path, cand)
    labelled = proc.label(_records(32))
    assert len(labelled.pairs) == 32 and not labelled.rejected and labelled.shadow is None
    assert proc.shadow is None
    time.sleep(0.01)
    labelled = proc.label(_records(32, "s"))  # not loaded again for the same deployment
    assert len(labelled.pairs) == 32 and labelled.shadow is None and loads == ["cand"]
    cand.fail = False
    state["dep"] = ShadowDeployment(2, "cand", 0.5, datetime.now(UTC), None, tmp_path / "cand")  # started again
    time.sleep(0.01)
    assert proc.label(_records(32, "u")).shadow is not None and loads == ["cand", "cand"]


def test_a_candidate_promoted_to_production_is_no_longer_shadowed(tmp_path: Path) -> None:
    cand = FakePredictor("cand")
    proc, _, _ = _processor(tmp_path, cand)
    proc.label(_records(8))
    assert proc.shadow is not None
    proc.follower.interval_s = 3600  # the swap is seen at once, without waiting for the next shadow poll
    proc.follower._next_shadow_check = time.monotonic() + 3600
    proc.predictor = cand  # what a swap to the promoted candidate leaves
    labelled = proc.label(_records(8, "p"))
    sampled = sum(in_sample(f"r-{i}", 0.5) for i in range(8))
    assert proc.shadow is None and labelled.shadow is None
    assert cand.calls == ([sampled, 8] if sampled else [8])  # the second batch: as production only


def test_a_candidate_that_cannot_load_is_dropped_and_production_goes_on(tmp_path: Path) -> None:
    proc, _, loads = _processor(tmp_path, OSError("truncated safetensors"))
    for k in range(3):
        labelled = proc.label(_records(16, f"b{k}"))
        assert len(labelled.pairs) == 16 and labelled.shadow is None and proc.shadow is None
        time.sleep(0.01)
    assert loads == ["cand"]  # tried once per deployment, not per batch


# --- storage and CLI against real Postgres --------------------------------------------------------------


def _opinionated_run(root: Path, run_id: str, noise: float) -> Path:
    """A tiny run whose labels depend on the text (a fresh tiny model labels everything alike); ``noise`` on
    the classifier makes a sibling that agrees with the noise-free one on roughly 70% of texts (at 0.3)."""
    import torch
    from transformers import DistilBertForSequenceClassification

    run = fake_run(root, run_id, seed=1)
    model = DistilBertForSequenceClassification.from_pretrained(run / "model")
    with torch.no_grad():
        torch.manual_seed(7)
        for prm in model.parameters():
            if prm.dim() == 2:
                prm.normal_(0, 1.0)
        torch.manual_seed(11)
        for prm in model.classifier.parameters():
            prm.add_(torch.randn_like(prm) * noise)
    model.save_pretrained(run / "model")
    return run


def _publish(engine, tmp_path: Path, store: Path, names: Sequence[str]) -> None:
    """Publish the versions (production first, then candidates that disagree with it sometimes)."""
    ev = fixed_scores({n: 0.5 + 0.1 * k for k, n in enumerate(names)})
    for k, name in enumerate(names):
        registry.publish(engine, _opinionated_run(tmp_path / "runs", name, 0.3 * k), store, "sample", evaluate=ev)
    promotion.promote(lifecycle_settings(tmp_path, store), engine, names[0], evaluate=ev)


def test_deployments_records_and_the_cli(reg_url: str, uid: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from sentiment_app.cli import app
    from stream.settings import get_settings

    engine = get_engine(reg_url)
    a, b, c = f"{uid}-a", f"{uid}-b", f"{uid}-c"
    _publish(engine, tmp_path, tmp_path / "models" / "store", (a, b, c))
    with pytest.raises(RegistryError, match="production already"):
        shadow_store.start(engine, a, 0.5)
    with pytest.raises(RegistryError, match="0 < share"):
        shadow_store.start(engine, b, 0.0)
    with pytest.raises(RegistryError, match="no published model version"):
        shadow_store.start(engine, "nope", 0.5)
    assert shadow_store.active(engine, tmp_path / "models" / "store") is None and shadow_store.stop(engine) is None
    first, replaced = shadow_store.start(engine, c, 0.1)
    assert replaced is None
    dep, replaced = shadow_store.start(engine, b, 0.5)  # replaces the active one
    assert replaced is not None and replaced.id == first.id
    active = shadow_store.active(engine, tmp_path / "models" / "store")
    assert active is not None and active.id == dep.id and active.candidate == b and active.share == 0.5
    assert active.artifact_dir == (tmp_path / "models" / "store" / b).resolve()

    preds = [ShadowPrediction(f"r{i}", a, LABELS[i % 3], LABELS[(i * 2) % 3], 0.7) for i in range(9)]
    batch = ShadowBatch(b, "topic", 0, 100, a, 20, 9, 40.0, 30.0)
    assert shadow_store.record(engine, b, preds, batch) == 9
    assert shadow_store.record(engine, b, preds[:5], batch) == 0  # a replay: nothing twice
    cmp = shadow_store.compare(engine, b)
    # i % 3 vs 2i % 3: equal when i % 3 == 0 -> 3 of 9 agree
    assert cmp.events == 9 and cmp.agreed == 3 and cmp.batches == 1 and cmp.production_versions == {a: 9}
    assert cmp.production_ms_per_event == pytest.approx(2.0) and cmp.candidate_ms_per_event == pytest.approx(30 / 9)

    for key in [k for k in os.environ if k.startswith("SENTIMENT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SENTIMENT_POSTGRES__URL", reg_url)
    monkeypatch.setenv("SENTIMENT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr("sentiment_app.cli.models.console", Console(width=250))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        out = runner.invoke(app, ["models", "compare"])  # default: the active shadow's candidate
        assert out.exit_code == 0, out.output
        assert f"shadow evaluation of {b} against production {a} (9 reviews)" in out.output
        assert "events shadowed: 9" in out.output and "agreement: 33.3% (3 of 9)" in out.output
        assert "confusion (rows: production label, columns: candidate label)" in out.output
        assert "x1.67" in out.output and "30.00 ms per batch" in out.output, out.output
        assert "offline scores" in out.output and "0.6000" in out.output and "0.5000" in out.output
        out = runner.invoke(app, ["models", "shadow", "--stop"])
        assert out.exit_code == 0 and f"stopped shadowing {b}" in out.output, out.output
        assert shadow_store.active(engine, tmp_path / "models" / "store") is None
        out = runner.invoke(app, ["models", "shadow"])
        assert out.exit_code == 0 and "no shadow run is active" in out.output
        out = runner.invoke(app, ["models", "shadow", c, "--share", "0.25"])
        assert out.exit_code == 0 and f"shadowing {c} on 25% of reviews" in out.output, out.output
        out = runner.invoke(app, ["models", "compare"])
        assert out.exit_code == 0 and "events shadowed: 0" in out.output, out.output
        out = runner.invoke(app, ["models", "shadow", a])
        assert out.exit_code == 2 and "production already" in out.output
        out = runner.invoke(app, ["models", "shadow", b, "--share", "1.5"])
        assert out.exit_code == 2 and "0 < share <= 1" in out.output
        for cmd in ("shadow", "compare"):
            out = runner.invoke(app, ["models", cmd, "--help"])
            assert out.exit_code == 0 and "Example: sentiment models" in out.output, out.output
    finally:
        get_settings.cache_clear()


# --- a real worker on the real stack -----------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings, reg_url: str, tmp_path: Path) -> Settings:
    """The conftest settings, but no pinned model: the worker serves and follows the registry (and shadows)."""
    return settings.model_copy(update={
        "postgres": settings.postgres.model_copy(update={"url": SecretStr(reg_url)}),
        "model": settings.model.model_copy(update={"dir": None, "version": None}),
        "worker": settings.worker.model_copy(update={"reload_interval_s": 2.0}),
        "models_dir": tmp_path / "models",
        "registry": settings.registry.model_copy(update={"store_dir": tmp_path / "store"}),
    })


def _events(uid: str, n: int, tag: str = "") -> tuple[list[tuple[bytes | None, bytes]], list[str]]:
    rng = random.Random(f"{uid}{tag}")
    records, ids = [], []
    for i in range(n):
        rid = f"{uid}{tag}-{i}"
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 25)))
        records.append((rid.encode(), json.dumps({"review_id": rid, "text": text, "source": f"src-{uid}-{i % 2}"})
                        .encode()))
        ids.append(rid)
    return records, ids


def _shadow_rows(engine, candidate: str) -> list:
    with engine.connect() as conn:
        return conn.execute(select(shadow_prediction).where(shadow_prediction.c.candidate == candidate)).all()


def _rows_by(engine, version: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t).where(t.c.model_version == version)).scalar_one()


@pytest.mark.parametrize("overlap_io", ["off", "on"])  # on: shadow results stored on the store thread (GPU mode)
def test_a_worker_shadows_a_share_without_writing_labels_and_a_replay_adds_nothing(
        topics: Settings, uid: str, tmp_path: Path, worker_factory, monkeypatch: pytest.MonkeyPatch,
        overlap_io: str) -> None:
    # fp32 serving: int8 scores of these near-uniform tiny models flip labels with batch composition, and the
    # check below re-labels the texts in other batches
    settings = topics.model_copy(update={"worker": topics.worker.model_copy(update={"overlap_io": overlap_io}),
                                         "model": topics.model.model_copy(update={"quantize": "none"})})
    engine = get_engine(settings.postgres.url.get_secret_value())
    a, b = f"{uid}-a", f"{uid}-b"
    _publish(engine, tmp_path, settings.model_store(), (a, b))
    share = 0.5
    shadow_store.start(engine, b, share)
    records, sent = _events(uid, 2400)
    produce(settings, records)
    started = time.monotonic()
    worker = worker_factory(settings)
    wait_until(lambda: len(rows_for(settings, uid)) >= 700, 180, "the first rows", worker.log)
    assert worker.stop(sig=9) == -9  # kill -9 mid-stream: unacknowledged batches are replayed
    stored_at_kill = len(rows_for(settings, uid))
    worker = worker_factory(settings)
    wait_until(lambda: len(rows_for(settings, uid)) >= len(sent), 240, "every event stored", worker.log)
    streamed_s = time.monotonic() - started

    rows = rows_for(settings, uid)
    assert sorted(r.review_id for r in rows) == sorted(sent)  # each stored once...
    assert {r.model_version for r in rows} == {a}  # ...by production
    assert _rows_by(engine, b) == 0  # not a single row under the candidate's version
    assert_redis_matches_sql(settings, uid)  # and the trends count exactly the stored rows

    expected = {rid for rid in sent if in_sample(rid, share)}
    shadowed = _shadow_rows(engine, b)
    assert len(shadowed) == len({s.review_id for s in shadowed})  # nothing twice after the replay
    assert {s.review_id for s in shadowed} == expected  # exactly the sampled reviews, none missing
    label = {r.review_id: r.label for r in rows}
    assert all(s.production_version == a and s.production_label == label[s.review_id] for s in shadowed)
    agreed = sum(s.production_label == s.candidate_label for s in shadowed)
    assert 0 < agreed < len(shadowed), "the two tiny models should disagree sometimes"
    cmp = shadow_store.compare(engine, b)
    assert cmp.events == len(expected) and cmp.agreed == agreed
    assert cmp.batches > 0 and cmp.candidate_ms_per_event is not None and cmp.production_ms_per_event is not None

    # the candidate really labelled them: its own predictions of a few texts match what was recorded
    texts = {json.loads(v)["review_id"]: json.loads(v)["text"] for _, v in records}
    check = sorted(shadowed, key=lambda s: s.review_id)[:100]
    cand = Predictor(registry.get_version(engine, b).artifact_dir, device="cpu", threads=1, batch_size=16)
    mine = cand.predict([texts[s.review_id] for s in check])
    assert sum(p.label == s.candidate_label for p, s in zip(mine, check, strict=True)) >= 98

    # the CLI shows the same figures
    from sentiment_app.cli import app
    from stream.settings import get_settings

    for key in [k for k in os.environ if k.startswith("SENTIMENT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SENTIMENT_POSTGRES__URL", settings.postgres.url.get_secret_value())
    monkeypatch.setattr("sentiment_app.cli.models.console", Console(width=250))
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["models", "compare", b])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    assert f"events shadowed: {len(expected)}" in out.output
    assert f"agreement: {agreed / len(expected):.1%} ({agreed} of {len(expected)})" in out.output, out.output
    print(f"\n{len(sent)} events ({stored_at_kill} stored at the kill) in {streamed_s:.0f}s; "
          f"{len(expected)} shadowed at share {share}; agreement {agreed / len(expected):.3f}, "
          f"kappa {cmp.kappa:.3f}; production {cmp.production_ms_per_event:.3f} ms/event, "
          f"candidate {cmp.candidate_ms_per_event:.3f} ms/event (x{cmp.latency_ratio:.2f}), "
          f"+{cmp.added_ms_per_batch:.1f} ms per batch over {cmp.batches} batches")
    print(out.output)

    metrics = scrape(settings.worker.metrics_port)  # the restarted worker's own counts
    assert metrics[f'sentiment_shadow_share{{candidate="{b}"}}'] == share
    n, n_agreed = (metrics[f'sentiment_shadow_{k}_total{{candidate="{b}"}}'] for k in ("events", "agreed"))
    assert 0 < n <= len(expected) and 0 < n_agreed < n

    # stopping the shadow stops new shadow rows (the worker learns it before its next batch, once the
    # reload interval has passed since its last look at the registry)
    shadow_store.stop(engine)
    with engine.connect() as conn:
        batches_before = conn.execute(select(func.count()).select_from(shadow_batch)).scalar_one()
    time.sleep(settings.worker.reload_interval_s + 0.5)
    more, more_ids = _events(uid, 300, "-after")
    produce(settings, more)
    wait_until(lambda: len(rows_for(settings, uid)) >= len(sent) + len(more_ids), 120, "the later events stored",
               worker.log)
    assert f"shadow evaluation of {b} stopped" in worker.log_path.read_text(errors="replace")
    assert not any(k.startswith("sentiment_shadow_share") for k in scrape(settings.worker.metrics_port))
    assert len(_shadow_rows(engine, b)) == len(expected)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(shadow_batch)).scalar_one() == batches_before
    assert _rows_by(engine, b) == 0


def test_a_broken_shadow_candidate_does_not_stop_production(topics: Settings, uid: str, tmp_path: Path,
                                                            worker_factory) -> None:
    settings = topics
    engine = get_engine(settings.postgres.url.get_secret_value())
    a, b = f"{uid}-a", f"{uid}-b"
    _publish(engine, tmp_path, settings.model_store(), (a, b))
    weights = registry.get_version(engine, b).artifact_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated artifact: config.json is there, weights are not
    shadow_store.start(engine, b, 1.0)
    records, sent = _events(uid, 400)
    produce(settings, records)
    worker = worker_factory(settings)
    wait_until(lambda: len(rows_for(settings, uid)) >= len(sent), 180, "every event stored", worker.log)
    rows = rows_for(settings, uid)
    assert sorted(r.review_id for r in rows) == sorted(sent) and {r.model_version for r in rows} == {a}
    assert _rows_by(engine, b) == 0 and _shadow_rows(engine, b) == []
    assert_redis_matches_sql(settings, uid)
    full_log = worker.log_path.read_text(errors="replace")
    assert f"cannot load shadow candidate {b}" in full_log
    assert full_log.count(f"cannot load shadow candidate {b}") == 1  # tried once, not per batch
