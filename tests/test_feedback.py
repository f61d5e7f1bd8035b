"""Label corrections against the real Postgres: stored beside the model's row, never over it, from the
CLI, the dashboard's review page and plain SQL alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import select, text

from sentiment_app.terminal_text import clean
from storage.db import get_engine
from storage.feedback import FeedbackError, add_correction, check_author, corrected_reviews, corrections
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


def test_authors_and_notes_are_bounded_plain_text(engine, uid: str) -> None:
    rid = f"{uid}-val"
    insert_reviews(engine, labelled([rid]))
    for author in ("[/x]", "a" * 65, "ana\x1b[31m", "ana\nben", "<b>ana</b>", "ana\u202e"):
        with pytest.raises(FeedbackError, match="author .*at most 64 letters, digits"):
            add_correction(engine, rid, "negative", author)
    for note, why in (("x" * 501, "keep it to 500"), ("line\nbreak", "control characters"),
                      ("\x1b[2Jwiped", "control characters"), ("tab\there", "control characters")):
        with pytest.raises(FeedbackError, match=why):
            add_correction(engine, rid, "negative", "ana", note)
    assert corrections(engine, review_id=rid) == []
    ok = add_correction(engine, rid, "negative", "  Jos\u00e9 O'Brien-N\u00fa\u00f1ez ", "  " + "y" * 500 + " ")
    assert (ok.author, ok.note) == ("José O'Brien-Núñez", "y" * 500)  # trimmed, non-ASCII names welcome
    assert add_correction(engine, rid, "neutral", "ana.lopez+qa@example.com", "   ").note is None


def test_cli_refuses_a_bad_author_in_one_line_and_lists_stored_text_literally(settings: Settings, engine,
                                                                               uid: str) -> None:
    rid = f"{uid}-markup[/x]\x1b]0;owned\x07"  # review ids come from producers: anything at all
    insert_reviews(engine, labelled([rid]))
    out = invoke_cli(settings, "feedback", rid, "negative", "--by", "[/x]")
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: author '[/x]'") and "Traceback" not in out.output
    with engine.begin() as conn:  # plain SQL: the database checks author and note (migration 0005)
        conn.execute(text("INSERT INTO review_feedback (review_id, label, author, note) VALUES (:r, 'negative', "
                          "'ana', :n)"), {"r": rid, "n": "[bold]wiped [/] out"})
    listed = invoke_cli(settings, "feedback", "--limit", "500")
    assert listed.exit_code == 0, listed.output
    assert f"{uid}-markup[/x]" in listed.output and "[bold]wiped [/] out" in listed.output
    assert "\x1b" not in listed.output and "owned" not in listed.output


def test_dashboard_correction_form_is_off_unless_enabled(app_env: Settings, engine, uid: str) -> None:  # noqa: F811
    rid = f"{uid}-off"
    insert_reviews(engine, labelled([rid]))
    at = open_page("reviews")
    assert not at.exception and not [s for s in at.selectbox if s.key == "feedback_review"]
    assert any("SENTIMENT_DASHBOARD__CORRECTIONS_ENABLED=true" in c.value for c in at.caption)
    assert not at.button  # nothing to submit


def test_dashboard_review_page_saves_a_correction(app_env: Settings, engine, uid: str,  # noqa: F811
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTIMENT_DASHBOARD__CORRECTIONS_ENABLED", "true")  # trusted-network setting
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
    assert f"{rid}: positive -> negative, by dash-user" in literal_markdown_text(at.success[0].value)
    (c,) = corrections(engine, review_id=rid)
    assert (c.label, c.previous_label, c.author, source) == ("negative", "positive", "dash-user", source)
    at = open_page("reviews")  # the table shows the correction beside the model's label
    at.text_input(key="reviews_search").input(f"text of {rid}").run()
    row = at.dataframe[0].value.iloc[0]
    assert (row["label"], row["corrected_label"]) == ("positive", "negative")
    at.text_input(key="feedback_author").input("x" * 65)  # refused on the page too, nothing stored
    at.button[0].click().run()
    assert "at most 64 letters" in at.error[0].value and len(corrections(engine, review_id=rid)) == 1


def test_dashboard_messages_show_review_ids_and_authors_as_text_not_markdown(app_env: Settings, engine, uid: str,  # noqa: F811
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Review ids come from producers; the page's messages are Markdown, where one could become a link, an
    image fetched by every viewer's browser, coloured text or a formula."""
    monkeypatch.setenv("SENTIMENT_DASHBOARD__CORRECTIONS_ENABLED", "true")
    rid = f"{uid}-md [win](http://evil.example) ![t](http://evil.example/p.png) :red[big] $x$ `c` *e* <b>"
    insert_reviews(engine, labelled([rid]))
    at = open_page("reviews")
    at.text_input(key="reviews_search").input(f"text of {rid}").run()
    at.selectbox(key="feedback_review").select(rid)
    at.text_input(key="feedback_author").input("dash-user")
    at.button[0].click().run()
    assert not at.exception and not at.error
    shown = at.success[0].value
    for markdown in ("](", "[win]", "![", ":red[", "$x$", "`c`", "*e*"):
        assert markdown not in shown, shown
    assert literal_markdown_text(shown).startswith(rid), shown  # what a viewer reads: the id as it is


def literal_markdown_text(markdown: str) -> str:
    """The text a Markdown renderer shows for a line of backslash-escaped punctuation."""
    import re

    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


@pytest.mark.parametrize(("author", "note"), [
    ("[/x]\x1b]0;owned\x07", None), ("ana\u202e", None), ("\u3164", None), ("a" * 65, None), (" ana", None),
    ("ana", "x" * 10_000_000), ("ana", "[bold]\x1b[2Jwiped\nout"), ("ana", "rtl\u202eevil"), ("ana", " padded"),
], ids=["escapes", "bidi override", "invisible letter", "65 chars", "untrimmed", "10 MB note", "note escapes",
        "note bidi", "untrimmed note"])
def test_plain_sql_as_the_feedback_role_is_held_to_the_same_rules(settings: Settings, engine, uid: str, author: str,
                                                                 note: str | None) -> None:
    """Python's checks bind the CLI and the dashboard; the database binds everyone else (migration 0005)."""
    from sqlalchemy import exc as sa_exc

    rid = f"{uid}-raw"
    insert_reviews(engine, labelled([rid]))
    feedback = get_engine(settings.postgres.dsn("feedback"))
    with pytest.raises(sa_exc.IntegrityError, match="review_feedback_(author|note)_plain"), feedback.begin() as conn:
        conn.execute(text("INSERT INTO review_feedback (review_id, label, author, note) VALUES (:r, 'negative', "
                          ":a, :n)"), {"r": rid, "a": author, "n": note})
    assert corrections(engine, review_id=rid) == []


def test_the_feedback_role_cannot_choose_a_corrections_id_or_history(settings: Settings, engine, uid: str) -> None:
    """An id of its choosing would outrank every later correction for good (the latest id wins); previous_label
    and created_at are filled by the server."""
    from sqlalchemy import exc as sa_exc

    rid = f"{uid}-pin"
    insert_reviews(engine, labelled([rid]))
    feedback = get_engine(settings.postgres.dsn("feedback"))
    for column, value in (("id", 9_000_000_000_000_000_000), ("previous_label", "neutral"),
                          ("created_at", "2099-01-01T00:00:00Z")):
        with pytest.raises(sa_exc.ProgrammingError, match="permission denied"), feedback.begin() as conn:
            conn.execute(text(f"INSERT INTO review_feedback (review_id, label, author, {column}) "
                              "VALUES (:r, 'negative', 'mallory', :v)"), {"r": rid, "v": value})
    add_correction(feedback, rid, "negative", "ana")  # its own job still works
    assert [c.author for c in corrections(engine, review_id=rid)] == ["ana"]


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=70).filter(lambda a: "\x00" not in a))
@example("x\u00b2 \u674e\u5c0f\u9f8d \uff80")
@example("ana\u200b")
@example("\u00d7")
@example("\u1680ana")
def test_the_database_takes_every_author_python_stores_and_none_that_prints_unsafely(engine, author: str) -> None:
    """Python's rule (letters and digits by Unicode category) is narrower than the database's can be written;
    what the database admits is still one trimmed, bounded, printable line without ASCII punctuation but .-_'@+."""
    try:
        ours = check_author(author) == author
    except FeedbackError:
        ours = False
    with engine.connect() as conn:
        check = conn.execute(text("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                                  "WHERE conname = 'review_feedback_author_plain'")).scalar_one()
        theirs = conn.execute(text(f"SELECT {check.removeprefix('CHECK ').removesuffix(' NOT VALID')} "
                                   "FROM (SELECT CAST(:a AS text) AS author) t"), {"a": author}).scalar_one()
    if ours:
        assert theirs
    if theirs:
        assert clean(author) == author == author.strip() and 1 <= len(author) <= 64
        assert all(c.isalnum() or c in " .-_'@+" for c in author if c.isascii())
