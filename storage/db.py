"""Engines and the errors that mean "Postgres is not there" rather than "this data is wrong"."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine, exc, make_url


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One pooled engine per URL; pre-ping so a restarted Postgres costs one retry, not a crash."""
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)


def safe_address(url: str) -> str:
    """host:port/db of a URL without its credentials, for messages and logs."""
    u = make_url(url)
    return f"{u.host or 'localhost'}:{u.port or 5432}/{u.database}"


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying (connection lost, server shutting down, timeouts)."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, exc.OperationalError | exc.InterfaceError | exc.TimeoutError)
