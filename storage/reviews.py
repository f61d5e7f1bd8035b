"""Every read and write of labelled reviews in Postgres."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, any_, func, select
from sqlalchemy.dialects.postgresql import insert

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
    label_of = (t.c.review_id, t.c.label, t.c.source, t.c.created_at, t.c.score)
    with engine.begin() as conn:
        partitions.ensure(conn, (r.created_at for r in first.values()))
        # The claim decides: review_id is unique in review_key, not across review_sentiment's month partitions.
        claimed = set(conn.execute(
            insert(key).on_conflict_do_nothing(index_elements=["review_id"]).returning(key.c.review_id),
            [{"review_id": i, "created_at": r.created_at} for i, r in first.items()]).scalars())
        rows = conn.execute(insert(t).returning(*label_of),
                            [asdict(r) for i, r in first.items() if i in claimed]).all() if claimed else []
        if replayed := [i for i in first if i not in claimed]:
            # Their stored times bound the months to read (constants: the planner prunes the others); no time
            # if their rows were deleted since (the claims go with them).
            times = conn.execute(select(key.c.created_at).where(key.c.review_id == any_(replayed))).scalars().all()
            if times:
                rows += conn.execute(select(*label_of).where(t.c.review_id == any_(replayed),
                                                             t.c.created_at.between(min(times), max(times)))).all()
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

