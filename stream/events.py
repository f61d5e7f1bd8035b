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
  top-level field is kept in ``metadata`` rather than dropped. Postgres must be able to store it as
  jsonb: no NUL and no lone surrogate in any key or string, no NaN or Infinity.

Limits that bound the work a hostile record can cause, checked before or while parsing: a value of at
most ``MAX_RECORD_BYTES`` bytes, JSON nested at most ``MAX_JSON_DEPTH`` levels, integers of at most
``MAX_INT_DIGITS`` digits, numbers finite (``NaN``, ``Infinity`` and overflowing literals such as
``1e400`` are refused). A key given twice keeps its last value (as Postgres jsonb does); a leading
UTF-8 byte order mark is ignored.

A record that breaks a rule is dead-lettered with a reason code (see ``Rejection``); ``parse_record``
never raises, whatever the bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)
KNOWN_FIELDS = {"review_id", "text", "source", "created_at", "metadata"}
MAX_RECORD_BYTES = 1_536 * 1024  # above the reviews topic's 1 MB record limit, below the dead-letter topic's
MAX_JSON_DEPTH = 64  # nested objects/arrays, the top-level object included
MAX_INT_DIGITS = 4300  # Python's own int/str conversion limit (sys.get_int_max_str_digits)
_ESCAPE = re.compile(r"\\.", re.S)
_STRING = re.compile(r'"[^"]*"')  # once escapes are gone, every quote in valid JSON delimits a string
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


class NonFinite:
    """A number JSON cannot carry (NaN, Infinity, 1e400): parsed as this so that validation names the field."""

    def __init__(self, literal: str) -> None:
        self.literal = literal[:40]

    def __repr__(self) -> str:
        return f"non-finite number {self.literal}"


def _parse_int(literal: str) -> int:
    if len(literal) - literal.startswith("-") > MAX_INT_DIGITS:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(literal)


def _parse_float(literal: str) -> float | NonFinite:
    value = float(literal)
    return value if math.isfinite(value) else NonFinite(literal)


def _too_deep(text: str, limit: int) -> bool:
    """True when brackets outside strings nest deeper than ``limit`` (linear time, no recursion)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    if len(brackets) <= limit:
        return False
    depth = 0
    for c in brackets:
        depth += 1 if c in "[{" else -1
        if depth > limit:
            return True
    return False


def load_json(text: str) -> Any:
    """``json.loads`` within the limits above; raises ValueError (or RecursionError) when out of them."""
    if _too_deep(text, MAX_JSON_DEPTH):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=NonFinite)


def storage_problem(value: Any, where: str = "metadata") -> Rejection | None:
    """Why Postgres (jsonb) cannot store a parsed JSON value, or None. Iterative: any depth is safe here."""
    stack: list[tuple[str, Any, int]] = [(where, value, 1)]
    while stack:
        path, v, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return Rejection("validation_error", f"{path}: nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    return Rejection("validation_error", f"{path}: a key is not a string")
                problem = _string_problem(k)
                if problem is not None:
                    return Rejection(problem[0], f"{path}: a key {problem[1]}")
                stack.append((f"{path}.{k[:40]}", item, depth + 1))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(v))
        elif isinstance(v, str):
            problem = _string_problem(v)
            if problem is not None:
                return Rejection(problem[0], f"{path} {problem[1]}")
        elif isinstance(v, NonFinite) or isinstance(v, float) and not math.isfinite(v):
            return Rejection("validation_error", f"{path}: NaN and Infinity are not JSON numbers")
        elif not (v is None or isinstance(v, bool | int | float)):
            return Rejection("validation_error", f"{path}: {type(v).__name__} is not a JSON value")
    return None


def _string_problem(s: str) -> tuple[str, str] | None:
    """(reason, detail) when Postgres cannot store the string: NUL, or a lone surrogate (not UTF-8)."""
    if "\x00" in s:
        return "nul_character", "contains NUL (\\u0000)"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_unicode", "holds a lone surrogate (\\ud800-\\udfff)"
    return None


def describe(error: BaseException, limit: int = 500) -> str:
    """``Type: message`` of an exception, bounded, never raising (the message may come from hostile data)."""
    try:
        message = str(error)
    except Exception:
        message = "(unprintable)"
    return f"{type(error).__name__}: {message}"[:limit]


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
        if isinstance(v, NonFinite):
            raise ValueError("created_at must be a finite number")
        if isinstance(v, int | float):  # range first: fromtimestamp overflows on 1e20 or -1e308
            if not EARLIEST.timestamp() <= v <= (datetime.now(UTC) + FUTURE_SLACK).timestamp():
                raise ValueError(f"created_at {v!r:.40} is before 2000 or more than a day ahead")
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

    @classmethod
    def failure(cls, stage: str, error: BaseException) -> Rejection:
        """A record whose handling raised: the reason names the stage and the exception type."""
        return cls(f"{stage}_failed:{type(error).__name__}"[:120], describe(error))


@dataclass(frozen=True)
class ValidEvent:
    review_id: str
    text: str
    source: str
    created_at: datetime
    metadata: dict[str, Any]


def parse_record(record: RawRecord, max_text_chars: int, max_metadata_bytes: int,
                 max_record_bytes: int = MAX_RECORD_BYTES) -> ValidEvent | Rejection:
    """Judge one raw record. Never raises: anything unusable becomes a Rejection."""
    try:
        return _judge(record, max_text_chars, max_metadata_bytes, max_record_bytes)
    except Exception as e:  # a rule this module forgot: still one record's problem, never the worker's
        return Rejection.failure("judge", e)


def _judge(record: RawRecord, max_text_chars: int, max_metadata_bytes: int, max_record_bytes: int
           ) -> ValidEvent | Rejection:
    if not record.value:
        return Rejection("empty_message", "the record has no value")
    if len(record.value) > max_record_bytes:
        return Rejection("record_too_large", f"value is {len(record.value)} bytes; the limit is {max_record_bytes}")
    try:
        raw_text = record.value.decode("utf-8-sig")  # a leading BOM is ignored, as RFC 8259 allows
    except UnicodeDecodeError as e:
        return Rejection("invalid_utf8", f"value is not UTF-8: {e}")
    try:
        obj = load_json(raw_text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError, so are the limits
        return Rejection("invalid_json", f"value is not JSON within the limits: {describe(e, 300)}")
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
        where = ".".join(str(p) for p in first["loc"])[:200] or "value"
        return Rejection("validation_error", f"{where}: {str(first['msg'])[:300]}")
    if len(event.text) > max_text_chars:
        return Rejection("text_too_long", f"text has {len(event.text)} characters; the limit is {max_text_chars}")
    # Postgres text/jsonb cannot hold NUL or lone surrogates (nor jsonb NaN): check all we store.
    for where, value in (("review_id", event.review_id), ("text", event.text), ("source", event.source)):
        problem = _string_problem(value) if value is not None else None
        if problem is not None:
            return Rejection(problem[0], f"{where} {problem[1]}")
    rejection = storage_problem(event.metadata)
    if rejection is not None:
        return rejection
    if event.metadata:  # most reviews carry none: no need to encode an empty object to measure it
        size = len(json.dumps(event.metadata, ensure_ascii=False).encode("utf-8"))
        if size > max_metadata_bytes:
            return Rejection("metadata_too_large", f"metadata is {size} bytes; the limit is {max_metadata_bytes}")
    created_at = event.created_at or _record_time(record.timestamp_ms)
    return ValidEvent(
        review_id=event.review_id or record.position,
        text=event.text,
        source=event.source,
        created_at=created_at,
        metadata=event.metadata,
    )


def _record_time(ts_ms: int | None) -> datetime:
    """The Kafka record's timestamp (set by the producer, so untrusted) when in range, else now."""
    now = datetime.now(UTC)
    if ts_ms is not None and EARLIEST.timestamp() * 1000 <= ts_ms <= (now + FUTURE_SLACK).timestamp() * 1000:
        return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return now
