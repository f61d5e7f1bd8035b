"""The dead-letter topic: every record the worker cannot label, byte for byte, with the reason.

A dead letter keeps the original record's key and value unchanged (so any Kafka tool can replay it)
and says why in headers: ``dlq.reason`` (a stable code), ``dlq.detail`` (what to fix),
``dlq.topic`` / ``dlq.partition`` / ``dlq.offset`` / ``dlq.timestamp_ms`` (where it came from) and
``dlq.failed_at_ms``. A replayed batch may dead-letter a record again: ``read_dead_letters`` keeps the
latest per source position.

Everything here may come from hostile data, so producing a dead letter cannot fail on it: headers are
bytes of bounded size, and a record too large for the dead-letter topic keeps its position, reason and
``dlq.value_bytes`` / ``dlq.value_sha256`` but not its value (it stays in the source topic).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream.events import RawRecord, Rejection

MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # the DLQ topic's limit: a source record at 1 MB plus headers fits
MAX_HEADER_CHARS = 2000  # per header value
_ROOM = MAX_MESSAGE_BYTES - 64 * 1024  # key + value must fit beside the headers and Kafka's own overhead


def _text(value: object, limit: int = MAX_HEADER_CHARS) -> bytes:
    """A header value: UTF-8 (lone surrogates replaced), at most ``limit`` characters, never raising."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:
        text = f"(unprintable {type(value).__name__})"
    return text[:limit].encode("utf-8", "replace")


@dataclass(frozen=True)
class DeadLetter:
    record: RawRecord  # the original record, byte for byte
    reason: str
    detail: str
    failed_at_ms: int

    @classmethod
    def of(cls, record: RawRecord, rejection: Rejection) -> DeadLetter:
        return cls(record, rejection.reason, rejection.detail, int(time.time() * 1000))

    @property
    def position(self) -> str:
        return self.record.position

    def raw_value(self) -> bytes | None:
        return self.record.value

    def key_and_value(self) -> tuple[bytes | None, bytes | None]:
        """The original key and value, or None for what would not fit the dead-letter topic."""
        key, value = self.record.key, self.record.value
        if len(key or b"") + len(value or b"") <= _ROOM:
            return key, value
        return (key if len(key or b"") <= _ROOM else None), None

    def headers(self) -> list[tuple[str, bytes]]:
        r = self.record
        fields: dict[str, object] = {
            "reason": self.reason, "detail": self.detail, "topic": r.topic, "partition": r.partition,
            "offset": r.offset, "timestamp_ms": r.timestamp_ms or "", "failed_at_ms": self.failed_at_ms}
        key, value = self.key_and_value()
        if key is None and r.key is not None:
            fields["key_bytes"] = len(r.key)
        if value is None and r.value is not None:
            fields.update(value_bytes=len(r.value), value_sha256=hashlib.sha256(r.value).hexdigest())
        return [(f"dlq.{k}", _text(v)) for k, v in fields.items()]

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> DeadLetter:
        h = {k.removeprefix("dlq."): v.decode("utf-8", "replace") for k, v in headers or [] if k.startswith("dlq.")}
        ts = int(h["timestamp_ms"]) if h.get("timestamp_ms") else None
        source = RawRecord(h.get("topic", "?"), int(h.get("partition", -1)), int(h.get("offset", -1)), ts, key, value)
        return cls(source, h.get("reason", "unknown"), h.get("detail", ""), int(h.get("failed_at_ms", 0)))


class DeadLetterWriter:
    """Synchronous: ``write`` returns only when the broker has every dead letter (acks=all)."""

    def __init__(self, topic: str, client_options: dict[str, object]) -> None:
        self.topic = topic
        self.producer = KafkaProducer(acks="all", linger_ms=5, max_request_size=MAX_MESSAGE_BYTES, **client_options)

    def write(self, letters: Iterable[DeadLetter], timeout_s: float = 30.0) -> int:
        futures = []
        for d in letters:
            key, value = d.key_and_value()
            futures.append(self.producer.send(self.topic, key=key, value=value, headers=d.headers()))
        self.producer.flush(timeout=timeout_s)
        for f in futures:
            f.get(timeout=timeout_s)  # raises the send's error, if any
        return len(futures)

    def close(self) -> None:
        self.producer.close(timeout=10)


def read_dead_letters(topic: str, client_options: dict[str, object], limit: int | None = None,
                      timeout_s: float = 10.0) -> list[DeadLetter]:
    """All dead letters in the topic (latest per source position), oldest first."""
    consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
                             max_partition_fetch_bytes=2 * MAX_MESSAGE_BYTES, **client_options)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        latest: dict[str, DeadLetter] = {}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    letter = DeadLetter.from_record(r.key, r.value, r.headers)
                    latest.pop(letter.position, None)
                    latest[letter.position] = letter
        letters = list(latest.values())
        return letters[-limit:] if limit else letters
    finally:
        consumer.close()
