"""The read commands' small promises (issue 16, item 8), against the real services: a wrong label or window is one
line and exit code 2, an unknown source gets a hint naming the known ones, `reviews` fits 80 columns with the text
getting the room, `init` prints its summary only, `status` loads no model library, and the group helps show
examples."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from storage.db import get_engine
from storage.reviews import LabelledReview, insert_reviews
from stream.settings import Settings
from tests.support import invoke_cli, store

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(out, expected: str) -> None:
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines() == [expected] and "Traceback" not in out.output


def test_reviews_refuses_an_unknown_label_listing_the_labels(settings: Settings) -> None:
    _one_error_line(invoke_cli(settings, "reviews", "--label", "happy"),
                    "error: --label 'happy': use one of negative, neutral, positive")
    assert invoke_cli(settings, "reviews", "--label", "Negative").exit_code == 0  # any case


def test_trends_refuses_a_window_outside_what_redis_keeps(settings: Settings) -> None:
    keeps = "Redis keeps per-minute counters 48 hours; SENTIMENT_REDIS__MINUTE_TTL_S"
    _one_error_line(invoke_cli(settings, "trends", "--minutes", "-5"), f"error: --minutes -5: give 1 to 2880 ({keeps})")
    _one_error_line(invoke_cli(settings, "trends", "--minutes", "0"), f"error: --minutes 0: give 1 to 2880 ({keeps})")
    out = invoke_cli(settings, "trends", "--hours", "100000")
    assert out.exit_code == 2 and "--hours 100000: give 1 to 840" in out.output
    assert invoke_cli(settings, "trends", "--minutes", "2880").exit_code == 0


def test_trends_names_the_known_sources_for_an_unknown_one(settings: Settings, uid: str) -> None:
    store(settings, f"shop-{uid}", ["negative", "positive"])
    out = invoke_cli(settings, "trends", "--minutes", "30", "--source", f"shoop-{uid}")
    assert out.exit_code == 0, out.output
    assert out.output.strip() == (f"no reviews from source 'shoop-{uid}' in the last 30 minutes "
                                  f"(sources seen then: 'shop-{uid}')")
    known = invoke_cli(settings, "trends", "--minutes", "30", "--source", f"shop-{uid}")
    assert known.exit_code == 0 and "negative %" in known.output and "sources seen" not in known.output


def _run(settings: Settings, *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    """`sentiment ARGS` in a fresh process (its terminal width and imports are its own)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}, **settings.to_env(),
           "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "sentiment_app", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_reviews_fit_80_columns_and_the_text_gets_the_room(settings: Settings, uid: str) -> None:
    text = f"{uid} the parcel arrived late and the box was crushed, support never answered my three emails"
    model = "20261202-081900-tweeteval-best-calibrated-long-name"
    insert_reviews(get_engine(settings.postgres.url.get_secret_value()), [
        LabelledReview(f"{uid}-r{i}", text, "appstore", datetime.now(UTC), "negative", 0.91, 0.91, 0.05, 0.04, model)
        for i in range(2)])
    out = _run(settings, "reviews", "--search", uid, columns=80)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, out.stdout
    assert model in "".join(line.strip() for line in lines[:2])  # shared by the rows: named once, wrapped
    assert "model" not in lines[2] and "source" not in lines[2] and "text" in lines[2]  # the header: no such columns
    assert f"{uid}-r0" in out.stdout and f"{uid}-r1" in out.stdout  # review ids whole: `feedback` takes them
    body = " ".join(out.stdout.split())
    assert all(word in body for word in text.split())  # the whole text, folded in its column
    text_width = max(len(line) - line.index(uid) for line in lines if f"{uid} the" in line)
    assert text_width >= 30, out.stdout  # the text has the room, not the ids, times and names


def test_init_prints_one_line_per_step_and_no_alembic_logs(topics: Settings) -> None:
    out = _run(topics, "init")
    assert out.returncode == 0, out.stderr
    assert "alembic" not in out.stdout + out.stderr and " INFO " not in out.stderr, out.stderr
    assert [line.split(" ")[0] for line in out.stdout.splitlines()] == ["schema", "reviews", "topics:"]


def test_status_loads_no_model_library_and_answers_quickly(topics: Settings) -> None:
    probe = ("import sys, time; t = time.monotonic(); from typer.testing import CliRunner; "
             "from sentiment_app.cli import app; r = CliRunner().invoke(app, ['status']); "
             "print(r.exit_code, round(time.monotonic() - t, 2), "
             "sorted(m for m in ('torch', 'transformers', 'faust', 'streamlit') if m in sys.modules))")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SENTIMENT_")}, **topics.to_env()}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    wall = time.monotonic() - started
    code, seconds, loaded = out.stdout.split(" ", 2)
    assert code in ("0", "1"), out.stdout + out.stderr  # 1: a worker group is empty here (degraded), not a failure
    assert loaded.strip() == "[]", f"status imported {loaded.strip()}"
    assert wall < 15, f"status took {wall:.1f} s ({seconds} s in-process) even on a loaded machine"


def test_drift_and_models_help_show_examples(settings: Settings) -> None:
    for group in ("drift", "models"):
        out = invoke_cli(settings, group, "--help")
        assert out.exit_code == 0 and "Examples:" in out.output, out.output
        assert f"  sentiment {group} " in out.output


def test_every_usage_line_names_arguments_in_capitals(settings: Settings) -> None:
    """typer prints a required argument as `{run_dir}`; every command of the CLI shows `RUN_DIR` instead."""
    import typer.main

    from sentiment_app.cli import app

    def commands(group, path: tuple[str, ...] = ()):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):  # a group (typer may carry its own click)
                yield from commands(command, (*path, name))
            else:
                yield (*path, name)

    seen = list(commands(typer.main.get_command(app)))
    assert len(seen) > 20 and ("models", "publish") in seen
    for path in seen:
        out = invoke_cli(settings, *path, "--help")
        usage = next(line for line in out.output.splitlines() if line.startswith("Usage:"))
        assert out.exit_code == 0 and "{" not in usage, usage
    assert "models publish [OPTIONS] RUN_DIR" in invoke_cli(settings, "models", "publish",
                                                                             "--help").output


def test_counts_and_topics_out_of_range_are_refused_before_any_work(settings: Settings, tmp_path: Path) -> None:
    """Found by a newcomer pass: `reviews --limit -1` was an SQL traceback, `produce --topic bad/topic` a
    kafka-python one, `dlq --limit -3` printed "latest -3"."""
    events = tmp_path / "one.jsonl"
    events.write_text('{"review_id": "x", "text": "fine"}\n', encoding="utf-8")
    for args in (("reviews", "--limit", "-1"), ("dlq", "--limit", "-3"), ("feedback", "--limit", "0"),
                 ("produce", str(events), "--limit", "-1"), ("produce", str(events), "--rate", "0"),
                 ("produce", str(events), "--topic", "bad/topic")):
        out = invoke_cli(settings, *args)
        assert out.exit_code == 2 and "Traceback" not in out.output, (args, out.output)
        assert "Invalid value for '--" in out.output, (args, out.output)
