"""Monthly partitions of ``review_sentiment`` and their retention (migration 0006; README "Querying the results").

The database does the work, in SECURITY DEFINER functions owned by the operator, so the worker needs no DDL
rights: ``review_sentiment_partitions`` makes the months of a batch exist (called in the batch's transaction
by ``storage.reviews.insert_reviews``), ``review_sentiment_maintain`` makes this month and the next three
exist and drops the months wholly older than the retention, with their claims. The retention lives in
``review_partition_policy``, which only the operator (`sentiment init`) writes: a worker cannot shorten it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Boolean, CheckConstraint, Column, Connection, Engine, Integer, Table, text

from storage.schema import metadata

log = logging.getLogger(__name__)

MAINTAIN_EVERY_S = 3600.0
PARTITION_NAME = r"review_sentiment_p\d{6}"  # the months: made at run time by the functions, not by migrations

# One row (id is always true): the retention the maintenance functions apply.
review_partition_policy = Table(
    "review_partition_policy", metadata,
    Column("id", Boolean, primary_key=True, server_default=text("true")),
    Column("retention_days", Integer, nullable=False, server_default=text("0")),
    CheckConstraint("id"),
    CheckConstraint("retention_days >= 0"),
)


@dataclass(frozen=True)
class Partition:
    name: str
    month: datetime  # first instant, UTC
    rows: int  # the planner's estimate (pg_class.reltuples), -1 before the first ANALYZE


def ensure(conn: Connection, times: Iterable[datetime]) -> int:
    """Make the month partition of every time exist, in ``conn``'s transaction; return how many were created.

    A month wholly older than the retention is refused with a data error (SQLSTATE 22008), so its rows are
    dead-lettered rather than stored again after retention dropped them."""
    months = sorted({t.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0) for t in times})
    if not months:
        return 0
    return conn.execute(text("SELECT review_sentiment_partitions(CAST(:months AS timestamptz[]))"),
                        {"months": months}).scalar_one()


def maintain(engine: Engine) -> list[str]:
    """Create the partitions ahead (this month and the next three); drop the expired ones; return those dropped."""
    with engine.begin() as conn:
        return list(conn.execute(text("SELECT review_sentiment_maintain()")).scalars())


def apply_retention(engine: Engine, days: int) -> list[str]:
    """Set the retention (0: keep forever; the operator's engine) and apply it now; return the partitions dropped."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE review_partition_policy SET retention_days = :d WHERE retention_days <> :d"),
                     {"d": days})
    return maintain(engine)


def partitions(engine: Engine) -> list[Partition]:
    """The month partitions, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.relname, to_timestamp(right(c.relname, 6), 'YYYYMM') AT TIME ZONE 'UTC', c.reltuples::bigint "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'review_sentiment'::regclass AND c.relname ~ '^review_sentiment_p[0-9]{6}$' "
            "ORDER BY 1")).all()
    return [Partition(name, month.replace(tzinfo=UTC), rows) for name, month, rows in rows]


def start_maintenance(engine: Engine, stop: threading.Event, every_s: float = MAINTAIN_EVERY_S) -> threading.Thread:
    """Run ``maintain`` now and every ``every_s`` in a daemon thread until ``stop`` is set (the worker's part:
    months exist before their first review, and retention applies without a scheduler). A failure is logged
    and tried again next time: partitions are also made on demand, and a late drop only keeps data longer."""

    def loop() -> None:
        while True:
            try:
                dropped = maintain(engine)
                if dropped:
                    log.info("retention dropped partitions %s", ", ".join(dropped))
            except Exception as e:  # noqa: BLE001 - never the worker's end; the next round retries
                first = (str(e).splitlines() or [type(e).__name__])[0]
                log.warning("partition maintenance failed (%s); retrying in %.0fs", first, every_s)
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=loop, name="partition-maintenance", daemon=True)
    thread.start()
    return thread
