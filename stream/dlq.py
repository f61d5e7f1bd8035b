"""The dead-letter topic: every record the worker cannot label, with the reason and where it came from.

Each dead letter is a JSON object keyed by the source position ``topic:partition:offset``, so a
replayed batch that dead-letters the same record again is recognisable (``read_dead_letters``
keeps the latest per key). The raw key and value are kept base64-encoded, byte for byte.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream.events import RawRecord, Rejection


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key_b64: str | None
    value_b64: str | None
    failed_at_ms: int

    @classmethod
    def of(cls, record: RawRecord, rejection: Rejection) -> DeadLetter:
        enc = lambda b: base64.b64encode(b).decode("ascii") if b is not None else None  # noqa: E731
        return cls(rejection.reason, rejection.detail, record.topic, record.partition, record.offset,
                   record.timestamp_ms, enc(record.key), enc(record.value), int(time.time() * 1000))

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    def raw_value(self) -> bytes | None:
        return base64.b64decode(self.value_b64) if self.value_b64 is not None else None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode("utf-8")


class DeadLetterWriter:
    """Synchronous: ``write`` returns only when the broker has every dead letter (acks=all)."""

    def __init__(self, topic: str, client_options: dict[str, object]) -> None:
        self.topic = topic
        self.producer = KafkaProducer(acks="all", linger_ms=5, **client_options)

    def write(self, letters: Iterable[DeadLetter], timeout_s: float = 30.0) -> int:
        futures = [self.producer.send(self.topic, key=d.position.encode(), value=d.to_bytes()) for d in letters]
        self.producer.flush(timeout=timeout_s)
        for f in futures:
            f.get(timeout=timeout_s)  # raises the send's error, if any
        return len(futures)

    def close(self) -> None:
        self.producer.close(timeout=10)


def read_dead_letters(topic: str, client_options: dict[str, object], limit: int | None = None,
                      timeout_s: float = 10.0) -> list[DeadLetter]:
    """All dead letters in the topic (latest per source position), oldest first."""
    consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **client_options)
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
                    letter = DeadLetter(**json.loads(r.value))
                    latest.pop(letter.position, None)
                    latest[letter.position] = letter
        letters = list(latest.values())
        return letters[-limit:] if limit else letters
    finally:
        consumer.close()
