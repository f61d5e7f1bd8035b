"""Property-based tests (Hypothesis) of the wire format: whatever the bytes, ``parse_record`` never raises,
whatever it accepts can be stored, and through the real sinks every record ends as exactly one row or one
dead letter."""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentiment_model.predictor import Predictor
from storage.db import get_engine
from stream.dlq import DeadLetterWriter
from stream.events import MAX_JSON_DEPTH, RawRecord, Rejection, ValidEvent, load_json, parse_record
from stream.pipeline import BatchProcessor, Retrier
from stream.services import trend_counters
from stream.settings import Settings
from tests.hostile import FIELDS, account, assert_redis_matches_rows

MAX_TEXT, MAX_META = 1000, 2048
NASTY = ["\x00", "\ud800", "\udfff", "\ufeff", "\u202e", "\\u0000", "\\", '"', "NaN", "Infinity"]

chars = st.characters(exclude_categories=()) | st.sampled_from([c for c in NASTY if len(c) == 1])
strings = st.text(chars, max_size=20) | st.sampled_from(
    [*FIELDS, *NASTY, "", " ", "\t\n", "x" * 300, "2026-01-01T00:00:00Z"])
numbers = (st.integers() | st.integers(min_value=10**300, max_value=10**4299) | st.floats()
           | st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e20, -1e308, 1.7e9, 946684800]))
scalars = st.none() | st.booleans() | numbers | strings
deep = st.integers(0, 300).map(lambda d: json.loads("[" * d + "1" + "]" * d)) | st.integers(60, 70).map(
    lambda d: json.loads('{"a":' * d + "1" + "}" * d))
json_values = st.recursive(
    scalars | deep, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
    max_leaves=12)


def encode(value: Any, ascii_only: bool) -> bytes:
    """As a producer might send it: NaN allowed, lone surrogates escaped or raw (CESU-8 bytes)."""
    return json.dumps(value, allow_nan=True, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def base_event(n: int, prefix: str = "p") -> dict[str, Any]:
    return {"review_id": f"{prefix}-{n}", "text": f"review {n}", "source": "props", "metadata": {"n": n}}


def judge(value: bytes | None, key: bytes | None = None, ts: int | None = 1_700_000_000_000) -> ValidEvent | Rejection:
    judged = parse_record(RawRecord("reviews", 0, 9, ts, key, value), MAX_TEXT, MAX_META)
    assert isinstance(judged, ValidEvent | Rejection)
    return judged


def strings_in(value: Any) -> list[str]:
    """Every key and string of a JSON value (iterative: values may be deep)."""
    out, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            out += list(v)
            stack += list(v.values())
        elif isinstance(v, list):
            stack += v
        elif isinstance(v, str):
            out.append(v)
    return out


def leaves(value: Any) -> list[Any]:
    out, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict | list):
            stack += list(v.values()) if isinstance(v, dict) else v
        else:
            out.append(v)
    return out


def depth_of(value: Any) -> int:
    best, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            best = max(best, d)
            stack += [(c, d + 1) for c in (v.values() if isinstance(v, dict) else v)]
    return best


def assert_storable(event: ValidEvent) -> None:
    """What Postgres (text, jsonb) and Redis need of an accepted event, checked independently of events.py."""
    assert isinstance(event.review_id, str) and 1 <= len(event.review_id) <= 256
    assert isinstance(event.text, str) and event.text.strip() and len(event.text) <= MAX_TEXT
    assert isinstance(event.source, str) and 1 <= len(event.source) <= 64
    for s in [event.review_id, event.text, event.source, *strings_in(event.metadata)]:
        assert "\x00" not in s
        s.encode("utf-8")  # no lone surrogate
    encoded = json.dumps(event.metadata, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert isinstance(event.metadata, dict) and len(encoded) <= MAX_META
    assert depth_of(event.metadata) < MAX_JSON_DEPTH
    assert event.created_at.tzinfo is not None
    assert datetime(2000, 1, 1, tzinfo=UTC) <= event.created_at <= datetime.now(UTC) + timedelta(days=1, minutes=1)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.none() | st.binary(max_size=50), st.none() | st.integers(-(2**63), 2**63 - 1))
def test_arbitrary_bytes_key_and_timestamp_never_raise(value: bytes, key: bytes | None, ts: int | None) -> None:
    judged = judge(value, key, ts)
    if isinstance(judged, ValidEvent):
        assert_storable(judged)


@settings(max_examples=400, deadline=None)
@given(json_values, st.booleans())
def test_arbitrary_json_never_raises_and_what_is_accepted_is_storable(value: Any, ascii_only: bool) -> None:
    judged = judge(encode(value, ascii_only))
    if isinstance(judged, ValidEvent):
        assert_storable(judged)
    else:
        assert judged.reason and judged.detail and not judged.reason.startswith("judge_failed")


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(FIELDS), json_values, st.booleans(), st.integers(0, 10**6))
def test_valid_event_with_one_field_replaced_never_raises(field: str, value: Any, ascii_only: bool, n: int) -> None:
    event = base_event(n)
    event[field] = value
    judged = judge(encode(event, ascii_only))
    if isinstance(judged, ValidEvent):
        assert_storable(judged)
    else:
        assert not judged.reason.startswith("judge_failed"), judged  # a rule, not an accident, refused it


@settings(max_examples=400, deadline=None)
@given(st.text(st.sampled_from('{}[]",:\\ 0123456789-+.eEtrufalsnNI"y'), max_size=400))
def test_json_ish_text_never_raises_and_limits_agree_with_the_parser(text: str) -> None:
    judge(text.encode())
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return
    if depth_of(parsed) <= MAX_JSON_DEPTH and not any(isinstance(v, float) and not math.isfinite(v)
                                                       for v in leaves(parsed)):
        assert load_json(text) == parsed  # within the limits: exactly what json.loads gives


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.sampled_from(["[", '{"a":']), st.booleans())
def test_depth_limit_is_exact(depth: int, opener: str, in_metadata: bool) -> None:
    closer = "]" if opener == "[" else "}"
    inner = opener * depth + "1" + closer * depth
    raw = f'{{"text": "x", "metadata": {{"m": {inner}}}}}' if in_metadata else inner
    levels = depth + (2 if in_metadata else 0)
    judged = parse_record(RawRecord("reviews", 0, 1, None, None, raw.encode()), MAX_TEXT, 10**6)
    if levels > MAX_JSON_DEPTH:
        assert isinstance(judged, Rejection) and judged.reason in {"invalid_json", "validation_error"}
    elif in_metadata:
        assert isinstance(judged, ValidEvent), judged


# Through the real sinks: every record ends as exactly one row or one dead letter.
hostile_records = st.one_of(
    st.binary(max_size=200).map(lambda b: (None, b)),
    st.tuples(json_values, st.booleans()).map(lambda v: (b"k", encode(*v))),
    st.tuples(st.sampled_from(FIELDS), json_values, st.booleans()),
)


def test_every_record_ends_as_one_row_or_one_dead_letter(topics: Settings, uid: str, tiny_model: Path) -> None:
    s = topics
    proc = BatchProcessor(
        Predictor(tiny_model, device="cpu", threads=1), get_engine(s.postgres.url.get_secret_value()),
        trend_counters(s), DeadLetterWriter(s.kafka.dlq_topic, s.kafka.client_options()),
        max_text_chars=MAX_TEXT, max_metadata_bytes=MAX_META, retrier=Retrier(0.5, threading.Event()))
    offsets = itertools.count()
    sent: list[RawRecord] = []
    now_ms = int(time.time() * 1000)

    def to_record(drawn: tuple) -> RawRecord:
        n = next(offsets)
        if len(drawn) == 3:  # (field, value, ascii_only): a valid event with that field replaced
            name, value, ascii_only = drawn
            event = base_event(n, uid)
            event[name] = f"{uid}-{value}" if name == "review_id" and isinstance(value, str) else value
            return RawRecord(s.kafka.reviews_topic, 0, n, now_ms, b"k", encode(event, ascii_only))
        key, value = drawn
        return RawRecord(s.kafka.reviews_topic, 0, n, now_ms, key, value)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(hostile_records, min_size=1, max_size=6), st.integers(0, 3))
    def batch(drawn: list[tuple], valid: int) -> None:
        records = [to_record(d) for d in drawn]
        for _ in range(valid):  # valid neighbours: a hostile record must not take them down
            n = next(offsets)
            records.append(RawRecord(s.kafka.reviews_topic, 0, n, now_ms, None, encode(base_event(n, uid), True)))
        result = proc.process(records)
        assert result.labelled + result.dead_lettered == len(records)
        sent.extend(records)

    batch()
    outcome = account(s, sent)
    assert outcome.lost == [] and outcome.duplicated == [], outcome.figures()
    assert outcome.stored + outcome.dead_lettered == len(sent)
    assert not any(r.startswith("judge_failed") for r in outcome.reasons), outcome.reasons
    assert assert_redis_matches_rows(s, outcome.rows) >= 1
    print(f"real sinks: {outcome.figures()}, reasons {dict(outcome.reasons)}")
