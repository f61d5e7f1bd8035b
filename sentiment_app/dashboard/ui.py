"""What every page shares: settings read per run, cached clients, and the "service is down" message."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis
import streamlit as st
from pydantic import ValidationError
from pydantic_settings import SettingsError as SourceError
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from sentiment_model.settings_error import settings_error as source_error
from storage.db import get_engine, safe_address
from storage.roles import Role
from storage.trends import TrendCounters
from stream.services import ServiceUnavailable, redis_address, trend_counters
from stream.settings import Settings

COLORS = {"negative": "#d62728", "neutral": "#9e9e9e", "positive": "#2ca02c"}


def load_settings() -> Settings:
    """Fresh settings on every run (not the lru-cached ``get_settings``): the server's environment decides,
    and tests re-point it between runs in one process. A bad ``SENTIMENT_*`` value stops the page with one
    line naming it, not a traceback."""
    try:
        return Settings()
    except ValidationError as e:
        st.error(settings_error(e), icon=":material/error:")
        st.stop()
    except (SourceError, UnicodeDecodeError) as e:  # a section given as unparsable JSON, a .env not in UTF-8
        st.error(str(source_error(e)), icon=":material/error:")
        st.stop()


def settings_error(e: ValidationError) -> str:
    """The first bad setting as its variable name and what is wrong (never its value: it may be a secret)."""
    first = e.errors()[0]
    name = "SENTIMENT_" + "__".join(str(part) for part in first["loc"]).upper()
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return (f"Setting {name} is invalid: {first['msg']}{more}. Fix it in the environment or `.env` and restart "
            "`sentiment dashboard`.")


@contextlib.contextmanager
def reaching(service: str, address: str) -> Iterator[None]:
    """Turn a client's connection error into ServiceUnavailable, which names the service and its address."""
    try:
        yield
    except redis.RedisError as e:
        raise ServiceUnavailable(service, address, e) from None
    except (OperationalError, InterfaceError, PoolTimeout) as e:
        raise ServiceUnavailable(service, address, getattr(e, "orig", None) or e) from None


def show_unavailable(e: ServiceUnavailable) -> None:
    """The message a page shows instead of a traceback when Redis or Postgres is down."""
    reason = str(e).splitlines()[0].removeprefix(f"{e.service} is not reachable at {e.address}: ").rstrip(".")
    st.error(f"**{e.service} is not reachable at `{e.address}`** ({reason}).\n\n"
             f"Start the local stack with `make up`, or check the address in your `SENTIMENT_*` settings / `.env`.",
             icon=":material/error:")


@st.cache_resource(show_spinner=False, max_entries=8)
def _counters(key: str, _settings: Settings) -> TrendCounters:
    return trend_counters(_settings)


def counters(settings: Settings) -> tuple[TrendCounters, str]:
    """One Redis client per URL and prefix for the whole server (its pool reconnects after an outage)."""
    url = settings.redis.url.get_secret_value()
    return _counters(f"{url}|{settings.redis.key_prefix}", settings), redis_address(url)


def engine(settings: Settings, role: Role = "reader") -> tuple[Engine, str]:
    """The pooled engine (cached per URL by storage.db) of ``role``, and its address without credentials.
    Pages read as the reader; only the correction form writes, as the feedback role (README "Security")."""
    url = settings.postgres.dsn(role)
    return get_engine(url), safe_address(url)
