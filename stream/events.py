"""The review event: its JSON format on the wire and how raw Kafka records are judged.

Wire format (UTF-8 JSON object, one per Kafka record; the record key should be the review id):

    {"review_id": "r-123", "text": "Great battery life", "source": "appstore",
     "created_at": "2026-11-29T10:15:00Z", "metadata": {"stars": 5}}

Rules:
- ``text`` (required): a non-empty string (after trimming whitespace), at most
  ``worker.max_text_chars`` characters, stored whole; the model sees its first ``model.max_length``
  tokens. No NUL characters (Postgres cannot store them).
- ``review_id`` (optional): string or integer, 1-256 characters. When absent, the id is derived from
  the record's position, ``<topic>:<partition>:<offset>``, so a replay maps to the same id.
- ``source`` (optional, default ``unknown``): string, 1-64 characters.
- ``created_at`` (optional, default: the Kafka record timestamp): ISO 8601 string or Unix epoch
  seconds; naive times are UTC; from 2000-01-01 up to one day ahead of now.
- ``metadata`` (optional): a JSON object of at most ``worker.max_metadata_bytes`` bytes. Any other
  top-level field is kept in ``metadata`` rather than dropped.

A record that breaks a rule is dead-lettered with a reason code (see ``Rejection``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)
KNOWN_FIELDS = {"review_id", "text", "source", "created_at", "metadata"}


class ReviewEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    review_id: str | None = Field(None, min_length=1, max_length=256)
    text: str = Field(min_length=1)
    source: str = Field("unknown", min_length=1, max_length=64)
    created_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("review_id", mode="before")
    @classmethod
    def _id_from_int(cls, v: Any) -> Any:
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, int) and not isinstance(v, bool):  # `true` as an id is a mistake
            return str(v)
        raise ValueError(f"must be a string or an integer, not {type(v).__name__}")

    @field_validator("text", "source", mode="before")
    @classmethod
    def _strict_str(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, str):
            raise ValueError(f"must be a string, not {type(v).__name__}")
        return v

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty")
        return v

    @field_validator("source")
    @classmethod
    def _source_trim(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("source is empty")
        return v

    @field_validator("created_at", mode="before")
    @classmethod
    def _parse_time(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("created_at must be an ISO 8601 string or epoch seconds")
        if isinstance(v, int | float):
            return datetime.fromtimestamp(v, tz=UTC)
        return v

    @field_validator("created_at")
    @classmethod
    def _time_in_range(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        if not EARLIEST <= v <= datetime.now(UTC) + FUTURE_SLACK:
            raise ValueError(f"created_at {v.isoformat()} is before 2000 or more than a day ahead")
        return v.astimezone(UTC)


@dataclass(frozen=True)
class RawRecord:
    """A Kafka record as the worker received it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class Rejection:
    """Why a record cannot be labelled. ``reason`` is a stable code, ``detail`` says what to fix."""

    reason: str
    detail: str


@dataclass(frozen=True)
class ValidEvent:
    review_id: str
    text: str
    source: str
    created_at: datetime
    metadata: dict[str, Any]


def parse_record(record: RawRecord, max_text_chars: int, max_metadata_bytes: int) -> ValidEvent | Rejection:
    """Judge one raw record. Never raises: anything unusable becomes a Rejection."""
    if not record.value:
        return Rejection("empty_message", "the record has no value")
    try:
        raw_text = record.value.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection("invalid_utf8", f"value is not UTF-8: {e}")
    try:
        obj = json.loads(raw_text)
    except (json.JSONDecodeError, RecursionError) as e:
        return Rejection("invalid_json", f"value is not JSON: {e}")
    if not isinstance(obj, dict):
        return Rejection("not_an_object", f"value must be a JSON object, got {type(obj).__name__}")
    extra = {k: obj.pop(k) for k in list(obj) if k not in KNOWN_FIELDS}
    if extra:
        if "metadata" in obj and not isinstance(obj["metadata"], dict):
            return Rejection("validation_error", "metadata: must be a JSON object")
        obj["metadata"] = {**extra, **(obj.get("metadata") or {})}
    try:
        event = ReviewEvent.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        return Rejection("validation_error", f"{where}: {first['msg']}")
    if len(event.text) > max_text_chars:
        return Rejection("text_too_long", f"text has {len(event.text)} characters; the limit is {max_text_chars}")
    # Postgres text/jsonb cannot hold NUL or lone surrogates; check everything we will store at once.
    stored = json.dumps([event.review_id, event.text, event.source, event.metadata], ensure_ascii=False)
    if "\x00" in stored or "\\u0000" in stored:
        return Rejection("nul_character", "text, id, source and metadata must not contain NUL (\\u0000)")
    try:
        encoded_metadata = json.dumps(event.metadata, ensure_ascii=False).encode("utf-8")
        stored.encode("utf-8")
    except UnicodeEncodeError:
        return Rejection("invalid_unicode", "a string holds a lone surrogate (\\ud800-\\udfff)")
    if len(encoded_metadata) > max_metadata_bytes:
        return Rejection(
            "metadata_too_large", f"metadata is {len(encoded_metadata)} bytes; the limit is {max_metadata_bytes}"
        )
    created_at = event.created_at
    if created_at is None:
        ts = record.timestamp_ms
        created_at = datetime.fromtimestamp(ts / 1000, tz=UTC) if ts and ts > 0 else datetime.now(UTC)
    return ValidEvent(
        review_id=event.review_id or record.position,
        text=event.text,
        source=event.source,
        created_at=created_at,
        metadata=event.metadata,
    )
