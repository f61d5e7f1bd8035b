"""The model lifecycle end to end: the gate scores what serves, and a promotion reaches every reader.

"Which model serves" is one function (``stream.serving.serving_model``) and every predictor is built one way
(``predictor_from_settings``: the artifact plus ``SENTIMENT_MODEL__*``), so the gate's score is the score of
the worker's predictor, and after `sentiment refresh` promotes, `classify`, the dashboard and a running
worker all label with the new version.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr
from sklearn.metrics import f1_score, recall_score

from sentiment_app.lifecycle import promotion
from sentiment_model.labels import LABEL_TO_ID
from sentiment_model.predictor import predictor_from_settings
from storage import registry
from storage.db import get_engine
from stream.serving import serving_model
from stream.settings import Settings
from tests.accounting import produce, rows_for
from tests.registry_helpers import fake_run, fixed_scores, lifecycle_settings
from tests.support import invoke_cli, open_page, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize(("quantize", "path"), [("int8", "cpu int8"), ("auto", "cpu onnxruntime")])
def test_the_gate_scores_what_the_worker_serves(reg_url: str, uid: str, tmp_path: Path, quantize: str,
                                                path: str) -> None:
    """int8 (torch, or ONNX Runtime: the default) and a max length other than the trained one: the gate's score
    is the worker predictor's score."""
    engine = get_engine(reg_url)
    serving = {"quantize": quantize, "max_length": 16, "batch_size": 7, "threads": 1}  # trained with max_length 64
    life = lifecycle_settings(tmp_path).model_copy(update={
        "model": lifecycle_settings(tmp_path).model.model_copy(update=serving),
        "postgres": lifecycle_settings(tmp_path).postgres.model_copy(update={"url": SecretStr(reg_url)})})
    labelled = tmp_path / "gate.csv"
    rows = [("great love excellent  ", "positive"), ("terrible hate awful", "negative"), ("the okay a", "neutral"),
            ("  love   it, works great", "positive"), ("broken again, never buy", "negative"),
            ("fine average", "neutral")]
    with labelled.open("w", newline="") as handle:
        csv.writer(handle).writerows([("text", "label"), *(rows * 20)])
    v = promotion.publish(life, engine, fake_run(tmp_path / "runs", f"{uid}-a", seed=3), str(labelled))
    decision = promotion.promote(life, engine, v.version, metric="macro_recall")
    assert decision.promoted

    ref, source = serving_model(life)  # what a worker started now serves, built as stream.app builds it
    assert (ref.version, source) == (v.version, "registry")
    worker = predictor_from_settings(life.model, ref.artifact_dir, ref.version)
    assert worker.path.startswith(path) and "int8" in worker.path and worker.max_length == 16
    texts = [t for t, _ in rows * 20]
    gold = [LABEL_TO_ID[label] for _, label in rows * 20]
    said = [LABEL_TO_ID[p.label] for p in worker.predict(texts)]  # raw texts, as events arrive
    stored = registry.evaluation(engine, v.version, str(labelled))
    assert stored["serving_path"] == worker.path and stored["max_length"] == 16
    assert decision.candidate_score == pytest.approx(recall_score(gold, said, average="macro"), abs=1e-12)
    assert stored["macro_f1"] == pytest.approx(f1_score(gold, said, average="macro"), abs=1e-12)


def test_after_refresh_promotes_classify_the_dashboard_and_a_running_worker_serve_it(
        topics: Settings, reg_url: str, uid: str, tmp_path: Path, refresh_workdir: Path, worker_factory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = topics.model_copy(update={
        "postgres": topics.postgres.model_copy(update={"url": SecretStr(reg_url)}),
        "model": topics.model.model_copy(update={"dir": None, "version": None}),
        "registry": topics.registry.model_copy(update={"store_dir": tmp_path / "store"}),
        # the worker asks the registry before a batch at most this often: far below the test's own pace
        "worker": topics.worker.model_copy(update={"reload_interval_s": 0.2}),
    })
    engine = get_engine(reg_url)
    gate_set = str(refresh_workdir / "eval.csv")
    old = f"{uid}-old"
    ev = fixed_scores({old: 0.0})
    promotion.publish(s, engine, fake_run(tmp_path / "runs", old, seed=0), gate_set, evaluate=ev)
    promotion.promote(s, engine, old, evaluate=ev)
    registry.save_evaluation(engine, old, gate_set, {"macro_recall": 0.0, "macro_f1": 0.0, "accuracy": 0.0})

    def send(n: int, tag: str) -> list[str]:
        ids = [f"{uid}-{tag}-{i}" for i in range(n)]
        produce(s, [(rid.encode(), json.dumps({"review_id": rid, "text": "love it great", "source": f"src-{uid}-0"})
                     .encode()) for rid in ids])
        return ids

    def versions(ids: list[str]) -> set[str]:
        return {r.model_version for r in rows_for(s, uid) if r.review_id in ids}

    worker = worker_factory(s)
    before = send(5, "before")
    wait_until(lambda: versions(before) == {old}, 120, f"rows labelled by {old}", worker.log)

    ran = invoke_cli(s, "refresh", str(refresh_workdir / "refresh.yaml"), "--run-id", f"{uid}-new")
    assert ran.exit_code == 0 and "PROMOTED" in ran.output, ran.output
    new = registry.production(engine, s.model_store()).version
    assert new == f"{uid}-new"
    assert (s.models_dir / "current").resolve() == registry.get_version(engine, new).artifact_dir

    out = invoke_cli(s, "classify", "love it great")
    assert out.exit_code == 0 and f"model {new} " in out.output, out.output

    for key in [k for k in os.environ if k.startswith("SENTIMENT_")]:
        monkeypatch.delenv(key)
    for key, value in {**s.to_env(), "SENTIMENT_MODEL__THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    at = open_page("classify", timeout=60)
    assert not at.exception and not at.error
    assert any(f"Model `{new}`" in c.value for c in at.caption), [c.value for c in at.caption]

    after = send(5, "after")
    wait_until(lambda: versions(after) == {new}, 60, f"rows labelled by {new}", worker.log)


def test_the_demo_registers_its_model_so_models_list_shows_what_status_serves(
        settings: Settings, reg_url: str, uid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo` without a model: the one it trains is published and promoted, and `current` points at it."""
    from types import SimpleNamespace

    import training.train
    from sentiment_app.demo import ensure_model
    from stream.services import check_model

    s = settings.model_copy(update={
        "postgres": settings.postgres.model_copy(update={"url": SecretStr(reg_url)}),
        "model": settings.model.model_copy(update={"dir": None, "version": None}),
        "registry": settings.registry.model_copy(update={"eval_set": "sample"}),
    })
    run = fake_run(tmp_path / "runs", f"{uid}-demo", seed=5)  # stands in for the minutes of demo training
    monkeypatch.setattr(training.train, "run_experiment",
                        lambda *a, **k: SimpleNamespace(run_dir=run, model_dir=run / "model", test={"macro_f1": 0.5}))
    served = ensure_model(s)

    engine = get_engine(reg_url)
    assert registry.production(engine, s.model_store()).version == f"{uid}-demo"
    assert served == registry.get_version(engine, f"{uid}-demo").artifact_dir
    assert (s.models_dir / "current").resolve() == served
    assert serving_model(s)[0].version == f"{uid}-demo"
    health = check_model(s)
    assert health.ok and health.detail == f"production {uid}-demo (registry)"
    listed = invoke_cli(s, "models", "list")
    assert listed.exit_code == 0 and f"{uid}-demo" in listed.output and "production" in listed.output
    assert ensure_model(s) == served  # a second demo serves the registered model, trains nothing
