"""One settings model for every command and service.

Read from the environment (prefix ``SENTIMENT_``, nested fields joined by ``__``, e.g.
``SENTIMENT_POSTGRES__URL``) or a ``.env`` file in the working directory. The defaults match what
``make up`` starts on loopback, so nothing needs configuring for local use.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from sentiment_model.settings import ModelSettings


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    reviews_topic: str = "reviews"
    dlq_topic: str = "reviews.dlq"
    partitions: int = Field(3, ge=1, description="partitions of the reviews topic when we create it")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None

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
    url: SecretStr = SecretStr("postgresql+psycopg://sentiment:sentiment@127.0.0.1:5432/sentiment")
    statement_timeout_ms: int = Field(30_000, ge=0, description="for read-only user queries")


class RedisSettings(BaseModel):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    key_prefix: str = "sentiment"
    minute_ttl_s: int = Field(48 * 3600, ge=60, description="how long per-minute buckets live")
    hour_ttl_s: int = Field(35 * 24 * 3600, ge=3600, description="how long per-hour buckets live")


class WorkerSettings(BaseModel):
    app_id: str = Field("sentiment-worker", description="faust app id = Kafka consumer group")
    batch_max: int = Field(64, ge=1, description="events per micro-batch, at most")
    batch_within_s: float = Field(0.1, gt=0, description="seconds to wait for a batch to fill")
    max_text_chars: int = Field(20_000, ge=1, description="longer texts are dead-lettered")
    max_metadata_bytes: int = Field(16_384, ge=0, description="larger metadata is dead-lettered")
    retry_max_backoff_s: float = Field(30.0, gt=0, description="longest wait between retries of a sink")
    session_timeout_s: float = Field(30.0, ge=6, description="a dead worker's partitions move after this")
    metrics_port: int = Field(9108, ge=0, description="Prometheus metrics on 127.0.0.1; 0 disables them")
    reload_interval_s: float = Field(
        5.0, gt=0, description="how often (between batches) the worker asks the registry for the production model")
    overlap_io: Literal["auto", "on", "off"] = Field(
        "auto", description="store batch N while batch N+1 is labelled; auto: on with a GPU")


class RegistrySettings(BaseModel):
    store_dir: Path | None = Field(None, description="where published models are copied; default models_dir/store")
    eval_set: str = Field("tweeteval-test", description="evaluation set publish and promote score on")
    metric: Literal["macro_f1", "macro_recall", "accuracy"] = "macro_f1"
    margin: float = Field(0.0, description="a candidate needs score >= production + margin to be promoted")


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SENTIMENT_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    postgres: PostgresSettings = PostgresSettings()
    redis: RedisSettings = RedisSettings()
    model: ModelSettings = ModelSettings()
    worker: WorkerSettings = WorkerSettings()
    registry: RegistrySettings = RegistrySettings()
    drift: DriftSettings = DriftSettings()
    models_dir: Path = Field(Path("models"), description="where trained and demo models are kept")

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
    return Settings()
