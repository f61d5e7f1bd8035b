"""Worker metrics in the Prometheus text format (``SENTIMENT_WORKER__METRICS_PORT``, default 9108).

Scrape ``http://127.0.0.1:9108/metrics`` (``SENTIMENT_WORKER__METRICS_ADDRESS`` moves it off loopback, e.g.
0.0.0.0 in a pod). Every worker process serves its own; with several workers on one machine give each its
own port (a port already taken disables metrics with a warning).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from stream.events import RawRecord

log = logging.getLogger(__name__)

CONSUMED = Counter("sentiment_events_consumed_total", "Events read from the reviews topic")
LABELLED = Counter("sentiment_events_labelled_total", "Events stored in Postgres with a label")
DEAD_LETTERED = Counter("sentiment_events_dead_lettered_total", "Events sent to the dead-letter topic")
BATCH_SIZE = Histogram("sentiment_batch_size", "Events per micro-batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
INFERENCE_SECONDS = Histogram("sentiment_inference_seconds", "Model time per micro-batch",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BATCH_SECONDS = Histogram("sentiment_batch_seconds", "Judge + model + sinks time per micro-batch",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
E2E_SECONDS = Histogram("sentiment_end_to_end_seconds", "Kafka record timestamp to acknowledged",
                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
LAG = Gauge("sentiment_consumer_lag", "Records behind the partition's high watermark", ["topic", "partition"])
MODEL = Gauge("sentiment_model_info", "The model labelling events (value 1)", ["version"])
SHADOW = Gauge("sentiment_shadow_share", "Share of reviews the shadow candidate labels (absent: no shadow)",
               ["candidate"])
SHADOWED = Counter("sentiment_shadow_events_total", "Reviews the shadow candidate labelled beside production",
                   ["candidate"])
SHADOW_AGREED = Counter("sentiment_shadow_agreed_total", "Shadowed reviews labelled as production did",
                        ["candidate"])
SHADOW_SECONDS = Histogram("sentiment_shadow_inference_seconds", "Shadow candidate's model time per micro-batch",
                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
DRIFT_SCORE = Gauge("sentiment_drift_score", "Drift of the latest scored hour from the model's reference")
DRIFT_PSI = Gauge("sentiment_drift_label_psi", "Population stability index of the predicted label mix")
DRIFT_CONFIDENCE = Gauge("sentiment_drift_confidence_drop", "Reference minus live mean top-class probability")
DRIFT_THRESHOLD = Gauge("sentiment_drift_threshold", "The drift score above which the worker warns")


def serve(port: int, address: str = "127.0.0.1") -> bool:
    """Loopback by default; a pod sets ``SENTIMENT_WORKER__METRICS_ADDRESS=0.0.0.0`` for its probes and scrapers."""
    if port <= 0:
        return False
    try:
        start_http_server(port, addr=address)
    except OSError as e:
        log.warning("metrics disabled: cannot listen on %s:%d (%s)", address, port, e)
        return False
    log.info("metrics on http://%s:%d/metrics", address, port)
    return True


def set_model(version: str) -> None:
    MODEL.clear()
    MODEL.labels(version=version).set(1)


def set_shadow(deployment: object | None) -> None:
    """The shadow deployment a worker runs now (a ``storage.shadow.ShadowDeployment``), or None."""
    SHADOW.clear()
    if deployment is not None:
        SHADOW.labels(candidate=deployment.candidate).set(deployment.share)  # type: ignore[attr-defined]


def observe_shadow(candidate: str, shadowed: int, agreed: int, infer_s: float) -> None:
    """Agreement rate in PromQL: rate(sentiment_shadow_agreed_total) / rate(sentiment_shadow_events_total)."""
    SHADOWED.labels(candidate=candidate).inc(shadowed)
    SHADOW_AGREED.labels(candidate=candidate).inc(agreed)
    SHADOW_SECONDS.observe(infer_s)


def observe_batch(records: Sequence[RawRecord], labelled: int, dead_lettered: int, infer_s: float,
                  total_s: float) -> None:
    CONSUMED.inc(len(records))
    LABELLED.inc(labelled)
    DEAD_LETTERED.inc(dead_lettered)
    BATCH_SIZE.observe(len(records))
    INFERENCE_SECONDS.observe(infer_s)
    BATCH_SECONDS.observe(total_s)
    now_ms = time.time() * 1000
    for r in records:
        if r.timestamp_ms:
            E2E_SECONDS.observe(max(0.0, (now_ms - r.timestamp_ms) / 1000))


def observe_lag(topic: str, partition: int, highwater: int | None, offset: int) -> None:
    if highwater is not None:
        LAG.labels(topic=topic, partition=str(partition)).set(max(0, highwater - offset - 1))


def set_drift(score) -> None:  # a stream.drift.DriftScore
    DRIFT_SCORE.set(score.score)
    DRIFT_PSI.set(score.label_psi)
    DRIFT_CONFIDENCE.set(score.confidence_drop)
    DRIFT_THRESHOLD.set(score.threshold)
