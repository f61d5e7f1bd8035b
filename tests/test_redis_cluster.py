"""The trend counters on a real 3-node Redis Cluster (`ops/stack.sh up redis-cluster`, part of `make up`):
every counting script touches one hash slot, hours spread over the nodes, counts stay exactly once."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import redis
from pydantic import ValidationError
from redis.cluster import RedisCluster

from sentiment_model.labels import LABELS
from storage.reviews import StoredLabel
from storage.trends import HOUR, MINUTE, bucket_key, bucket_start, hour_tag
from stream.services import trend_counters
from stream.settings import Settings
from tests.accounting import assert_redis_matches_sql, committed_to_end, produce, rewind_group, rows_for
from tests.support import wait_until

CLUSTER_URL = os.environ.get("SENTIMENT_TEST_REDIS_CLUSTER_URL", "redis://127.0.0.1:7000/0")
NOW = (datetime.now(UTC) - timedelta(hours=1)).replace(minute=30, second=0, microsecond=0)


@pytest.fixture
def cluster_settings(uid: str) -> Settings:
    s = Settings(redis={"url": CLUSTER_URL, "cluster": True, "key_prefix": f"t-{uid}", "max_sources": 4})
    try:
        RedisCluster.from_url(CLUSTER_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as e:
        pytest.fail(f"no Redis Cluster at {CLUSTER_URL} ({e}): run `ops/stack.sh up redis-cluster`")
    return s


def rows_over_hours(uid: str, hours: int = 12) -> list[StoredLabel]:
    """A few reviews in each of the last ``hours`` hours, 6 sources, all three labels."""
    return [StoredLabel(f"{uid}-{h}-{i}", LABELS[(h + i) % 3], f"src{i % 6}",
                        NOW - timedelta(hours=h, minutes=i % 4), 0.5 + i / 100) for h in range(hours) for i in range(9)]


def test_counts_once_on_a_cluster_with_one_slot_per_hour(cluster_settings: Settings, uid: str) -> None:
    counters = trend_counters(cluster_settings)
    client = counters.client
    assert isinstance(client, RedisCluster) and len(client.get_primaries()) == 3
    rows = rows_over_hours(uid)
    assert counters.count(rows[:50]) == 50  # one batch over several hours: one script per hour
    assert counters.count(rows) == len(rows) - 50  # a replay of the first part adds nothing
    assert counters.count(rows) == 0

    keys = [k.decode() for k in client.scan_iter(f"t-{uid}:*")]
    by_hour: dict[str, set[int]] = {}
    for key in keys:
        by_hour.setdefault(key.split("}")[0], set()).add(client.keyslot(key))
    assert len(by_hour) == 12 and all(len(slots) == 1 for slots in by_hour.values())  # one slot per hour
    nodes = {client.get_node_from_key(k).name for k in keys}
    assert len(nodes) >= 2, nodes  # 12 hours over 3 nodes
    assert all(client.ttl(k) > 0 for k in keys)

    # the readers: per hour (all sources), per source, per minute, the source lists
    hours = counters.read(HOUR, 12, end=NOW)
    for b in hours:
        in_hour = [r for r in rows if bucket_start(r.created_at, HOUR) == b.start]
        assert b.counts == {label: sum(r.label == label for r in in_hour) for label in LABELS}
        assert b.confidence_sum == pytest.approx(sum(r.score for r in in_hour))
    named = counters.sources(HOUR, 12, end=NOW)
    assert named == ["(other)", "src0", "src1", "src2", "src3"]  # the cap: 4 named per bucket, then overflow
    per_source = Counter({s: sum(b.total for b in counters.read(HOUR, 12, source=s, end=NOW)) for s in named})
    assert sum(per_source.values()) == len(rows) and per_source["(other)"] == sum(r.source in ("src4", "src5")
                                                                                  for r in rows)
    minutes = counters.read(MINUTE, 60 * 12, end=NOW)
    assert sum(b.total for b in minutes) == len(rows)
    assert Counter(b.start for b in minutes for _ in range(b.total)) == Counter(
        bucket_start(r.created_at, MINUTE) for r in rows)


def test_drift_keys_share_a_slot_on_a_cluster(cluster_settings: Settings) -> None:
    counters = trend_counters(cluster_settings)
    counters.save_drift(NOW, {"score": 0.3}, {"version": "v1"})  # a MULTI over two keys
    assert counters.read_drift(1, end=NOW) == [(bucket_start(NOW, HOUR), {"score": 0.3})]
    assert counters.drift_reference() == {"version": "v1"}


def test_keys_without_a_shared_tag_are_refused_by_the_cluster(cluster_settings: Settings) -> None:
    """What the hash tags prevent: the old layout's keys of one review lay in different slots."""
    client = trend_counters(cluster_settings).client
    old = [f"{cluster_settings.redis.key_prefix}:seen:2026010100", f"{cluster_settings.redis.key_prefix}:h:2026010100"]
    assert len({client.keyslot(k) for k in old}) == 2
    node = client.get_node_from_key(old[0]).redis_connection  # ask the server itself, not redis-py's check
    with pytest.raises(redis.ResponseError, match="don.t hash to the same slot"):  # CROSSSLOT
        node.eval("return redis.call('EXISTS', KEYS[1], KEYS[2])", 2, *old)
    new = [bucket_key("p", HOUR, NOW), bucket_key("p", MINUTE, NOW), f"{hour_tag('p', NOW)}:seen:7"]
    assert len({client.keyslot(k) for k in new}) == 1


def test_cluster_mode_refuses_a_database_other_than_0() -> None:
    with pytest.raises(ValidationError, match="must name database 0"):
        Settings(redis={"url": CLUSTER_URL.rsplit("/", 1)[0] + "/1", "cluster": True})
    for url in ("redis://127.0.0.1:7000", "redis://127.0.0.1:7000/", "redis://127.0.0.1:7000/0?protocol=3"):
        assert Settings(redis={"url": url, "cluster": True}).redis.cluster


def test_a_worker_on_the_cluster_counts_what_postgres_holds_also_after_a_replay(
        topics: Settings, uid: str, worker_factory, cluster_settings: Settings) -> None:
    """A real `sentiment worker` with SENTIMENT_REDIS__CLUSTER=true: Redis equals Postgres per source and
    bucket (tests/accounting.py; reviews of the last 110 minutes, so 2-3 hours and slots), and a full
    replay from the earliest offset adds nothing."""
    settings = topics.model_copy(update={"redis": cluster_settings.redis.model_copy(update={"max_sources": 1000})})
    now = datetime.now(UTC)
    records = [(f"{uid}-{i}".encode(), json.dumps({
        "review_id": f"{uid}-{i}", "text": "great battery" if i % 3 else "terrible refund",
        "source": f"src-{uid}-{i % 6}", "created_at": (now - timedelta(minutes=(i * 7) % 110)).isoformat()}).encode())
        for i in range(150)]
    produce(settings, records)
    worker = worker_factory(settings)
    wait_until(lambda: len(rows_for(settings, uid)) >= 150 and committed_to_end(settings), 180,
               "every event stored and committed", worker.log)
    assert_redis_matches_sql(settings, uid)
    assert worker.stop() == 0, worker.log()
    rewind_group(settings)
    assert not committed_to_end(settings)
    replay = worker_factory(settings)
    wait_until(lambda: committed_to_end(settings), 180, "the replay to reach the end", replay.log)
    assert_redis_matches_sql(settings, uid)
    assert sum(b.total for b in trend_counters(settings).read(HOUR, 4)) == 150
