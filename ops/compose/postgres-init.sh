#!/usr/bin/env bash
# Run once by the postgres image, on the first start of an empty volume (docker-entrypoint-initdb.d), as the
# image's superuser. It creates the application's operator role, NOT a superuser: it owns the `sentiment`
# database and has CREATEROLE so that `sentiment init` can create the worker, reader and feedback roles
# (storage/roles.py). Nothing connects as the superuser afterwards. The password comes from .env.
set -euo pipefail
: "${SENTIMENT_OPERATOR_PASSWORD:?set SENTIMENT_POSTGRES__PASSWORD in .env}"
# Before the database is created from template1, so that it inherits the revocations (see the file).
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname template1 -f /etc/sentiment/postgres-revoke.sql
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v pw="$SENTIMENT_OPERATOR_PASSWORD" <<'SQL'
CREATE ROLE sentiment LOGIN NOSUPERUSER CREATEROLE PASSWORD :'pw';
CREATE DATABASE sentiment OWNER sentiment;
SQL
