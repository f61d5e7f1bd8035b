"""Least privilege: one role per job, granted exactly what that job needs in this schema.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

The operator (the role running the migrations) owns every table and alone writes the model registry.
``sentiment_worker`` inserts labelled reviews and shadow results and reads the registry; ``sentiment_reader``
(`sentiment sql`, the dashboard's pages) only reads; ``sentiment_feedback`` (the dashboard's correction form)
reads reviews and adds corrections. Roles are cluster-wide: they are created here only if missing (NOLOGIN;
`sentiment init` gives them LOGIN, passwords and the reader's settings, ``storage.roles``), so this migration
runs in any number of databases and schemas of one cluster. Grants are per schema: the current one.
A later migration that adds a table grants its rights to these roles itself.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

GRANTS: dict[str, dict[str, str]] = {
    "sentiment_worker": {
        "review_sentiment": "SELECT, INSERT",  # SELECT: ON CONFLICT and the stored labels of a replayed batch
        "model_version": "SELECT",
        "shadow_deployment": "SELECT",
        "shadow_prediction": "SELECT, INSERT",
        "shadow_batch": "SELECT, INSERT",
    },
    "sentiment_reader": {t: "SELECT" for t in (
        "review_sentiment", "sentiment_hourly", "sentiment_hourly_total", "recent_negative", "review_feedback",
        "review_label", "model_version", "model_evaluation", "promotion_decision", "shadow_deployment",
        "shadow_prediction", "shadow_batch")},
    # Only these columns: an id of its choosing would outrank every later correction (the latest id wins),
    # and previous_label and created_at are the record of what was replaced and when (filled by the server).
    "sentiment_feedback": {"review_sentiment": "SELECT", "review_feedback": "SELECT, INSERT (review_id, label, "
                                                                           "author, note)"},
}

# storage.feedback's rules for who made a correction and why, enforced for plain SQL too: trimmed, bounded, no
# control characters (line breaks and escape sequences among them), no invisible letters or marks, nothing that
# reorders text, and in an author no ASCII punctuation but ``.-_'@+``. NOT VALID, then validated where rows allow.
FEEDBACK_CHECKS = {
    "review_feedback_author_plain": r"""author = btrim(author) AND char_length(author) BETWEEN 1 AND 64
        AND author !~ '[^A-Za-z0-9 .''@+_\u0080-\U0010ffff-]'
        AND author !~ '[\u0080-\u00a0\u00ad\u061c\u115f\u1160\u1680\u180e\u2000-\u200f\u2028-\u202f\u205f-\u206f'
                        '\u2800\u3000\u3164\ufeff\uffa0]'""",
    "review_feedback_note_plain": r"""note IS NULL OR (note = btrim(note) AND char_length(note) BETWEEN 1 AND 500
        AND note !~ '[\u0001-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]')""",
}

CREATE_MISSING = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
    IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
      RAISE EXCEPTION 'role {role} is missing and % may not create roles', current_user
        USING HINT = 'run `sentiment init` as a role with CREATEROLE, or CREATE ROLE {role} as a superuser';
    END IF;
    CREATE ROLE {role} NOLOGIN;
  END IF;
EXCEPTION WHEN duplicate_object THEN NULL;  -- created at the same moment by another database's migration
END $$"""


def upgrade() -> None:
    for role, tables in GRANTS.items():
        op.execute(CREATE_MISSING.format(role=role))
        op.execute(f"DO $$ BEGIN EXECUTE format('GRANT USAGE ON SCHEMA %I TO {role}', current_schema()); END $$")
        for table, privileges in tables.items():
            op.execute(f"GRANT {privileges} ON {table} TO {role}")
    # Temporary tables are writes too (allowed even in a read-only transaction once a session turns that off);
    # every role may create them by default. The database's owner (the operator) keeps the right. Database-wide,
    # so downgrade leaves it: other schemas' migrations may rely on it.
    op.execute("DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); END $$")
    for name, check in FEEDBACK_CHECKS.items():
        op.execute(f"ALTER TABLE review_feedback DROP CONSTRAINT IF EXISTS {name}, "
                   f"ADD CONSTRAINT {name} CHECK ({check}) NOT VALID")
        op.execute(f"""DO $$ BEGIN ALTER TABLE review_feedback VALIDATE CONSTRAINT {name};
            EXCEPTION WHEN check_violation THEN
              RAISE WARNING 'review_feedback has rows that break {name}: it holds for new rows only';
            END $$""")


def downgrade() -> None:
    for name in FEEDBACK_CHECKS:
        op.execute(f"ALTER TABLE review_feedback DROP CONSTRAINT IF EXISTS {name}")
    for role, tables in GRANTS.items():
        for table in tables:
            op.execute(f"REVOKE ALL ON {table} FROM {role}")
        op.execute(f"DO $$ BEGIN EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {role}', current_schema()); END $$")
