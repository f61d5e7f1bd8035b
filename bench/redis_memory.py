"""Redis memory per million reviews: the old counter layout (raw review ids in one seen-set per hour) against
the new one (8-byte BLAKE2b digests in sharded integer sets, capped sources), measured, not estimated.

    python bench/redis_memory.py --reviews 1000000 --json bench/results/redis_memory.json

Each layout counts the same reviews (256-character ids, one hour, 60 minutes, 20 sources) under its own
private key prefix; then the keys' ``MEMORY USAGE`` (summed over a SCAN of the prefix) and the server's
``INFO memory`` used_memory before/after are recorded, and the keys are deleted. By default on a private
``redis-server`` (no persistence, started and stopped here) so no one else's writes blur used_memory;
``--url`` measures on a running server instead (still a private prefix, deleted afterwards).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sentiment_model.labels import LABELS  # noqa: E402
from storage.reviews import StoredLabel  # noqa: E402
from storage.trends import TrendCounters  # noqa: E402

# The counting script of the layout before issue 17 (storage/trends.py at commit 4c85e91), unchanged.
OLD_SCRIPT = """
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


def old_counter(client: redis.Redis, prefix: str) -> Callable[[Sequence[StoredLabel]], int]:
    script = client.register_script(OLD_SCRIPT)
    exp = int(time.time()) + 35 * 24 * 3600

    def count(rows: Sequence[StoredLabel]) -> int:
        keys: list[str] = []
        args: list[str | int] = []
        for r in rows:
            keys += [f"{prefix}:seen:{r.created_at:%Y%m%d%H}", f"{prefix}:h:{r.created_at:%Y%m%d%H}",
                     f"{prefix}:m:{r.created_at:%Y%m%d%H%M}"]
            args += [r.review_id, r.label, f"src:{r.source}:{r.label}", exp, exp, repr(r.score)]
        return int(script(keys=keys, args=args))

    return count


def reviews(n: int, seed: int = 0) -> list[StoredLabel]:
    rng = random.Random(seed)
    hour = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    return [StoredLabel(str(uuid.UUID(int=rng.getrandbits(128))).ljust(256, "x"), rng.choice(LABELS),
                        f"source-{rng.randrange(20)}", hour + timedelta(seconds=rng.randrange(3600)),
                        round(rng.uniform(0.34, 1.0), 4)) for _ in range(n)]


def settle(client: redis.Redis) -> None:
    """Wait until UNLINKed keys are really freed (a background thread does it), so used_memory is fair."""
    while client.info("memory").get("lazyfree_pending_objects", 0):
        time.sleep(0.05)


def measure(client: redis.Redis, prefix: str, count: Callable[[Sequence[StoredLabel]], int],
            rows: list[StoredLabel], batch: int) -> dict[str, float | int | str]:
    settle(client)
    before = client.info("memory")["used_memory"]
    started = time.perf_counter()
    counted = sum(count(rows[i:i + batch]) for i in range(0, len(rows), batch))
    took = time.perf_counter() - started
    after = client.info("memory")["used_memory"]
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    usage = {k: client.memory_usage(k, samples=0) or 0 for k in keys}
    seen = [k for k in keys if b":seen" in k]
    encodings = sorted({client.object("encoding", k).decode() for k in seen})
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i:i + 1000])
    assert not list(client.scan_iter(f"{prefix}:*")), "keys left behind"
    settle(client)
    per_million = 1_000_000 / len(rows)
    return {
        "counted": counted, "keys": len(keys), "seen_keys": len(seen), "seen_encoding": ",".join(encodings),
        "memory_usage_bytes": sum(usage.values()), "seen_memory_usage_bytes": sum(usage[k] for k in seen),
        "used_memory_delta_bytes": after - before,
        "memory_usage_mb_per_million": round(sum(usage.values()) * per_million / 2**20, 1),
        "used_memory_mb_per_million": round((after - before) * per_million / 2**20, 1),
        "bytes_per_review": round((after - before) / len(rows), 1), "reviews_per_s": round(len(rows) / took),
    }


def private_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("redis-server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reviews", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=256, help="reviews per count call (the worker's batch)")
    ap.add_argument("--url", help="measure on this server (private prefix) instead of a private redis-server")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args()
    proc, url = (None, a.url) if a.url else private_server()
    try:
        client = redis.Redis.from_url(url, socket_timeout=60)
        rows = reviews(a.reviews)
        tag = f"bench-mem-{uuid.uuid4().hex[:8]}"
        layouts = {
            "old: raw ids, one set per hour": lambda p: old_counter(client, p),
            "new: digests, 1 seen shard (hashtable)": lambda p: TrendCounters(client, p, seen_shards=1).count,
            "new: digests, 8192 seen shards (intsets, the default)": lambda p: TrendCounters(client, p).count,
        }
        results = {}
        for i, (name, make) in enumerate(layouts.items()):
            prefix = f"{tag}-{i}"
            results[name] = measure(client, prefix, make(prefix), rows, a.batch)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
        info = client.info("server")
        out = {"reviews": a.reviews, "id_chars": 256, "sources": 20, "hours": 1, "batch": a.batch,
               "redis_version": info["redis_version"], "server": "private redis-server" if proc else url,
               "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "layouts": results}
        if a.json:
            a.json.write_text(json.dumps(out, indent=2) + "\n")
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
