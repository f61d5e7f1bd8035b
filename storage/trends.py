"""Sentiment-trend counters in Redis, counted exactly once per review.

Key layout (any Redis client can read it; ``P`` is the key prefix, ``sentiment`` by default; times
are the review's ``created_at`` in UTC):

- ``P:m:YYYYMMDDHHMM`` and ``P:h:YYYYMMDDHH``: hashes, one per minute / hour bucket. Field
  ``<label>`` counts all sources; field ``src:<source>:<label>`` counts one source (split the
  field on its last ``:`` to get the label). Labels: negative, neutral, positive. Hour hashes also
  hold ``conf_sum``, the sum of the labels' probabilities (mean confidence = conf_sum / reviews).
- ``P:seen:YYYYMMDDHH``: set of the review ids already counted in that hour, so a replayed batch
  adds nothing.
- ``P:drift:h``: hash ``YYYYMMDDHH`` -> the drift score of that hour as JSON (``stream.drift``), and
  ``P:drift:reference``: the reference it was measured against (model version and its profile).

Every key expires (``EXPIREAT``) a fixed time after its bucket ends: minute buckets after
``minute_ttl_s``, hour buckets and seen-sets after ``hour_ttl_s``. A review whose hour bucket has
already expired is not counted; Postgres keeps it regardless.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from sentiment_model.labels import LABELS
from storage.reviews import StoredLabel

# KEYS: per review, (seen set, hour hash, minute hash). ARGV: per review, (id, label, source field,
# hour expire-at, minute expire-at or 0, probability). One script per batch: counted atomically.
_COUNT_SCRIPT = """
local counted = 0
for i = 0, (#KEYS / 3) - 1 do
  local seen, hour, minute = KEYS[i*3+1], KEYS[i*3+2], KEYS[i*3+3]
  local id, label, src = ARGV[i*6+1], ARGV[i*6+2], ARGV[i*6+3]
  local hour_exp, minute_exp, prob = ARGV[i*6+4], ARGV[i*6+5], ARGV[i*6+6]
  if redis.call('SADD', seen, id) == 1 then
    redis.call('EXPIREAT', seen, hour_exp)
    redis.call('HINCRBY', hour, label, 1)
    redis.call('HINCRBY', hour, src, 1)
    redis.call('HINCRBYFLOAT', hour, 'conf_sum', prob)
    redis.call('EXPIREAT', hour, hour_exp)
    if minute_exp ~= '0' then
      redis.call('HINCRBY', minute, label, 1)
      redis.call('HINCRBY', minute, src, 1)
      redis.call('EXPIREAT', minute, minute_exp)
    end
    counted = counted + 1
  end
end
return counted
"""

MINUTE, HOUR = "m", "h"
_FORMATS = {MINUTE: "%Y%m%d%H%M", HOUR: "%Y%m%d%H"}
_STEPS = {MINUTE: timedelta(minutes=1), HOUR: timedelta(hours=1)}


def bucket_start(ts: datetime, resolution: str) -> datetime:
    ts = ts.astimezone(UTC)
    return ts.replace(second=0, microsecond=0) if resolution == MINUTE else ts.replace(
        minute=0, second=0, microsecond=0
    )


def bucket_key(prefix: str, resolution: str, start: datetime) -> str:
    return f"{prefix}:{resolution}:{start.strftime(_FORMATS[resolution])}"


@dataclass(frozen=True)
class TrendBucket:
    start: datetime
    counts: dict[str, int]  # label -> reviews
    confidence_sum: float = 0.0  # hour buckets only: sum of the labels' probabilities

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def share(self, label: str) -> float:
        return self.counts.get(label, 0) / self.total if self.total else 0.0

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.total if self.total else None


class TrendCounters:
    def __init__(self, client: redis.Redis, prefix: str = "sentiment", minute_ttl_s: int = 48 * 3600,
                 hour_ttl_s: int = 35 * 24 * 3600) -> None:
        self.client = client
        self.prefix = prefix
        self.minute_ttl_s = minute_ttl_s
        self.hour_ttl_s = hour_ttl_s
        self._script = client.register_script(_COUNT_SCRIPT)

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> TrendCounters:
        return cls(redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5), **kwargs)

    def count(self, rows: Sequence[StoredLabel], now: datetime | None = None) -> int:
        """Count each stored review once; returns how many were new to the counters."""
        now_ts = int((now or datetime.now(UTC)).timestamp())
        keys: list[str] = []
        args: list[str | int] = []
        for row in rows:
            hour = bucket_start(row.created_at, HOUR)
            hour_exp = int((hour + _STEPS[HOUR]).timestamp()) + self.hour_ttl_s
            if hour_exp <= now_ts:
                continue  # older than the retention window
            minute = bucket_start(row.created_at, MINUTE)
            minute_exp = int((minute + _STEPS[MINUTE]).timestamp()) + self.minute_ttl_s
            keys += [
                f"{self.prefix}:seen:{hour.strftime(_FORMATS[HOUR])}",
                bucket_key(self.prefix, HOUR, hour),
                bucket_key(self.prefix, MINUTE, minute),
            ]
            args += [row.review_id, row.label, f"src:{row.source}:{row.label}", hour_exp,
                     minute_exp if minute_exp > now_ts else 0, repr(float(row.score))]
        return int(self._script(keys=keys, args=args)) if keys else 0

    def read(self, resolution: str, buckets: int, source: str | None = None,
             end: datetime | None = None) -> list[TrendBucket]:
        """The last ``buckets`` buckets up to ``end`` (default now), oldest first, zeros included."""
        last = bucket_start(end or datetime.now(UTC), resolution)
        starts = [last - _STEPS[resolution] * i for i in reversed(range(buckets))]
        pipe = self.client.pipeline(transaction=False)
        for start in starts:
            pipe.hgetall(bucket_key(self.prefix, resolution, start))
        result = []
        for start, raw in zip(starts, pipe.execute(), strict=True):
            fields = {k.decode(): v for k, v in raw.items()}
            confidence_sum = float(fields.pop("conf_sum", 0.0))
            confidence = confidence_sum if source is None else 0.0
            fields = {k: int(v) for k, v in fields.items()}
            if source is None:
                counts = {label: fields.get(label, 0) for label in LABELS}
            else:
                counts = {label: fields.get(f"src:{source}:{label}", 0) for label in LABELS}
            result.append(TrendBucket(start, counts, confidence))
        return result

    def hour(self, start: datetime) -> TrendBucket:
        """One hour bucket (all sources), by the hour it starts."""
        return self.read(HOUR, 1, end=start)[0]

    def save_drift(self, hour: datetime, score: dict[str, Any], reference: dict[str, Any]) -> None:
        """Keep an hour's drift score and the reference it was measured against (read by CLI and dashboard)."""
        key = f"{self.prefix}:drift:h"
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, bucket_start(hour, HOUR).strftime(_FORMATS[HOUR]), json.dumps(score))
        pipe.expire(key, self.hour_ttl_s)
        pipe.set(f"{self.prefix}:drift:reference", json.dumps(reference), ex=self.hour_ttl_s)
        pipe.execute()

    def read_drift(self, hours: int, end: datetime | None = None) -> list[tuple[datetime, dict[str, Any] | None]]:
        """The drift scores of the last ``hours`` hours, oldest first (None: no score for that hour)."""
        last = bucket_start(end or datetime.now(UTC), HOUR)
        starts = [last - _STEPS[HOUR] * i for i in reversed(range(hours))]
        raw = self.client.hmget(f"{self.prefix}:drift:h", [s.strftime(_FORMATS[HOUR]) for s in starts])
        return [(s, json.loads(v) if v else None) for s, v in zip(starts, raw, strict=True)]

    def drift_reference(self) -> dict[str, Any] | None:
        raw = self.client.get(f"{self.prefix}:drift:reference")
        return json.loads(raw) if raw else None

    def sources(self, resolution: str, buckets: int) -> list[str]:
        """Sources seen in the last buckets (from the hash fields; no extra index to keep bounded)."""
        found: set[str] = set()
        last = bucket_start(datetime.now(UTC), resolution)
        for i in range(buckets):
            key = bucket_key(self.prefix, resolution, last - _STEPS[resolution] * i)
            for name in self.client.hkeys(key):
                name = name.decode()
                if name.startswith("src:"):
                    found.add(name[4:].rsplit(":", 1)[0])
        return sorted(found)
