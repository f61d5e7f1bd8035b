"""Least privilege, checked against the real Postgres: `sentiment sql` refuses in one line what the issue showed
it running, and the database itself refuses the same things to the reader role, with the parser bypassed.
The worker role cannot write the model registry; `--max-rows` fetches only that many rows."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import create_engine, make_url, text

from storage import readonly_query
from storage.db import get_engine
from storage.readonly_query import DENIED_FUNCTIONS, SqlRefused, check
from storage.reviews import LabelledReview, insert_reviews
from storage.roles import READER, WORKER, RoleSetupError, provision
from stream.settings import PostgresSettings, Settings
from tests.support import invoke_cli

INSERT_PRODUCTION = ("INSERT INTO model_version (version, artifact_dir, eval_set, stage) "
                     "VALUES ('{v}', '/tmp/evil', 'tweeteval-test', 'production')")
# Each reproduction of the issue, and each kind it names: all refused with one line, exit status 2.
REFUSED = {
    "commit then insert": "COMMIT; " + INSERT_PRODUCTION,
    "set local timeout then sleep": "SET LOCAL statement_timeout = 0; SELECT pg_sleep(5)",
    "set timeout": "SET statement_timeout = 0",
    "set local timeout": "SET LOCAL statement_timeout = 0",
    "two statements": "SELECT 1; SELECT 2",
    "do": "DO $$ BEGIN PERFORM pg_sleep(5); END $$",
    "call": "CALL some_procedure()",
    "copy to program": "COPY (SELECT 1) TO PROGRAM 'touch /tmp/pwned'",
    "pg_read_file": "SELECT pg_read_file('/etc/passwd')",
    "pg_terminate_backend": "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
    "set_config": "SELECT set_config('statement_timeout', '0', false), pg_sleep(5)",
    "lo_import": "SELECT lo_import('/etc/passwd')",
    "create": "CREATE TABLE stolen (a int)",
    "insert": INSERT_PRODUCTION,
    "insert in a cte": "WITH x AS (" + INSERT_PRODUCTION + " RETURNING version) SELECT * FROM x",
    "select into": "SELECT * INTO stolen FROM model_version",
    "for update": "SELECT * FROM model_version FOR UPDATE",
    "query_to_xml": "SELECT query_to_xml('SELECT 1', true, false, '')",
    # SQL in a string, run by the server where no parser sees it: it ended the dashboard's reader sessions
    "ts_stat": "SELECT * FROM ts_stat('SELECT to_tsvector(pg_terminate_backend(pid)::text) FROM pg_stat_activity')",
    "ts_rewrite": "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, set_config(''work_mem'', ''1GB'', false)')",
    "schema-qualified, odd case": "select PG_CATALOG.Pg_Read_Binary_File('/etc/passwd')",
    "not sql": "SELEC 1",
    "empty": "  -- nothing\n",
}


@pytest.fixture
def s(migrated_db: str) -> Settings:
    return Settings(postgres={"url": migrated_db, "statement_timeout_ms": 10_000})


@pytest.fixture
def operator(s: Settings):
    return get_engine(s.postgres.dsn())


def connect(s: Settings, role: str) -> psycopg.Connection:
    """A plain psycopg session as ``role`` (no parser in the way), autocommit."""
    return psycopg.connect(s.postgres.dsn(role).replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


@pytest.fixture
def version(operator) -> Iterator[str]:
    """A model version name no row has; any row a test managed to write under it is removed afterwards."""
    v = f"evil-{uuid.uuid4().hex[:8]}"
    yield v
    with operator.begin() as conn:
        conn.execute(text("DELETE FROM model_version WHERE version = :v"), {"v": v})


@pytest.mark.parametrize("query", REFUSED.values(), ids=REFUSED.keys())
def test_sql_refuses_with_one_line(s: Settings, operator, version: str, query: str) -> None:
    started = time.monotonic()
    result = invoke_cli(s, "sql", query.replace("{v}", version))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert time.monotonic() - started < 5  # refused before anything ran (pg_sleep(5) never started)
    with operator.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM model_version WHERE version = :v"), {"v": version}).scalar() == 0


def test_sql_runs_a_query_as_the_reader(s: Settings) -> None:
    """% and :name are SQL here, not placeholders; the session is the reader's and read-only."""
    result = invoke_cli(s, "sql", "SELECT current_user AS who, current_setting('transaction_read_only') AS ro, "
                                  "'10:30'::time AS t, 'a%b' LIKE 'a%' AS matched")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if READER in line)
    assert "on" in row and "10:30:00" in row and "True" in row


def test_max_rows_fetches_only_that_many(s: Settings) -> None:
    """Each row takes 50 ms to compute: fetching all 100,000 would run past the 10 s timeout; one row is quick."""
    query = "SELECT g, pg_sleep(0.05) FROM generate_series(1, 100000) g"
    started = time.monotonic()
    result = readonly_query.run(get_engine(s.postgres.dsn("reader")), query, max_rows=1, timeout_ms=10_000)
    assert time.monotonic() - started < 5
    assert result.columns == ["g", "pg_sleep"] and [r[0] for r in result.rows] == [1] and result.more
    out = invoke_cli(s, "sql", query, "--max-rows", "2")
    assert out.exit_code == 0, out.output
    assert "first 2 rows shown" in out.output and "│ 3 " not in out.output
    small = readonly_query.run(get_engine(s.postgres.dsn("reader")), "VALUES (1), (2)", max_rows=2, timeout_ms=10_000)
    assert small.rows == [(1,), (2,)] and not small.more


def test_statement_timeout_is_one_line(s: Settings) -> None:
    slow = s.model_copy(update={"postgres": s.postgres.model_copy(update={"statement_timeout_ms": 300})})
    started = time.monotonic()
    result = invoke_cli(slow, "sql", "SELECT pg_sleep(5)")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "statement timeout (300 ms)" in result.output and time.monotonic() - started < 4


def test_the_server_reads_the_query_as_the_parser_did_whatever_the_session_defaults(s: Settings) -> None:
    """With standard_conforming_strings off (a role, database or URL setting) the server would read 'a\\' as an
    open string: the text below hides a function call from the parser inside what it takes for literals."""
    url = make_url(s.postgres.dsn("reader")).update_query_dict({"options": "-cstandard_conforming_strings=off"})
    query = "SELECT 'a\\', ' || pg_backend_pid()::text || ' --'"
    check(query)  # to the parser: two string literals
    result = readonly_query.run(get_engine(url.render_as_string(hide_password=False)), query, 1, 10_000)
    assert result.rows == [("a\\", " || pg_backend_pid()::text || ")]


def test_an_error_quoting_a_huge_value_stays_a_short_line(s: Settings) -> None:
    """Postgres quotes the whole offending value (a review text, 1 MB of it here) in its message."""
    result = invoke_cli(s, "sql", "SELECT repeat('x', 1000000)::int")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output[:300]
    assert "invalid input syntax for type integer" in result.output and len(result.output) < 1000


def test_database_refuses_the_reader_without_the_parser(s: Settings, version: str) -> None:
    """The reader's own session, no parser: even after turning read-only off it may not write or escape."""
    with connect(s, "reader") as reader, connect(s, "worker") as worker, connect(s, "operator") as owner:
        assert reader.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert reader.execute("SHOW statement_timeout").fetchone() == ("30s",)
        reader.execute("SET default_transaction_read_only = off")
        for statement in (INSERT_PRODUCTION.format(v=version), "UPDATE model_version SET stage = 'archived'",
                          "DELETE FROM review_sentiment", "CREATE TABLE public.stolen (a int)",
                          "COPY (SELECT 1) TO PROGRAM 'true'", "SELECT pg_read_file('postgresql.conf')",
                          "SELECT lo_import('/etc/hostname')", "SELECT * FROM alembic_version",
                          "CREATE TEMP TABLE stolen (a int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(statement)
        for victim in (worker, owner):  # other roles' sessions cannot be signalled
            pid = victim.info.backend_pid
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute("SELECT pg_cancel_backend(%s)", (pid,))
            assert victim.execute("SELECT 1").fetchone() == (1,)
        assert reader.execute("SELECT pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')").fetchone() == (False,)


def test_the_reader_cannot_end_its_own_roles_sessions_or_write_large_objects(s: Settings) -> None:
    """The dashboard reads as the reader too, and Postgres lets a role signal its own role's sessions; large
    objects can be written even read-only. ops/postgres-revoke.sql revokes both (run by a superuser:
    `make up` / ops/stack.sh, or the compose image's first start); re-run `make up` if this fails."""
    with connect(s, "reader") as reader, connect(s, "reader") as dashboard:
        pid = dashboard.info.backend_pid
        for statement in (f"SELECT pg_terminate_backend({pid})", f"SELECT pg_cancel_backend({pid})",
                          "SELECT lo_create(0)", "SELECT lo_creat(-1)", "SELECT lo_from_bytea(0, 'x')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(statement)
        assert dashboard.execute("SELECT 1").fetchone() == (1,)


def test_a_query_nested_past_pythons_recursion_limit_is_checked_not_crashed(s: Settings) -> None:
    deep = "SELECT " + "+".join(["1"] * 5000)
    check(deep)
    with pytest.raises(SqlRefused, match=r"function pg_terminate_backend\(\)"):
        check(deep + " + pg_terminate_backend(1)")
    with pytest.raises(SqlRefused, match=r"function set_config\(\)"):
        check("SELECT " + "(SELECT " * 400 + "set_config('a', 'b', false)" + ")" * 400)
    result = invoke_cli(s, "sql", deep + " AS n")
    assert "Traceback" not in result.output
    assert (result.exit_code, result.output.count("5000")) == (0, 1) or (
        result.exit_code == 2 and len(result.output.strip().splitlines()) == 1), result.output


def test_worker_role_does_its_job_and_cannot_write_the_registry(s: Settings, operator, version: str,
                                                               migrated_db: str) -> None:
    review_id = f"sec-{uuid.uuid4().hex[:8]}"
    stored = insert_reviews(get_engine(s.postgres.dsn("worker")), [LabelledReview(
        review_id, "fine", "sec-test", datetime.now(UTC), "neutral", 0.9, 0.05, 0.9, 0.05, "tiny")])
    assert [r.review_id for r in stored] == [review_id]
    with connect(s, "worker") as worker:
        assert worker.execute("SELECT current_user").fetchone() == (WORKER,)
        worker.execute("SELECT version FROM model_version WHERE stage = 'production'")  # reads the registry
        for statement in (INSERT_PRODUCTION.format(v=version), "UPDATE model_version SET stage = 'archived'",
                          "DELETE FROM model_version", "INSERT INTO promotion_decision (action, candidate, promoted, "
                          "reason) VALUES ('promote', 'x', true, 'x')", f"UPDATE review_sentiment SET label = "
                          f"'negative' WHERE review_id = '{review_id}'", "DELETE FROM review_sentiment",
                          "INSERT INTO review_feedback (review_id, label) VALUES ('x', 'negative')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                worker.execute(statement)
    with operator.begin() as conn:
        conn.execute(text("DELETE FROM review_sentiment WHERE review_id = :r"), {"r": review_id})


def test_feedback_role_only_adds_corrections(s: Settings, operator, version: str) -> None:
    from storage.feedback import add_correction

    review_id = f"sec-{uuid.uuid4().hex[:8]}"
    insert_reviews(operator, [LabelledReview(review_id, "meh", "sec-test", datetime.now(UTC), "neutral", 0.9, 0.05,
                                             0.9, 0.05, "tiny")])
    try:
        c = add_correction(get_engine(s.postgres.dsn("feedback")), review_id, "negative", "ana")
        assert (c.previous_label, c.label) == ("neutral", "negative")
        with connect(s, "feedback") as fb:
            for statement in (INSERT_PRODUCTION.format(v=version), "DELETE FROM review_feedback",
                              "UPDATE review_sentiment SET label = 'positive'"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    fb.execute(statement)
    finally:
        with operator.begin() as conn:
            conn.execute(text("DELETE FROM review_sentiment WHERE review_id = :r"), {"r": review_id})


def test_provision_is_idempotent_and_refuses_dangerous_roles(migrated_db: str) -> None:
    pg = PostgresSettings(url=migrated_db)  # the defaults the session's roles were set up with
    assert provision(pg.dsn(), pg.role_dsns(), pg.statement_timeout_ms) == []  # set up already: nothing to change
    role = f"sentiment_t_{uuid.uuid4().hex[:8]}"
    url = make_url(pg.dsn("reader")).set(username=role).render_as_string(hide_password=False)
    admin = create_engine(pg.dsn())
    try:
        assert provision(pg.dsn(), {role: url}, 1000) == [f"{role}: to be created"]
        with admin.begin() as conn:
            conn.execute(text(f'ALTER ROLE "{role}" PASSWORD NULL'))
        assert provision(pg.dsn(), {role: url}, 1000) == [f"{role}: password set"]
        with admin.begin() as conn:
            conn.execute(text(f'GRANT pg_signal_backend TO "{role}"'))
        with pytest.raises(RoleSetupError, match="member of pg_signal_backend"):
            provision(pg.dsn(), {role: url}, 1000)
        # An operator without CREATEROLE gets one line saying what a superuser must run instead.
        with admin.begin() as conn:
            conn.execute(text(f'CREATE ROLE "{role}_op" LOGIN PASSWORD \'op\''))
        weak = make_url(pg.dsn()).set(username=f"{role}_op", password="op").render_as_string(hide_password=False)
        with pytest.raises(RoleSetupError, match=f"role {role}_new needs to be created and {role}_op may not manage"):
            provision(weak, {f"{role}_new": url}, 1000)
    finally:
        with admin.begin() as conn:
            for r in (role, f"{role}_op", f"{role}_new"):
                conn.execute(text(f'DROP ROLE IF EXISTS "{r}"'))
        admin.dispose()


# --- the parser, property-based ---------------------------------------------------------------------------

@hsettings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
@example("SELECT 1\x00; DROP TABLE review_sentiment")  # C's end of string: the parser would see only SELECT 1
@example("SELECT '\udcff'")  # a byte that is not UTF-8 on the command line (surrogate escape)
def test_check_refuses_or_passes_never_crashes(text_: str) -> None:
    """Any text is either passed or refused with one line; one with a NUL is always refused."""
    try:
        check(text_)
    except SqlRefused as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert "\x00" not in text_


names = st.sampled_from(sorted(DENIED_FUNCTIONS) + ["lo_export", "pg_read_binary_file", "pg_ls_dir",
                                                    "pg_advisory_lock", "dblink_exec", "pg_terminate_backend",
                                                    "ts_stat", "ts_rewrite"])
spaces = st.sampled_from([" ", "\n", "\t", " /* c */ ", "  "])


@hsettings(max_examples=200, deadline=None)
@given(names, st.booleans(), st.booleans(), spaces, st.sampled_from(["", "FROM (SELECT 1) s", "WHERE true"]))
def test_denied_functions_are_refused_however_written(name: str, upper: bool, qualified: bool, space: str,
                                                      tail: str) -> None:
    fn = ("pg_catalog." if qualified else "") + (name.upper() if upper else name)
    for query in (f"SELECT{space}{fn}(1){space}{tail}", f"SELECT * FROM (SELECT {fn}(1)) x",
                  f"WITH c AS (SELECT {fn}(1)) SELECT * FROM c", f"SELECT 1 WHERE EXISTS (SELECT {fn}(1))"):
        with pytest.raises(SqlRefused, match=f"function {name}\\(\\)"):
            check(query)


plain = st.sampled_from(["SELECT 1", "VALUES (1)", "TABLE model_version", "WITH a AS (SELECT 1) SELECT * FROM a",
                         "SELECT label FROM review_sentiment LIMIT 3"])
other = st.sampled_from(["COMMIT", "BEGIN", "ROLLBACK", "SET statement_timeout = 0", "RESET ALL", "SELECT 2",
                         "INSERT INTO t VALUES (1)", "DROP TABLE t", "ANALYZE", "VACUUM", "LISTEN x",
                         "NOTIFY x", "DISCARD ALL", "EXPLAIN ANALYZE SELECT 1", "PREPARE p AS SELECT 1"])


@hsettings(max_examples=200, deadline=None)
@given(plain, other, st.booleans(), spaces)
def test_a_query_with_anything_beside_it_is_refused(query: str, extra: str, before: bool, space: str) -> None:
    check(query)  # alone it passes
    with pytest.raises(SqlRefused, match="2 statements"):
        check(f"{extra};{space}{query}" if before else f"{query};{space}{extra}")
    if not extra.startswith("SELECT"):
        with pytest.raises(SqlRefused, match="is not a query"):
            check(extra)


@hsettings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda p: "\x00" not in p), st.sampled_from(["", "?sslmode=require",
                                                                                          "?options=-csearch_path%3Dx"]))
def test_every_role_logs_in_where_the_operator_does_with_its_own_password(password: str, query: str) -> None:
    """Any password survives the URL (no hand-quoting); host, database and options are the operator's."""
    pg = PostgresSettings(url=f"postgresql+psycopg://sentiment@db.example:6543/app{query}", password=password,
                          reader_password=password)
    operator, reader = make_url(pg.dsn()), make_url(pg.dsn("reader"))
    assert operator.password == password and (operator.username, reader.username) == ("sentiment", READER)
    assert reader.password == password and reader.query == operator.query
    assert (reader.host, reader.port, reader.database) == ("db.example", 6543, "app")


def test_dashboard_reads_and_corrects_without_the_operator_password(migrated_db: str, operator,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The Reviews page reads as the reader and saves a correction as the feedback role: with a wrong
    operator password in its settings it still works, so the dashboard never needs the operator's."""
    from streamlit.testing.v1 import AppTest

    from sentiment_app.dashboard import launch
    from tests.support import TEST_REDIS_URL

    source, review_id = f"sec-{uuid.uuid4().hex[:8]}", f"sec-{uuid.uuid4().hex[:8]}"
    insert_reviews(operator, [LabelledReview(review_id, "meh", source, datetime.now(UTC), "neutral", 0.9, 0.05, 0.9,
                                             0.05, "tiny")])
    wrong = make_url(migrated_db).set(password="not-the-operators").render_as_string(hide_password=False)
    for key in [k for k in os.environ if k.startswith("SENTIMENT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SENTIMENT_POSTGRES__URL", wrong)
    monkeypatch.setenv("SENTIMENT_REDIS__URL", TEST_REDIS_URL)
    monkeypatch.setenv("SENTIMENT_DASHBOARD__CORRECTIONS_ENABLED", "true")
    try:
        at = AppTest.from_file(launch.APP, default_timeout=60).switch_page("views/reviews.py").run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        at.selectbox(key="reviews_source").select(source).run()
        at.selectbox(key="feedback_review").select(review_id)
        at.selectbox(key="feedback_label").select("negative")
        at.button[0].click().run()
        assert not at.error, [e.value for e in at.error]
        assert any("neutral -> negative" in s.value for s in at.success)
        with operator.connect() as conn:
            assert conn.execute(text("SELECT label FROM review_feedback WHERE review_id = :r"),
                                {"r": review_id}).scalar_one() == "negative"
    finally:
        with operator.begin() as conn:
            conn.execute(text("DELETE FROM review_sentiment WHERE review_id = :r"), {"r": review_id})
