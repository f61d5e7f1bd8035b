"""The model registry against real Postgres: publish copies and scores, promotion is gated on the same
evaluation set and always recorded, a rejected promotion changes nothing, rollback walks back."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import exc, update
from typer.testing import CliRunner

from sentiment_app.lifecycle import promotion
from sentiment_model.errors import ModelNotFoundError
from storage import registry
from storage.db import get_engine
from tests.registry_helpers import fake_run, fixed_scores, lifecycle_settings


def test_publish_copies_the_model_scores_it_and_lists_it(reg_url: str, uid: str, tmp_path: Path) -> None:
    engine = get_engine(reg_url)
    run = fake_run(tmp_path / "runs", f"{uid}-a", seed=0)
    s = lifecycle_settings(tmp_path)
    store = s.model_store()
    v = promotion.publish(s, engine, run, "sample")  # the real evaluator (the serving predictor) on the sample
    shutil.rmtree(run)  # the store holds its own copy
    assert v.version == f"{uid}-a" and v.stage == "candidate" and v.eval_set == "sample"
    assert v.artifact_dir == (store / v.version).resolve() and (v.artifact_dir / "model.safetensors").exists()
    assert (v.artifact_dir / "training_run.json").exists() and not list(store.glob(".tmp-*"))
    metrics = registry.evaluation(engine, v.version, "sample")
    assert metrics is not None and metrics["rows"] == 300 and 0 <= metrics["macro_f1"] <= 1
    assert v.score == metrics["macro_f1"] and v.base_model == "tiny-distilbert" and v.run_id == v.version
    assert [x.version for x in registry.list_versions(engine)] == [v.version]
    assert registry.production(engine, store) is None

    with pytest.raises(registry.RegistryError, match="already published"):
        promotion.publish(s, engine, fake_run(tmp_path / "runs", f"{uid}-a", seed=0), "sample")
    with pytest.raises(registry.RegistryError, match="not found"):
        promotion.publish(s, engine, fake_run(tmp_path / "runs", f"{uid}-b", seed=1), "no-such-set")
    with pytest.raises(ModelNotFoundError, match="no model found"):
        promotion.publish(s, engine, tmp_path, "sample")
    assert not (store / f"{uid}-b").exists()


def test_promotion_is_gated_recorded_and_rolled_back(reg_url: str, uid: str, tmp_path: Path) -> None:
    engine = get_engine(reg_url)
    life = lifecycle_settings(tmp_path)
    a, b, c = f"{uid}-a", f"{uid}-b", f"{uid}-c"
    calls: list[tuple[str, str]] = []
    ev = fixed_scores({a: 0.60, b: 0.70, c: 0.65}, calls)
    for i, name in enumerate((a, b, c)):
        registry.publish(engine, fake_run(tmp_path, name, seed=i), tmp_path / "store", "sample", evaluate=ev)
    assert len(calls) == 3

    first = promotion.promote(life, engine, a, evaluate=ev)
    assert first.promoted and first.production_before is None and first.reason == "no production model yet"
    current = tmp_path / "models" / "current"  # promote points it at production's artifact (atomic rename)
    assert current.is_symlink() and current.resolve() == registry.get_version(engine, a).artifact_dir
    second = promotion.promote(life, engine, b, evaluate=ev)
    assert second.promoted and (second.candidate_score, second.production_score) == (0.70, 0.60)
    assert registry.production(engine, tmp_path / "store").version == b
    assert {v.version: v.stage for v in registry.list_versions(engine)} == {a: "archived", b: "production",
                                                                            c: "candidate"}
    # A worse candidate is rejected; production stays; the decision and both scores are recorded.
    rejected = promotion.promote(life, engine, c, evaluate=ev)
    assert not rejected.promoted and (rejected.candidate_score, rejected.production_score) == (0.65, 0.70)
    assert registry.production(engine, tmp_path / "store").version == b
    assert registry.get_version(engine, c).stage == "candidate"
    latest = registry.decisions(engine, 1)[0]
    assert (latest["candidate"], latest["production_before"], latest["promoted"], latest["candidate_score"],
            latest["production_score"], latest["metric"], latest["eval_set"]) == (c, b, False, 0.65, 0.70,
                                                                                 "macro_f1", "sample")
    assert not promotion.promote(life, engine, a, margin=-0.05, evaluate=ev).promoted  # 0.60 < 0.70 - 0.05
    assert promotion.promote(life, engine, c, margin=-0.05, evaluate=ev).promoted  # 0.65 >= 0.70 - 0.05
    assert len(calls) == 3  # every score was computed once, at publish

    promotion.rollback(life, engine)
    assert registry.production(engine, tmp_path / "store").version == b
    forced = promotion.promote(life, engine, a, force=True, evaluate=ev)
    assert forced.promoted and forced.forced and forced.reason.startswith("forced")
    assert promotion.rollback(life, engine).candidate == b
    assert promotion.rollback(life, engine).candidate == a  # b had replaced a
    assert (tmp_path / "models" / "current").resolve() == registry.get_version(engine, a).artifact_dir
    with pytest.raises(registry.RegistryError, match="replaced no earlier"):
        promotion.rollback(life, engine)
    with pytest.raises(registry.RegistryError, match="already production"):
        promotion.promote(life, engine, a, evaluate=ev)
    with pytest.raises(registry.RegistryError, match="no published model version"):
        promotion.promote(life, engine, "nope", evaluate=ev)
    assert [d["action"] for d in registry.decisions(engine, 100)].count("rollback") == 3

    with pytest.raises(exc.IntegrityError), engine.begin() as conn:  # one production row, enforced by Postgres
        conn.execute(update(registry.model_version).where(registry.model_version.c.version == c)
                     .values(stage="production"))


def test_production_is_scored_on_the_candidates_set_when_missing(reg_url: str, uid: str, tmp_path: Path) -> None:
    engine = get_engine(reg_url)
    life = lifecycle_settings(tmp_path)
    a, b = f"{uid}-a", f"{uid}-b"
    calls: list[tuple[str, str]] = []
    ev = fixed_scores({a: 0.70, b: 0.70}, calls)
    registry.publish(engine, fake_run(tmp_path, a, 0), tmp_path / "store", "sample", evaluate=ev)
    promotion.promote(life, engine, a, evaluate=ev)
    other = tmp_path / "other.csv"
    other.write_text("text,label\ngood,positive\nbad,negative\nmeh,neutral\n")
    registry.publish(engine, fake_run(tmp_path, b, 1), tmp_path / "store", str(other), evaluate=ev)
    d = promotion.promote(life, engine, b, evaluate=ev)
    assert d.eval_set == str(other) and d.promoted  # equal scores: at least as good
    assert (a, str(other)) in calls  # production scored on the candidate's set, then kept
    assert registry.evaluation(engine, a, str(other)) is not None


def test_models_cli(reg_url: str, uid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sentiment_app.cli import app
    from stream.settings import get_settings

    for key in [k for k in os.environ if k.startswith("SENTIMENT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SENTIMENT_POSTGRES__URL", reg_url)
    monkeypatch.setenv("SENTIMENT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SENTIMENT_REGISTRY__EVAL_SET", "sample")
    monkeypatch.setattr("sentiment_app.cli.models.console", Console(width=250))  # no wrapping in the assertions
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        for i, name in enumerate((f"{uid}-a", f"{uid}-b")):
            out = runner.invoke(app, ["models", "publish", str(fake_run(tmp_path / "runs", name, seed=i))])
            assert out.exit_code == 0, out.output
            assert f"published {name} as a candidate" in out.output
        out = runner.invoke(app, ["models", "promote", f"{uid}-a"])
        assert out.exit_code == 0 and "promoted" in out.output, out.output
        current = tmp_path / "models" / "current"
        assert current.resolve() == (tmp_path / "models" / "store" / f"{uid}-a").resolve()
        out = runner.invoke(app, ["models", "promote", f"{uid}-b", "--margin", "1.0"])  # cannot beat by 1.0
        assert out.exit_code == 1 and "rejected" in out.output and "Production stays" in out.output, out.output
        out = runner.invoke(app, ["models", "promote", f"{uid}-b", "--force"])
        assert out.exit_code == 0, out.output
        assert current.resolve().name == f"{uid}-b"
        out = runner.invoke(app, ["models", "list", "--decisions", "5"])
        assert out.exit_code == 0 and f"{uid}-b" in out.output and "production" in out.output, out.output
        assert "rejected" in out.output and "forced" in out.output
        out = runner.invoke(app, ["models", "rollback"])
        assert out.exit_code == 0 and f"{uid}-a is production again" in out.output, out.output
        assert current.resolve().name == f"{uid}-a"
        out = runner.invoke(app, ["models", "promote", "missing-version"])
        assert out.exit_code == 2 and "sentiment models list" in out.output
        for cmd in ("list", "publish", "promote", "rollback"):
            out = runner.invoke(app, ["models", cmd, "--help"])
            assert out.exit_code == 0 and "Example: sentiment models" in out.output, out.output
    finally:
        get_settings.cache_clear()
