"""Drift: the score's arithmetic, the reference a training run leaves, and a real worker scoring live hours
(a stream like the training data stays under the threshold, a mostly negative one crosses it)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage.reviews import StoredLabel
from storage.trends import HOUR, TrendBucket, bucket_start
from stream.drift import DriftMonitor, ReferenceProfile, drift_score, label_psi, latest_score, refresh_starter
from stream.services import trend_counters
from stream.settings import Settings
from tests.accounting import FIGURES, produce, rows_for, scrape
from tests.support import invoke_cli, metrics, open_page, wait_until
from training.config import config_from_dict
from training.tiny import build_tiny_model, synthetic_rows, write_synthetic_csv
from training.train import run_experiment

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
BALANCED = {"negative": 1 / 3, "neutral": 1 / 3, "positive": 1 / 3}


def test_label_psi_is_zero_for_the_same_mix_and_grows_with_the_shift() -> None:
    assert label_psi({"negative": 100, "neutral": 100, "positive": 100}, BALANCED) < 0.001
    mild = label_psi({"negative": 140, "neutral": 90, "positive": 70}, BALANCED)
    strong = label_psi({"negative": 270, "neutral": 15, "positive": 15}, BALANCED)
    assert 0.02 < mild < 0.1 < 0.25 < strong
    assert label_psi({"negative": 300, "neutral": 0, "positive": 0}, BALANCED) < 10  # smoothed: finite


def test_score_adds_only_a_confidence_drop() -> None:
    ref = ReferenceProfile(BALANCED, mean_confidence=0.9, rows=300)
    start = datetime(2026, 11, 29, 10, tzinfo=UTC)
    same = TrendBucket(start, {"negative": 100, "neutral": 100, "positive": 100}, confidence_sum=300 * 0.6)
    s = drift_score(same, ref, "v1", threshold=0.25, confidence_weight=1.0)
    assert s.label_psi < 0.001 and s.confidence_drop == pytest.approx(0.3) and s.score == pytest.approx(0.3, abs=1e-3)
    assert s.drifted and s.events == 300 and s.hour == start.isoformat()
    surer = TrendBucket(start, same.counts, confidence_sum=300 * 0.99)
    assert drift_score(surer, ref, "v1", 0.25).score < 0.001  # more confident than the reference is no drift
    assert not drift_score(same, ref, "v1", 0.25, confidence_weight=0.0).drifted


def test_reference_profile_from_probabilities_round_trips(tmp_path: Path) -> None:
    probs = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]]
    p = ReferenceProfile.from_probabilities(probs, training_counts={"negative": 2, "neutral": 1, "positive": 1})
    assert p.label_mix == {"negative": 0.5, "neutral": 0.25, "positive": 0.25}
    assert p.mean_confidence == pytest.approx((0.8 + 0.7 + 0.6 + 0.5) / 4) and p.rows == 4
    assert p.training_label_mix == {"negative": 0.5, "neutral": 0.25, "positive": 0.25}
    p.write(tmp_path)
    assert ReferenceProfile.read(tmp_path) == p and ReferenceProfile.read(tmp_path / "none") is None


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained on the synthetic task: it labels the synthetic stream well."""
    root = tmp_path_factory.mktemp("drift-model")
    build_tiny_model(root / "base", "distilbert", n_layers=2)
    write_synthetic_csv(root / "synthetic.csv", 600, seed=1)
    config = config_from_dict({
        "name": "drift", "base_model": str(root / "base"),
        "data": {"path": str(root / "synthetic.csv"), "split": {"validation": 0.2, "test": 0.1}},
        "max_length": 32, "batch_size": 16, "learning_rate": 2e-3, "warmup_ratio": 0.0, "epochs": 8,
        "eval_steps": 50, "save_top_k": 1, "num_threads": 1,
    })
    result = run_experiment(config, root / "runs")
    assert result.test["accuracy"] > 0.8
    return result.model_dir


@pytest.mark.slow  # trains a tiny model
def test_training_writes_the_reference_profile(trained_model: Path) -> None:
    profile = ReferenceProfile.read(trained_model)
    assert profile is not None and profile.rows == 120 and profile.source == "validation"
    assert all(0.2 < share < 0.47 for share in profile.label_mix.values())  # balanced task, good model
    assert 0.5 < profile.mean_confidence <= 1.0
    assert profile.training_label_mix == pytest.approx(BALANCED, abs=0.02)


def test_monitor_scores_pending_hours_and_warns_once(settings: Settings, trained_model: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    counters = trend_counters(settings)
    hour = bucket_start(datetime.now(UTC) - timedelta(hours=3), HOUR)
    seen: list = []
    fired: list = []
    monitor = DriftMonitor(counters, threshold=0.25, min_events=50, interval_s=3600, on_score=seen.append,
                           on_drift=fired.append)
    monitor.set_model("v-test", trained_model)
    rows = [StoredLabel(f"m-{i}", "negative", "s", hour + timedelta(minutes=1), 0.9) for i in range(60)]
    counters.count(rows)
    assert monitor.observe(rows[:1]).score > 0.25  # first check is immediate
    assert monitor.observe(rows[:1]) is None  # then at most every interval_s: the hour stays pending
    monitor._next = 0.0
    assert monitor.observe(rows[:1]).events == 60
    assert len(fired) == 1 and len(seen) == 2  # warned once per hour, scored each check
    assert sum("drift: hour" in r.message for r in caplog.records) == 1
    stored = latest_score(counters, hours=4)
    assert stored is not None and stored.version == "v-test" and stored.hour == hour.isoformat()
    assert counters.drift_reference()["version"] == "v-test"


def test_monitor_without_a_reference_measures_nothing(settings: Settings, tiny_model: Path) -> None:
    monitor = DriftMonitor(trend_counters(settings), threshold=0.25, min_events=1)
    monitor.set_model("untrained", tiny_model)
    assert monitor.reference is None
    assert monitor.observe([StoredLabel("x", "negative", "s", datetime.now(UTC), 0.9)]) is None


def test_refresh_starter_starts_one_refresh_per_cooldown(settings: Settings, tmp_path: Path) -> None:
    counters = trend_counters(settings)
    start = refresh_starter(counters, tmp_path / "missing.yaml", cooldown_s=600, log_dir=tmp_path / "logs")
    score = drift_score(TrendBucket(datetime.now(UTC), {"negative": 10, "neutral": 0, "positive": 0}, 9.0),
                        ReferenceProfile(BALANCED, 0.9, 3), "v", 0.25)
    start(score)
    start(score)
    logs = list((tmp_path / "logs").glob("refresh-*.log"))
    assert len(logs) == 1  # the second call found the cooldown key
    wait_until(lambda: "missing.yaml" in logs[0].read_text(), 60, "the refresh to run and fail on the missing config",
               lambda: logs[0].read_text())
    assert json.loads(counters.client.get(f"{counters.prefix}:drift:refresh-started"))["score"] == score.score


def events(rows: list[tuple[str, str]], uid: str, tag: str, created: datetime) -> list[tuple[bytes, bytes]]:
    out = []
    for i, (text, _) in enumerate(rows):
        rid = f"{uid}-{tag}-{i}"
        out.append((rid.encode(), json.dumps({"review_id": rid, "text": text, "source": f"src-{uid}-{tag}",
                                              "created_at": created.isoformat()}).encode()))
    return out


def test_worker_drift_stays_low_on_training_like_data_and_crosses_on_a_negative_stream(
        topics: Settings, trained_model: Path, uid: str, worker_factory) -> None:
    settings = topics.model_copy(update={
        "model": topics.model.model_copy(update={"dir": trained_model, "version": f"drift-{uid}"}),
        "drift": topics.drift.model_copy(update={"threshold": 0.25, "min_events": 100, "check_interval_s": 0.2}),
    })
    like_training = synthetic_rows(300, seed=7)  # balanced, same vocabulary as training
    pool = synthetic_rows(1200, seed=8)
    negative = [r for r in pool if r[1] == "negative"][:270] + [r for r in pool if r[1] != "negative"][:30]
    now = datetime.now(UTC)
    calm_hour, shift_hour = bucket_start(now - timedelta(hours=3), HOUR), bucket_start(now - timedelta(hours=2), HOUR)
    counters = trend_counters(settings)

    worker = worker_factory(settings)
    produce(settings, events(like_training, uid, "calm", calm_hour + timedelta(minutes=5)))
    wait_until(lambda: len(rows_for(settings, uid)) == 300, 180, "300 training-like reviews stored", worker.log)
    produce(settings, events(negative, uid, "shift", shift_hour + timedelta(minutes=5)))
    wait_until(lambda: len(rows_for(settings, uid)) == 600, 180, "300 mostly negative reviews stored", worker.log)

    def scores() -> dict[str, dict]:
        return {start.isoformat(): s for start, s in counters.read_drift(4) if s is not None}

    # The last batches of the shifted hour are scored by the next check; nudge with one more event.
    time.sleep(0.5)
    produce(settings, events([("the box arrived", "neutral")], uid, "nudge", shift_hour + timedelta(minutes=6)))
    wait_until(lambda: scores().get(shift_hour.isoformat(), {}).get("events") == 301, 60,
               "the shifted hour scored over all its reviews", lambda: f"{scores()}\n{worker.log()}")
    calm, shift = scores()[calm_hour.isoformat()], scores()[shift_hour.isoformat()]
    FIGURES.append({"scenario": "drift (threshold 0.25)", "training-like score": calm["score"],
                    "training-like negative share": calm["label_mix"]["negative"], "shifted score": shift["score"],
                    "shifted negative share": shift["label_mix"]["negative"]})
    assert calm["events"] == 300 and calm["score"] < 0.25, calm
    assert shift["score"] > 0.25 and shift["label_mix"]["negative"] > 0.7, shift
    assert calm["version"] == shift["version"] == f"drift-{uid}"
    metrics = scrape(settings.worker.metrics_port)
    assert metrics["sentiment_drift_score"] == pytest.approx(shift["score"])
    assert metrics["sentiment_drift_threshold"] == 0.25
    log = worker.log()
    assert f"drift: hour {shift_hour.isoformat()} scores" in log and f"drift: hour {calm_hour.isoformat()}" not in log

    shown = invoke_cli(settings, "drift", "--hours", "4")
    assert shown.exit_code == 0, shown.output
    assert f"model drift-{uid}" in shown.output and "DRIFT" in shown.output
    assert shift_hour.strftime("%Y-%m-%d %H:00") in shown.output


def test_trends_page_shows_the_drift_and_warns_above_the_threshold(app_env: Settings) -> None:  # noqa: F811
    counters = trend_counters(app_env)
    now = bucket_start(datetime.now(UTC), HOUR)
    ref = ReferenceProfile(BALANCED, 0.9, 300)
    calm = drift_score(TrendBucket(now - timedelta(hours=1), {"negative": 100, "neutral": 100, "positive": 100},
                                   270.0), ref, "v-dash", 0.25)
    counters.save_drift(now - timedelta(hours=1), asdict(calm), {"version": "v-dash", **asdict(ref)})
    at = open_page("trends")
    assert not at.exception and not at.warning
    assert metrics(at)["drift score, latest hour"] == f"{calm.score:.3f}"
    shifted = drift_score(TrendBucket(now, {"negative": 270, "neutral": 15, "positive": 15}, 240.0), ref,
                          "v-dash", 0.25)
    counters.save_drift(now, asdict(shifted), {"version": "v-dash", **asdict(ref)})
    at = open_page("trends")
    assert metrics(at)["drift score, latest hour"] == f"{shifted.score:.3f}"
    assert f"**Drift {shifted.score:.2f}**" in at.warning[0].value and "sentiment refresh" in at.warning[0].value
