"""Hostile records for the wire-format tests, and the accounting of what became of each record.

``CATALOG`` names attacks one by one (the reproductions of issue 13 among them); ``HostileGenerator``
draws many more from a seeded RNG (arbitrary bytes, arbitrary JSON, valid events with one field replaced
by an arbitrary JSON value, hostile record keys). ``account`` says, per record, whether it became a row,
a dead letter, both or neither, judged against the real Postgres, Kafka and Redis.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaProducer
from sqlalchemy import or_, select

from sentiment_model.labels import LABELS
from storage.db import get_engine
from storage.schema import review_sentiment as t
from stream.dlq import read_dead_letters
from stream.events import RawRecord, ValidEvent, parse_record
from stream.settings import Settings

FIELDS = ("review_id", "text", "source", "created_at", "metadata", "lang")


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


CATALOG: list[tuple[str, bytes]] = [
    # issue 13's reproductions
    ("created_at -1e308", b'{"text": "x", "created_at": -1e308}'),
    ("created_at 1e20", b'{"text": "x", "created_at": 1e20}'),
    ("id of 4,301 digits", b'{"text": "x", "review_id": ' + b"7" * 4301 + b"}"),
    ("metadata int of 5,000 digits", b'{"text": "x", "metadata": {"n": -' + b"9" * 5000 + b"}}"),
    ("metadata nested 500 levels", b'{"text": "x", "metadata": ' + nested(500).encode() + b"}"),
    # numbers JSON cannot carry, or Postgres jsonb refuses
    ("NaN in metadata", b'{"text": "x", "metadata": {"a": NaN}}'),
    ("Infinity in metadata", b'{"text": "x", "metadata": {"a": [1, -Infinity]}}'),
    ("1e400 in metadata", b'{"text": "x", "stars": 1e400}'),
    ("NaN created_at", b'{"text": "x", "created_at": NaN}'),
    ("Infinity created_at", b'{"text": "x", "created_at": Infinity}'),
    ("huge numeric string time", b'{"text": "x", "created_at": "99999999999999999999999"}'),
    ("float id", b'{"text": "x", "review_id": 1e300}'),
    # strings Postgres cannot store
    ("NUL in metadata key", b'{"text": "x", "metadata": {"k\\u0000": 1}}'),
    ("NUL deep in metadata", b'{"text": "x", "metadata": {"a": [{"b": "\\u0000"}]}}'),
    ("NUL in extra field", b'{"text": "x", "lang\\u0000": "en"}'),
    ("lone surrogate in text", b'{"text": "\\ud83d"}'),
    ("lone surrogate in metadata key", b'{"text": "x", "metadata": {"\\udfff": 1}}'),
    ("lone surrogate in metadata value", b'{"text": "x", "metadata": {"k": ["\\udc80"]}}'),
    ("lone surrogate in source", b'{"text": "x", "source": "\\ud800"}'),
    ("lone surrogate in id", b'{"text": "x", "review_id": "a\\udbff"}'),
    ("non-UTF-8 key bytes", b'{"text": "x", "metadata": {"\xff\xfe": 1}}'),
    ("CESU surrogate bytes", b'{"text": "\xed\xa0\x80"}'),
    # shapes
    ("deep arrays", b"[" * 50_000 + b"]" * 50_000),
    ("deep objects unterminated", b'{"a":' * 100_000),
    ("65 levels", nested(65).encode()),
    ("quote-escape bomb", b'"\\' * 200_000),
    ("metadata null", b'{"text": "x", "metadata": null}'),
    ("metadata list", b'{"text": "x", "metadata": []}'),
    ("all null", b'{"review_id": null, "text": null, "source": null, "created_at": null, "metadata": null}'),
    ("bool id", b'{"text": "x", "review_id": true}'),
    ("object text", b'{"text": {"$gt": ""}}'),
    ("text of control characters", b'{"text": "\\u0001\\u0002\\u001b\\u007f"}'),
    ("text of spaces", b'{"text": "\\u00a0\\u2003\\u3000"}'),
    ("huge metadata", json.dumps({"text": "x", "metadata": {"k": "v" * 17_000}}).encode()),
    ("many extra fields", json.dumps({"text": "x", **{f"f{i}": i for i in range(3000)}}).encode()),
    ("text too long", json.dumps({"text": "y" * 20_001}).encode()),
    ("900 KB text", json.dumps({"text": "z" * 900_000}).encode()),
    ("empty", b""),
    ("BOM then BOM then JSON", b'\xef\xbb\xbf\xef\xbb\xbf{"text": "x"}'),
    ("created_at before 2000", b'{"text": "x", "created_at": 946684799}'),
]

# Valid, however odd: each must become a row (byte for byte), never a dead letter.
CATALOG_VALID: list[tuple[str, dict[str, Any]]] = [
    ("literal backslash-u0000 in text", {"text": "\\u0000 is six characters"}),
    ("duplicated key keeps the last", {"text": "x"}),  # replaced by raw bytes in valid_catalog()
    ("very long metadata key", {"text": "x", "metadata": {"k" * 10_000: 1}}),
    ("null values in metadata", {"text": "x", "metadata": {"a": None, "b": [None, {}]}}),
    ("64 levels", {"text": "x", "metadata": json.loads(nested(63))}),
    ("int of 4,300 digits", {"text": "x", "metadata": {"n": int("8" * 4300)}}),
    ("control characters", {"text": "\x01\x02\x1b[31m\x7f bell\x07"}),
    ("emoji and RTL", {"text": "🚀 \u202e override", "source": "🚀"}),
    ("epoch float time", {"text": "x", "created_at": 1_700_000_000.5}),
    ("int id", {"text": "x", "review_id": 12345678901234567890}),
]


def valid_catalog(uid: str) -> list[tuple[str, bytes]]:
    out = []
    for i, (name, event) in enumerate(CATALOG_VALID):
        event = {**event, "review_id": event.get("review_id", f"{uid}-cv{i}")}
        if isinstance(event["review_id"], int):
            event["review_id"] = int(f"{int(uid, 16)}{i}")
        value = json.dumps(event, ensure_ascii=False).encode()
        if name.startswith("duplicated key"):
            value = json.dumps({"text": "first", "review_id": f"{uid}-cv{i}"}).encode()[:-1] + b', "text": "last"}'
        out.append((name, value))
    return out


class HostileGenerator:
    """Arbitrary records from a seeded RNG: reproducible, and far more varied than the catalog."""

    def __init__(self, seed: str, uid: str) -> None:
        self.rng = random.Random(seed)
        self.uid = uid
        self.n = 0

    def json_value(self, depth: int = 0) -> Any:
        r = self.rng
        kinds = ["null", "bool", "int", "bigint", "float", "special", "str", "nasty_str"]
        if depth < 4:
            kinds += ["list", "dict"] * 2
        kind = r.choice(kinds)
        if kind == "null":
            return None
        if kind == "bool":
            return r.random() < 0.5
        if kind == "int":
            return r.randint(-(2**70), 2**70)
        if kind == "bigint":
            return int(str(r.randint(1, 9)) + "0" * r.choice([20, 400, 4299]))  # longer ones: raw, below
        if kind == "float":
            return r.choice([0.0, -0.0, 1e308, -1e308, 5e-324, r.uniform(-1e9, 1e9), 1.7e9])
        if kind == "special":
            return r.choice([float("nan"), float("inf"), float("-inf")])
        if kind == "str":
            return "".join(chr(r.randint(32, 0x2FFF)) for _ in range(r.randint(0, 30)))
        if kind == "nasty_str":
            return r.choice(["", " ", "\x00", "a\x00b", "\ud800", "\udfff x", "\u0000\u0001", "\\u0000",
                             "\x1b[2J", "\u202e", "\ufeff", "' OR 1=1 --", "NaN", "Infinity", "1e400",
                             "2026-13-45T99:99:99Z", "9" * 300, "k" * 5000])
        if kind == "list":
            return [self.json_value(depth + 1) for _ in range(r.randint(0, 4))]
        return {self.key(): self.json_value(depth + 1) for _ in range(r.randint(0, 4))}

    def key(self) -> str:
        r = self.rng
        return r.choice([*FIELDS, "", "\x00", "k\x00", "\ud800", "a" * 3000, "src:x:positive", "conf_sum",
                         "".join(chr(r.randint(0, 0xFFFF)) for _ in range(r.randint(1, 8)))])

    def dumps(self, value: Any) -> bytes:
        """JSON text as a producer might send it (NaN allowed); lone surrogates escaped or raw-passed."""
        r = self.rng
        text = json.dumps(value, allow_nan=True, ensure_ascii=r.random() < 0.7)
        return text.encode("utf-8", "surrogatepass")

    def valid_event(self) -> dict[str, Any]:
        self.n += 1
        return {"review_id": f"{self.uid}-h{self.n}", "text": f"hostile neighbour {self.n}",
                "source": f"src-{self.uid}-h", "metadata": {"n": self.n}}

    def record(self) -> tuple[bytes | None, bytes]:
        """One hostile (key, value)."""
        r = self.rng
        kind = r.choice(["bytes", "json", "json", "replace", "replace", "replace", "mangle", "duplicate"])
        if kind == "bytes":
            value = r.randbytes(r.choice([0, 1, 2, 10, 100, 2000]))
        elif kind == "json":
            value = self.dumps(self.json_value())
        elif kind == "replace":  # a valid event with one field replaced by an arbitrary JSON value
            event = self.valid_event()
            name = r.choice(FIELDS)
            replacement = self.json_value()
            if name == "review_id" and isinstance(replacement, str):
                replacement = f"{self.uid}-{replacement}"  # no collision with other tests' rows
            event[name] = replacement
            value = self.dumps(event)
        elif kind == "mangle":  # a valid event with bytes flipped, cut or inserted
            raw = bytearray(self.dumps(self.valid_event()))
            for _ in range(r.randint(1, 3)):
                i = r.randrange(len(raw))
                op = r.choice(["flip", "cut", "insert"])
                if op == "flip":
                    raw[i] = r.randrange(256)
                elif op == "cut":
                    del raw[i:]
                    if not raw:
                        break
                else:
                    raw[i:i] = r.choice([b"[", b"{", b'"', b"\\", b"\x00", b"\xff", b"NaN", b"1e999"])
            value = bytes(raw)
        else:  # the same key twice, differently typed, or a number Python cannot even convert
            event = self.valid_event()
            name = r.choice(FIELDS)
            extra = self.dumps(self.json_value()) if r.random() < 0.7 else b"-" * r.randint(0, 1) + b"9" * 4301
            value = self.dumps(event)[:-1] + b', "' + name.encode() + b'": ' + extra + b"}"
        return self.record_key(), value

    def record_key(self) -> bytes | None:
        r = self.rng
        return r.choice([None, b"", b"\x00", b"\xff\xfe\xfd", r.randbytes(16), r.randbytes(100_000),
                         "ключ".encode(), b"k" * 300])


@dataclass
class Outcome:
    sent: int = 0
    stored: int = 0
    dead_lettered: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    rows: list[Any] = field(default_factory=list)
    by_position: dict[str, str] = field(default_factory=dict)  # row, dead letter, both, neither
    accounted_at: dict[str, float] = field(default_factory=dict)  # epoch s: the row's insert or the dead letter

    def figures(self) -> dict[str, int]:
        return {"sent": self.sent, "stored": self.stored, "dead_lettered": self.dead_lettered,
                "lost": len(self.lost), "duplicated": len(self.duplicated)}


def produce_with_positions(settings: Settings, records: list[tuple[bytes | None, bytes]],
                           timestamps: list[int | None] | None = None) -> list[RawRecord]:
    """Send the records in order; returns each as the worker will see it (topic, partition, offset)."""
    producer = KafkaProducer(acks="all", linger_ms=20, max_request_size=3_000_000,
                             **settings.kafka.client_options())
    try:
        futures = [producer.send(settings.kafka.reviews_topic, key=key, value=value,
                                 timestamp_ms=timestamps[i] if timestamps else None)
                   for i, (key, value) in enumerate(records)]
        producer.flush(120)
        out = []
        for (key, value), future in zip(records, futures, strict=True):
            m = future.get(timeout=60)
            out.append(RawRecord(m.topic, m.partition, m.offset, m.timestamp if m.timestamp > 0 else None,
                                 key, value))
        return out
    finally:
        producer.close()


def judge(settings: Settings, record: RawRecord) -> ValidEvent | None:
    judged = parse_record(record, settings.worker.max_text_chars, settings.worker.max_metadata_bytes)
    return judged if isinstance(judged, ValidEvent) else None


def account(settings: Settings, sent: list[RawRecord]) -> Outcome:
    """Per record: a row (by its review id), a dead letter (by its position), both, or neither.

    A record ``parse_record`` accepts must be exactly one of a row or a dead letter (Postgres may still
    refuse it); one it rejects must be a dead letter, and no row may come from its position."""
    out = Outcome(sent=len(sent))
    expected = {r.position: judge(settings, r) for r in sent}
    ids = {e.review_id for e in expected.values() if e is not None}
    engine = get_engine(settings.postgres.url.get_secret_value())
    cols = (t.c.review_id, t.c.kafka_topic, t.c.kafka_partition, t.c.kafka_offset, t.c.label, t.c.score,
            t.c.created_at, t.c.text, t.c.processed_at)
    mine = t.c.kafka_topic == settings.kafka.reviews_topic
    with engine.connect() as conn:
        rows = conn.execute(select(*cols).where(or_(t.c.review_id.in_(ids), mine) if ids else mine)).all()
    by_id = {r.review_id: r for r in rows}
    from_position = {f"{r.kafka_topic}:{r.kafka_partition}:{r.kafka_offset}" for r in rows}
    letters = {d.position: d for d in read_dead_letters(settings.kafka.dlq_topic, settings.kafka.client_options(),
                                                        timeout_s=60)}
    for record in sent:
        event = expected[record.position]
        row = event is not None and event.review_id in by_id
        if event is None and record.position in from_position:
            row = True  # stored although the rules reject it: counted as a duplicate below if also dead-lettered
        letter = letters.get(record.position)
        if letter is not None:
            out.reasons[letter.reason] += 1
        if row and letter is not None:
            out.duplicated.append(record.position)
            out.by_position[record.position] = "both"
        elif row:
            out.stored += 1
            out.by_position[record.position] = "row"
            if event is not None and event.review_id in by_id:
                out.accounted_at[record.position] = by_id[event.review_id].processed_at.timestamp()
        elif letter is not None:
            out.dead_lettered += 1
            out.by_position[record.position] = "dead letter"
            out.accounted_at[record.position] = letter.failed_at_ms / 1000
        else:
            out.lost.append(record.position)
            out.by_position[record.position] = "neither"
    out.rows = [r for r in rows if r.review_id in ids]
    return out


def assert_redis_matches_rows(settings: Settings, rows: list[Any], window: timedelta = timedelta(days=7)) -> int:
    """Redis's hour counters (all sources) equal the rows, hour by hour, for every hour the rows touch
    within ``window`` of now (older hours may have expired). Returns how many hours were compared."""
    from storage.trends import HOUR, bucket_start
    from stream.services import trend_counters

    counters = trend_counters(settings)
    now = datetime.now(UTC)
    hours: dict[datetime, list[Any]] = {}
    for r in rows:
        if now - window <= r.created_at <= now + timedelta(days=2):
            hours.setdefault(bucket_start(r.created_at, HOUR), []).append(r)
    for start, in_hour in hours.items():
        bucket = counters.hour(start)
        sql = Counter(r.label for r in in_hour)
        assert {label: bucket.counts.get(label, 0) for label in LABELS} == {lb: sql[lb] for lb in LABELS}, start
        assert abs(bucket.confidence_sum - sum(r.score for r in in_hour)) < 1e-3 * max(len(in_hour), 1), start
    return len(hours)
