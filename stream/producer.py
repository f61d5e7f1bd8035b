"""Send review files (CSV, TSV or JSON Lines) to the reviews topic in the wire format of ``stream.events``.

The file is checked before Kafka is contacted: it must be UTF-8 and, for CSV, have every column named on the
command line. Rows are streamed (``stream.csv_rows``) and judged by the worker's own rules
(``stream.events.parse_record``); a row that fails is skipped and counted by reason, never sent.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from sentiment_model.errors import UserError
from stream.csv_rows import BadRow, CsvRows, TextLines, check_utf8
from stream.events import RawRecord, Rejection, describe, parse_record
from stream.services import ServiceUnavailable
from stream.settings import Settings

BOOTSTRAP_TIMEOUT_MS = 5_000  # Kafka down: say so in seconds, not after kafka-python's 30 s default
MAX_BLOCK_MS = 15_000  # longest wait for a topic's metadata or buffer space in send()


@dataclass(frozen=True)
class Columns:
    """Which input column holds which event field. A name given must be in the input (``UserError`` naming
    the header otherwise); ``None`` takes the usual name (``review_id``, ``source``, ``created_at``) when the
    input has it; ``""`` means the input has none.

    Without a review-id column every event's id is its Kafka position, so sending the same file twice stores
    every review twice. With one, a row without an id is skipped, never given a position id."""

    text: str = "text"
    review_id: str | None = None
    source: str | None = None
    created_at: str | None = None

    def for_header(self, rows: CsvRows) -> Columns:
        """The columns of this CSV: given names checked, usual names taken where the header has them."""
        found = {}
        for field_name, given, option in (("text", self.text, "--text-col"),
                                          ("review_id", self.review_id, "--id-col"),
                                          ("source", self.source, "--source-col"),
                                          ("created_at", self.created_at, "--time-col")):
            if given:
                rows.column(given, option)  # UserError listing the header
                found[field_name] = given
            else:
                found[field_name] = field_name if given is None and field_name in rows.header else ""
        return Columns(**found)


@dataclass
class ProduceSummary:
    sent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first_skips: list[str] = field(default_factory=list)

    failed: int = 0  # sent, but Kafka did not acknowledge them (counted out of ``sent`` at the end)
    first_failure: str | None = None

    def failure(self, row: int, error: BaseException) -> None:
        """A send's errback (kafka-python's I/O thread): the row was not stored in Kafka."""
        self.failed += 1
        if self.first_failure is None:
            self.first_failure = f"row {row}: {describe(error, 200)}"

    def skip(self, row: int, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        if len(self.first_skips) < 5:
            self.first_skips.append(f"row {row}: {reason}: {detail}")


def file_format(path: Path, fmt: str = "auto") -> str:
    """csv, tsv or jsonl: ``fmt``, or (auto) by the file's extension."""
    if fmt == "auto":
        return {".csv": "csv", ".tsv": "tsv"}.get(path.suffix.lower(), "jsonl")
    if fmt == "csv" and path.suffix.lower() == ".tsv":
        return "tsv"
    if fmt not in {"csv", "tsv", "jsonl"}:
        raise UserError(f"--format {fmt!r} is not one of csv, tsv, jsonl, auto")
    return fmt


@contextmanager
def open_rows(path: Path, fmt: str, columns: Columns
              ) -> Iterator[tuple[Columns, Iterator[tuple[int, dict[str, Any] | Rejection]]]]:
    """The columns to use and (row number, row) pairs; a row that cannot be read comes back as a Rejection.
    A file that is not UTF-8, or a CSV without a named column, is refused (``UserError``) before any row."""
    check_utf8(path)
    fmt = file_format(path, fmt)
    with path.open("rb") as f:
        if fmt in {"csv", "tsv"}:
            rows = CsvRows(f, str(path), "excel-tab" if fmt == "tsv" else "excel")
            yield columns.for_header(rows), _csv_rows(rows)
        else:
            yield columns, _json_lines(f)


def _csv_rows(rows: CsvRows) -> Iterator[tuple[int, dict[str, Any] | Rejection]]:
    for record in rows:
        if isinstance(record, BadRow):
            yield record.line, Rejection(record.reason, record.detail)
        else:
            yield record.line, dict(zip(rows.header, record.fields, strict=True))


def _json_lines(f: BinaryIO) -> Iterator[tuple[int, dict[str, Any] | Rejection]]:
    lines = TextLines(f)  # the CSV reader's decoding: a leading BOM dropped, line numbers, undecodable bytes marked
    for line in lines:
        i = lines.line
        if lines.undecodable is not None:
            yield i, Rejection("invalid_utf8", f"byte 0x{lines.undecodable.byte:02x} is not UTF-8")
            lines.undecodable = None
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            yield i, Rejection("invalid_json", describe(e, 300))
            continue
        yield i, obj if isinstance(obj, dict) else Rejection("not_an_object", type(obj).__name__)


def to_event(row: dict[str, Any], columns: Columns, default_source: str | None) -> dict[str, Any] | Rejection:
    """Map an input row to the wire format; other columns travel in ``metadata``. A row without a value in the
    review-id column (when there is one) is a Rejection: a position id would store it again on every replay."""
    names = {"text": columns.text, "review_id": columns.review_id, "source": columns.source,
             "created_at": columns.created_at}
    names = {k: k if v is None else v for k, v in names.items()}  # None: the usual name (JSON Lines)
    taken = {c for c in names.values() if c}
    event: dict[str, Any] = {"text": row.get(names["text"])}
    for name in ("review_id", "source", "created_at"):
        col = names[name]
        if col and row.get(col) not in (None, ""):
            event[name] = row[col]
    if columns.review_id and "review_id" not in event:
        return Rejection("no_review_id", f"no value in the id column {columns.review_id!r}")
    if "source" not in event and default_source:
        event["source"] = default_source
    meta = {k: v for k, v in row.items() if k not in taken and k is not None and v not in (None, "")}
    if isinstance(row.get("metadata"), dict):
        meta = {**{k: v for k, v in meta.items() if k != "metadata"}, **row["metadata"]}
    if meta:
        event["metadata"] = meta
    return event


@contextmanager
def quiet_kafka_logs() -> Iterator[None]:
    """kafka-python logs every failed connection attempt as ERROR; the caller reports the outcome once."""
    log = logging.getLogger("kafka")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def connect_producer(settings: Settings) -> KafkaProducer:
    """A producer, or ``ServiceUnavailable`` within ``BOOTSTRAP_TIMEOUT_MS`` when no broker answers."""
    address = settings.kafka.bootstrap_servers
    with quiet_kafka_logs():
        try:
            return KafkaProducer(acks="all", linger_ms=20, bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                                 max_block_ms=MAX_BLOCK_MS, **settings.kafka.client_options())
        except KafkaError:
            raise ServiceUnavailable("Kafka", address,
                                     f"no broker answered within {BOOTSTRAP_TIMEOUT_MS / 1000:.0f} s") from None


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
    """Validate each row with the worker's own rules, send the valid ones, count the rest by reason. The file
    is checked (UTF-8, named columns) before Kafka is contacted."""
    topic = topic or settings.kafka.reviews_topic
    summary = ProduceSummary()
    w = settings.worker
    with open_rows(path, fmt, columns) as (cols, rows), quiet_kafka_logs():  # failures are counted, not logged
        producer = connect_producer(settings)
        started = time.monotonic()
        bar = tqdm(desc=f"producing to {topic}", unit="ev", disable=not progress)
        try:
            for row_no, row in rows:
                if limit is not None and summary.sent >= limit:
                    break
                event = row if isinstance(row, Rejection) else to_event(row, cols, default_source)
                if isinstance(event, Rejection):
                    summary.skip(row_no, event.reason, event.detail)
                    continue
                # surrogatepass: a lone surrogate (a JSON escape) makes invalid UTF-8, which the check refuses
                value = json.dumps(event, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
                judged = parse_record(RawRecord(topic, 0, row_no, None, None, value), w.max_text_chars,
                                      w.max_metadata_bytes)
                if isinstance(judged, Rejection):
                    summary.skip(row_no, judged.reason, judged.detail)
                    continue
                key = str(event["review_id"]).encode() if "review_id" in event else None
                producer.send(topic, key=key, value=value).add_errback(summary.failure, row_no)
                summary.sent += 1
                bar.update()
                if rate:
                    ahead = summary.sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            producer.flush(timeout=60)
            summary.sent -= summary.failed
        except KafkaError as e:
            raise ServiceUnavailable("Kafka", settings.kafka.bootstrap_servers, e) from None
        finally:
            bar.close()
            producer.close(timeout=10)
    return summary
