"""One models home (SENTIMENT_MODELS_DIR, an absolute path) for every command, whatever the working directory:
`train` writes runs where `experiments` reads them, `classify` finds the served model from another folder, and
`models list` says which model serves when the registry does not name it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from stream.serving import point_current
from stream.settings import Settings
from tests.support import invoke_cli, make_tiny_model

REPO = Path(__file__).resolve().parents[1]


def _env_without_models_dir() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SENTIMENT_MODELS_DIR"}


def test_default_models_home_is_the_checkouts_models_folder_from_any_folder(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", "from stream.settings import Settings; s = Settings(); "
                          "print(s.models_dir); print(s.runs_dir()); print(s.model_store())"],
                         cwd=tmp_path, env=_env_without_models_dir(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(REPO / "models"), str(REPO / "models" / "runs"), str(REPO / "models" / "store")]


def test_a_relative_models_dir_is_made_absolute_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SENTIMENT_MODELS_DIR", "mine")
    s = Settings()
    assert s.models_dir == tmp_path / "mine" and s.to_env()["SENTIMENT_MODELS_DIR"] == str(tmp_path / "mine")
    monkeypatch.chdir(REPO)
    assert Settings(**s.model_dump()).models_dir == tmp_path / "mine"  # a subprocess elsewhere names the same


def test_find_in_models_home_resolves_run_ids_and_runs_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(models_dir=tmp_path / "models")
    run = s.runs_dir() / "20260101-000000-x"
    (run / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert s.find_in_models_home(Path("20260101-000000-x")) == run
    assert s.find_in_models_home(Path("runs/20260101-000000-x/model")) == run / "model"
    assert s.find_in_models_home(Path("nosuch")) == Path("nosuch")  # left as given: the caller reports it


def _serving_settings(settings: Settings, reg_url: str, tmp_path: Path) -> Settings:
    """The test's settings with nothing pinned: the registry (empty, private schema), else models_dir/current."""
    return settings.model_copy(update={
        "postgres": settings.postgres.model_copy(update={"url": SecretStr(reg_url)}),
        "model": settings.model.model_copy(update={"dir": None, "version": None}),
        "models_dir": tmp_path / "home" / "models",
    })


@pytest.mark.slow
def test_classify_from_another_folder_finds_the_model(settings: Settings, reg_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    s = _serving_settings(settings, reg_url, tmp_path)
    point_current(s.models_dir, make_tiny_model(s.models_dir / "demo-model"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = invoke_cli(s, "classify", "love it")
    assert out.exit_code == 0, out.output
    assert f"({s.models_dir / 'current'})" in out.output and "love it" in out.output


def test_models_list_says_which_unregistered_model_serves(settings: Settings, reg_url: str, tmp_path: Path) -> None:
    """`status` serves the `current` link's model while the registry is empty: `models list` must say so."""
    s = _serving_settings(settings, reg_url, tmp_path)
    target = make_tiny_model(s.models_dir / "old-demo")
    point_current(s.models_dir, target)
    out = invoke_cli(s, "models", "list")
    assert out.exit_code == 0, out.output
    assert "no versions yet" in out.output
    assert f"workers serve {target.resolve()} through the current link (unregistered)" in " ".join(out.output.split())
    status = invoke_cli(s, "status")
    assert "not in the registry" in " ".join(status.output.split())


def test_the_demo_registers_a_model_served_only_through_current(settings: Settings, reg_url: str, uid: str,
                                                                tmp_path: Path) -> None:
    """An older demo's model (the `current` link, no registry row) is published and promoted by the next demo."""
    from sentiment_app.demo import ensure_model
    from storage import registry
    from storage.db import get_engine
    from tests.registry_helpers import fake_run

    s = _serving_settings(settings, reg_url, tmp_path)
    s = s.model_copy(update={"registry": s.registry.model_copy(update={"eval_set": "sample"})})
    run = fake_run(s.runs_dir(), f"{uid}-old", seed=2)
    point_current(s.models_dir, run / "model")
    served = ensure_model(s)
    engine = get_engine(reg_url)
    prod = registry.production(engine, s.model_store())
    assert prod is not None and prod.version == f"{uid}-old" and served == prod.artifact_dir
    assert (s.models_dir / "current").resolve() == served
    listed = invoke_cli(s, "models", "list")
    assert f"{uid}-old" in listed.output and "current link" not in listed.output


@pytest.mark.slow
def test_experiments_from_another_folder_lists_the_run_train_wrote(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No --run-root anywhere: train writes into SENTIMENT_MODELS_DIR/runs, experiments reads it from elsewhere."""
    import yaml
    from typer.testing import CliRunner

    from sentiment_app.cli import app
    from stream.settings import get_settings
    from training.tiny import build_tiny_model, write_synthetic_csv

    build_tiny_model(tmp_path / "distilbert", "distilbert", n_layers=2)
    write_synthetic_csv(tmp_path / "synthetic.csv", 200, seed=1)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "home-tiny", "base_model": str(tmp_path / "distilbert"),
        "data": {"path": str(tmp_path / "synthetic.csv")},
        "max_length": 32, "batch_size": 16, "max_steps": 6, "eval_steps": 3, "num_threads": 1}))
    home = tmp_path / "home" / "models"
    env = {"SENTIMENT_MODELS_DIR": str(home)}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    get_settings.cache_clear()
    try:
        monkeypatch.chdir(tmp_path / "a")
        trained = CliRunner().invoke(app, ["train", str(config)], env=env)
        assert trained.exit_code == 0, trained.output
        runs = [p for p in (home / "runs").iterdir() if p.is_dir()]
        assert len(runs) == 1 and not (tmp_path / "a" / "runs").exists()
        get_settings.cache_clear()
        monkeypatch.chdir(tmp_path / "b")
        listed = CliRunner().invoke(app, ["experiments"], env={**env, "COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert listed.exit_code == 0, listed.output
    assert runs[0].name in listed.output and str(home / "runs" / "experiments.csv") in listed.output
