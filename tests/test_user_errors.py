"""Errors a user can cause are one line on stderr and exit code 2: a bad SENTIMENT_* value (naming the variable,
the value and what is allowed, never a secret), and `sentiment sql`'s refusals naming what to change."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st
from typer.testing import CliRunner

from sentiment_app.cli import app
from stream.settings import Settings, get_settings
from tests.support import invoke_cli


def one_line(env: dict[str, str], *args: str) -> str:
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, list(args), env=env)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_dotenv_not_in_utf8_is_one_line(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env saved in Latin-1 (an accent in a comment) is named, with a way to fix it; never a traceback."""
    (tmp_path / ".env").write_bytes("SENTIMENT_WORKER__BATCH_MAX=64\n# café\n".encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    line = one_line({}, "models", "list")
    assert line == (f"error: {tmp_path / '.env'} is not UTF-8 (byte 0xe9 at offset 36): save it as UTF-8, "
                    f"e.g. iconv -f latin1 -t utf-8 {tmp_path / '.env'}")


@pytest.mark.parametrize(("env", "expected"), [
    ({"SENTIMENT_MODEL__DEVICE": "gpu"},
     "error: SENTIMENT_MODEL__DEVICE='gpu' is not valid (allowed: 'auto', 'cpu' or 'cuda'): fix it in the "
     "environment or .env"),
    ({"SENTIMENT_WORKER__BATCH_MAX": "0"},
     "error: SENTIMENT_WORKER__BATCH_MAX='0' is not valid (Input should be greater than or equal to 1): fix it in "
     "the environment or .env"),
    ({"SENTIMENT_KAFKA": "{not json"},
     "error: SENTIMENT_KAFKA is not a JSON object: set its fields one by one instead, as SENTIMENT_KAFKA__FIELD, "
     "in the environment or .env"),
])
def test_a_bad_setting_is_one_line_naming_the_variable(env: dict[str, str], expected: str) -> None:
    for command in (["sql", "SELECT 1"], ["status"], ["classify", "great"]):
        assert one_line(env, *command) == expected


@pytest.mark.parametrize(("env", "hint"), [
    ({"SENTIMENT_POSTGRES__URL": "notaurl"}, "not a database URL"),
    ({"SENTIMENT_POSTGRES__URL": "mysql://u:hunter2@127.0.0.1/x"}, "'mysql' is not PostgreSQL"),
    ({"SENTIMENT_REDIS__URL": "http://u:hunter2@x"}, "not a Redis URL"),
    ({"SENTIMENT_KAFKA__REVIEWS_TOPIC": "bad/topic"}, "a Kafka topic name has 1-249 letters"),
    ({"SENTIMENT_KAFKA__BOOTSTRAP_SERVERS": "nonsense"}, "give host:port"),
])
def test_a_malformed_url_topic_or_server_list_is_one_line_at_start(env: dict[str, str], hint: str) -> None:
    """Found by a newcomer pass: each of these was a library traceback at first use, not a settings error."""
    for command in (["status"], ["reviews"], ["trends"]):
        line = one_line(env, *command)
        assert line.startswith(f"error: {next(iter(env))}") and hint in line and "hunter2" not in line


def test_a_bad_secret_setting_is_named_without_its_value() -> None:
    line = one_line({"SENTIMENT_REDIS__URL": "redis://user:hunter2@host:6379/1", "SENTIMENT_REDIS__CLUSTER": "true"},
                    "status")
    assert line.startswith("error: SENTIMENT_REDIS__") and "hunter2" not in line


def test_sql_refusals_name_the_statement_or_the_position(settings: Settings) -> None:
    for query, expected in [
        ("SELECT 1; SELECT 2", "error: 2 statements (SELECT, SELECT): `sentiment sql` runs exactly one; give one "
                               "read-only query (SELECT, WITH, VALUES or TABLE)"),
        ("SELECT * FROM review_sentiment WHER x", 'error: not valid SQL: syntax error at or near "x", at index 36'),
        ("DELETE FROM review_sentiment", "error: DELETE is not a query: give one read-only query (SELECT, WITH, "
                                         "VALUES or TABLE)"),
        ("SELECT * FROM no_such_table", 'error: relation "no_such_table" does not exist'),
    ]:
        result = invoke_cli(settings, "sql", query)
        assert result.exit_code == 2 and result.output.strip().splitlines() == [expected], result.output


@settings_profile(max_examples=150, deadline=None)
@given(variable=st.sampled_from(["SENTIMENT_POSTGRES__URL", "SENTIMENT_REDIS__URL", "SENTIMENT_KAFKA__REVIEWS_TOPIC",
                                 "SENTIMENT_KAFKA__DLQ_TOPIC", "SENTIMENT_KAFKA__BOOTSTRAP_SERVERS"]),
       value=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80))
def test_any_value_of_a_connection_setting_is_usable_or_one_line(variable: str, value: str) -> None:
    """Whatever a user puts there: settings that load, or a SettingsError of one line naming the variable (a
    URL's value never echoed); never a library exception."""
    from sentiment_model.settings_error import SettingsError

    with pytest.MonkeyPatch.context() as env:
        env.setenv(variable, value)
        get_settings.cache_clear()
        try:
            loaded = get_settings()
        except SettingsError as err:
            line = str(err)
            assert "\n" not in line.strip() and line.startswith(variable), line
            assert "URL" not in variable or value not in line or len(value) < 3, line
            return
        finally:
            get_settings.cache_clear()
    if variable.endswith("TOPIC"):
        assert re.fullmatch(r"[a-zA-Z0-9._-]{1,249}", getattr(loaded.kafka, variable.split("__")[1].lower()))
