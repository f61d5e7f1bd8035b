"""Label corrections by people (``review_feedback``): every write and read of them.

A correction is a new row that names the review, the corrected label, who made it and (filled by a
trigger, so plain SQL inserts get it too) the label it replaces. The model's own row in
``review_sentiment`` is never changed: what the model said and what people say stay side by side, and
``review_label`` (a view) gives the current label of every review.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Identity,
    Index,
    Table,
    Text,
    func,
    insert,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import distinct_on

from sentiment_model.errors import UserError
from sentiment_model.labels import LABELS
from storage.schema import metadata
from storage.schema import review_sentiment as reviews

review_feedback = Table(
    "review_feedback", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("review_id", Text, ForeignKey("review_key.review_id", ondelete="CASCADE"), nullable=False),
    Column("label", Text, nullable=False),
    Column("previous_label", Text, nullable=False),
    Column("author", Text, nullable=False, server_default=func.current_user()),
    Column("note", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("label IN ('negative', 'neutral', 'positive')", name="review_feedback_label_check"),
    Index("review_feedback_review", "review_id", "id"),
)


class FeedbackError(UserError):
    """A correction that cannot be stored; the message says what to do instead."""


AUTHOR_MAX = 64
NOTE_MAX = 500
_AUTHOR_PUNCTUATION = frozenset(" .-_'@+")
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")  # Hangul fillers: letters that show as nothing
# C0/C1 controls (line breaks and escape sequences among them), line separators and bidirectional overrides.
_NOT_IN_NOTES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def check_author(author: str) -> str:
    """The author, trimmed: a name or login of 1-64 letters, digits, spaces and ``.-_'@+``.

    Corrections feed ``sentiment refresh``, so who made one must be a plain, bounded name a reader can
    trust on a terminal or a page (no markup, no control characters, no megabyte of text).
    """
    author = unicodedata.normalize("NFC", author).strip()  # an accent typed as a combining mark counts once
    if not author:
        raise FeedbackError("a correction needs an author (--by NAME)")
    if len(author) > AUTHOR_MAX or not all((c.isalnum() and c not in _INVISIBLE_LETTERS) or c in _AUTHOR_PUNCTUATION
                                           for c in author):
        shown = author[:AUTHOR_MAX] + ("..." if len(author) > AUTHOR_MAX else "")
        raise FeedbackError(f"author {shown!r}: use a name of at most {AUTHOR_MAX} letters, digits, spaces "
                            "or . - _ ' @ + (e.g. --by ana.lopez)")
    return author


def check_note(note: str | None) -> str | None:
    """The note, trimmed (None if empty): one line of at most 500 characters, no control characters."""
    note = (note or "").strip()
    if not note:
        return None
    if len(note) > NOTE_MAX:
        raise FeedbackError(f"note of {len(note)} characters: keep it to {NOTE_MAX} (one or two sentences)")
    if _NOT_IN_NOTES.search(note):
        raise FeedbackError("note: remove line breaks, tabs and other control characters (one line of text)")
    return note


@dataclass(frozen=True)
class Correction:
    id: int
    review_id: str
    label: str
    previous_label: str
    author: str
    note: str | None
    created_at: datetime


@dataclass(frozen=True)
class CorrectedReview:
    """A review's text with the label people gave it last: what a refresh trains on."""

    review_id: str
    text: str
    label: str
    model_label: str
    corrected_at: datetime


def default_author() -> str:
    """The login name, or '' where there is none (a container user without a passwd entry)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def add_correction(engine: Engine, review_id: str, label: str, author: str, note: str | None = None) -> Correction:
    """Store one correction of a labelled review (author and note checked: ``check_author``, ``check_note``)."""
    if label not in LABELS:
        raise FeedbackError(f"label {label!r} unknown; use one of {', '.join(LABELS)}")
    author, note = check_author(author), check_note(note)
    with engine.begin() as conn:
        if conn.execute(select(reviews.c.review_id).where(reviews.c.review_id == review_id)).first() is None:
            raise FeedbackError(f"no labelled review {review_id!r}; `sentiment reviews` lists recent ids")
        try:
            row = conn.execute(insert(review_feedback).values(review_id=review_id, label=label, author=author,
                                                              note=note).returning(review_feedback)).one()
        except sa_exc.IntegrityError as e:  # deleted meanwhile
            raise FeedbackError(f"review {review_id!r} cannot be corrected: {str(e.orig).splitlines()[0]}") from None
    return Correction(**row._mapping)


def corrections(engine: Engine, limit: int = 50, review_id: str | None = None) -> list[Correction]:
    """The latest corrections, newest first."""
    query = select(review_feedback).order_by(review_feedback.c.id.desc()).limit(limit)
    if review_id is not None:
        query = query.where(review_feedback.c.review_id == review_id)
    with engine.connect() as conn:
        return [Correction(**r._mapping) for r in conn.execute(query)]


def corrected_reviews(engine: Engine) -> list[CorrectedReview]:
    """Every corrected review once, with its latest correction (ordered by review id: stable input)."""
    f = review_feedback
    latest = (select(f.c.review_id, f.c.label, f.c.created_at)
              .ext(distinct_on(f.c.review_id)).order_by(f.c.review_id, f.c.id.desc()).subquery())
    query = (select(latest.c.review_id, reviews.c.text, latest.c.label, reviews.c.label.label("model_label"),
                    latest.c.created_at)
             .join(reviews, reviews.c.review_id == latest.c.review_id).order_by(latest.c.review_id))
    with engine.connect() as conn:
        return [CorrectedReview(*r) for r in conn.execute(query)]
