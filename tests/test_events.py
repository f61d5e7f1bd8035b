"""The wire format's rules: what is accepted, what is dead-lettered and with which reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from stream.events import RawRecord, Rejection, ValidEvent, parse_record


def judge(value: bytes | None, offset: int = 7, ts_ms: int | None = 1_700_000_000_000) -> ValidEvent | Rejection:
    return parse_record(RawRecord("reviews", 1, offset, ts_ms, None, value), max_text_chars=1000,
                        max_metadata_bytes=200)


def j(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_minimal_event_gets_derived_id_source_and_time() -> None:
    event = judge(j({"text": "  works  "}))
    assert isinstance(event, ValidEvent)
    assert event.review_id == "reviews:1:7"  # replaying the same record maps to the same id
    assert event.text == "  works  "  # stored as sent
    assert event.source == "unknown"
    assert event.created_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_full_event_and_unknown_fields_kept_in_metadata() -> None:
    event = judge(j({"review_id": 42, "text": "ok", "source": " app ", "created_at": "2026-01-02T03:04:05+01:00",
                     "metadata": {"stars": 4}, "lang": "en"}))
    assert isinstance(event, ValidEvent)
    assert (event.review_id, event.source) == ("42", "app")
    assert event.created_at == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert event.metadata == {"stars": 4, "lang": "en"}


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (None, "empty_message", "no value"),
        (b"", "empty_message", "no value"),
        (b"\xff\xfe{", "invalid_utf8", "not UTF-8"),
        (b'{"text": "x"', "invalid_json", "not JSON"),
        (b'"just a string"', "not_an_object", "str"),
        (b"[1, 2]", "not_an_object", "list"),
        (j({}), "validation_error", "text"),
        (j({"text": ""}), "validation_error", "text"),
        (j({"text": " \n\t "}), "validation_error", "text is empty"),
        (j({"text": 5}), "validation_error", "text"),
        (j({"text": None}), "validation_error", "text"),
        (j({"text": ["a"]}), "validation_error", "text"),
        (j({"text": "x", "review_id": True}), "validation_error", "review_id"),
        (j({"text": "x", "review_id": 1.5}), "validation_error", "review_id"),
        (j({"text": "x", "review_id": ""}), "validation_error", "review_id"),
        (j({"text": "x", "review_id": "r" * 257}), "validation_error", "review_id"),
        (j({"text": "x", "source": 3}), "validation_error", "source"),
        (j({"text": "x", "source": "s" * 65}), "validation_error", "source"),
        (j({"text": "x", "created_at": "yesterday"}), "validation_error", "created_at"),
        (j({"text": "x", "created_at": "1999-12-31T00:00:00Z"}), "validation_error", "created_at"),
        (j({"text": "x", "created_at": "2999-01-01T00:00:00Z"}), "validation_error", "created_at"),
        (j({"text": "x", "created_at": True}), "validation_error", "created_at"),
        (j({"text": "x", "metadata": [1]}), "validation_error", "metadata"),
        (j({"text": "x", "metadata": "s", "extra": 1}), "validation_error", "metadata"),
        (j({"text": "x" * 1001}), "text_too_long", "1001"),
        (j({"text": "a\x00b"}), "nul_character", "NUL"),
        (j({"text": "ok", "metadata": {"k": "\x00"}}), "nul_character", "NUL"),
        (b'{"text": "\\ud800"}', "validation_error", "text"),
        (j({"text": "x", "metadata": {"blob": "y" * 300}}), "metadata_too_large", "200"),
        (b"{" * 100_000, "invalid_json", "not JSON"),
        # issue 13's reproductions: each used to raise out of parse_record or later, at insert
        (j({"text": "x", "created_at": -1e308}), "validation_error", "created_at"),
        (j({"text": "x", "created_at": 1e20}), "validation_error", "created_at"),
        (b'{"text": "x", "review_id": ' + b"7" * 4301 + b"}", "invalid_json", "4300 digits"),
        (b'{"text": "x", "metadata": {"n": -' + b"7" * 4301 + b"}}", "invalid_json", "4300 digits"),
        (b'{"text": "x", "metadata": ' + b'{"a":' * 500 + b"1" + b"}" * 501, "invalid_json", "64 levels"),
        # what Postgres jsonb or Redis cannot take, and the limits
        (b'{"text": "x", "metadata": {"a": NaN}}', "validation_error", "NaN"),
        (b'{"text": "x", "stars": -Infinity}', "validation_error", "NaN"),
        (b'{"text": "x", "stars": 1e400}', "validation_error", "NaN"),
        (b'{"text": "x", "created_at": Infinity}', "validation_error", "finite"),
        (b'{"text": NaN}', "validation_error", "text"),
        (b'{"text": "x", "metadata": {"k\\u0000": 1}}', "nul_character", "key"),
        (b'{"text": "x", "metadata": {"a": [{"b": "\\u0000"}]}}', "nul_character", "metadata.a[0].b"),
        (b'{"text": "x", "metadata": {"\\udfff": 1}}', "invalid_unicode", "surrogate"),
        (b'{"text": "x", "metadata": {"k": ["\\udc80"]}}', "invalid_unicode", "surrogate"),
        (b'{"text": "x", "source": "\\ud800"}', "validation_error", "source"),
        (b'{"text": "\xed\xa0\x80"}', "invalid_utf8", "not UTF-8"),
        (b'[' * 65 + b"]" * 65, "invalid_json", "64 levels"),
        (b'"\\' * 100_000, "invalid_json", "not JSON"),
        (b" " * (1536 * 1024 + 1), "record_too_large", "1572864"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(value: bytes | None, reason: str, detail: str) -> None:
    judged = judge(value)
    assert isinstance(judged, Rejection), judged
    assert judged.reason == reason
    assert detail in judged.detail


def test_hostile_but_valid_text_is_kept_byte_for_byte() -> None:
    text = "'; DROP TABLE review_sentiment; -- $(rm -rf /) `id` \u202e\x07 emoji 🚀 \\n"
    event = judge(j({"text": text, "source": "'; --"}))
    assert isinstance(event, ValidEvent)
    assert event.text == text


@pytest.mark.parametrize(
    "value",
    [
        j({"text": "\\u0000 is six characters, not a NUL"}),
        b'{"text": "first", "text": "last"}',
        j({"text": "x", "metadata": {"k" * 10_000: None}}),
        j({"text": "x", "metadata": {"n": int("8" * 4300)}}),
        b'{"text": "x", "metadata": ' + b'{"a":' * 62 + b"1" + b"}" * 63,  # 64 levels in all
        j({"text": "\x01\x02\x1b[31m\x7f"}),
        b'\xef\xbb\xbf{"text": "x"}',
    ],
    ids=["literal backslash-u0000", "duplicated key", "long key", "4300 digits", "64 levels", "control chars",
         "byte order mark"],
)
def test_odd_but_valid_records_are_accepted(value: bytes) -> None:
    judged = parse_record(RawRecord("reviews", 1, 7, None, None, value), max_text_chars=1000,
                          max_metadata_bytes=20_000)
    assert isinstance(judged, ValidEvent), judged
    if b"first" in value:
        assert judged.text == "last"  # as Postgres jsonb does


@pytest.mark.parametrize("ts_ms", [None, -1, 0, 1, 2**62, -(2**62), 10**18])
def test_a_hostile_record_timestamp_never_breaks_the_default_time(ts_ms: int | None) -> None:
    event = judge(j({"text": "x"}), ts_ms=ts_ms)
    assert isinstance(event, ValidEvent)
    assert datetime(2000, 1, 1, tzinfo=UTC) <= event.created_at <= datetime.now(UTC)


def test_an_exception_inside_the_rules_is_this_records_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety net: should a rule ever raise, the record is rejected naming the exception, never the worker."""
    import stream.events as events

    def broken(*_: object) -> None:
        raise OverflowError("date value out of range")

    monkeypatch.setattr(events, "_record_time", broken)
    judged = judge(j({"text": "x"}))
    assert judged == Rejection("judge_failed:OverflowError", "OverflowError: date value out of range")
