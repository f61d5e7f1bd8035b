"""The trend counters stay bounded on a real Redis: seen-sets hold 8-byte digests and expire with the
Kafka retention, sources past the cap count under one overflow name, and a server over ``maxmemory``
refuses a batch whole (noeviction) so the retry still counts each review once."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentiment_model.labels import LABELS
from storage.reviews import StoredLabel
from storage.trends import HOUR, MINUTE, TrendCounters, bucket_key, bucket_start, hour_tag, id_digest
from tests.support import free_port

NOW = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=30, second=0, microsecond=0)  # a settled past hour


def counters(prefix: str, url: str, **kwargs: object) -> TrendCounters:
    return TrendCounters(redis.Redis.from_url(url), prefix=prefix, **kwargs)


def row(rid: str, source: str = "app", label: str = "positive", when: datetime = NOW) -> StoredLabel:
    return StoredLabel(rid, label, source, when, 0.75)


def test_seen_sets_hold_8_byte_digests_not_ids(uid: str, redis_url: str) -> None:
    c = counters(f"t-{uid}", redis_url, seen_shards=4, seen_ttl_s=7 * 24 * 3600)
    ids = [f"{uid}-{i:04d}-" + "x" * 240 for i in range(400)]  # 256-character ids
    assert c.count([row(i) for i in ids], now=NOW) == 400
    seen = sorted(c.client.scan_iter(f"{hour_tag(c.prefix, NOW)}:seen:*"))
    assert [k.decode().rsplit(":", 1)[1] for k in seen] == ["0", "1", "2", "3"]
    members = {int(m) for k in seen for m in c.client.smembers(k)}
    assert members == {id_digest(i) for i in ids}
    assert all(c.client.object("encoding", k) == b"intset" for k in seen)  # 8 bytes a member
    assert sum(c.client.memory_usage(k) for k in seen) < 400 * 8 + 4 * 200
    assert not any(uid.encode() in c.client.dump(k) for k in c.client.scan_iter(f"t-{uid}:*"))
    # expiry: hour end + seen TTL for the seen shards; the counters keep their own TTL
    hour_end = bucket_start(NOW, HOUR) + timedelta(hours=1)
    for k in seen:
        assert c.client.expiretime(k) == int(hour_end.timestamp()) + 7 * 24 * 3600
    assert c.client.expiretime(bucket_key(c.prefix, HOUR, NOW)) == int(hour_end.timestamp()) + c.hour_ttl_s
    assert c.count([row(i) for i in ids], now=NOW) == 0


def test_reviews_older_than_the_seen_ttl_are_not_counted(uid: str, redis_url: str) -> None:
    """An id is only counted while its hour's seen-set can still remember it: never twice."""
    c = counters(f"t-{uid}", redis_url, hour_ttl_s=35 * 24 * 3600, seen_ttl_s=2 * 24 * 3600)
    old = NOW - timedelta(days=3)
    assert c.count([row(f"{uid}-old", when=old)]) == 0
    assert c.count([row(f"{uid}-old", when=old)], now=old) == 0  # a worker's slow clock: Redis's decides
    assert c.read(HOUR, 1, end=old)[0].total == 0
    recent = NOW - timedelta(days=1)
    assert c.count([row(f"{uid}-recent", when=recent)]) == 1
    assert c.read(HOUR, 1, end=recent)[0].total == 1


def test_sources_past_the_cap_count_as_overflow_exactly_once(uid: str, redis_url: str) -> None:
    c = counters(f"t-{uid}", redis_url, max_sources=3, overflow_source="(other)")
    rows = [row(f"{uid}-{i}", f"s{i % 7}", LABELS[i % 3]) for i in range(70)]
    assert c.count(rows[:35], now=NOW) == 35
    assert c.count(rows, now=NOW) == 35  # the first half again adds nothing
    assert c.sources(MINUTE, 1, end=NOW) == c.sources(HOUR, 1, end=NOW) == ["(other)", "s0", "s1", "s2"]
    hour = c.read(HOUR, 1, end=NOW)[0]
    assert hour.total == 70 and hour.counts == {label: sum(r.label == label for r in rows) for label in LABELS}
    for name in ("s0", "s1", "s2"):  # named sources keep exact counts, also after the cap was reached
        assert c.read(HOUR, 1, source=name, end=NOW)[0].counts == {
            label: sum(r.source == name and r.label == label for r in rows) for label in LABELS}
    overflow = c.read(HOUR, 1, source="(other)", end=NOW)[0]
    assert overflow.total == sum(r.source not in ("s0", "s1", "s2") for r in rows) == 40
    assert c.client.hlen(bucket_key(c.prefix, HOUR, NOW)) <= 3 + 1 + 4 * 3  # labels, conf_sum, 4 sources x 3


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (make up installs it)")
def test_a_full_redis_refuses_the_batch_whole_and_the_retry_counts_once(uid: str) -> None:
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--maxmemory-policy", "noeviction"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        c = TrendCounters(client, prefix=f"t-{uid}", seen_shards=1)
        client.config_set("maxmemory", client.info("memory")["used_memory"] + 300_000)
        batches = [[row(f"{uid}-{b}-{i}-" + "y" * 200, f"s{i % 5}") for i in range(100)] for b in range(200)]
        counted, refused = 0, 0
        for batch in batches:
            try:
                counted += c.count(batch, now=NOW)
            except redis.OutOfMemoryError:
                refused += 1
        assert refused, "maxmemory was never reached"
        assert counted % 100 == 0 and c.read(HOUR, 1, end=NOW)[0].total == counted  # whole batches only
        client.config_set("maxmemory", 0)
        assert sum(c.count(batch, now=NOW) for batch in batches) == 200 * 100 - counted
        assert c.read(HOUR, 1, end=NOW)[0].total == 200 * 100
    finally:
        server.terminate()
        server.wait(10)


ids = st.integers(0, 40)
events = st.lists(st.tuples(ids, st.integers(0, 8), st.integers(0, 2), st.integers(0, 150)), max_size=60)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(events, min_size=1, max_size=5), cap=st.integers(1, 4))
def test_any_replay_order_counts_each_id_once(uid: str, redis_url: str, batches: list, cap: int) -> None:
    """Batches with repeats and replays, over minutes of three hours: the counters equal a model that
    counts each id once, names the first ``cap`` sources of each bucket and puts the rest under overflow."""
    prefix = f"t-{uid}-{time.monotonic_ns()}"
    c = counters(prefix, redis_url, max_sources=cap)
    base = NOW.replace(minute=0) - timedelta(hours=1)
    # one fixed (label, source, time) per id, as Postgres returns the stored row on every replay
    fixed = {i: (LABELS[i % 3], f"s{(i * 7) % 9}", base + timedelta(minutes=(i * 37) % 150)) for i in range(41)}
    expected: Counter = Counter()
    named: dict[tuple[str, datetime], set[str]] = {}
    seen: set[int] = set()
    for batch in batches:
        rows = [row(f"{uid}-{i}", fixed[i][1], fixed[i][0], fixed[i][2]) for i, *_ in batch]
        order = sorted(range(len(rows)), key=lambda k: bucket_start(rows[k].created_at, HOUR))  # stable
        new = 0
        for k in order:
            i = batch[k][0]
            if i in seen:
                continue
            seen.add(i)
            new += 1
            label, source, when = fixed[i]
            for res in (HOUR, MINUTE):
                bucket = (res, bucket_start(when, res))
                names = named.setdefault(bucket, set())
                full = source not in names and len(names - {"(other)"}) >= cap
                source_name = "(other)" if full else source
                names.add(source_name)
                expected[(*bucket, source_name, label)] += 1
        assert c.count(rows, now=NOW) == new
    got: Counter = Counter()
    last = base + timedelta(minutes=150)
    listed = {name for (res, _), names in named.items() if res == HOUR for name in names}
    assert set(c.sources(MINUTE, 151, end=last)) == set(c.sources(HOUR, 3, end=last)) == listed
    sources = {name for names in named.values() for name in names}  # minute buckets may name more
    for res, n in ((HOUR, 3), (MINUTE, 151)):
        for source in sources:
            for b in c.read(res, n, source=source, end=last):
                got.update({(res, b.start, source, label): v for label, v in b.counts.items() if v})
        assert sum(b.total for b in c.read(res, n, end=last)) == len(seen)
    assert got == expected
