"""The Postgres roles the components log in as, one per job (README "Security").

The operator (``SENTIMENT_POSTGRES__URL``) owns the schema: migrations, the model registry, feedback, refresh.
Migration 0005 grants the other roles exactly what their job needs, per database and schema. ``provision``
(run by `sentiment init`, before the migrations) makes those roles exist and log in with the configured
passwords, and pins the reader's session settings. It changes nothing that is already right, so a second run
needs no CREATEROLE, and it refuses a role that could read server files or signal other sessions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from sqlalchemy import Connection, create_engine, exc, make_url, pool, text

from sentiment_model.errors import UserError

Role = Literal["operator", "worker", "reader", "feedback"]
WORKER, READER, FEEDBACK = "sentiment_worker", "sentiment_reader", "sentiment_feedback"
ROLE_USERS: dict[str, str] = {"worker": WORKER, "reader": READER, "feedback": FEEDBACK}

# Predefined roles that let a login signal other sessions, reach server files or programs, or bypass grants.
FORBIDDEN_MEMBERSHIPS = ("pg_signal_backend", "pg_read_server_files", "pg_write_server_files",
                         "pg_execute_server_program", "pg_read_all_data", "pg_write_all_data")


class RoleSetupError(UserError):
    """A role cannot be set up as needed; the message says what to run."""


def reader_settings(statement_timeout_ms: int) -> dict[str, str]:
    """Session defaults of the reader role: read-only, bounded in time, never idle inside a transaction."""
    return {"default_transaction_read_only": "on", "statement_timeout": str(statement_timeout_ms),
            "idle_in_transaction_session_timeout": "60000"}


def provision(operator_url: str, role_urls: Mapping[str, str], reader_timeout_ms: int) -> list[str]:
    """Create or fix each role of ``role_urls`` (role name -> its login URL); return what was changed."""
    engine = create_engine(operator_url, poolclass=pool.NullPool)
    changed: list[str] = []
    try:
        with engine.begin() as conn:
            me, can_manage = conn.execute(text(
                "SELECT current_user, rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")).one()
            for role, url in role_urls.items():
                wanted = reader_settings(reader_timeout_ms) if role == READER else {}
                changed += _ensure(conn, role, make_url(url).password or "", wanted, me, can_manage)
        for role, url in role_urls.items():
            if _login_fails(url) and can_manage:
                with engine.begin() as conn:
                    _format_and_run(conn, "ALTER ROLE %I PASSWORD %L", role,
                                    _verifier(conn, role, make_url(url).password or ""))
                changed.append(f"{role}: password set")
            if error := _login_fails(url):
                raise RoleSetupError(f"cannot log in as {role}: {error}; set its password to the configured one "
                                     f"(ALTER ROLE {role} PASSWORD ...) or fix SENTIMENT_POSTGRES__*_PASSWORD")
    finally:
        engine.dispose()
    return changed


def _ensure(conn: Connection, role: str, password: str, wanted: dict[str, str], me: str, can_manage: bool
            ) -> list[str]:
    row = conn.execute(text("SELECT rolsuper OR rolcreaterole, rolcanlogin, coalesce(rolconfig, '{}') FROM pg_roles "
                            "WHERE rolname = :r"), {"r": role}).first()

    def alter(template: str, literal: str | None, what: str) -> list[str]:
        """Run ``template`` (format(): %I the role, %L the literal) as the operator, or say who must run it."""
        if not can_manage:
            shown = (f"CREATE ROLE {role} LOGIN PASSWORD '<password>'" if template.startswith("DO")
                     else template.replace("%I", role).replace("%L", f"'{literal}'"))
            raise RoleSetupError(f"role {role} needs {what} and {me} may not manage roles: as a superuser run "
                                 f"{shown}, or ALTER ROLE {me} CREATEROLE")
        _format_and_run(conn, template, role, literal)
        return [f"{role}: {what}"]

    changed: list[str] = []
    if row is None:
        # Another database's init may create it at the same moment: a duplicate is fine.
        changed += alter("DO $do$ BEGIN CREATE ROLE %I LOGIN PASSWORD %L; "
                         "EXCEPTION WHEN duplicate_object THEN NULL; END $do$",
                         _verifier(conn, role, password), "to be created")
        row = (False, True, [])
    powerful, can_login, config = row
    if powerful:
        raise RoleSetupError(f"role {role} is a superuser or may create roles, and must not: "
                             f"ALTER ROLE {role} NOSUPERUSER NOCREATEROLE")
    members = conn.execute(text("SELECT r FROM unnest(CAST(:roles AS text[])) r WHERE pg_has_role(:role, r, 'MEMBER')"),
                           {"roles": list(FORBIDDEN_MEMBERSHIPS), "role": role}).scalars().all()
    if members:
        raise RoleSetupError(f"role {role} is a member of {', '.join(members)} and must not be: "
                             f"REVOKE {', '.join(members)} FROM {role}")
    if not can_login:
        changed += alter("ALTER ROLE %I LOGIN", None, "LOGIN")
    have = dict(item.split("=", 1) for item in config)
    for name, value in wanted.items():
        if have.get(name) != value:
            changed += alter(f"ALTER ROLE %I SET {name} = %L", value, f"{name} = {value}")
    return changed


def _format_and_run(conn: Connection, template: str, role: str, literal: str | None) -> None:
    """Quote with the server's format() and run the result as it is (a verifier may hold ':', which
    SQLAlchemy's text() would take for a bind parameter)."""
    sql = conn.execute(text("SELECT format(CAST(:t AS text), CAST(:r AS text), CAST(:l AS text))"),
                       {"t": template, "r": role, "l": literal}).scalar_one()
    conn.connection.driver_connection.execute(sql)


def _verifier(conn: Connection, role: str, password: str) -> str:
    """The SCRAM verifier of ``password``, computed by libpq here: the password itself never reaches the server
    (nor its statement log)."""
    pgconn = conn.connection.driver_connection.pgconn  # psycopg
    return pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


def _login_fails(url: str) -> str | None:
    """None if ``url`` logs in, else the server's first line about why not."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except exc.OperationalError as e:
        return str(e.orig or e).strip().splitlines()[-1]
    finally:
        engine.dispose()
