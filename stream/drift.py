"""Drift: how far the live stream has moved from what the serving model knows.

Every model the training package writes carries ``reference_profile.json``: the label mix the model
predicts on its own validation data and its mean top-class probability there. Live, the trend counters
keep the same two figures per hour (label counts and ``conf_sum``, counted exactly once per review), so
any process can compare an hour with the reference:

- ``label_psi``: the population stability index of the predicted label mix against the reference mix,
  ``sum((live - ref) * ln(live / ref))`` (0 = same mix; 0.1 is a noticeable shift, 0.25 a large one);
- ``confidence_drop``: reference mean confidence minus live mean confidence (positive when the model is
  less sure of live text than of its validation data: new topics, new slang, another language);
- ``score = label_psi + confidence_weight * max(confidence_drop, 0)``, compared with the threshold.

The reference is the model's *predicted* mix on validation, not the gold mix of its training data: a
model that under-predicts a class would otherwise show drift on data exactly like its training data.
The gold training mix is kept in the profile for the reader.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sentiment_model.labels import LABELS
from sentiment_model.profile import PROFILE_FILE, ReferenceProfile
from storage.reviews import StoredLabel
from storage.trends import HOUR, TrendBucket, TrendCounters, bucket_start

log = logging.getLogger(__name__)

_SMOOTH = 0.5  # add-half smoothing of counts: an empty class must not make the PSI infinite


@dataclass(frozen=True)
class DriftScore:
    hour: str  # ISO start of the hour (UTC, by review time)
    events: int
    label_mix: dict[str, float]
    mean_confidence: float
    label_psi: float
    confidence_drop: float
    score: float
    threshold: float
    version: str  # the model whose reference it was measured against

    @property
    def drifted(self) -> bool:
        return self.score > self.threshold


def label_psi(live: dict[str, int], reference: dict[str, float]) -> float:
    total = sum(live.values()) + _SMOOTH * len(LABELS)
    psi = 0.0
    for label in LABELS:
        p = (live.get(label, 0) + _SMOOTH) / total
        q = max(reference.get(label, 0.0), 1e-4)
        psi += (p - q) * math.log(p / q)
    return psi


def drift_score(bucket: TrendBucket, reference: ReferenceProfile, version: str, threshold: float,
                confidence_weight: float = 1.0) -> DriftScore:
    psi = label_psi(bucket.counts, reference.label_mix)
    confidence = bucket.mean_confidence or 0.0
    drop = reference.mean_confidence - confidence
    return DriftScore(
        hour=bucket.start.isoformat(), events=bucket.total,
        label_mix={k: round(bucket.share(k), 4) for k in LABELS}, mean_confidence=round(confidence, 4),
        label_psi=round(psi, 4), confidence_drop=round(drop, 4),
        score=round(psi + confidence_weight * max(drop, 0.0), 4), threshold=threshold, version=version)


class DriftMonitor:
    """A worker's drift check: after stored batches, at most every ``interval_s``, scores the latest hour.

    The score is kept in Redis (``P:{drift}:h``) for the CLI and the dashboard and reported to
    ``on_score`` (the Prometheus gauges). The first time an hour crosses the threshold it logs a warning
    and calls ``on_drift`` (which may start a refresh). Drift trouble never stops the stream.
    """

    def __init__(self, trends: TrendCounters, threshold: float, min_events: int, confidence_weight: float = 1.0,
                 interval_s: float = 10.0, on_score: Callable[[DriftScore], None] | None = None,
                 on_drift: Callable[[DriftScore], None] | None = None) -> None:
        self.trends = trends
        self.threshold = threshold
        self.min_events = min_events
        self.confidence_weight = confidence_weight
        self.interval_s = interval_s
        self.on_score = on_score
        self.on_drift = on_drift
        self.version: str | None = None
        self.reference: ReferenceProfile | None = None
        self._next = 0.0
        self._alerted: set[str] = set()
        self._pending: set[datetime] = set()

    def set_model(self, version: str, model_dir: Path) -> None:
        """Measure against this model's reference from now on (called at start and on every swap)."""
        self.version = version
        try:
            self.reference = ReferenceProfile.read(model_dir)
        except (OSError, ValueError, TypeError) as e:
            log.warning("drift: cannot read %s in %s (%s); drift is not measured", PROFILE_FILE, model_dir, e)
            self.reference = None
            return
        if self.reference is None:
            log.warning("drift: model %s has no %s (it was not trained by `sentiment train`); drift is not "
                        "measured for it. Retrain it, or write one with `sentiment drift profile`.",
                        version, PROFILE_FILE)
        self._next = 0.0
        self._pending.clear()

    def observe(self, stored: Sequence[StoredLabel]) -> DriftScore | None:
        """Score the latest hour the batch touched when it is time to; returns the newest score computed.

        Between checks the touched hours are remembered, so the last batches of an hour are scored by
        the next check (after any later batch) rather than dropped.
        """
        if self.reference is None or not stored:
            return None
        self._pending.add(bucket_start(max(r.created_at for r in stored), HOUR))
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.interval_s
        latest = None
        for hour in sorted(self._pending):
            try:
                latest = self._check(hour) or latest
            except Exception as e:  # Redis trouble: the counters' own retry reports it; drift just waits
                log.warning("drift: cannot score hour %s (%s: %s); retrying later", hour, type(e).__name__, e)
                return latest
            self._pending.discard(hour)
        return latest

    def _check(self, hour: datetime) -> DriftScore | None:
        assert self.reference is not None and self.version is not None
        bucket = self.trends.hour(hour)
        if bucket.total < self.min_events:
            return None
        score = drift_score(bucket, self.reference, self.version, self.threshold, self.confidence_weight)
        self.trends.save_drift(bucket.start, asdict(score), {"version": self.version, **asdict(self.reference)})
        if self.on_score is not None:
            self.on_score(score)
        if score.drifted and score.hour not in self._alerted:
            self._alerted.add(score.hour)
            log.warning("drift: hour %s scores %.3f > threshold %.3f (label PSI %.3f, confidence drop %.3f; "
                        "live mix %s vs reference %s over %d reviews)", score.hour, score.score, self.threshold,
                        score.label_psi, score.confidence_drop, score.label_mix,
                        {k: round(v, 3) for k, v in self.reference.label_mix.items()}, score.events)
            if self.on_drift is not None:
                self.on_drift(score)
        return score


def latest_score(trends: TrendCounters, hours: int = 2) -> DriftScore | None:
    """The newest hour's stored drift score among the last ``hours`` hours."""
    for _, score in reversed(trends.read_drift(hours)):
        if score is not None:
            return DriftScore(**score)
    return None


def refresh_starter(trends: TrendCounters, config: Path, cooldown_s: int, log_dir: Path
                    ) -> Callable[[DriftScore], None]:
    """``on_drift`` that starts ``sentiment refresh CONFIG`` in the background, once per cooldown across all
    workers (a Redis key taken with SET NX), and leaves the stream alone."""

    def start(score: DriftScore) -> None:
        key = f"{trends.prefix}:drift:refresh-started"
        if not trends.client.set(key, json.dumps({"hour": score.hour, "score": score.score}), nx=True, ex=cooldown_s):
            log.info("drift: a refresh was already started in the last %ds; not starting another", cooldown_s)
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        out = log_dir / f"refresh-{datetime.now(UTC):%Y%m%d-%H%M%S}.log"
        with out.open("ab") as handle:
            proc = subprocess.Popen([sys.executable, "-m", "sentiment_app", "refresh", str(config)], stdout=handle,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.warning("drift: started `sentiment refresh %s` (pid %d, log %s)", config, proc.pid, out)

    return start
