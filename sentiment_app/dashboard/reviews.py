"""Reviews: the latest labelled reviews from Postgres, filtered by label, source and text; correct a label."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import Engine, select
from sqlalchemy.exc import ProgrammingError

from sentiment_app.dashboard.ui import engine, load_settings, reaching, show_unavailable
from sentiment_app.terminal_text import markdown_literal
from sentiment_model.labels import LABELS
from storage.feedback import FeedbackError, add_correction, default_author
from storage.reviews import count_by_label, latest_reviews
from storage.schema import review_sentiment as t
from stream.services import ServiceUnavailable

# The id first, then the processing time the rows are sorted by; the long model version last.
COLUMNS = ["review_id", "processed_at", "label", "corrected_label", "score", "source", "text", "model_version"]
ALL = "all"
SAVED = "reviews_corrections_saved"
FLASH = "reviews_flash"  # the last correction's message, shown again after the rerun that redraws the table


def reviews_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows of ``latest_reviews`` as a table, newest first, in the order a reader scans them; a review
    nobody corrected has a blank correction (not None)."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["corrected_label"] = frame["corrected_label"].fillna("")
    return frame


def review_choice(row: pd.Series, width: int = 70) -> str:
    """How the correction form lists a review: id, current label (and its correction) and the start of the text,
    so that two reviews with similar ids cannot be mixed up."""
    label = row["label"] if not row["corrected_label"] else f"{row['label']}, corrected to {row['corrected_label']}"
    text = " ".join(str(row["text"]).split())
    return f"{row['review_id']} · {label} · {text[:width]}{'…' if len(text) > width else ''}"


def recent_sources(db: Engine, scan: int = 5000) -> list[str]:
    """Sources among the latest ``scan`` reviews: a bounded query (a DISTINCT over the whole table is a
    full index scan); older sources can still be typed into the filter."""
    latest = select(t.c.source).order_by(t.c.created_at.desc()).limit(scan).subquery()
    with db.connect() as conn:
        return list(conn.execute(select(latest.c.source).distinct().order_by(latest.c.source)).scalars())


def render() -> None:
    st.title("Reviews")
    settings = load_settings()
    db, address = engine(settings)
    try:
        with reaching("Postgres", address):
            sources = recent_sources(db)
            since = datetime.now(UTC) - timedelta(hours=24)
            last_day = count_by_label(db, since)
            label_col, source_col, search_col, limit_col = st.columns([1, 1, 2, 1])
            label = label_col.selectbox("label", [ALL, *LABELS], key="reviews_label")
            source = source_col.selectbox("source", [ALL, *sources], key="reviews_source", accept_new_options=True)
            search = search_col.text_input("text contains", key="reviews_search").strip()
            limit = limit_col.number_input("rows", 10, 1000, 100, step=10, key="reviews_limit")
            rows = latest_reviews(db, int(limit), None if source == ALL else source, None if label == ALL else label,
                                  search or None)
    except ServiceUnavailable as e:
        show_unavailable(e)
        return
    except ProgrammingError as e:  # e.g. the table is missing: the schema was never created
        st.error(f"Postgres at `{address}` answered, but the query failed: {str(e.orig).splitlines()[0]}.\n\n"
                 "Create or upgrade the schema with `sentiment init` (or `make up`).", icon=":material/error:")
        return
    columns = st.columns(len(LABELS))
    for column, name in zip(columns, LABELS, strict=True):
        column.metric(f"{name}, last 24 h (all sources, by creation time)", f"{last_day.get(name, 0):,}")
    frame = reviews_frame(rows)
    st.dataframe(frame, hide_index=True, width="stretch", key="reviews_table", column_config={
        "review_id": st.column_config.TextColumn("review id", width="medium"),  # whole ids, not auto-sized
        "processed_at": st.column_config.DatetimeColumn(
            "processed (UTC)", format="YYYY-MM-DD HH:mm:ss", help="when the worker stored the label"),
        "score": st.column_config.NumberColumn(format="%.2f", width="small"),
        "label": st.column_config.TextColumn(width="small"),
        "corrected_label": "corrected to",
        "model_version": "model",
        "text": st.column_config.TextColumn(width="large"),
    })
    st.caption(f"The {len(frame)} reviews processed last, newest first by processing time (when the worker "
               f"stored the label), from Postgres at `{address}`.")
    if flash := st.session_state.pop(FLASH, None):
        st.success(flash, icon=":material/check:")
    if settings.dashboard.corrections_enabled:
        correction_form(engine(settings, "feedback")[0], frame)
    else:  # off by default: anyone who reaches the page could otherwise feed `sentiment refresh`
        st.caption("Label corrections are off on this dashboard: use `sentiment feedback REVIEW_ID LABEL`, or set "
                   "SENTIMENT_DASHBOARD__CORRECTIONS_ENABLED=true where only trusted people reach it.")


def correction_form(db: Engine, frame: pd.DataFrame) -> None:
    """A person's correction of one shown review, stored beside the model's label (``review_feedback``)."""
    if frame.empty:
        return
    # After each correction the picker is a new widget (a fresh key; the browser would keep showing the old
    # label otherwise), still on the review just corrected.
    saved, last = st.session_state.get(SAVED, (0, None))
    with st.form("correct_label", clear_on_submit=False):
        st.subheader("Correct a label")
        shown = {row["review_id"]: review_choice(row) for _, row in frame.iterrows()}
        id_col, label_col, by_col = st.columns([3, 1, 1])
        review_id = id_col.selectbox("review (id · current label · text)", list(shown),
                                     index=list(shown).index(last) if last in shown else 0,
                                     key=f"feedback_review_{saved}" if saved else "feedback_review",
                                     format_func=shown.__getitem__)
        label = label_col.selectbox("correct label", LABELS, key="feedback_label")
        author = by_col.text_input("your name", default_author(), key="feedback_author")
        note = st.text_input("note (optional)", key="feedback_note")
        if st.form_submit_button("Save correction"):
            try:
                c = add_correction(db, review_id, label, author.strip(), note.strip() or None)
            except FeedbackError as e:
                st.error(markdown_literal(e), icon=":material/error:")
            else:  # run the page again, so that the table above shows the correction
                st.session_state[FLASH] = (f"{markdown_literal(c.review_id)}: {c.previous_label} -> {c.label}, by "
                                           f"{markdown_literal(c.author)}. The next `sentiment refresh` trains on it.")
                st.session_state[SAVED] = (saved + 1, c.review_id)
                st.rerun()
