"""CLI tables show stored text literally, against the real services: a review, source, dead letter, model
version or experiment name holding Rich markup or terminal escape sequences neither breaks the command
(as one ``[/bold]`` review used to break ``sentiment reviews`` for everyone) nor reaches the terminal."""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert

from storage import registry
from storage.db import get_engine
from storage.reviews import LabelledReview, insert_reviews
from stream.dlq import DeadLetter, DeadLetterWriter
from stream.events import RawRecord
from stream.settings import Settings
from tests.support import invoke_cli

MARKUP = "[/bold]"
ESCAPES = "\x1b[31m\x1b]0;owned\x07\x1b[2J"


def assert_terminal_safe(output: str) -> None:
    assert "\x1b" not in output and "\x07" not in output, repr(output)


def test_reviews_with_markup_and_escapes_are_listed_literally(settings: Settings, uid: str) -> None:
    engine = get_engine(settings.postgres.url.get_secret_value())
    text = f"{MARKUP} {uid} sold out{ESCAPES} [red]again\nand again"
    insert_reviews(engine, [LabelledReview(f"{uid}-1", text, f"src{MARKUP}{ESCAPES}", datetime.now(UTC),
                                           "negative", 0.9, 0.9, 0.05, 0.05, f"v[/x]{ESCAPES}")])
    out = invoke_cli(settings, "reviews", "--search", uid)
    assert out.exit_code == 0, out.output
    assert f"{MARKUP} {uid} sold out [red]again and again" in out.output and "src[/bold]" in out.output
    assert "owned" not in out.output  # a title-setting sequence goes whole, its text too
    assert_terminal_safe(out.output)


def test_trends_for_a_source_with_markup(settings: Settings) -> None:
    out = invoke_cli(settings, "trends", "--minutes", "2", "--source", f"shop{MARKUP}{ESCAPES}")
    assert out.exit_code == 0, out.output
    assert f"shop{MARKUP}" in out.output
    assert_terminal_safe(out.output)


def test_dead_letters_with_markup_show_with_their_values(topics: Settings, uid: str) -> None:
    s = topics
    record = RawRecord(s.kafka.reviews_topic, 0, 7, None, b"k", f"{MARKUP} value{ESCAPES}".encode())
    writer = DeadLetterWriter(s.kafka.dlq_topic, s.kafka.client_options())
    try:
        writer.write([DeadLetter(record, f"bad_json{MARKUP}", f"detail [/x]{ESCAPES}\nline 2",
                                 int(time.time() * 1000))])
    finally:
        writer.close()
    out = invoke_cli(s, "dlq", "--show-value")
    assert out.exit_code == 0, out.output
    assert f"bad_json{MARKUP}" in out.output and "detail [/x] line 2" in out.output
    assert f"{MARKUP} value\\x1b[31m" in out.output  # the raw value as escaped bytes, never as escapes
    assert_terminal_safe(out.output)


def test_models_list_with_a_version_written_by_sql(reg_url: str, tmp_path: Path) -> None:
    engine = get_engine(reg_url)
    with engine.begin() as conn:  # publish checks version names; a row written by SQL is not checked
        conn.execute(insert(registry.model_version).values(version=f"v{MARKUP}{ESCAPES}", artifact_dir="/nowhere",
                                                           eval_set=f"set[/x]{ESCAPES}"))
    s = Settings(postgres={"url": reg_url}, models_dir=tmp_path / "models")
    out = invoke_cli(s, "models", "list")
    assert out.exit_code == 0, out.output
    assert f"v{MARKUP}" in out.output and "set[/x]" in out.output
    assert_terminal_safe(out.output)


def test_experiments_with_markup_in_a_run_name(tmp_path: Path, settings: Settings) -> None:
    tracker = tmp_path / "experiments.csv"
    with tracker.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["run_id", "name", "class_weights", "test_macro_f1"])
        writer.writeheader()
        writer.writerow({"run_id": f"r1{MARKUP}{ESCAPES}", "name": "x", "class_weights": f"[red]{ESCAPES}",
                         "test_macro_f1": "0.5"})
    out = invoke_cli(settings, "experiments", "--tracker", str(tracker))
    assert out.exit_code == 0, out.output
    assert f"r1{MARKUP}" in out.output and "[red]" in out.output
    assert_terminal_safe(out.output)


def test_an_error_naming_user_input_is_one_plain_line(settings: Settings, uid: str) -> None:
    out = invoke_cli(settings, "feedback", f"{uid}[/x]{ESCAPES}", "negative", "--by", "ana")
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines() == [f"error: no labelled review '{uid}[/x]\\x1b[31m\\x1b]0;owned\\x07"
                                               "\\x1b[2J'; `sentiment reviews` lists recent ids"]


def test_models_rollback_prints_version_names_written_by_sql_safely(reg_url: str, tmp_path: Path) -> None:
    """Plain lines name versions too (rollback, promote, shadow, compare), not only tables."""
    engine = get_engine(reg_url)
    s = Settings(postgres={"url": reg_url}, models_dir=tmp_path / "models")
    old, new = f"old\x1b]8;;http://evil\x07link\x1b]8;;\x07{ESCAPES}", "new\u202eevil\x9b2J"
    with engine.begin() as conn:
        for v, stage in ((old, "archived"), (new, "production")):
            (s.model_store() / v).mkdir(parents=True)
            conn.execute(insert(registry.model_version).values(version=v, artifact_dir=str(s.model_store() / v),
                                                               eval_set="sample", stage=stage))
        conn.execute(insert(registry.promotion_decision), [
            {"action": "promote", "candidate": v, "promoted": True, "reason": "sql"} for v in (old, new)])
    out = invoke_cli(s, "models", "rollback")
    assert out.exit_code == 0, out.output
    assert "oldlink" in out.output and "newevil" in out.output
    assert_terminal_safe(out.output)
    assert "\u202e" not in out.output and "\x9b" not in out.output
