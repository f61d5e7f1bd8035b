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
