"""The registry serves only artifacts inside its model store, and publish copies regular files only.

A ``model_version`` row is data: whoever can write it could point a worker at any directory (and a
model ships code). Publish used to follow links, so a run holding a link to a system file copied that
file into the store. Against the real Postgres, one private schema per test (``registry_schema``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from sqlalchemy import update

from sentiment_app.lifecycle import promotion
from storage import registry
from storage import shadow as shadow_store
from storage.db import get_engine
from stream.settings import Settings
from tests.registry_helpers import fake_run, fixed_scores, lifecycle_settings
from tests.support import invoke_cli, make_tiny_model

OUTSIDE = "outside the model store"


def point(engine, version: str, artifact_dir: Path | str) -> None:
    """What a row writer could do: name any directory as a version's artifact."""
    with engine.begin() as conn:
        conn.execute(update(registry.model_version).where(registry.model_version.c.version == version)
                     .values(artifact_dir=str(artifact_dir)))


def published(engine, tmp_path: Path, names: tuple[str, ...], calls: list | None = None):
    ev = fixed_scores({n: 0.5 + i / 100 for i, n in enumerate(names)}, calls)
    for i, name in enumerate(names):
        registry.publish(engine, fake_run(tmp_path / "runs", name, seed=i), tmp_path / "store", "sample", evaluate=ev)
    return ev


def test_production_outside_the_store_is_never_handed_to_a_loader(reg_url: str, uid: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from stream.pipeline import ModelFollower
    from stream.services import check_model
    from stream.serving import point_current, registry_production, serving_model

    engine = get_engine(reg_url)
    store = tmp_path / "store"
    a = f"{uid}-a"
    promotion.promote(lifecycle_settings(tmp_path), engine, a, evaluate=published(engine, tmp_path, (a,)))
    assert registry.production(engine, store).artifact_dir == (store / a).resolve()

    outside = make_tiny_model(tmp_path / "elsewhere" / a)  # a loadable model, just not in the store
    (store / "link").symlink_to(outside, target_is_directory=True)
    for path in (outside, store / ".." / "elsewhere" / a, store / "link", "/etc", store):
        point(engine, a, path)
        with pytest.raises(registry.RegistryError, match=OUTSIDE):
            registry.production(engine, store)
    health = check_model(Settings(postgres={"url": reg_url}, models_dir=tmp_path / "models",
                                  registry={"store_dir": store}))  # `sentiment status`: degraded, says why
    assert not health.ok and OUTSIDE in health.detail

    # The worker's lookup refuses it in one warning and falls back: a running worker keeps serving, a starting
    # one serves `current` (the serving rule, as for an artifact not readable on this machine).
    with caplog.at_level(logging.WARNING):
        assert registry_production(engine, store) is None
    assert OUTSIDE in caplog.text
    loads: list[registry.ModelRef] = []
    follower = ModelFollower(lambda: registry_production(engine, store), loads.append, interval_s=0.0)
    assert follower.poll("serving-v0") is None and loads == []
    s = Settings(postgres={"url": reg_url}, models_dir=tmp_path / "models", registry={"store_dir": store})
    point_current(s.models_dir, make_tiny_model(tmp_path / "models" / "demo"))
    ref, source = serving_model(s)
    assert source == "current" and ref.artifact_dir == s.models_dir / "current"
    point(engine, a, store / a)  # back inside: served again
    assert registry_production(engine, store).artifact_dir == (store / a).resolve()
    assert serving_model(s)[1] == "registry"


def test_a_shadow_candidate_outside_the_store_is_refused(reg_url: str, uid: str, tmp_path: Path) -> None:
    engine = get_engine(reg_url)
    store = tmp_path / "store"
    a, b = f"{uid}-a", f"{uid}-b"
    promotion.promote(lifecycle_settings(tmp_path), engine, a, evaluate=published(engine, tmp_path, (a, b)))
    shadow_store.start(engine, b, 0.5)
    assert shadow_store.active(engine, store).artifact_dir == (store / b).resolve()
    point(engine, b, make_tiny_model(tmp_path / "elsewhere"))
    with pytest.raises(registry.RegistryError, match=OUTSIDE):
        shadow_store.active(engine, store)


def test_promotion_never_scores_an_artifact_outside_the_store(reg_url: str, uid: str, tmp_path: Path) -> None:
    engine = get_engine(reg_url)
    store = tmp_path / "store"
    a, b = f"{uid}-a", f"{uid}-b"
    calls: list[tuple[str, str]] = []
    ev = published(engine, tmp_path, (a, b), calls)
    life = lifecycle_settings(tmp_path)
    promotion.promote(life, engine, a, evaluate=ev)
    other = tmp_path / "other.csv"
    other.write_text("text,label\ngood,positive\nbad,negative\nmeh,neutral\n")
    point(engine, b, make_tiny_model(tmp_path / "elsewhere" / b))
    calls.clear()
    with pytest.raises(registry.RegistryError, match=OUTSIDE):  # scoring on a new set would load it
        promotion.promote(life, engine, b, eval_set=str(other), evaluate=ev)
    with pytest.raises(registry.RegistryError, match=OUTSIDE):  # a named store refuses it even when forced
        promotion.promote(life, engine, b, force=True, evaluate=ev)
    assert (b, str(other)) not in calls
    assert registry.production(engine, store).version == a and registry.get_version(engine, b).stage == "candidate"
    assert [d["candidate"] for d in registry.decisions(engine)] == [a]  # nothing recorded for b


@pytest.mark.parametrize("plant", ["file_link", "dir_link", "model_link", "fifo"])
def test_publish_refuses_links_and_special_files(reg_url: str, uid: str, tmp_path: Path, plant: str) -> None:
    engine = get_engine(reg_url)
    store = tmp_path / "store"
    run = fake_run(tmp_path / "runs", f"{uid}-run", seed=0)
    model = run / "model"
    if plant == "file_link":  # the reported case: a link to a system file inside the run
        (model / "vocab.txt").unlink()
        (model / "vocab.txt").symlink_to("/etc/passwd")
        bad, what = model / "vocab.txt", "is a symbolic link"
    elif plant == "dir_link":
        (model / "extra").symlink_to("/etc", target_is_directory=True)
        bad, what = model / "extra", "is a symbolic link"
    elif plant == "model_link":  # model/ itself links to a model elsewhere
        real = model.rename(tmp_path / "real-model")
        model.symlink_to(real, target_is_directory=True)
        bad, what = model, "is a symbolic link"
    else:
        os.mkfifo(model / "pipe")
        bad, what = model / "pipe", "is not a regular file"
    calls: list[tuple[str, str]] = []
    with pytest.raises(registry.RegistryError, match="publish copies regular files only") as err:
        registry.publish(engine, run, store, "sample", evaluate=fixed_scores({}, calls))
    assert str(err.value).startswith(f"{bad.parent.resolve() / bad.name} {what}")
    assert "\n" not in str(err.value) and calls == []
    assert not store.exists() or list(store.iterdir()) == []
    assert registry.list_versions(engine) == []


def test_a_link_that_appears_while_copying_is_refused(reg_url: str, uid: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy itself opens every entry without following links, not just the check before it."""
    engine = get_engine(reg_url)
    run = fake_run(tmp_path / "runs", f"{uid}-run", seed=0)
    (run / "model" / "vocab.txt").unlink()
    (run / "model" / "vocab.txt").symlink_to("/etc/passwd")
    monkeypatch.setattr(registry, "_refuse_links", lambda *_: None)  # as if swapped in after the check
    with pytest.raises(registry.RegistryError, match="vocab.txt is a symbolic link"):
        registry.publish(engine, run, tmp_path / "store", "sample", evaluate=fixed_scores({}))
    assert list((tmp_path / "store").iterdir()) == []  # the half copy is gone


def test_a_run_named_through_a_link_publishes_its_real_files(reg_url: str, uid: str, tmp_path: Path) -> None:
    engine = get_engine(reg_url)
    name = f"{uid}-real"
    run = fake_run(tmp_path / "runs", name, seed=0)
    (tmp_path / "latest").symlink_to(run, target_is_directory=True)  # runs/latest-style: the named path only
    v = registry.publish(engine, tmp_path / "latest", tmp_path / "store", "sample",
                         evaluate=fixed_scores({name: 0.5}))
    assert v.version == name
    copied = sorted(p.relative_to(v.artifact_dir) for p in v.artifact_dir.rglob("*"))
    assert copied == sorted(p.relative_to(run / "model") for p in (run / "model").rglob("*"))
    assert not any(p.is_symlink() for p in v.artifact_dir.rglob("*"))
    assert (v.artifact_dir / "model.safetensors").read_bytes() == (run / "model" / "model.safetensors").read_bytes()


def test_models_cli_refuses_in_one_line(reg_url: str, uid: str, tmp_path: Path) -> None:
    engine = get_engine(reg_url)
    s = Settings(postgres={"url": reg_url}, models_dir=tmp_path / "models", registry={"eval_set": "sample"})
    run = fake_run(tmp_path / "runs", f"{uid}-run", seed=0)
    (run / "model" / "vocab.txt").unlink()
    (run / "model" / "vocab.txt").symlink_to("/etc/passwd")
    out = invoke_cli(s, "models", "publish", str(run))
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines()[-1].startswith("error: ") and "symbolic link" in out.output
    assert "Traceback" not in out.output and not list(s.model_store().glob("*"))

    a, b = f"{uid}-a", f"{uid}-b"
    for i, name in enumerate((a, b)):
        registry.publish(engine, fake_run(tmp_path / "runs", name, seed=i), s.model_store(), "sample",
                         evaluate=fixed_scores({a: 0.5, b: 0.6}))
    point(engine, b, make_tiny_model(tmp_path / "elsewhere" / b))
    out = invoke_cli(s, "models", "promote", b, "--force")
    assert out.exit_code == 2 and OUTSIDE in out.output and "Traceback" not in out.output, out.output
    assert registry.decisions(engine) == [] and not (s.models_dir / "current").exists()


@pytest.mark.parametrize("content", ['[]', '{"run_id": 5}', '{"config": "x"}', '{"test_metrics": [1]}', "not json",
                                     '{"run_id": "\\ud800"}', b"\xff\xfe"])
def test_a_malformed_training_run_json_is_one_line_not_a_traceback(reg_url: str, uid: str, tmp_path: Path,
                                                                  content: str | bytes) -> None:
    """training_run.json is read from the run being published: whoever wrote the run wrote it."""
    s = Settings(postgres={"url": reg_url}, models_dir=tmp_path / "models", registry={"eval_set": "sample"})
    run = fake_run(tmp_path / "runs", f"{uid}-run", seed=0)
    info = run / "model" / "training_run.json"
    info.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = invoke_cli(s, "models", "publish", str(run))
    assert out.exit_code == 2, out.output
    last = out.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and ("training_run.json" in last or "pass --version" in last), out.output
    assert "Traceback" not in out.output and not list(s.model_store().glob("*"))
