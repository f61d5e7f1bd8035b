-- Run as a superuser in template1 and in every application database (function privileges are per database,
-- and only the functions' owner, the bootstrap superuser, may change them): by ops/stack.sh and by
-- ops/compose/postgres-init.sh. Checked by tests/test_sql_security.py.
-- Every role may call these by default. A role may cancel or end any session of its own role, so the reader
-- that `sentiment sql` logs in as could end the dashboard's sessions (the same role); and a role may create
-- large objects even in a read-only transaction. No component needs either; a superuser still can.
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_terminate_backend(integer, bigint), pg_catalog.pg_cancel_backend(integer),
  pg_catalog.lo_create(oid), pg_catalog.lo_creat(integer), pg_catalog.lo_from_bytea(oid, bytea) FROM PUBLIC;
