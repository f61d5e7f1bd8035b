"""Every read and write of labelled reviews in Postgres."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.dialects.postgresql import insert

from storage.schema import review_sentiment as t


@dataclass(frozen=True)
class LabelledReview:
    review_id: str
    text: str
    source: str
    created_at: datetime
    label: str
    score: float
    p_negative: float
    p_neutral: float
    p_positive: float
    model_version: str
    metadata: dict[str, Any] = field(default_factory=dict)
    kafka_topic: str | None = None
    kafka_partition: int | None = None
    kafka_offset: int | None = None


@dataclass(frozen=True)
class StoredLabel:
    """What the trend counters need of a stored row."""

    review_id: str
    label: str
    source: str
    created_at: datetime
    score: float = 1.0  # probability of the label: summed per hour for the drift monitor


def insert_reviews(engine: Engine, reviews: Sequence[LabelledReview]) -> list[StoredLabel]:
    """Insert a batch in one transaction; a review id already stored is left as it is.

    Returns the stored label of every id in the batch (the row that won, whether written now or by an
    earlier delivery), so that trend counters count exactly what Postgres holds, even on a replay.
    """
    if not reviews:
        return []
    ids = [r.review_id for r in reviews]
    with engine.begin() as conn:
        conn.execute(insert(t).on_conflict_do_nothing(index_elements=["review_id"]), [asdict(r) for r in reviews])
        rows = conn.execute(
            select(t.c.review_id, t.c.label, t.c.source, t.c.created_at, t.c.score).where(t.c.review_id.in_(ids))
        )
        return [StoredLabel(*row) for row in rows]


def count_by_label(engine: Engine, since: datetime | None = None) -> dict[str, int]:
    query = select(t.c.label, func.count()).group_by(t.c.label)
    if since is not None:
        query = query.where(t.c.created_at >= since)
    with engine.connect() as conn:
        return {label: n for label, n in conn.execute(query)}


def latest_reviews(
    engine: Engine,
    limit: int = 20,
    source: str | None = None,
    label: str | None = None,
    search: str | None = None,
) -> list[dict[str, Any]]:
    """Newest labelled reviews first (by processing time), optionally filtered; ``corrected_label`` is the
    latest correction people made (``review_feedback``), else None."""
    from storage.feedback import review_feedback as fb

    corrected = (select(fb.c.label).where(fb.c.review_id == t.c.review_id).order_by(fb.c.id.desc()).limit(1)
                 .scalar_subquery())
    query = select(
        t.c.review_id, t.c.created_at, t.c.source, t.c.label, t.c.score, t.c.model_version, t.c.text,
        corrected.label("corrected_label"),
    ).order_by(t.c.processed_at.desc(), t.c.review_id).limit(limit)
    if source:
        query = query.where(t.c.source == source)
    if label:
        query = query.where(t.c.label == label)
    if search:
        query = query.where(t.c.text.ilike(f"%{search}%"))
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def run_readonly_sql(
    engine: Engine, sql: str, timeout_ms: int = 30_000, max_rows: int = 1000
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a user's query in a READ ONLY transaction with a statement timeout; never commits."""
    with engine.connect() as conn, conn.begin() as tx:
        conn.execute(text("SET TRANSACTION READ ONLY"))
        conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": str(timeout_ms)})
        result = conn.execute(text(sql))
        columns = list(result.keys()) if result.returns_rows else []
        rows = [tuple(r) for r in result.fetchmany(max_rows)] if result.returns_rows else []
        tx.rollback()
    return columns, rows
