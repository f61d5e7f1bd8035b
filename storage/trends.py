"""Sentiment-trend counters in Redis, counted exactly once per review, in bounded memory.

Key layout (any Redis client can read it; ``P`` is the key prefix, ``sentiment`` by default; times
are the review's ``created_at`` in UTC; ``{H}`` is the hour ``{YYYYMMDDHH}``, braces included):

- ``P:{H}:h`` and ``P:{H}:m:MM``: hashes, one per hour / per minute ``MM`` of that hour. Field
  ``<label>`` counts all sources; field ``src:<source>:<label>`` counts one source (split the field
  on its last ``:`` to get the label). Labels: negative, neutral, positive. Hour hashes also hold
  ``conf_sum``, the sum of the labels' probabilities (mean confidence = conf_sum / reviews).
- ``P:{H}:h:src`` and ``P:{H}:m:MM:src``: sets, the sources counted by name in that bucket: at most
  ``max_sources``; later new sources count under ``overflow_source`` (also a member), so a bucket
  holds a bounded number of fields and the label totals stay exact.
- ``P:{H}:seen:<n>``: sets of the reviews already counted in that hour, as the signed 64-bit integer
  of the id's 8-byte BLAKE2b digest, in shard ``n = digest mod seen_shards``. Small integer sets are
  Redis intsets (8 bytes a member) while a shard holds at most ``set-max-intset-entries`` (512).
- ``P:{drift}:h``: hash ``YYYYMMDDHH`` -> the drift score of that hour as JSON (``stream.drift``), and
  ``P:{drift}:reference``: the reference it was measured against (model version and its profile).

The braces are Redis Cluster hash tags: every key of one hour lives in one hash slot, so the counting
script (one call per hour of a batch) works on a cluster as on one server.

Expiry (``EXPIREAT``, a fixed time after the bucket ends): minute keys after ``minute_ttl_s``, hour
keys after ``hour_ttl_s``, seen shards after ``seen_ttl_s``. A review is counted only while both its
hour hash and its hour's seen shards live (``min(hour_ttl_s, seen_ttl_s)`` after its hour ends); past
that Postgres keeps it regardless. So an id counted once is remembered for as long as it can be
counted again: exactly once holds whatever the TTLs; ``seen_ttl_s`` >= the reviews topic's retention
makes every review the worker can still read count.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.cluster import RedisCluster

from sentiment_model.labels import LABELS
from storage.reviews import StoredLabel

# One call per hour bucket: every key shares the hour's hash tag (one slot).
# KEYS: hour hash, hour sources, then per minute (hash, sources), then the seen shards.
# ARGV: hour expire-at, seen expire-at, source cap, overflow name, minute count M, M minute expire-ats,
# then per review: digest, seen key index, minute number (0: minute not counted), label, source, probability.
# The first write is the SADD: a server over maxmemory refuses the script there, before it changed anything.
# An hour past its seen-sets' expiry (by the server's clock) counts nothing: its ids may be forgotten.
_COUNT_SCRIPT = """
local hour_exp, seen_exp, cap, overflow = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local minutes = tonumber(ARGV[5])
local now = tonumber(redis.call('TIME')[1])  -- the server's clock decides expiry, not the worker's
if now >= tonumber(hour_exp) or now >= tonumber(seen_exp) then return 0 end
local expiring = {}
local function expire(key, at)
  if not expiring[key] then
    redis.call('EXPIREAT', key, at)
    expiring[key] = true
  end
end
local function add(hash, sources, at, label, source)
  local name = source
  if redis.call('SISMEMBER', sources, source) == 0 then
    if redis.call('SCARD', sources) >= cap then name = overflow end
    redis.call('SADD', sources, name)
    expire(sources, at)
  end
  redis.call('HINCRBY', hash, label, 1)
  redis.call('HINCRBY', hash, 'src:' .. name .. ':' .. label, 1)
  expire(hash, at)
end
local counted = 0
for i = 5 + minutes, #ARGV - 1, 6 do
  local seen = KEYS[tonumber(ARGV[i + 2])]
  if redis.call('SADD', seen, ARGV[i + 1]) == 1 then
    expire(seen, seen_exp)
    local label, source, m = ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 3])
    add(KEYS[1], KEYS[2], hour_exp, label, source)
    redis.call('HINCRBYFLOAT', KEYS[1], 'conf_sum', ARGV[i + 6])
    if m > 0 then add(KEYS[1 + 2 * m], KEYS[2 + 2 * m], ARGV[5 + m], label, source) end
    counted = counted + 1
  end
end
return counted
"""

MINUTE, HOUR = "m", "h"
_STEPS = {MINUTE: timedelta(minutes=1), HOUR: timedelta(hours=1)}
Client = redis.Redis | RedisCluster


def bucket_start(ts: datetime, resolution: str) -> datetime:
    ts = ts.astimezone(UTC)
    return ts.replace(second=0, microsecond=0) if resolution == MINUTE else ts.replace(
        minute=0, second=0, microsecond=0
    )


def hour_tag(prefix: str, start: datetime) -> str:
    """``P:{YYYYMMDDHH}``: the start of every key of that hour (the braces pick its cluster slot)."""
    return f"{prefix}:{{{start.astimezone(UTC):%Y%m%d%H}}}"


def bucket_key(prefix: str, resolution: str, start: datetime) -> str:
    """The counters' hash of the bucket that starts at ``start``."""
    tag = hour_tag(prefix, start)
    return f"{tag}:h" if resolution == HOUR else f"{tag}:m:{start.astimezone(UTC):%M}"


def id_digest(review_id: str) -> int:
    """The id's 8-byte BLAKE2b digest as a signed 64-bit integer (what the seen shards hold)."""
    digest = hashlib.blake2b(review_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


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
    def __init__(self, client: Client, prefix: str = "sentiment", minute_ttl_s: int = 48 * 3600,
                 hour_ttl_s: int = 35 * 24 * 3600, seen_ttl_s: int = 8 * 24 * 3600, seen_shards: int = 8192,
                 max_sources: int = 1000, overflow_source: str = "(other)") -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"Redis key prefix {prefix!r} must not contain braces (they mark cluster hash tags)")
        self.client = client
        self.prefix = prefix
        self.minute_ttl_s = minute_ttl_s
        self.hour_ttl_s = hour_ttl_s
        self.seen_ttl_s = seen_ttl_s
        self.seen_shards = seen_shards
        self.max_sources = max_sources
        self.overflow_source = overflow_source
        self._script = client.register_script(_COUNT_SCRIPT)

    @classmethod
    def from_url(cls, url: str, cluster: bool = False, **kwargs: Any) -> TrendCounters:
        """A client for one server, or (``cluster``) for the Redis Cluster that ``url``'s node belongs to."""
        options = {"socket_timeout": 10, "socket_connect_timeout": 5}
        client = RedisCluster.from_url(url, **options) if cluster else redis.Redis.from_url(url, **options)
        return cls(client, **kwargs)

    def count(self, rows: Sequence[StoredLabel], now: datetime | None = None) -> int:
        """Count each stored review once; returns how many were new to the counters.

        One script per hour of the batch: a failure part-way leaves the hours already done counted, and
        the retry of the whole batch adds nothing for them (their ids are in the seen shards)."""
        now_ts = int((now or datetime.now(UTC)).timestamp())
        by_hour: dict[datetime, list[StoredLabel]] = {}
        for row in rows:
            by_hour.setdefault(bucket_start(row.created_at, HOUR), []).append(row)
        return sum(self._count_hour(hour, group, now_ts) for hour, group in by_hour.items())

    def _count_hour(self, hour: datetime, rows: list[StoredLabel], now_ts: int) -> int:
        end = int((hour + _STEPS[HOUR]).timestamp())
        if min(self.hour_ttl_s, self.seen_ttl_s) + end <= now_ts:
            return 0  # older than the retention window
        tag = hour_tag(self.prefix, hour)
        minutes: dict[datetime, int] = {}  # minute start -> its number in this call (1..M)
        shards: dict[int, int] = {}  # seen shard -> its position among the seen keys
        reviews = []
        for row in rows:
            minute = bucket_start(row.created_at, MINUTE)
            m = 0
            if int((minute + _STEPS[MINUTE]).timestamp()) + self.minute_ttl_s > now_ts:
                m = minutes.setdefault(minute, len(minutes) + 1)
            digest = id_digest(row.review_id)
            shard = shards.setdefault(digest % self.seen_shards, len(shards))
            reviews.append((digest, shard, m, row.label, row.source, repr(float(row.score))))
        keys = [f"{tag}:h", f"{tag}:h:src"]
        for minute in minutes:
            keys += [bucket_key(self.prefix, MINUTE, minute), f"{bucket_key(self.prefix, MINUTE, minute)}:src"]
        first_seen = len(keys) + 1  # Lua indexes from 1
        keys += [f"{tag}:seen:{n}" for n in shards]
        args: list[str | int] = [end + self.hour_ttl_s, end + self.seen_ttl_s, self.max_sources,
                                 self.overflow_source, len(minutes)]
        args += [int((minute + _STEPS[MINUTE]).timestamp()) + self.minute_ttl_s for minute in minutes]
        for digest, shard, m, label, source, prob in reviews:
            args += [digest, first_seen + shard, m, label, source, prob]
        return int(self._script(keys=keys, args=args))

    def _starts(self, resolution: str, buckets: int, end: datetime | None) -> list[datetime]:
        last = bucket_start(end or datetime.now(UTC), resolution)
        return [last - _STEPS[resolution] * i for i in reversed(range(buckets))]

    def read(self, resolution: str, buckets: int, source: str | None = None,
             end: datetime | None = None) -> list[TrendBucket]:
        """The last ``buckets`` buckets up to ``end`` (default now), oldest first, zeros included."""
        starts = self._starts(resolution, buckets, end)
        fields = [*LABELS, "conf_sum"] if source is None else [f"src:{source}:{label}" for label in LABELS]
        pipe = self.client.pipeline(transaction=False)
        for start in starts:
            pipe.hmget(bucket_key(self.prefix, resolution, start), fields)  # a few fields, however many sources
        result = []
        for start, values in zip(starts, pipe.execute(), strict=True):
            counts = {label: int(v or 0) for label, v in zip(LABELS, values, strict=False)}
            confidence = float(values[3] or 0.0) if source is None else 0.0
            result.append(TrendBucket(start, counts, confidence))
        return result

    def hour(self, start: datetime) -> TrendBucket:
        """One hour bucket (all sources), by the hour it starts."""
        return self.read(HOUR, 1, end=start)[0]

    def sources(self, resolution: str, buckets: int, end: datetime | None = None) -> list[str]:
        """Sources counted by name in the hours the last buckets fall in: at most ``max_sources`` + the
        overflow name per hour, so a minute view lists at most a few hours' worth."""
        hours = sorted({bucket_start(s, HOUR) for s in self._starts(resolution, buckets, end)})
        pipe = self.client.pipeline(transaction=False)
        for start in hours:
            pipe.smembers(f"{bucket_key(self.prefix, HOUR, start)}:src")
        return sorted({name.decode() for members in pipe.execute() for name in members})

    def _drift_key(self, name: str) -> str:
        return f"{self.prefix}:{{drift}}:{name}"

    def save_drift(self, hour: datetime, score: dict[str, Any], reference: dict[str, Any]) -> None:
        """Keep an hour's drift score and the reference it was measured against (read by CLI and dashboard)."""
        key = self._drift_key("h")
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, f"{bucket_start(hour, HOUR):%Y%m%d%H}", json.dumps(score))
        pipe.expire(key, self.hour_ttl_s)
        pipe.set(self._drift_key("reference"), json.dumps(reference), ex=self.hour_ttl_s)
        pipe.execute()

    def read_drift(self, hours: int, end: datetime | None = None) -> list[tuple[datetime, dict[str, Any] | None]]:
        """The drift scores of the last ``hours`` hours, oldest first (None: no score for that hour)."""
        starts = self._starts(HOUR, hours, end)
        raw = self.client.hmget(self._drift_key("h"), [f"{s:%Y%m%d%H}" for s in starts])
        return [(s, json.loads(v) if v else None) for s, v in zip(starts, raw, strict=True)]

    def drift_reference(self) -> dict[str, Any] | None:
        raw = self.client.get(self._drift_key("reference"))
        return json.loads(raw) if raw else None
