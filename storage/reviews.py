"""Every read and write of labelled reviews in Postgres."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, any_, func, select

from storage import partitions
from storage.schema import review_key as key
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


# The columns a batch writes, each sent as one array (``unnest``), and their SQL types.
_COLUMNS = (("review_id", "text"), ("text", "text"), ("source", "text"), ("created_at", "timestamptz"),
            ("label", "text"), ("score", "real"), ("p_negative", "real"), ("p_neutral", "real"),
            ("p_positive", "real"), ("model_version", "text"), ("metadata", "jsonb"), ("kafka_topic", "text"),
            ("kafka_partition", "integer"), ("kafka_offset", "bigint"))
_NAMES = ", ".join(name for name, _ in _COLUMNS)
# How a value goes into its column's array: an array holds one type (1 and 0.5 would not mix: psycopg refuses the
# whole batch), and jsonb from its text, as SQLAlchemy sent it.
_SENT_AS: dict[str, Any] = {"real": float, "jsonb": json.dumps}
_STORED = tuple(f.name for f in fields(StoredLabel))  # what the insert returns and a replay reads, in that order
# One statement per batch: the claims first (``review_key``, ON CONFLICT DO NOTHING), then the rows of the ids
# claimed now, both from the same arrays. One array per column, not one parameter per value: the text is the same
# for every batch (prepared once per connection) and nothing is built per row but the columns' lists. The text is
# made from the constants above only; every value is a bound parameter.
_INSERT_BATCH = (
    "WITH batch AS (SELECT * FROM unnest("
    + ", ".join(f"%b::{sql_type}[]" for _, sql_type in _COLUMNS) + f") AS b({_NAMES})), "
    "claimed AS (INSERT INTO review_key (review_id, created_at) SELECT review_id, created_at FROM batch "
    "ON CONFLICT (review_id) DO NOTHING RETURNING review_id) "
    f"INSERT INTO review_sentiment ({_NAMES}) SELECT {_NAMES} FROM batch JOIN claimed USING (review_id) "
    f"RETURNING {', '.join(_STORED)}")


def insert_reviews(engine: Engine, reviews: Sequence[LabelledReview]) -> list[StoredLabel]:
    """Insert a batch in one transaction; a review id already stored is left as it is.

    Returns the stored label of every id in the batch (the row that won, whether written now or by an
    earlier delivery), so that trend counters count exactly what Postgres holds, even on a replay.
    """
    if not reviews:
        return []
    first: dict[str, LabelledReview] = {}
    for r in reviews:
        first.setdefault(r.review_id, r)
    batch = list(first.values())
    columns: list[list[Any]] = [[conv(getattr(r, name)) for r in batch] if (conv := _SENT_AS.get(sql_type))
                                else [getattr(r, name) for r in batch] for name, sql_type in _COLUMNS]
    with engine.begin() as conn:
        partitions.ensure(conn, [r.created_at for r in batch])
        # The claim decides: review_id is unique in review_key, not across review_sentiment's month partitions.
        rows = list(conn.exec_driver_sql(_INSERT_BATCH, tuple(columns)).all())
        if len(rows) < len(batch):
            stored = {row[0] for row in rows}
            replayed = [i for i in first if i not in stored]
            # Their stored times bound the months to read (constants: the planner prunes the others); no time
            # if their rows were deleted since (the claims go with them).
            times = conn.execute(select(key.c.created_at).where(key.c.review_id == any_(replayed))).scalars().all()
            if times:
                rows += conn.execute(select(*(t.c[name] for name in _STORED)).where(
                    t.c.review_id == any_(replayed), t.c.created_at.between(min(times), max(times)))).all()
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
        t.c.review_id, t.c.created_at, t.c.processed_at, t.c.source, t.c.label, t.c.score, t.c.model_version,
        t.c.text, corrected.label("corrected_label"),
    ).order_by(t.c.processed_at.desc(), t.c.review_id).limit(limit)
    if source:
        query = query.where(t.c.source == source)
    if label:
        query = query.where(t.c.label == label)
    if search:
        query = query.where(t.c.text.ilike(f"%{search}%"))
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]

