"""One settings model for every command and service.

Read from the environment (prefix ``SENTIMENT_``, nested fields joined by ``__``, e.g.
``SENTIMENT_POSTGRES__URL``) or a ``.env`` file in the working directory. The defaults match what
``make up`` starts on loopback, so nothing needs configuring for local use.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError
from sqlalchemy import make_url

from sentiment_model.settings import ModelSettings
from sentiment_model.settings_error import settings_error
from storage.roles import ROLE_USERS, Role


def kafka_topic_name(value: str) -> str:
    """``value`` if Kafka accepts it as a topic name, else ValueError saying the rule."""
    if not re.fullmatch(r"[a-zA-Z0-9._-]{1,249}", value):
        raise ValueError("a Kafka topic name has 1-249 letters, digits, '.', '_' or '-'")
    return value


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port[,host:port...]")
    reviews_topic: str = Field("reviews", description="letters, digits, '.', '_', '-' (Kafka's rule)")
    dlq_topic: str = Field("reviews.dlq", description="letters, digits, '.', '_', '-' (Kafka's rule)")
    partitions: int = Field(3, ge=1, description="partitions of the reviews topic when we create it")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        if not re.fullmatch(r"[^,\s]+:\d{1,5}(,[^,\s]+:\d{1,5})*", value):
            raise ValueError("give host:port, several separated by commas (e.g. 127.0.0.1:9092)")
        return value

    @field_validator("reviews_topic", "dlq_topic")
    @classmethod
    def _kafka_topic_name(cls, value: str) -> str:
        return kafka_topic_name(value)

    def client_options(self) -> dict[str, object]:
        """Connection options shared by kafka-python's producer, consumer and admin clients."""
        opts: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.ssl_cafile:
            opts["ssl_cafile"] = str(self.ssl_cafile)
        return opts


    def faust_credentials(self) -> object | None:
        """The same security for the Faust worker's own (aiokafka) connections."""
        if self.security_protocol == "PLAINTEXT":
            return None
        import ssl

        import faust

        context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.security_protocol == "SSL":
            return faust.SSLCredentials(context)
        return faust.SASLCredentials(
            username=self.sasl_username, mechanism=self.sasl_mechanism or "PLAIN",
            password=self.sasl_password.get_secret_value() if self.sasl_password else None,
            ssl_context=context if self.security_protocol == "SASL_SSL" else None,
        )


class PostgresSettings(BaseModel):
    """One Postgres role per job (README "Security", ``storage.roles``). ``url`` is the operator's login (the
    schema owner) and names the server, database and TLS options; the other roles log in to the same place."""

    url: SecretStr = SecretStr("postgresql+psycopg://sentiment:sentiment@127.0.0.1:5432/sentiment")
    password: SecretStr | None = Field(None, description="the operator's password; replaces the one in url")
    worker_password: SecretStr = SecretStr("sentiment_worker")
    reader_password: SecretStr = SecretStr("sentiment_reader")
    feedback_password: SecretStr = SecretStr("sentiment_feedback")
    statement_timeout_ms: int = Field(30_000, ge=0, description="for `sentiment sql` and the reader role; 0: none")
    retention_days: int = Field(0, ge=0, description="drop each month of review_sentiment once all of it is older "
                                "than this (set by `sentiment init`, applied hourly by the worker); 0: keep forever")

    @field_validator("url")
    @classmethod
    def _a_postgres_url(cls, url: SecretStr) -> SecretStr:
        """Fail at start-up, in one line and without echoing the URL (it may hold a password)."""
        try:
            backend = make_url(url.get_secret_value()).get_backend_name()
        except Exception:  # noqa: BLE001 - sqlalchemy raises several types for a malformed URL
            raise ValueError("not a database URL: use postgresql+psycopg://USER@HOST:PORT/DATABASE") from None
        if backend != "postgresql":
            raise ValueError(f"{backend!r} is not PostgreSQL: use postgresql+psycopg://USER@HOST:PORT/DATABASE")
        return url

    @model_validator(mode="after")
    def _password_into_url(self) -> PostgresSettings:
        """A separate password (from a secret store, any characters) goes into ``url``, which every operator
        connection uses."""
        if self.password is not None:
            url = make_url(self.url.get_secret_value()).set(password=self.password.get_secret_value())
            self.url = SecretStr(url.render_as_string(hide_password=False))
        return self

    def dsn(self, role: Role = "operator") -> str:
        """The URL ``role`` logs in with: ``url`` for the operator (without a password there, libpq's PGPASSWORD
        or ~/.pgpass applies), else ``url`` with that role's user name and password."""
        if role == "operator":
            return self.url.get_secret_value()
        url = make_url(self.url.get_secret_value())
        url = url.set(username=ROLE_USERS[role], password=getattr(self, f"{role}_password").get_secret_value())
        return url.render_as_string(hide_password=False)

    def role_dsns(self) -> dict[str, str]:
        """The login URL of every role but the operator's, by role name (what `sentiment init` provisions)."""
        return {ROLE_USERS[r]: self.dsn(r) for r in ROLE_USERS}


class RedisSettings(BaseModel):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    cluster: bool = Field(False, description="url names one node of a Redis Cluster (database 0 only)")
    key_prefix: str = Field("sentiment", pattern=r"^[^{}]+$", description="no braces: they mark cluster hash tags")
    minute_ttl_s: int = Field(48 * 3600, ge=60, description="how long per-minute buckets live")
    hour_ttl_s: int = Field(35 * 24 * 3600, ge=3600, description="how long per-hour buckets live")
    seen_ttl_s: int = Field(8 * 24 * 3600, ge=3600, description=(
        "how long counted review ids are kept (after their hour): keep >= the reviews topic's retention "
        "(Kafka's default 7 days); older reviews are stored but not counted"))
    seen_shards: int = Field(8192, ge=1, le=1 << 20, description=(
        "seen sets per hour; keep reviews per hour / shards <= 512 for 8 bytes per id (README)"))
    max_sources: int = Field(1000, ge=1, description="distinct sources per bucket; more count as overflow_source")
    overflow_source: str = Field("(other)", min_length=1, description="the source name past max_sources")

    @field_validator("url")
    @classmethod
    def _a_redis_url(cls, url: SecretStr) -> SecretStr:
        """Fail at start-up, in one line and without echoing the URL (it may hold a password)."""
        if urlsplit(url.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("not a Redis URL: use redis://HOST:PORT/DB, rediss:// (TLS) or unix://PATH")
        return url

    @field_validator("cluster")
    @classmethod
    def _cluster_has_database_0_only(cls, cluster: bool, info: ValidationInfo) -> bool:
        """Checked on ``cluster`` (after ``url``) so that the error never echoes the URL and its password."""
        url = info.data.get("url")
        if cluster and url is not None and urlsplit(url.get_secret_value()).path.strip("/") not in ("", "0"):
            raise ValueError("SENTIMENT_REDIS__URL must name database 0 (or none) with SENTIMENT_REDIS__CLUSTER=true: "
                             "a Redis Cluster has no other database")
        return cluster


class WorkerSettings(BaseModel):
    app_id: str = Field("sentiment-worker", description="faust app id = Kafka consumer group")
    batch_max: int = Field(256, ge=1, description=(
        "events per micro-batch, at most: full while the topic lags, smaller when idle (batch_within_s)"))
    batch_within_s: float = Field(0.1, gt=0, description="seconds to wait for a batch to fill")
    max_text_chars: int = Field(20_000, ge=1, description="longer texts are dead-lettered")
    max_metadata_bytes: int = Field(16_384, ge=0, description="larger metadata is dead-lettered (0: none allowed)")
    retry_max_backoff_s: float = Field(30.0, gt=0, description="longest wait between retries of a sink")
    session_timeout_s: float = Field(30.0, ge=6, description="a dead worker's partitions move after this")
    metrics_port: int = Field(9108, ge=0, description="Prometheus metrics on metrics_address; 0 disables them")
    metrics_address: str = Field(
        "127.0.0.1", description="interface the metrics listen on; 0.0.0.0 in a pod, so the kubelet's probes reach it")
    reload_interval_s: float = Field(
        5.0, gt=0, description="how often (between batches) the worker asks the registry for the production model")
    overlap_io: Literal["auto", "on", "off"] = Field(
        "on", description="store batch N on a second thread while N+1 is labelled; auto: on with a GPU only")


class RegistrySettings(BaseModel):
    store_dir: Path | None = Field(None, description="where published models are copied; default models_dir/store")
    eval_set: str = Field("tweeteval-test", description="evaluation set publish and promote score on")
    metric: Literal["macro_f1", "macro_recall", "accuracy"] = "macro_f1"
    margin: float = Field(0.0, description="a candidate needs score >= production + margin to be promoted")

    @field_validator("store_dir")
    @classmethod
    def _absolute_store(cls, path: Path | None) -> Path | None:
        """Like ``models_dir``: a relative store is taken from the folder it was set in, once."""
        return path.expanduser().absolute() if path is not None else None


class DriftSettings(BaseModel):
    """Drift of the live label mix and confidence from the production model's reference (``stream.drift``)."""

    threshold: float = Field(0.25, gt=0, description="a drift score above this logs a warning (and can refresh)")
    min_events: int = Field(200, ge=1, description="an hour with fewer labelled reviews gets no score (too noisy)")
    confidence_weight: float = Field(
        1.0, ge=0, description="weight of the drop in mean top-class probability in the score")
    check_interval_s: float = Field(10.0, gt=0, description="how often a worker recomputes the score")
    refresh_config: Path | None = Field(
        None, description="refresh config: a worker whose drift crosses the threshold starts `sentiment refresh`")
    refresh_cooldown_s: int = Field(6 * 3600, ge=60, description="at most one drift-triggered refresh this often")


class DashboardSettings(BaseModel):
    corrections_enabled: bool = Field(
        False, description="show the label-correction form on the Reviews page. Anyone who reaches the dashboard "
                           "can then save corrections that `sentiment refresh` trains on: enable only on a trusted "
                           "network")
    max_upload_mb: int = Field(
        50, ge=1, le=2000, description="largest CSV the Classify page takes, in MB (the upload is held in the "
                                       "server's memory); label bigger files with `sentiment classify --csv`")


def default_models_dir() -> Path:
    """``models/`` in the project checkout when running from one (where `make demo` trains and registers), else
    the per-user ``$XDG_DATA_HOME/sentiment-stream/models`` (an installed package has no project folder)."""
    project = Path(__file__).resolve().parents[1]
    if (project / "pyproject.toml").is_file():
        return project / "models"
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "sentiment-stream" / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SENTIMENT_", env_nested_delimiter="__", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    model: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    registry: RegistrySettings = RegistrySettings()
    drift: DriftSettings = DriftSettings()
    dashboard: DashboardSettings = DashboardSettings()
    models_dir: Path = Field(default_factory=default_models_dir, description=(
        "the models home: runs/ (what `sentiment train` writes), store/ (the registry's copies), current "
        "(the fallback model); an absolute path, so every command finds the same models from any folder"))

    @field_validator("models_dir")
    @classmethod
    def _absolute_models_dir(cls, path: Path) -> Path:
        """A relative SENTIMENT_MODELS_DIR is taken from the folder it was set in, once: subprocesses (to_env)
        and later commands then name the same directory."""
        return path.expanduser().absolute()

    def runs_dir(self) -> Path:
        """Where `sentiment train` (and the demo) write run directories and experiments.csv."""
        return self.models_dir / "runs"

    def find_in_models_home(self, path: Path) -> Path:
        """``path`` as given when it exists, else the same path inside the models home or its runs/ (so
        ``runs/<run_id>/model`` and ``<run_id>`` name a trained run from any folder)."""
        if path.exists() or path.is_absolute():
            return path
        return next((p for p in (self.models_dir / path, self.runs_dir() / path) if p.exists()), path)

    def model_store(self) -> Path:
        """Where `sentiment models publish` copies model artifacts (a local or shared directory)."""
        return self.registry.store_dir or self.models_dir / "store"

    def to_env(self) -> dict[str, str]:
        """These settings as SENTIMENT_* variables, for a subprocess that must see the same config."""
        env: dict[str, str] = {}
        for name, value in self:
            items = value if isinstance(value, BaseModel) else [(None, value)]
            for field, v in items:
                if isinstance(v, SecretStr):
                    v = v.get_secret_value()
                if v is not None:
                    key = f"SENTIMENT_{name}__{field}" if field else f"SENTIMENT_{name}"
                    env[key.upper()] = str(v)
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings; a bad ``SENTIMENT_*`` value is a one-line ``SettingsError`` (a ``UserError``)."""
    try:
        return Settings()
    except (ValidationError, SourceError, UnicodeDecodeError) as err:
        raise settings_error(err) from None
