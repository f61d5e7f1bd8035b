"""`sentiment sql`: one user-written query, run read-only as the reader role, at most ``max_rows`` rows fetched.

Two doors. The front one, ``check``, parses the text with PostgreSQL's own parser (pglast) and refuses, in one
line, anything but a single plain query (SELECT, WITH ... SELECT, VALUES, TABLE) or a call of a function that
changes settings, reads server files, signals sessions or runs SQL from a string. The back one is the
database: the reader role may only SELECT (migration 0005), starts read-only with a statement timeout and
may not signal other roles' sessions (``storage.roles``), and the query runs as a server-side cursor,
``DECLARE ... CURSOR FOR <query>``, which admits exactly one query and makes ``FETCH`` send only the rows asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from pglast import ast, parse_sql
from pglast.parser import ParseError
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from sentiment_model.errors import UserError

# Functions a query may not call, by name (any schema): why, for the error message.
DENIED_FUNCTIONS = {
    "set_config": "changes a setting", "pg_reload_conf": "reloads the server's configuration",
    "pg_terminate_backend": "ends other sessions", "pg_cancel_backend": "cancels other sessions' queries",
    "pg_log_backend_memory_contexts": "signals other sessions", "pg_notify": "sends notifications",
    "pg_stat_file": "reads server files", "pg_current_logfile": "reads server files",
    "pg_rotate_logfile": "rotates server logs", "pg_switch_wal": "controls the server's WAL",
    "pg_promote": "controls replication", "pg_export_snapshot": "exports a snapshot",
    "query_to_xml": "runs SQL from a string", "query_to_xmlschema": "runs SQL from a string",
    "query_to_xml_and_xmlschema": "runs SQL from a string", "cursor_to_xml": "reads another cursor",
    "ts_stat": "runs SQL from a string", "ts_rewrite": "runs SQL from a string",
    "cursor_to_xmlschema": "reads another cursor", "nextval": "changes a sequence", "setval": "changes a sequence",
    "txid_current": "starts a write transaction", "pg_current_xact_id": "starts a write transaction",
    "loread": "reads large objects", "lowrite": "writes large objects",
}
DENIED_PREFIXES = {
    "lo_": "reads or writes large objects or server files", "pg_read_": "reads server files",
    "pg_ls_": "lists server directories", "pg_file_": "writes server files", "dblink": "connects elsewhere",
    "pg_advisory": "takes locks other sessions wait for", "pg_try_advisory": "takes locks other sessions wait for",
    "pg_logical_": "controls replication", "pg_replication_": "controls replication",
    "pg_create_": "controls replication", "pg_drop_": "controls replication", "pg_copy_": "controls replication",
    "pg_backup_": "controls backups", "pg_wal_": "controls the server's WAL", "pg_stat_reset": "resets statistics",
}
WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
SHAPE = "give one read-only query (SELECT, WITH, VALUES or TABLE)"


class SqlRefused(UserError):
    """The text is not one plain read-only query; the message (one line) says what to change."""


class QueryError(UserError):
    """Postgres refused or could not run the query (one line: its reason)."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    more: bool  # the query had more rows than were fetched


def check(text: str) -> None:
    """Refuse anything but one plain read-only query, naming the first thing that is not."""
    if "\x00" in text:  # the parser (C) and libpq would both stop reading there
        raise SqlRefused("the query contains a NUL character: remove it")
    try:
        text.encode()
    except UnicodeEncodeError as e:  # e.g. bytes that are not UTF-8 on the command line (surrogate escapes)
        raise SqlRefused(f"the query is not valid UTF-8 at character {e.start + 1}: fix its encoding") from None
    try:
        statements = parse_sql(text)
    except ParseError as e:
        raise SqlRefused(f"not valid SQL: {_one_line(str(e))}") from None
    if len(statements) != 1:
        kinds = ", ".join(_keyword(text, s) for s in statements) or "nothing"
        raise SqlRefused(f"{len(statements)} statements ({kinds}): `sentiment sql` runs exactly one; "
                         f"{SHAPE}") from None
    stmt = statements[0].stmt
    if not isinstance(stmt, ast.SelectStmt):
        raise SqlRefused(f"{_keyword(text, statements[0])} is not a query: {SHAPE}")
    for node in _walk(stmt):
        if isinstance(node, WRITES):
            raise SqlRefused(f"{type(node).__name__.removesuffix('Stmt').upper()} inside a query: {SHAPE}")
        if isinstance(node, ast.IntoClause):
            raise SqlRefused(f"SELECT ... INTO creates a table: {SHAPE}")
        if isinstance(node, ast.LockingClause):
            raise SqlRefused(f"FOR UPDATE/SHARE locks rows: {SHAPE}")
        if isinstance(node, ast.FuncCall):
            name = node.funcname[-1].sval.lower()
            why = DENIED_FUNCTIONS.get(name) or next(
                (w for p, w in DENIED_PREFIXES.items() if name.startswith(p)), None)
            if why:
                raise SqlRefused(f"function {name}() is not allowed here: it {why}")


def run(engine: Engine, text: str, max_rows: int, timeout_ms: int) -> QueryResult:
    """``check`` the text, then fetch at most ``max_rows`` rows of it through a server-side cursor, read-only,
    with a statement timeout, in a transaction that is rolled back."""
    check(text)
    try:
        with engine.connect() as sa_conn:
            conn: psycopg.Connection = sa_conn.connection.driver_connection
            try:
                conn.execute("SET TRANSACTION READ ONLY")  # the first statement: opens the transaction
                # The server must read the text as ``check`` did: with standard_conforming_strings off (a role,
                # database or URL default) 'a\' opens a string where the parser saw one end, hiding what follows.
                conn.execute("SELECT set_config('statement_timeout', %s, true), "
                             "set_config('standard_conforming_strings', 'on', true)", (str(timeout_ms),))
                with conn.cursor(name="sentiment_sql") as cursor:
                    cursor.execute(text)  # DECLARE: one query only, nothing computed yet
                    columns = [d.name for d in cursor.description or ()]
                    rows = [tuple(r) for r in cursor.fetchmany(max_rows)]
                    moved = conn.execute(sql.SQL("MOVE FORWARD 1 IN {}").format(sql.Identifier(cursor.name)))
                return QueryResult(columns, rows, moved.rowcount > 0)
            finally:
                conn.rollback()
    except psycopg.errors.QueryCanceled:
        raise QueryError(f"the query ran past the statement timeout ({timeout_ms} ms): narrow it, or raise "
                         "SENTIMENT_POSTGRES__STATEMENT_TIMEOUT_MS") from None
    except psycopg.Error as e:
        raise QueryError(_one_line(str(e))) from None
    except sa_exc.DBAPIError as e:  # connecting failed (wrapped by SQLAlchemy)
        raise QueryError(f"cannot connect as {engine.url.username} to {engine.url.host}:{engine.url.port}/"
                         f"{engine.url.database} ({_one_line(str(e.orig or e))}); `sentiment init` sets up the "
                         "roles, `make up` starts Postgres") from None


def _keyword(text: str, raw: ast.RawStmt) -> str:
    """The statement's first word (COMMIT, SET, COPY...), from its own text."""
    start = raw.stmt_location or 0
    words = text[start:start + (raw.stmt_len or len(text))].split()
    return words[0].upper().rstrip(";") if words else "?"


def _walk(root: object) -> Iterator[ast.Node]:
    """Every node below ``root``, in document order, without recursion: ``SELECT 1+1+...+1`` nests as deep as
    it is long, past Python's recursion limit."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple | list):
            stack.extend(reversed(node))
        elif isinstance(node, ast.Node):
            yield node
            stack.extend(getattr(node, name, None) for name in reversed(node.__slots__))


def _one_line(message: str, limit: int = 300) -> str:
    """The first line, cut to ``limit`` characters: Postgres quotes the offending value whole (a 1 MB text)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    line = lines[0] if lines else "unknown error"
    return line if len(line) <= limit else line[:limit] + "..."
