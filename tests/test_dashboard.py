"""The dashboard's pages in Streamlit's own test harness (AppTest), against the real local stack.

Settings reach the app as SENTIMENT_* variables, as they do for `sentiment dashboard`; each test writes
its reviews and counters under its own source and Redis key prefix (the `settings` fixture).
"""

from __future__ import annotations

import csv
import io
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sentiment_app.dashboard import launch
from sentiment_app.dashboard.trends import negative_alert, trend_frame, window_counts
from storage.trends import MINUTE, TrendBucket
from stream.services import trend_counters
from stream.settings import Settings
from tests.support import APP, free_port, metrics, open_page, store


def test_streamlit_argv_lets_the_environment_win() -> None:
    argv = launch.streamlit_argv({}, None, None)
    assert argv[1:5] == ["-m", "streamlit", "run", str(APP)]
    assert "--server.port=8501" in argv and "--server.address=127.0.0.1" in argv
    assert "--server.headless=true" in argv
    compose = launch.streamlit_argv({"STREAMLIT_SERVER_ADDRESS": "0.0.0.0", "STREAMLIT_SERVER_PORT": "8600"})
    assert not any(a.startswith(("--server.address", "--server.port")) for a in compose)
    assert "--server.address=10.0.0.1" in launch.streamlit_argv({"STREAMLIT_SERVER_ADDRESS": "0.0.0.0"},
                                                               address="10.0.0.1")


def test_cli_dashboard_execs_streamlit_on_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from sentiment_app.cli import app

    calls: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append(argv))
    monkeypatch.setenv("STREAMLIT_SERVER_ADDRESS", "0.0.0.0")
    result = CliRunner().invoke(app, ["dashboard", "--port", "8600"])
    assert result.exit_code == 0, result.output
    assert calls[0][1:5] == ["-m", "streamlit", "run", str(APP)] and "--server.port=8600" in calls[0]
    assert not any(a.startswith("--server.address") for a in calls[0])  # the environment's 0.0.0.0 applies


def test_trend_frame_shares_and_alert() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    buckets = [TrendBucket(start + timedelta(minutes=i), c) for i, c in enumerate([
        {"negative": 0, "neutral": 0, "positive": 0},
        {"negative": 1, "neutral": 1, "positive": 8},
        {"negative": 6, "neutral": 2, "positive": 2},
    ])]
    frame = trend_frame(buckets)
    assert frame["total"].tolist() == [0, 10, 10]
    assert frame["negative share"].isna().tolist() == [True, False, False]
    assert window_counts(frame) == {"negative": 7, "neutral": 3, "positive": 10, "total": 20}
    assert negative_alert(frame, 1, 0.4, 5).share == pytest.approx(0.6)
    assert negative_alert(frame, 2, 0.4, 5) is None  # 7 of 20
    assert negative_alert(frame, 1, 0.4, 11) is None  # too few reviews to say


def test_trends_page_shows_the_redis_counts(app_env: Settings, uid: str) -> None:
    source = f"src-{uid}"
    store(app_env, source, ["negative"] * 3 + ["neutral"] + ["positive"] * 2)
    expected = {k: sum(b.counts[k] for b in trend_counters(app_env).read(MINUTE, 60)) for k in ("negative",
                                                                                               "neutral", "positive")}
    assert expected == {"negative": 3, "neutral": 1, "positive": 2}

    at = open_page("trends")
    assert not at.exception and not at.error
    shown = metrics(at)
    assert shown["reviews, last 60 minutes"] == "6"
    assert shown["negative (50%)"] == "3" and shown["neutral (17%)"] == "1" and shown["positive (33%)"] == "2"
    table = at.dataframe[0].value
    assert table[["negative", "neutral", "positive"]].sum().tolist() == [3, 1, 2]

    at.sidebar.selectbox(key="trend_source").select(source).run()
    assert metrics(at)["reviews, last 60 minutes"] == "6"
    at.sidebar.number_input(key="alert_min_reviews").set_value(5).run()
    assert len(at.error) == 1 and "Negative share 50%" in at.error[0].value  # 50 % > the default 40 %
    at.sidebar.slider(key="alert_threshold").set_value(0.5).run()
    assert not at.error


def test_trends_page_names_redis_when_it_is_down(app_env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("SENTIMENT_REDIS__URL", f"redis://127.0.0.1:{port}/0")
    at = open_page("trends")
    assert not at.exception
    assert f"Redis is not reachable at `127.0.0.1:{port}/0`" in at.error[0].value
    assert "make up" in at.error[0].value


def test_reviews_page_filters_the_latest_rows(app_env: Settings, uid: str) -> None:
    source = f"src-{uid}"
    store(app_env, source, ["negative", "positive", "positive"], text=f"parcel {uid}")
    at = open_page("reviews")
    assert not at.exception and not at.error
    at.selectbox(key="reviews_source").select(source).run()
    frame = at.dataframe[0].value
    assert sorted(frame["review_id"]) == [f"{source}-{i}" for i in range(3)]
    assert set(frame["model_version"]) == {"tiny-test"} and frame["score"].tolist() == pytest.approx([0.9] * 3)
    at.selectbox(key="reviews_label").select("positive").run()
    assert sorted(at.dataframe[0].value["review_id"]) == [f"{source}-1", f"{source}-2"]
    at.selectbox(key="reviews_label").select("all")
    at.text_input(key="reviews_search").input(f"{uid} 0").run()
    assert at.dataframe[0].value["review_id"].tolist() == [f"{source}-0"]


def test_reviews_page_names_postgres_when_it_is_down(app_env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("SENTIMENT_POSTGRES__URL", f"postgresql+psycopg://u:p@127.0.0.1:{port}/sentiment")
    at = open_page("reviews")
    assert not at.exception
    assert f"Postgres is not reachable at `127.0.0.1:{port}/sentiment`" in at.error[0].value
    assert "make up" in at.error[0].value and "u:p" not in at.error[0].value


def test_classify_page_labels_a_text_and_a_csv(app_env: Settings) -> None:
    at = open_page("classify", timeout=120)
    assert not at.exception and not at.error
    at.button(key="classify_text_button").click().run()
    assert at.metric[0].label == "label" and at.metric[0].value in {"negative", "neutral", "positive"}

    texts = ["great phone, love it", "terrible delivery, never again", "it is okay", 'a "quoted", text\nover lines']
    upload = io.StringIO()
    csv.writer(upload).writerows([["id", "text"], *[[i, t] for i, t in enumerate(texts)]])
    at.file_uploader(key="classify_csv").upload("mine.csv", upload.getvalue().encode(), "text/csv").run()
    assert at.button(key="classify_csv_button").label == "Classify 4 rows"
    at.button(key="classify_csv_button").click().run()
    assert not at.exception and not at.error
    assert "rows/minute" in at.success[0].value
    rows = list(csv.DictReader(io.StringIO(at.session_state["classify_result"].data.decode())))
    assert [r["text"] for r in rows] == texts and [r["id"] for r in rows] == ["0", "1", "2", "3"]
    assert all(r["label"] in {"negative", "neutral", "positive"} for r in rows)
    assert float(metrics(at)["throughput (rows/minute)"].replace(",", "")) > 0


def test_classify_page_without_a_model_says_what_to_do(app_env: Settings, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("SENTIMENT_MODEL__DIR", str(tmp_path / "nothing-here"))
    at = open_page("classify")
    assert not at.exception
    assert "No usable model" in at.error[0].value and "SENTIMENT_MODEL__DIR" in at.error[0].value


def test_experiments_page_shows_runs_and_the_current_model(app_env: Settings, tmp_path: Path) -> None:
    from training.tracker import append_row

    run_dir = tmp_path / "20260101-000000-demo"
    run_dir.mkdir()
    (run_dir / "confusion_matrix.png").write_bytes(_png())
    append_row(tmp_path / "experiments.csv", {"run_id": run_dir.name, "name": "demo", "test_accuracy": 0.61,
                                              "test_macro_f1": 0.55, "test_macro_recall": 0.57, "run_dir": run_dir})
    at = open_page("experiments")
    at.sidebar.text_input(key="runs_roots").input(str(tmp_path)).run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert table["run_id"].tolist() == [run_dir.name] and table["test_accuracy"].tolist() == [0.61]
    assert at.multiselect[0].value == [run_dir.name] and len(at.get("image")) == 2  # the plot and the matrix
    text = " ".join(m.value for m in at.markdown) + " ".join(i.value for i in at.info)
    assert f"`{app_env.model.version}`" in text and "SENTIMENT_MODEL__DIR" in text
    assert "Model registry" in text


def test_experiments_page_shows_the_registry_and_production(app_env: Settings, uid: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import create_engine

    from sentiment_app.lifecycle import promotion
    from tests.registry_helpers import fake_run, lifecycle_settings, registry_schema

    with registry_schema(uid) as url:
        engine = create_engine(url)
        run = fake_run(tmp_path, "run-a", seed=1)
        scores = lambda model_dir, eval_set: {"macro_f1": 0.5, "accuracy": 0.6}  # noqa: E731
        life = lifecycle_settings(tmp_path)
        ref = promotion.publish(life, engine, run, "sample", version=f"v-{uid}", evaluate=scores)
        promotion.promote(life, engine, ref.version, force=True, evaluate=scores)
        monkeypatch.setenv("SENTIMENT_POSTGRES__URL", url)
        at = open_page("experiments")
        assert not at.exception and not at.error
        text = " ".join(m.value for m in at.markdown)
        assert f"In production: `v-{uid}`" in text
        versions = next(d.value for d in at.dataframe if "stage" in d.value.columns)
        assert versions[["version", "stage", "macro-F1"]].values.tolist() == [[f"v-{uid}", "production", 0.5]]
        engine.dispose()


def _png() -> bytes:
    """A 1x1 PNG: the page only has to show a run's confusion matrix file, not draw one."""
    import base64

    return base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5Er"
                            "kJggg==")
