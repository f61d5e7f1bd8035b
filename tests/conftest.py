"""Fixtures for tests against the real local stack (`make up`): Kafka, Postgres and Redis on loopback.

Each test gets its own topics, consumer group, Redis key prefix and review source, so tests never see
each other's data and need no cleanup between them. Postgres tests use the `sentiment_test` database
(``SENTIMENT_TEST_POSTGRES_URL``). Helpers the test modules share are in ``tests/support.py``.

Markers are set here from the fixtures a test uses, so a new test is marked without edits: a test that
uses a service fixture (``SERVICE_FIXTURES``) is ``integration``; any other is ``unit`` (`make test-fast`
runs those: no service needed); ``chaos`` tests are marked in their modules and are integration too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.settings import Settings
from tests.support import TEST_DB_URL, TEST_REDIS_URL, WorkerProcess, free_port, make_tiny_model

# Fixtures that reach Kafka, Postgres or Redis: a test using any of them (directly or through another
# fixture) is an integration test. A new service fixture goes in this set.
SERVICE_FIXTURES = frozenset({"migrated_db", "pg_url", "redis_url", "reg_url", "settings", "topics",
                              "worker_factory", "app_env"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        needs_service = bool(SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())))
        if needs_service or item.get_closest_marker("chaos"):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def migrated_db() -> str:
    """The test database, migrated to head once per session; its roles set up as `sentiment init` does."""
    from storage.migrate import upgrade
    from storage.roles import provision
    from stream.settings import PostgresSettings

    pg = PostgresSettings(url=TEST_DB_URL)
    provision(pg.dsn(), pg.role_dsns(), pg.statement_timeout_ms)
    upgrade(TEST_DB_URL)
    return TEST_DB_URL


@pytest.fixture(scope="session")
def pg_url(migrated_db: str) -> str:
    """The migrated test database's URL (shared by the tests: use per-test ids)."""
    return migrated_db


@pytest.fixture(scope="session")  # session: usable with Hypothesis' @given
def redis_url() -> str:
    """The test Redis database's URL (shared by the tests: use a per-test key prefix)."""
    return TEST_REDIS_URL


@pytest.fixture
def reg_url(uid: str) -> Iterator[str]:
    """A private Postgres schema migrated to head (the registry has one production version per schema)."""
    from tests.registry_helpers import registry_schema

    with registry_schema(uid) as url:
        yield url


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(uid: str, migrated_db: str, tiny_model: Path, tmp_path: Path) -> Settings:
    """Settings isolated to this test: own topics, consumer group, key prefix, models dir; the tiny model."""
    return Settings(
        kafka={"reviews_topic": f"t-{uid}-reviews", "dlq_topic": f"t-{uid}-dlq", "partitions": 2},
        postgres={"url": migrated_db},
        redis={"url": TEST_REDIS_URL, "key_prefix": f"t-{uid}"},
        model={"dir": tiny_model, "version": f"tiny-{uid}", "batch_size": 16},
        worker={"app_id": f"t-{uid}-worker", "batch_max": 32, "batch_within_s": 0.2, "metrics_port": free_port()},
        models_dir=tmp_path / "models",
    )


@pytest.fixture
def topics(settings: Settings) -> Iterator[Settings]:
    """Create this test's topics; delete them afterwards."""
    from stream.services import create_topics, kafka_admin

    create_topics(settings)
    yield settings
    admin = kafka_admin(settings)
    try:
        admin.delete_topics([settings.kafka.reviews_topic, settings.kafka.dlq_topic], raise_errors=False)
    finally:
        admin.close()


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def factory(settings: Settings) -> WorkerProcess:
        w = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w.start()

    yield factory
    for w in started:
        w.stop()


@pytest.fixture
def app_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Point the dashboard at this test's settings through the environment (one torch thread: shared cores)."""
    import os

    for key in [k for k in os.environ if k.startswith("SENTIMENT_")]:
        monkeypatch.delenv(key)
    for key, value in {**settings.to_env(), "SENTIMENT_MODEL__THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    return settings


@pytest.fixture
def refresh_workdir(tmp_path: Path) -> Path:
    """A tiny base model, synthetic base data, a fixed evaluation set, an experiment and a refresh config."""
    import yaml

    from training.tiny import build_tiny_model, write_synthetic_csv

    build_tiny_model(tmp_path / "base", "distilbert", n_layers=2)
    write_synthetic_csv(tmp_path / "base.csv", 600, seed=1)
    write_synthetic_csv(tmp_path / "eval.csv", 300, seed=2)
    experiment = {
        "name": "refresh-tiny", "base_model": str(tmp_path / "base"),
        "data": {"path": str(tmp_path / "base.csv"), "split": {"validation": 0.15, "test": 0.15}},
        "max_length": 32, "batch_size": 16, "learning_rate": 2e-3, "warmup_ratio": 0.0, "epochs": 6,
        "eval_steps": 50, "save_top_k": 1, "num_threads": 1,
    }
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment))
    refresh = {
        "name": "tiny-refresh", "experiment": "experiment.yaml",
        "feedback": {"holdout_share": 0.25},  # test_refresh.HOLDOUT_SHARE
        "gate": {"eval_set": str(tmp_path / "eval.csv"), "metric": "macro_recall", "margin": 0.0},
        "runs_dir": str(tmp_path / "runs"),
    }
    (tmp_path / "refresh.yaml").write_text(yaml.safe_dump(refresh))
    return tmp_path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault tests' figures (sent, stored, lost, duplicated, recovery time) in every run's log."""
    from tests.accounting import FIGURES

    if FIGURES:
        terminalreporter.section("fault-test figures")
        for f in FIGURES:
            terminalreporter.write_line(f"{f['scenario']}: " + ", ".join(f"{k}={v}" for k, v in f.items()
                                                                          if k != "scenario"))
