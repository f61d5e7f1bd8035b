"""`sentiment produce`: CSV and JSON Lines in, keyed wire-format events out, skips counted by reason."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer

from stream.producer import Columns, connect_producer, produce_file
from stream.services import ServiceUnavailable
from stream.settings import Settings
from tests.support import REPO, free_port, settings_env


def consume_all(settings: Settings, n: int) -> list:
    consumer = KafkaConsumer(settings.kafka.reviews_topic, auto_offset_reset="earliest", consumer_timeout_ms=8000,
                             group_id=f"g-{uuid.uuid4().hex}", **settings.kafka.client_options())
    got = []
    for msg in consumer:
        got.append(msg)
        if len(got) >= n:
            break
    consumer.close()
    return got


def test_csv_with_custom_columns(topics: Settings, tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "body", "when", "stars"])
        w.writerow(["a1", "Great phone, «superb» battery", "2026-11-01T10:00:00Z", "5"])
        w.writerow(["a2", "", "2026-11-01T10:00:00Z", "1"])  # no text: skipped
        w.writerow(["a3", "Broke after a week", "not-a-date", "1"])  # bad time: skipped
        w.writerow(["a4", "Works, line\nbreak inside", "", "3"])
    summary = produce_file(path, topics, Columns(text="body", review_id="id", source=None, created_at="when"),
                           default_source="shop", progress=False)
    assert summary.sent == 2
    assert dict(summary.skipped) == {"validation_error": 2}
    assert any("row 3" in s and "text" in s for s in summary.first_skips)
    msgs = consume_all(topics, 2)
    assert sorted(m.key for m in msgs) == [b"a1", b"a4"]
    first = json.loads(next(m.value for m in msgs if m.key == b"a1"))
    assert first == {"text": "Great phone, «superb» battery", "review_id": "a1", "created_at": "2026-11-01T10:00:00Z",
                     "source": "shop", "metadata": {"stars": "5"}}


def test_jsonl_via_cli_reports_skips(topics: Settings, tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl"
    lines = [json.dumps({"review_id": f"j{i}", "text": f"text {i}", "source": "api"}) for i in range(20)]
    lines += ["{broken", json.dumps([1, 2]), json.dumps({"text": 5}), ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "sentiment_app", "produce", str(path), "--rate", "200"], cwd=REPO,
                            env=settings_env(topics), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sent 20, skipped 3" in result.stdout
    for reason in ("invalid_json", "not_an_object", "validation_error"):
        assert f"skipped 1: {reason}" in result.stdout
    msgs = consume_all(topics, 20)
    assert sorted(m.key for m in msgs) == sorted(f"j{i}".encode() for i in range(20))


def produce_cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sentiment_app", "produce", *args], cwd=REPO,
                          env=settings_env(settings), capture_output=True, text=True, timeout=timeout)


def test_a_missing_or_unreadable_input_is_one_line_before_kafka_is_contacted(tmp_path: Path) -> None:
    """Kafka is down here on purpose: the file's own errors come first, each one line naming what to do."""
    down = Settings(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    path = tmp_path / "in.csv"
    path.write_text("id,body\n1,great\n", encoding="utf-8")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("review_id,text\n1,très bien\n".encode("latin-1"))
    for args, expected in [
        ((str(path),), f"error: {path} has no column 'text'; its columns are 'id', 'body': pick one with --text-col"),
        ((str(path), "--text-col", "body", "--id-col", "review"),
         f"error: {path} has no column 'review'; its columns are 'id', 'body': pick one with --id-col"),
        ((str(path), "--text-col", "body", "--time-col", "when"),
         f"error: {path} has no column 'when'; its columns are 'id', 'body': pick one with --time-col"),
        ((str(latin),), f"error: {latin}: byte 0xe8 at byte offset 19 (line 2) is not UTF-8; re-encode the file, "
                        f"e.g. iconv -f latin1 -t utf-8 {latin} > {tmp_path / 'latin.utf8.csv'}"),
    ]:
        result = produce_cli(down, *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [expected]


def test_kafka_down_fails_fast_in_one_line(tmp_path: Path) -> None:
    down = Settings(kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    path = tmp_path / "in.csv"
    path.write_text("review_id,text\n1,great\n", encoding="utf-8")
    result = produce_cli(down, str(path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip() and "producing to" not in line]
    assert len(lines) == 1 and "ERROR" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: Kafka is not reachable at {down.kafka.bootstrap_servers}: no broker "
                               "answered within 5 s")
    # the wait itself is bounded by BOOTSTRAP_TIMEOUT_MS, measured in-process (the interpreter's start is not)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        connect_producer(down)
    assert time.monotonic() - started < 12


def test_every_row_skipped_exits_2_and_an_id_column_never_falls_back_to_positions(topics: Settings,
                                                                                  tmp_path: Path) -> None:
    skipped = tmp_path / "skipped.csv"
    skipped.write_text("review_id,text\n1,\n2,   \n", encoding="utf-8")
    result = produce_cli(topics, str(skipped))
    assert result.returncode == 2 and "sent 0, skipped 2" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: every row of {skipped} was skipped (2): nothing sent; see the reasons above")

    ids = tmp_path / "ids.csv"
    ids.write_text("id,text\na1,great\n,no id here\na3,fine\n", encoding="utf-8")
    summary = produce_file(ids, topics, Columns(review_id="id"), progress=False)
    assert summary.sent == 2 and dict(summary.skipped) == {"no_review_id": 1}
    jsonl = tmp_path / "ids.jsonl"
    jsonl.write_text(json.dumps({"ref": "j1", "text": "good"}) + "\n" + json.dumps({"text": "no ref"}) + "\n",
                     encoding="utf-8")
    summary = produce_file(jsonl, topics, Columns(review_id="ref"), progress=False)
    assert summary.sent == 1 and dict(summary.skipped) == {"no_review_id": 1}
    assert sorted(m.key for m in consume_all(topics, 3)) == [b"a1", b"a3", b"j1"]


def test_bad_csv_rows_are_skipped_by_reason_and_the_rest_sent(topics: Settings, tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"review_id,text,stars\nb1,fine,5\nb2,an unquoted, comma,1\nb3,\"quoted, comma\",2\n")
    summary = produce_file(path, topics, progress=False)
    assert summary.sent == 2 and dict(summary.skipped) == {"wrong_field_count": 1}
    assert summary.first_skips == ["row 3: wrong_field_count: 4 fields, the header has 3 (an unquoted comma or "
                                   "quote?)"]
    msgs = {m.key: json.loads(m.value) for m in consume_all(topics, 2)}
    assert msgs[b"b3"] == {"text": "quoted, comma", "review_id": "b3", "metadata": {"stars": "2"}}


_JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3), max_leaves=8)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_JSON_VALUES.map(json.dumps) | st.text(max_size=40).filter(lambda t: "\n" not in t
                                                                                   and "\r" not in t),
                      min_size=1, max_size=12),
       bom=st.booleans())
def test_any_json_lines_file_reads_one_entry_per_non_blank_line(tmp_path: Path, lines: list[str], bom: bool) -> None:
    """Whatever a JSON Lines file holds: each non-blank line is one entry with its own line number, an object
    as itself and anything else as a Rejection; a leading byte-order mark is not part of the first line."""
    from stream.events import Rejection
    from stream.producer import open_rows

    path = tmp_path / f"any-{uuid.uuid4().hex}.jsonl"
    path.write_bytes(("\ufeff" if bom else "").encode() + "\n".join(lines).encode())
    with open_rows(path, "auto", Columns()) as (_, rows):
        got = list(rows)
    expected = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    assert [n for n, _ in got] == [n for n, _ in expected]
    for (_, row), (_, line) in zip(got, expected, strict=True):
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        assert row == value if isinstance(value, dict) else isinstance(row, Rejection)
