"""Label corrections against the real Postgres: stored beside the model's row, never over it, from the
CLI, the dashboard's review page and plain SQL alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from storage.db import get_engine
from storage.feedback import FeedbackError, add_correction, corrected_reviews, corrections
from storage.reviews import LabelledReview, insert_reviews
from storage.schema import review_sentiment as t
from stream.settings import Settings
from tests.support import invoke_cli, open_page


def labelled(ids: list[str], label: str = "positive") -> list[LabelledReview]:
    probs = [0.05, 0.05, 0.9] if label == "positive" else [0.9, 0.05, 0.05]
    return [LabelledReview(rid, f"text of {rid}", "feedback-test", datetime.now(UTC), label, 0.9, *probs, "tiny-v1")
            for rid in ids]


@pytest.fixture
def engine(settings: Settings):
    return get_engine(settings.postgres.url.get_secret_value())


def test_a_correction_keeps_the_model_row_and_names_what_it_replaces(engine, uid: str) -> None:
    rid = f"{uid}-1"
    insert_reviews(engine, labelled([rid]))
    first = add_correction(engine, rid, "negative", "ana", "sarcasm")
    second = add_correction(engine, rid, "neutral", "ben")
    assert (first.previous_label, first.label, first.author, first.note) == ("positive", "negative", "ana", "sarcasm")
    assert (second.previous_label, second.label) == ("negative", "neutral")
    with engine.connect() as conn:
        model_row = conn.execute(select(t.c.label, t.c.model_version).where(t.c.review_id == rid)).one()
        view = conn.execute(text("SELECT model_label, label, corrected, corrected_by FROM review_label "
                                 "WHERE review_id = :r"), {"r": rid}).one()
    assert tuple(model_row) == ("positive", "tiny-v1")  # the model's own row is untouched
    assert tuple(view) == ("positive", "neutral", True, "ben")
    assert [c.id for c in corrections(engine, review_id=rid)] == [second.id, first.id]
    latest = [c for c in corrected_reviews(engine) if c.review_id == rid]
    assert [(c.text, c.label, c.model_label) for c in latest] == [(f"text of {rid}", "neutral", "positive")]


def test_plain_sql_gets_the_replaced_label_and_an_author(engine, uid: str) -> None:
    rid = f"{uid}-sql"
    insert_reviews(engine, labelled([rid], "negative"))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO review_feedback (review_id, label) VALUES (:r, 'positive')"), {"r": rid})
    (c,) = corrections(engine, review_id=rid)
    assert (c.previous_label, c.label, c.author) == ("negative", "positive", "sentiment")


def test_bad_corrections_are_refused_with_what_to_do(engine, uid: str) -> None:
    rid = f"{uid}-bad"
    insert_reviews(engine, labelled([rid]))
    with pytest.raises(FeedbackError, match="unknown; use one of negative, neutral, positive"):
        add_correction(engine, rid, "great", "ana")
    with pytest.raises(FeedbackError, match="no labelled review .*sentiment reviews"):
        add_correction(engine, f"{uid}-missing", "negative", "ana")
    with pytest.raises(FeedbackError, match="needs an author"):
        add_correction(engine, rid, "negative", "  ")
    with engine.begin() as conn, pytest.raises(Exception, match="review_feedback_label_check"):
        conn.execute(text("INSERT INTO review_feedback (review_id, label) VALUES (:r, 'meh')"), {"r": rid})
    assert corrections(engine, review_id=rid) == []


def test_cli_corrects_and_lists(settings: Settings, engine, uid: str) -> None:
    rid = f"{uid}-cli"
    insert_reviews(engine, labelled([rid]))
    out = invoke_cli(settings, "feedback", rid, "Negative", "--by", "cli-user", "--note", "not a compliment")
    assert out.exit_code == 0, out.output
    assert f"{rid}: positive -> negative (by cli-user" in out.output
    listed = invoke_cli(settings, "feedback", "--limit", "200")
    assert listed.exit_code == 0 and rid in listed.output
    refused = invoke_cli(settings, "feedback", rid, "meh")
    assert refused.exit_code == 2 and "use one of negative, neutral, positive" in refused.output


def test_dashboard_review_page_saves_a_correction(app_env: Settings, engine, uid: str) -> None:  # noqa: F811
    source = "feedback-test"
    rid = f"{uid}-dash"
    insert_reviews(engine, labelled([rid]))
    at = open_page("reviews")
    at.text_input(key="reviews_search").input(f"text of {rid}").run()
    assert at.dataframe[0].value["review_id"].tolist() == [rid]
    at.selectbox(key="feedback_review").select(rid)
    at.selectbox(key="feedback_label").select("negative")
    at.text_input(key="feedback_author").input("dash-user")
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert f"{rid}: positive -> negative, by dash-user" in at.success[0].value
    (c,) = corrections(engine, review_id=rid)
    assert (c.label, c.previous_label, c.author, source) == ("negative", "positive", "dash-user", source)
    at = open_page("reviews")  # the table shows the correction beside the model's label
    at.text_input(key="reviews_search").input(f"text of {rid}").run()
    row = at.dataframe[0].value.iloc[0]
    assert (row["label"], row["corrected_label"]) == ("positive", "negative")
