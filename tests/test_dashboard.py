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

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sentiment_app.dashboard import launch
from sentiment_app.dashboard.classify import inspect_upload, text_column
from sentiment_app.dashboard.trends import (
    MIN_SPAN,
    View,
    count_chart,
    negative_alert,
    share_chart,
    share_frame,
    spike_cap,
    table_frame,
    trend_frame,
    visible,
    window_counts,
)
from sentiment_model.labels import LABELS
from storage.trends import HOUR, MINUTE, TrendBucket
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


def minutes(counts: list[dict[str, int]], start: datetime = datetime(2026, 1, 1, tzinfo=UTC)) -> list[TrendBucket]:
    return [TrendBucket(start + timedelta(minutes=i), {k: c.get(k, 0) for k in LABELS}) for i, c in enumerate(counts)]


def test_trend_frame_shares_and_alert() -> None:
    frame = trend_frame(minutes([{}, {"negative": 1, "neutral": 1, "positive": 8},
                                 {"negative": 6, "neutral": 2, "positive": 2}]))
    assert frame["total"].tolist() == [0, 10, 10]
    assert frame["negative share"].isna().tolist() == [True, False, False]
    assert window_counts(frame) == {"negative": 7, "neutral": 3, "positive": 10, "total": 20}
    assert negative_alert(frame, 1, 0.4, 5).share == pytest.approx(0.6)
    assert negative_alert(frame, 2, 0.4, 5) is None  # 7 of 20
    assert negative_alert(frame, 1, 0.4, 11) is None  # too few reviews to say
    table = table_frame(frame, MINUTE)  # newest first; an empty minute has a blank share, not None or NaN
    assert table["negative share"].tolist() == ["60%", "10%", ""] and table["total"].tolist() == [10, 10, 0]
    assert table["bucket"].tolist()[-1] == "2026-01-01 00:00"


def test_shares_are_smoothed_and_hidden_under_the_minimum() -> None:
    """Minutes of 1 review each would swing 0 % / 100 %: a rolling window pools them, and a point needs
    enough reviews behind it."""
    frame = trend_frame(minutes([{"negative": 1}, {"positive": 1}, {"negative": 1}, {"positive": 1}, {}]))
    raw = share_frame(frame, 1, 1)
    assert raw["negative"].tolist()[:4] == [1.0, 0.0, 1.0, 0.0]  # the zig-zag
    pooled = share_frame(frame, 4, 3)
    assert pooled["negative"].isna().tolist() == [True, True, False, False, False]
    assert pooled["negative"].tolist()[2:] == pytest.approx([2 / 3, 0.5, 1 / 3])
    assert pooled.dropna().sum(axis=1).tolist() == pytest.approx([1.0] * 3)


def test_the_first_share_point_pools_a_whole_window() -> None:
    """The page reads the share window's reach before the first bucket shown, so the first point of the share
    chart pools as many buckets as every other point (it once pooled only the shown ones)."""
    view = View(MINUTE, buckets=3, source=None, threshold=0.4, alert_window=1, min_reviews=1, share_window=4)
    history = minutes([{"negative": 1}] * 3 + [{"positive": 1}] * 3)  # the three minutes before the shown three
    whole = trend_frame(history[-view.read:])  # as much as the page reads from Redis
    shares = share_frame(whole, view.share_window, 1).tail(view.buckets)
    assert shares["negative"].tolist() == pytest.approx([3 / 4, 2 / 4, 1 / 4])


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=200))
def test_the_bar_cap_cuts_only_buckets_far_above_the_rest(totals: list[int]) -> None:
    series = pd.Series(totals)
    cap = spike_cap(series)
    if cap is None:
        return
    busy = series[series > 0]
    assert len(busy) >= 4 and busy.max() > cap >= busy.quantile(0.75)
    assert (busy <= cap).mean() >= 0.75  # most bars keep their height


def test_one_spike_is_cut_and_its_total_written_above_it() -> None:
    frame = trend_frame(minutes([{"positive": n} for n in [2, 3, 1, 5, 4, 500, 2, 6]]))
    cap = spike_cap(frame["total"])
    assert cap is not None and cap < 500
    spec = count_chart(frame, MINUTE, cap).to_dict()
    bars, totals = spec["layer"]
    assert bars["encoding"]["y"]["scale"] == {"domain": [0, cap], "clamp": True} and bars["mark"]["clip"]
    assert totals["mark"]["type"] == "text" and totals["encoding"]["text"]["field"] == "total"
    assert f"bars above {cap} are cut" in spec["title"]["subtitle"]
    assert spike_cap(trend_frame(minutes([{"positive": n} for n in [100, 120, 90, 110, 130]]))["total"]) is None


def test_charts_span_the_data_with_axes_for_their_resolution() -> None:
    """The hour view of one busy hour is not a sliver at the edge of 48 empty hours."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    hours = [TrendBucket(start + timedelta(hours=i), {k: 0 for k in LABELS}) for i in range(48)]
    hours[-3:] = [TrendBucket(b.start, {"negative": 2, "neutral": 1, "positive": 4}) for b in hours[-3:]]
    shown = visible(trend_frame(hours))
    assert len(shown) == MIN_SPAN and shown["total"].iloc[0] == 0 and shown.index[-1] == hours[-1].start
    assert len(visible(trend_frame(hours), min_span=2)) == 3
    assert visible(trend_frame(hours[:10])).empty
    x = count_chart(shown, HOUR).to_dict()["encoding"]["x"]
    assert x["timeUnit"] == "utcyearmonthdatehours" and "utcFormat(datum.value, '%H:00')" in x["axis"]["labelExpr"]
    x = share_chart(share_frame(shown, 1, 1), MINUTE, 1, 1).to_dict()["encoding"]["x"]
    assert x["timeUnit"] == "utcyearmonthdatehoursminutes"
    assert x["axis"]["labelExpr"] == "utcFormat(datum.value, '%H:%M')"


def test_trends_page_shows_the_redis_counts(app_env: Settings, uid: str) -> None:
    source = f"src-{uid}"
    store(app_env, source, ["negative"] * 3 + ["neutral"] + ["positive"] * 2)
    expected = {k: sum(b.counts[k] for b in trend_counters(app_env).read(MINUTE, 60)) for k in LABELS}
    assert expected == {"negative": 3, "neutral": 1, "positive": 2}

    at = open_page("trends")
    assert not at.exception and not at.error
    shown = metrics(at)
    assert shown["reviews, last 60 minutes"] == "6"
    assert shown["negative (50%)"] == "3" and shown["neutral (17%)"] == "1" and shown["positive (33%)"] == "2"
    assert any(m.value.startswith("**Last 60 minutes** (since ") for m in at.markdown)
    status = " ".join(c.value for c in at.caption)
    assert "6 review(s) over the last 15 minutes (since " in status and "fewer than the 10 an alert needs" in status
    table = at.dataframe[0].value
    assert table[["negative", "neutral", "positive"]].sum().tolist() == [3, 1, 2]
    assert len(table) == MIN_SPAN  # from the first busy minute (at least MIN_SPAN), not 60 empty ones
    assert "" in table["negative share"].tolist() and "50%" in table["negative share"].tolist()
    assert len(at.get("vega_lite_chart")) == 2  # counts and shares (no drift scores in this test)
    assert any(h.value == "Drift from the model's reference (all sources)" for h in at.subheader)

    at.sidebar.selectbox(key="trend_source").select(source).run()
    assert metrics(at)["reviews, last 60 minutes"] == "6"
    assert any("does not apply here" in c.value for c in at.caption)  # drift covers all sources
    at.sidebar.number_input(key="alert_min_reviews").set_value(5).run()
    assert len(at.error) == 1 and "Negative share 50%" in at.error[0].value  # 50 % > the default 40 %
    assert "over the last 15 minutes (since " in at.error[0].value
    at.sidebar.slider(key="alert_threshold").set_value(0.5).run()
    assert not at.error
    at.sidebar.radio(key="trend_resolution").set_value("hour").run()
    assert not at.exception and metrics(at)["reviews, last 48 hours"] == "6"
    assert len(at.dataframe[0].value) == MIN_SPAN  # not 48 empty hours
    assert at.dataframe[0].value["bucket"].iloc[0].endswith(":00")
    assert all('"utcyearmonthdatehours"' in c.proto.spec for c in at.get("vega_lite_chart"))  # hourly axes


def test_a_bad_setting_is_one_line_on_every_page(app_env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIMENT_DASHBOARD__MAX_UPLOAD_MB", "lots")
    for page in ("trends", "reviews", "classify", "experiments"):
        at = open_page(page)
        assert not at.exception, page
        assert len(at.error) == 1 and "SENTIMENT_DASHBOARD__MAX_UPLOAD_MB is invalid" in at.error[0].value, page
        assert "lots" not in at.error[0].value  # values are never echoed: a URL may hold a password


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
    assert list(frame.columns[:2]) == ["review_id", "processed_at"]  # the id first, then the sort key
    assert sorted(frame["review_id"]) == [f"{source}-{i}" for i in range(3)]
    assert frame["processed_at"].is_monotonic_decreasing  # newest first by the time it shows
    assert set(frame["model_version"]) == {"tiny-test"} and frame["score"].tolist() == pytest.approx([0.9] * 3)
    assert any("newest first by processing time" in c.value for c in at.caption)
    at.selectbox(key="reviews_label").select("positive").run()
    assert sorted(at.dataframe[0].value["review_id"]) == [f"{source}-1", f"{source}-2"]
    at.selectbox(key="reviews_label").select("all")
    at.text_input(key="reviews_search").input(f"{uid} 0").run()
    assert at.dataframe[0].value["review_id"].tolist() == [f"{source}-0"]


def test_a_correction_shows_in_the_table_at_once(app_env: Settings, uid: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIMENT_DASHBOARD__CORRECTIONS_ENABLED", "true")
    source = f"src-{uid}"
    store(app_env, source, ["positive", "positive"], text=f"parcel {uid} arrived")
    at = open_page("reviews")
    at.selectbox(key="reviews_source").select(source).run()
    picker = at.selectbox(key="feedback_review")
    rid = f"{source}-1"
    # id, current label and the text: two reviews with close ids cannot be mixed up
    assert f"{rid} · positive · parcel {uid} arrived 1" in picker.options
    picker.select(rid)
    at.selectbox(key="feedback_label").select("negative")
    at.text_input(key="feedback_author").input("dash-user")
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert "by dash\\-user" in at.success[0].value
    table = at.dataframe[0].value.set_index("review_id")
    assert table.loc[rid, "corrected_label"] == "negative" and table.loc[f"{source}-0", "corrected_label"] == ""
    picker = at.selectbox(key="feedback_review_1")  # a fresh picker, on the review just corrected
    assert picker.value == rid and f"{rid} · positive, corrected to negative · parcel {uid} arrived 1" in picker.options


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
    at.text_area(key="classify_text").input("   ").run()
    at.button(key="classify_text_button").click().run()  # what the worker would dead-letter, the page refuses
    assert len(at.error) == 1 and "would not label this text" in at.error[0].value

    texts = ["great phone, love it", "terrible delivery, never again", "it is okay", 'a "quoted", text\nover lines']
    upload = io.StringIO()
    csv.writer(upload).writerows([["id", "text", "label"], *[[i, t, "gold"] for i, t in enumerate(texts)]])
    at.file_uploader(key="classify_csv").upload("mine.csv", upload.getvalue().encode(), "text/csv").run()
    assert at.button(key="classify_csv_button").label == "Classify 4 rows"
    at.button(key="classify_csv_button").click().run()
    assert not at.exception and not at.error
    assert "rows/minute" in at.success[0].value
    rows = list(csv.DictReader(io.StringIO(at.session_state["classify_result"].data.decode())))
    assert [r["text"] for r in rows] == texts and [r["id"] for r in rows] == ["0", "1", "2", "3"]
    assert all(r["label"] == "gold" for r in rows)  # the input's own label column is kept
    assert all(r["sentiment_label"] in LABELS for r in rows)
    assert sum(int(metrics(at)[k].replace(",", "")) for k in LABELS) == 4
    assert float(metrics(at)["throughput (rows/minute)"].replace(",", "")) > 0


def _upload(at, name: str, data: bytes):
    return at.file_uploader(key="classify_csv").upload(name, data, "text/csv").run()


def test_classify_page_picks_the_text_column_and_reads_an_upload_once(app_env: Settings, uid: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from sentiment_app.dashboard import classify

    calls: list[int] = []
    real = classify.inspect_upload
    monkeypatch.setattr(classify, "inspect_upload", lambda data, name: calls.append(len(data)) or real(data, name))
    at = open_page("classify", timeout=120)
    data = f"review_id,stars,review\n{uid}-1,5,Exceeded expectations in every way\n{uid}-2,1,One star\n".encode()
    _upload(at, "no-text-col.csv", data)
    picker = next(s for s in at.selectbox if s.label == "text column")
    assert picker.value == "review" and picker.options == ["review_id", "stars", "review"]
    picker.select("stars").run()
    at.text_area(key="classify_text").input("another rerun").run()
    assert calls == [len(data)]  # the reruns reuse the first read (cached by the content's hash)
    _upload(at, "unnamed.csv", f"ref,when,comentario\n{uid},2026-01-01,muy bueno el servicio\n".encode())
    assert next(s for s in at.selectbox if s.label == "text column").value == "comentario"


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("latin1.csv", "text\ncaf\u00e9 cr\u00e8me\n".encode("latin-1"), "line 2 is not UTF-8"),
    ("empty.csv", b"", "is empty"),
    ("big.csv", b"text\n" + b"x" * (1024 * 1024 + 1), "above this dashboard's 1 MB limit"),
])
def test_classify_page_refuses_a_bad_upload_in_one_line(app_env: Settings, monkeypatch: pytest.MonkeyPatch,
                                                        name: str, data: bytes, expected: str) -> None:
    monkeypatch.setenv("SENTIMENT_DASHBOARD__MAX_UPLOAD_MB", "1")
    at = open_page("classify", timeout=120)
    _upload(at, name, data)
    assert not at.exception
    assert len(at.error) == 1 and expected in at.error[0].value and "Traceback" not in at.error[0].value


@given(header=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6, unique=True),
       rows=st.lists(st.lists(st.text(max_size=30), min_size=0, max_size=6), max_size=5))
def test_the_text_column_guess_is_always_a_header_column(header: list[str], rows: list[list[str]]) -> None:
    guess = text_column(header, rows)
    assert guess in header
    if "text" in header:
        assert guess == "text"


@given(st.binary(max_size=300))
def test_any_upload_is_inspected_or_refused_with_a_user_error(data: bytes) -> None:
    from sentiment_model.errors import UserError

    try:
        info = inspect_upload(data, "upload.csv")
    except UserError:
        return
    assert info.text_col in info.columns and info.rows >= 0


def test_classify_page_without_a_model_says_what_to_do(app_env: Settings, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("SENTIMENT_MODEL__DIR", str(tmp_path / "nothing-here"))
    at = open_page("classify")
    assert not at.exception
    assert "No usable model" in at.error[0].value and "SENTIMENT_MODEL__DIR" in at.error[0].value


def test_experiments_page_shows_runs_and_the_current_model(app_env: Settings) -> None:
    """`sentiment train` and the demo write to the models home's runs/: the page reads the same place, and
    shows a run's reliability diagram beside its confusion matrix."""
    from training.tracker import append_row

    runs = app_env.runs_dir()
    run_dir = runs / "20260101-000000-demo"
    run_dir.mkdir(parents=True)
    (run_dir / "confusion_matrix.png").write_bytes(_png())
    (run_dir / "reliability.png").write_bytes(_png())
    append_row(runs / "experiments.csv", {"run_id": run_dir.name, "name": "demo", "test_accuracy": 0.61,
                                          "test_macro_f1": 0.55, "test_macro_recall": 0.57, "run_dir": run_dir})
    at = open_page("experiments")
    assert not at.exception and not at.error
    assert not any("No runs recorded" in i.value for i in at.info)
    table = at.dataframe[0].value
    assert table["run_id"].tolist() == [run_dir.name] and table["test_accuracy"].tolist() == [0.61]
    assert at.multiselect[0].value == [run_dir.name]
    assert len(at.get("image")) == 3  # the metrics plot, the confusion matrix and the reliability diagram
    text = " ".join(m.value for m in at.markdown) + " ".join(i.value for i in at.info)
    assert f"`{app_env.model.version}`" in text and "SENTIMENT_MODEL__DIR" in text
    assert "Model registry" in text

    (run_dir / "reliability.png").unlink()  # a run from before calibration
    at = open_page("experiments")
    assert len(at.get("image")) == 2 and any("sentiment calibrate RUN_DIR" in c.value for c in at.caption)


def test_experiments_page_without_runs_says_where_it_looked(app_env: Settings) -> None:
    at = open_page("experiments")
    assert not at.exception and not at.error
    (info,) = [i.value for i in at.info if "No runs recorded" in i.value]
    assert str(app_env.runs_dir() / "experiments.csv") in info and "make demo" in info


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
