"""Reach Kafka, Postgres and Redis, and say plainly which one is missing and what to run."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

import redis
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from sentiment_model.artifact import is_model_dir
from sentiment_model.errors import UserError
from storage.db import get_engine, safe_address
from storage.trends import TrendCounters
from stream.dlq import MAX_MESSAGE_BYTES
from stream.settings import Settings

HINT = "start the local stack with `make up` (or check the address in your SENTIMENT_* settings / .env)"


class ServiceUnavailable(UserError):
    """A service the command needs is down or unreachable: the user starts it or fixes its address."""

    def __init__(self, service: str, address: str, error: object, hint: str = HINT) -> None:
        self.service, self.address, self.hint = service, address, hint
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        super().__init__(f"{service} is not reachable at {address}: {first}\n  -> {hint}")


@dataclass(frozen=True)
class Health:
    service: str
    address: str
    ok: bool
    detail: str


def _probe_tcp(service: str, servers: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not after a client's long bootstrap retries, when nothing listens."""
    errors = []
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
            return
        except (OSError, ValueError) as e:
            errors.append(e)
    raise ServiceUnavailable(service, servers, errors[-1] if errors else "no address")


def kafka_admin(settings: Settings) -> KafkaAdminClient:
    address = settings.kafka.bootstrap_servers
    _probe_tcp("Kafka", address)
    try:
        return KafkaAdminClient(request_timeout_ms=10_000, **settings.kafka.client_options())
    except KafkaError as e:
        raise ServiceUnavailable("Kafka", address, e) from None


def check_postgres(settings: Settings) -> Health:
    url = settings.postgres.url.get_secret_value()
    try:
        with get_engine(url).connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        return Health("Postgres", safe_address(url), True, f"server {version}")
    except SQLAlchemyError as e:
        raise ServiceUnavailable("Postgres", safe_address(url), getattr(e, "orig", None) or e) from None


def redis_address(url: str) -> str:
    return url.split("@")[-1].removeprefix("redis://").removeprefix("rediss://")


def check_redis(settings: Settings) -> Health:
    url = settings.redis.url.get_secret_value()
    try:
        info = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3).info("server")
        return Health("Redis", redis_address(url), True, f"server {info.get('redis_version')}")
    except redis.RedisError as e:
        raise ServiceUnavailable("Redis", redis_address(url), e) from None


def check_kafka(settings: Settings) -> Health:
    admin = kafka_admin(settings)
    try:
        topics = admin.list_topics()
    except KafkaError as e:
        raise ServiceUnavailable("Kafka", settings.kafka.bootstrap_servers, e) from None
    finally:
        admin.close()
    missing = {settings.kafka.reviews_topic, settings.kafka.dlq_topic} - set(topics)
    detail = f"topics missing: {', '.join(sorted(missing))} (run `sentiment init`)" if missing else "topics ok"
    return Health("Kafka", settings.kafka.bootstrap_servers, not missing, detail)


def trend_counters(settings: Settings) -> TrendCounters:
    r = settings.redis
    return TrendCounters.from_url(r.url.get_secret_value(), cluster=r.cluster, prefix=r.key_prefix,
                                  minute_ttl_s=r.minute_ttl_s, hour_ttl_s=r.hour_ttl_s, seen_ttl_s=r.seen_ttl_s,
                                  seen_shards=r.seen_shards, max_sources=r.max_sources,
                                  overflow_source=r.overflow_source)


def check_workers(settings: Settings) -> Health:
    """The consumer group's members and how far behind the reviews topic it is."""
    from kafka import KafkaConsumer, TopicPartition

    group, topic = settings.worker.app_id, settings.kafka.reviews_topic
    admin = kafka_admin(settings)
    consumer = KafkaConsumer(**settings.kafka.client_options())
    try:
        described = admin.describe_groups([group])[group]
        committed = admin.list_group_offsets(group).get(group, {})
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        end = consumer.end_offsets(tps) if tps else {}
        lag = sum(end[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps)
    except KafkaError as e:
        raise ServiceUnavailable("Kafka", settings.kafka.bootstrap_servers, e) from None
    finally:
        admin.close()
        consumer.close()
    members = len(described.get("members") or [])
    detail = f"group {group}: {members} worker(s), {described.get('group_state')}, lag {lag}"
    if not members:
        detail += " (start one: sentiment worker)"
    return Health("Workers", group, members > 0, detail)


def check_model(settings: Settings) -> Health:
    """Which model a worker started now would serve (``serving_model``), and whether it is readable here."""
    from sentiment_model.errors import ModelNotFoundError
    from storage import registry
    from stream.serving import serving_model

    def production() -> registry.ModelRef | None:
        try:
            return registry.production(get_engine(settings.postgres.url.get_secret_value()), settings.model_store())
        except SQLAlchemyError:
            return None  # no registry yet (or Postgres down: its own row says so)

    try:
        ref, source = serving_model(settings, production)
    except registry.RegistryError as e:  # production's artifact lies outside the model store: never loaded
        return Health("Model", str(settings.model_store()), False, str(e))
    except ModelNotFoundError as e:
        return Health("Model", str(settings.models_dir / "current"), False, str(e).split(":", 1)[0]
                      + " (run `make demo` or `sentiment train ...`)")
    ok = is_model_dir(ref.artifact_dir)
    if source == "registry":
        return Health("Model", str(ref.artifact_dir), ok, f"production {ref.version} (registry)" if ok
                      else f"production {ref.version}: artifact not readable here")
    where = ("pinned by SENTIMENT_MODEL__DIR" if source == "pinned"
             else "the current link; not in the registry: `sentiment models publish` registers it")
    return Health("Model", str(ref.artifact_dir), ok, f"version {ref.version} ({where})" if ok
                  else "config.json missing")


def check_drift(settings: Settings) -> Health:
    """The newest hour's drift score the workers stored (degraded above the threshold)."""
    from stream.drift import latest_score

    url = settings.redis.url.get_secret_value()
    try:
        score = latest_score(trend_counters(settings), hours=2)
    except redis.RedisError as e:
        raise ServiceUnavailable("Redis", redis_address(url), e) from None
    if score is None:
        return Health("Drift", redis_address(url), True, "no score in the last 2 hours (too few reviews, or the "
                      "model has no reference profile)")
    detail = (f"hour {score.hour[:13]}: {score.score:.3f} (label PSI {score.label_psi:.3f}, confidence drop "
              f"{score.confidence_drop:+.3f}) vs threshold {score.threshold:g}, model {score.version}")
    return Health("Drift", redis_address(url), not score.drifted,
                  detail + ("; consider `sentiment refresh`" if score.drifted else ""))


def create_topics(settings: Settings, partitions: int | None = None) -> list[str]:
    """Create the reviews and dead-letter topics if missing; returns those created."""
    k = settings.kafka
    wanted = {k.reviews_topic: partitions or k.partitions, k.dlq_topic: 1}
    configs = {k.dlq_topic: {"max.message.bytes": str(MAX_MESSAGE_BYTES)}}
    admin = kafka_admin(settings)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, n, 1, topic_configs=configs.get(name)) for name, n in wanted.items()
               if name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently by another `init`
                admin.create_topics(new, timeout_ms=30_000, wait_for_metadata=True)
        return [t.name for t in new]
    except KafkaError as e:
        raise ServiceUnavailable("Kafka", k.bootstrap_servers, e) from None
    finally:
        admin.close()
