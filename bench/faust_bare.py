"""A bare Faust agent: the ceiling Faust itself sets for a worker on this machine (bench/pipeline_null.py).

It takes batches with ``noack_take`` (as stream.app does), judges each value as the worker does
(``stream.events.parse_record``), acks each event, and nothing else: no model, no sinks, no metrics.
Settings come from ``SENTIMENT_*`` like the worker's (topic, group, batch size); the consumer options are
the worker's (stream.app.create_app). When ``BARE_EVENTS`` events have been seen it writes
``{"per_s": ..., "events": ..., "cpu_us_per_event": ...}`` (first event to last; CPU: the process's, all
threads) to ``BARE_RESULT`` and the caller stops it.

    BARE_EVENTS=20000 BARE_RESULT=/tmp/bare.json python bench/faust_bare.py worker -l warn
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faust

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stream.app import faust_app_options  # noqa: E402
from stream.events import RawRecord, parse_record  # noqa: E402
from stream.settings import Settings  # noqa: E402

settings = Settings()
w, k = settings.worker, settings.kafka
target = int(os.environ["BARE_EVENTS"])
result = Path(os.environ["BARE_RESULT"])
datadir = Path(tempfile.gettempdir()) / "sentiment-faust" / w.app_id
datadir.mkdir(parents=True, exist_ok=True)
app = faust.App(w.app_id, broker=[f"kafka://{h}" for h in k.bootstrap_servers.split(",")], datadir=datadir,
                **faust_app_options(settings))
topic = app.topic(k.reviews_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


@app.agent(topic, concurrency=1)
async def bare(stream: faust.StreamT) -> None:
    total, first, first_n, cpu0 = 0, 0.0, 0, 0.0
    async for events in stream.noack_take(w.batch_max, within=w.batch_within_s):
        if not first:  # the rate counts the events after the first batch, from when that batch arrived
            first, first_n, cpu0 = time.perf_counter(), len(events), time.process_time()
        for e in events:
            m = e.message
            parse_record(RawRecord(m.topic, m.partition, m.offset, None, m.key, m.value), w.max_text_chars,
                         w.max_metadata_bytes)
            await stream.ack(e)
        total += len(events)
        if total >= target and not result.exists():
            result.write_text(json.dumps({"per_s": (total - first_n) / (time.perf_counter() - first), "events": total,
                                          "cpu_us_per_event": (time.process_time() - cpu0) * 1e6 / (total - first_n)}))


if __name__ == "__main__":
    app.main()
