"""Send review files (CSV or JSON Lines) to the reviews topic in the wire format of ``stream.events``."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from stream.events import RawRecord, Rejection, parse_record
from stream.services import ServiceUnavailable
from stream.settings import Settings


@dataclass(frozen=True)
class Columns:
    """Which input column holds which event field (None: the input has no such column)."""

    text: str = "text"
    review_id: str | None = "review_id"
    source: str | None = "source"
    created_at: str | None = "created_at"


@dataclass
class ProduceSummary:
    sent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first_skips: list[str] = field(default_factory=list)

    def skip(self, row: int, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        if len(self.first_skips) < 5:
            self.first_skips.append(f"row {row}: {reason}: {detail}")


def read_rows(path: Path, fmt: str = "auto") -> Iterator[tuple[int, dict[str, Any] | Rejection]]:
    """(row number, row) pairs; a JSON line that does not parse comes back as a Rejection."""
    if fmt == "auto":
        fmt = "csv" if path.suffix.lower() in {".csv", ".tsv"} else "jsonl"
    with path.open(encoding="utf-8", newline="") as f:
        if fmt == "csv":
            dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
            for i, row in enumerate(csv.DictReader(f, dialect=dialect), start=2):  # row 1 is the header
                yield i, row
            return
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield i, Rejection("invalid_json", str(e))
                continue
            yield i, obj if isinstance(obj, dict) else Rejection("not_an_object", type(obj).__name__)


def to_event(row: dict[str, Any], columns: Columns, default_source: str | None) -> dict[str, Any]:
    """Map an input row to the wire format; other columns travel in ``metadata``."""
    taken = {c for c in (columns.text, columns.review_id, columns.source, columns.created_at) if c}
    event: dict[str, Any] = {"text": row.get(columns.text)}
    for name, col in (("review_id", columns.review_id), ("source", columns.source),
                      ("created_at", columns.created_at)):
        if col and row.get(col) not in (None, ""):
            event[name] = row[col]
    if "source" not in event and default_source:
        event["source"] = default_source
    meta = {k: v for k, v in row.items() if k not in taken and k is not None and v not in (None, "")}
    if isinstance(row.get("metadata"), dict):
        meta = {**{k: v for k, v in meta.items() if k != "metadata"}, **row["metadata"]}
    if meta:
        event["metadata"] = meta
    return event


def produce_file(
    path: Path,
    settings: Settings,
    columns: Columns = Columns(),
    fmt: str = "auto",
    rate: float | None = None,
    limit: int | None = None,
    default_source: str | None = None,
    topic: str | None = None,
    progress: bool = True,
) -> ProduceSummary:
    """Validate each row with the worker's own rules, send the valid ones, count the rest by reason."""
    topic = topic or settings.kafka.reviews_topic
    try:
        producer = KafkaProducer(acks="all", linger_ms=20, **settings.kafka.client_options())
    except KafkaError as e:
        raise ServiceUnavailable("Kafka", settings.kafka.bootstrap_servers, e) from None
    summary = ProduceSummary()
    w = settings.worker
    started = time.monotonic()
    bar = tqdm(desc=f"producing to {topic}", unit="ev", disable=not progress)
    try:
        for row_no, row in read_rows(path, fmt):
            if limit is not None and summary.sent >= limit:
                break
            if isinstance(row, Rejection):
                summary.skip(row_no, row.reason, row.detail)
                continue
            event = to_event(row, columns, default_source)
            value = json.dumps(event, ensure_ascii=False, default=str).encode("utf-8")
            judged = parse_record(RawRecord(topic, 0, row_no, None, None, value), w.max_text_chars,
                                  w.max_metadata_bytes)
            if isinstance(judged, Rejection):
                summary.skip(row_no, judged.reason, judged.detail)
                continue
            key = str(event["review_id"]).encode() if "review_id" in event else None
            producer.send(topic, key=key, value=value)
            summary.sent += 1
            bar.update()
            if rate:
                ahead = summary.sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(timeout=60)
    except KafkaError as e:
        raise ServiceUnavailable("Kafka", settings.kafka.bootstrap_servers, e) from None
    finally:
        bar.close()
        producer.close(timeout=10)
    return summary
