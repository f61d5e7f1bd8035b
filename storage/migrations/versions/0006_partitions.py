"""review_sentiment partitioned by month of created_at; a review id stored once across partitions; retention.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A unique index of a partitioned table must hold the partition key, so ``review_id`` alone cannot be unique
across months. ``review_key`` (review_id PRIMARY KEY, created_at) is the claim: ``insert_reviews`` inserts
the batch's claims ``ON CONFLICT DO NOTHING RETURNING`` and only the ids it returns go into
``review_sentiment``, in the same transaction; every row has exactly one claim with the same created_at (a
trigger deletes the claim of a row deleted by hand and refuses to change a row's id or time). Corrections
(``review_feedback``) now reference the claim.

Partitions are months, ``review_sentiment_pYYYYMM`` (UTC), attached rather than created ``PARTITION OF``
(``ATTACH`` takes a lock that lets inserts and queries go on). The worker has no DDL rights: it calls two
SECURITY DEFINER functions owned by the operator (search_path pinned, EXECUTE granted to the worker only):
``review_sentiment_partitions(times)`` makes the months of a batch exist (refusing, as a data error, a month
wholly older than the retention: such a row is dead-lettered, not stored again) and
``review_sentiment_maintain()`` makes this month and the next three exist and drops the months wholly older
than ``review_partition_policy.retention_days`` (0: keep forever; written by `sentiment init` only) with
their claims (and, by cascade, their corrections). The views keep their names, columns and grants.

The upgrade copies every row into the partitions (the claims too) and drops the old table.
"""

from alembic import op
from sqlalchemy import text

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

VIEWS = ("sentiment_hourly", "sentiment_hourly_total", "recent_negative", "review_label")
WORKER, READER, FEEDBACK = "sentiment_worker", "sentiment_reader", "sentiment_feedback"
OLD = "review_sentiment_unpartitioned"

# Month partition of `month` (a month start in UTC), no questions asked: for the migration and the functions.
CREATE_PARTITION = """
CREATE FUNCTION review_sentiment_create_partition(month timestamptz) RETURNS boolean
LANGUAGE plpgsql SET search_path = {schema}, pg_temp SET timezone = 'UTC' AS $fn$
DECLARE
  name text := 'review_sentiment_p' || to_char(month, 'YYYYMM');
  upper_bound timestamptz := month + interval '1 month';
BEGIN
  -- One creator at a time; the catalog is read again after the lock (a plain query sees the last commit).
  PERFORM pg_advisory_xact_lock(hashtext('review_sentiment_partitions'));
  IF EXISTS (SELECT FROM pg_class WHERE relname = name AND relnamespace = current_schema()::regnamespace) THEN
    RETURN false;
  END IF;
  EXECUTE format('CREATE TABLE %I (LIKE review_sentiment INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
  EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (created_at >= %L AND created_at < %L)',
                 name, name || '_bounds', month, upper_bound);
  EXECUTE format('ALTER TABLE review_sentiment ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                 name, month, upper_bound);
  EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', name, name || '_bounds');
  RETURN true;
END $fn$"""

ENSURE = """
CREATE FUNCTION review_sentiment_partitions(times timestamptz[]) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp SET timezone = 'UTC'
SET lock_timeout = '30s' AS $fn$
DECLARE
  month timestamptz;
  keep integer;
  created integer := 0;
BEGIN
  FOR month IN SELECT DISTINCT date_trunc('month', t) FROM unnest(times) t WHERE t IS NOT NULL ORDER BY 1 LOOP
    CONTINUE WHEN EXISTS (SELECT FROM pg_class WHERE relname = 'review_sentiment_p' || to_char(month, 'YYYYMM')
                          AND relnamespace = current_schema()::regnamespace);
    IF month < timestamptz '2000-01-01' OR month > now() + interval '1 year' THEN
      RAISE EXCEPTION 'created_at in % is before 2000 or more than a year ahead: not stored',
        to_char(month, 'YYYY-MM') USING ERRCODE = '22008';
    END IF;
    SELECT retention_days INTO keep FROM review_partition_policy;
    IF keep > 0 AND month + interval '1 month' <= now() - make_interval(days => keep) THEN
      RAISE EXCEPTION 'created_at in % is older than the retention of % days: not stored',
        to_char(month, 'YYYY-MM'), keep USING ERRCODE = '22008',
        HINT = 'raise SENTIMENT_POSTGRES__RETENTION_DAYS and run `sentiment init` to keep older reviews';
    END IF;
    IF review_sentiment_create_partition(month) THEN
      created := created + 1;
    END IF;
  END LOOP;
  RETURN created;
END $fn$"""

MAINTAIN = """
CREATE FUNCTION review_sentiment_maintain() RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp SET timezone = 'UTC'
SET lock_timeout = '10s' AS $fn$
DECLARE
  keep integer;
  name text;
  lower_bound timestamptz;
BEGIN
  PERFORM review_sentiment_create_partition(date_trunc('month', now()) + make_interval(months => m))
    FROM generate_series(0, 3) m;
  SELECT retention_days INTO keep FROM review_partition_policy;
  IF keep = 0 THEN
    RETURN;
  END IF;
  FOR name IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'review_sentiment'::regclass AND c.relname ~ '^review_sentiment_p[0-9]{{6}}$'
              ORDER BY 1 LOOP
    lower_bound := to_timestamp(right(name, 6), 'YYYYMM');
    CONTINUE WHEN lower_bound + interval '1 month' > now() - make_interval(days => keep);
    PERFORM pg_advisory_xact_lock(hashtext('review_sentiment_partitions'));
    -- The table first: its lock waits for the inserts in flight, so no claim of this month is left behind.
    EXECUTE format('DROP TABLE %I', name);
    DELETE FROM review_key WHERE created_at >= lower_bound AND created_at < lower_bound + interval '1 month';
    RETURN NEXT name;
  END LOOP;
END $fn$"""

# A row deleted by hand takes its claim with it (so the id may be stored again); an id or a time is never
# changed in place (its claim and month would no longer match): delete and insert instead.
FOLLOW = """
CREATE FUNCTION review_key_follow() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    RAISE EXCEPTION 'review_id and created_at of a stored review cannot change'
      USING ERRCODE = '23514', HINT = 'delete the row and insert it again';
  END IF;
  DELETE FROM review_key WHERE review_id = OLD.review_id AND created_at = OLD.created_at;
  RETURN NULL;
END $fn$;
CREATE TRIGGER review_key_follow AFTER DELETE ON review_sentiment FOR EACH ROW EXECUTE FUNCTION review_key_follow();
CREATE TRIGGER review_key_fixed BEFORE UPDATE OF review_id, created_at ON review_sentiment
  FOR EACH ROW WHEN (OLD.review_id IS DISTINCT FROM NEW.review_id OR OLD.created_at IS DISTINCT FROM NEW.created_at)
  EXECUTE FUNCTION review_key_follow()"""

FUNCTIONS = ("review_sentiment_create_partition(timestamptz)", "review_sentiment_partitions(timestamptz[])",
             "review_sentiment_maintain()")


def _schema() -> str:
    bind = op.get_bind()
    return bind.dialect.identifier_preparer.quote(bind.execute(text("SELECT current_schema()")).scalar_one())


def _view_definitions() -> dict[str, str]:
    rows = op.get_bind().execute(text("SELECT relname, pg_get_viewdef(oid) FROM pg_class WHERE relname = ANY(:names) "
                                      "AND relnamespace = current_schema()::regnamespace"), {"names": list(VIEWS)})
    return dict(rows.all())


def _feedback_fk(referenced: str) -> str:
    return op.get_bind().execute(text(
        "SELECT conname FROM pg_constraint WHERE contype = 'f' AND conrelid = CAST(:fb AS regclass) "
        "AND confrelid = CAST(:ref AS regclass)"), {"fb": "review_feedback", "ref": referenced}).scalar_one()


def upgrade() -> None:
    views = _view_definitions()  # as they read now: recreated in place below (same columns, same grants)
    op.execute(f"ALTER TABLE review_sentiment RENAME TO {OLD}")
    op.execute(f"ALTER INDEX review_sentiment_pkey RENAME TO {OLD}_pkey")
    for index in ("review_sentiment_created_at", "review_sentiment_source_created_at",
                  "review_sentiment_model_version"):
        op.execute(f"DROP INDEX {index}")
    op.execute(f"ALTER TABLE review_feedback DROP CONSTRAINT {_feedback_fk(OLD)}")

    op.execute("CREATE TABLE review_partition_policy (id boolean PRIMARY KEY DEFAULT true CHECK (id), "
               "retention_days integer NOT NULL DEFAULT 0 CHECK (retention_days >= 0))")
    op.execute("INSERT INTO review_partition_policy DEFAULT VALUES")
    op.execute(f"CREATE TABLE review_sentiment (LIKE {OLD} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
               "PARTITION BY RANGE (created_at)")
    schema = _schema()
    for sql in (CREATE_PARTITION, ENSURE, MAINTAIN):
        op.execute(sql.format(schema=schema))
    # Every month that holds a row, then this month and the next three.
    op.execute(f"SELECT review_sentiment_create_partition(m) FROM (SELECT DISTINCT date_trunc('month', created_at, "
               f"'UTC') AS m FROM {OLD}) months ORDER BY m")
    op.execute("SELECT count(*) FROM review_sentiment_maintain()")

    op.execute("CREATE TABLE review_key (review_id text NOT NULL, created_at timestamptz NOT NULL)")
    op.execute(f"INSERT INTO review_key SELECT review_id, created_at FROM {OLD}")
    op.execute(f"INSERT INTO review_sentiment SELECT * FROM {OLD}")
    # Indexes after the copy: one build each rather than row by row.
    op.execute("ALTER TABLE review_key ADD PRIMARY KEY (review_id)")
    op.execute("CREATE INDEX review_key_created_at ON review_key (created_at)")
    op.execute("ALTER TABLE review_sentiment ADD PRIMARY KEY (review_id, created_at)")
    op.execute("CREATE INDEX review_sentiment_created_at ON review_sentiment (created_at)")
    op.execute("CREATE INDEX review_sentiment_source_created_at ON review_sentiment (source, created_at)")
    op.execute("CREATE INDEX review_sentiment_model_version ON review_sentiment (model_version)")
    op.execute("ALTER TABLE review_feedback ADD CONSTRAINT review_feedback_review_id_fkey FOREIGN KEY (review_id) "
               "REFERENCES review_key (review_id) ON DELETE CASCADE")
    for name, definition in views.items():
        op.execute(f"CREATE OR REPLACE VIEW {name} AS {definition}")
    op.execute(f"DROP TABLE {OLD}")
    op.execute(FOLLOW)

    op.execute(f"GRANT SELECT, INSERT ON review_sentiment, review_key TO {WORKER}")
    op.execute(f"GRANT SELECT ON review_sentiment TO {READER}, {FEEDBACK}")
    for function in FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    for function in FUNCTIONS[1:]:
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {WORKER}")
    op.execute("ANALYZE review_sentiment")
    op.execute("ANALYZE review_key")


def downgrade() -> None:
    views = _view_definitions()
    op.execute(f"CREATE TABLE {OLD} (LIKE review_sentiment INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    op.execute(f"INSERT INTO {OLD} SELECT * FROM review_sentiment")
    op.execute(f"ALTER TABLE {OLD} ADD CONSTRAINT {OLD}_pkey PRIMARY KEY (review_id)")
    op.execute(f"ALTER TABLE review_feedback DROP CONSTRAINT {_feedback_fk('review_key')}")
    op.execute(f"ALTER TABLE review_feedback ADD CONSTRAINT review_feedback_review_id_fkey FOREIGN KEY (review_id) "
               f"REFERENCES {OLD} (review_id) ON DELETE CASCADE")
    for name, definition in views.items():
        op.execute(f"CREATE OR REPLACE VIEW {name} AS {definition.replace('review_sentiment', OLD)}")
    for function in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION {function}")
    op.execute("DROP TABLE review_sentiment, review_key, review_partition_policy")
    op.execute("DROP FUNCTION review_key_follow()")
    op.execute(f"ALTER TABLE {OLD} RENAME TO review_sentiment")
    op.execute(f"ALTER INDEX {OLD}_pkey RENAME TO review_sentiment_pkey")
    op.execute("CREATE INDEX review_sentiment_created_at ON review_sentiment (created_at)")
    op.execute("CREATE INDEX review_sentiment_source_created_at ON review_sentiment (source, created_at)")
    op.execute("CREATE INDEX review_sentiment_model_version ON review_sentiment (model_version)")
    op.execute(f"GRANT SELECT, INSERT ON review_sentiment TO {WORKER}")
    op.execute(f"GRANT SELECT ON review_sentiment TO {READER}, {FEEDBACK}")
