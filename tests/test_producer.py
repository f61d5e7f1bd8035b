"""`sentiment produce`: CSV and JSON Lines in, keyed wire-format events out, skips counted by reason."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import uuid
from pathlib import Path

from kafka import KafkaConsumer

from stream.producer import Columns, produce_file
from stream.settings import Settings
from tests.support import REPO, settings_env


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
