#!/usr/bin/env bash
# Local stack for dev and CI, without Docker: Kafka (KRaft, from Maven Central), PostgreSQL
# and Redis (from Debian), each bound to 127.0.0.1 only, plus a 3-node Redis Cluster for the
# cluster tests (tests/test_redis_cluster.py). Runtime state lives in .stack/.
#
#   ops/stack.sh up     [kafka|postgres|redis|redis-cluster ...]   install what is missing, start, wait
#   ops/stack.sh down   [kafka|postgres|redis|redis-cluster ...]   stop what `up` started (by pid file only)
#   ops/stack.sh status                              one line per service
#
# Ports: STACK_KAFKA_PORT (9092), STACK_KAFKA_CONTROLLER_PORT (9093), STACK_PG_PORT (5432),
# STACK_REDIS_PORT (6379), STACK_REDIS_CLUSTER_PORT (7000: nodes on 7000-7002, cluster bus +10000).
# Kafka heap: STACK_KAFKA_HEAP ("-Xms256m -Xmx768m"). Redis memory: STACK_REDIS_MAXMEMORY (1gb).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK=$ROOT/.stack
LOGS=$STACK/logs
RUN=$STACK/run
SERVICES=(postgres redis redis-cluster kafka)

KAFKA_PORT=${STACK_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${STACK_KAFKA_CONTROLLER_PORT:-9093}
PG_PORT=${STACK_PG_PORT:-5432}
REDIS_PORT=${STACK_REDIS_PORT:-6379}
REDIS_MAXMEMORY=${STACK_REDIS_MAXMEMORY:-1gb}
RC_PORT=${STACK_REDIS_CLUSTER_PORT:-7000}
KAFKA_HEAP=${STACK_KAFKA_HEAP:--Xms256m -Xmx768m}
# G1 flags from Kafka's bin/kafka-run-class.sh (KAFKA_JVM_PERFORMANCE_OPTS).
KAFKA_JVM_OPTS=(-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
  -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true
  -Djava.net.preferIPv4Stack=true) # plain IPv4 sockets: we only ever bind 127.0.0.1
PG_SOCKET_DIR=/var/run/postgresql # Debian's default; psql/pg_isready look there first
STOP_TIMEOUT=40

# ---------------------------------------------------------------- helpers
log() { printf 'stack: %s\n' "$*" >&2; } # stderr: safe inside $(...)
die() {
  printf 'stack: ERROR: %s\n' "$*" >&2
  exit 1
}
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.1f", b - a }'; } # since T0 [T1]

check_port_number() { # name value variable
  if ! [[ $2 =~ ^[0-9]+$ ]] || ((10#$2 < 1 || 10#$2 > 65535)); then
    die "$1: $3='$2' is not a port number (1-65535). Fix it, e.g. unset $3 to use the default."
  fi
}

# The last N lines of a log, without Java stack frames: the message is what matters.
show_log() { # file n
  [[ -s $1 ]] || return 0
  grep -vE $'^[ \t]+(at |\\.\\.\\. [0-9]+ more)' "$1" | tail -n "$2" >&2 || true
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Who listens on a port, for error messages (ss is in iproute2; absent is fine).
port_owner() {
  command -v ss >/dev/null || return 0
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\("[^"]*",pid=[0-9]*\).*/ (\1)/p' | head -1
}

# The app setting that must follow a moved port (stream/settings.py).
app_hint() { # service
  case $1 in
  kafka) echo "SENTIMENT_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:<port>" ;;
  postgres) echo "SENTIMENT_POSTGRES__URL=postgresql+psycopg://sentiment:sentiment@127.0.0.1:<port>/sentiment" ;;
  redis) echo "SENTIMENT_REDIS__URL=redis://127.0.0.1:<port>/0" ;;
  redis-cluster) echo "SENTIMENT_TEST_REDIS_CLUSTER_URL=redis://127.0.0.1:<port>/0" ;;
  esac
}

# Fail clearly if something that is not ours holds a port we need.
require_free_port() { # service port env-var
  port_in_use "$2" || return 0
  die "$1: 127.0.0.1:$2 is already in use by another process$(port_owner "$2"), not by this stack.
  Stop that process, or run ours on another port: $3=<port> ops/stack.sh up $1
  and point the app at it: $(app_hint "$1")"
}

# `up` on a running service: say so, and warn if it listens elsewhere than now asked.
already_running() { # service pid port env-var
  local addr
  addr=$(cat "$RUN/$1.addr" 2>/dev/null || echo '?')
  log "$1: already running (pid $2, $addr)"
  if [[ $addr != "127.0.0.1:$3"* ]]; then
    log "$1: WARNING: it listens on $addr, not on port $3 as $4 asks now." \
      "To move it: ops/stack.sh down $1 && $4=$3 ops/stack.sh up $1"
  fi
}

# Prints the pid recorded in .stack/run/NAME.pid if that process is alive and its command line
# contains MARKER (an absolute path of ours), so a recycled pid is never mistaken for ours.
# A stale pid file is removed.
our_pid() { # name marker
  local f=$RUN/$1.pid pid
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    [[ $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") == *"$2"* ]]; then
    echo "$pid"
    return 0
  fi
  log "$1: removing stale pid file (pid $pid is not running)"
  rm -f "$f" "$RUN/$1.addr"
  return 1
}

# Start a long-running process detached from this shell (own session, so Ctrl-C or the end of
# `make` doesn't reach it). The child writes its own pid before exec'ing, so the pid file
# names the real server process.
launch() { # name command...
  local name=$1
  shift
  rm -f "$RUN/$name.pid"
  # shellcheck disable=SC2016 # $$ and $@ expand in the child, on purpose
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" \
    </dev/null >>"$LOGS/$name.out.log" 2>&1 9>&- &
  for _ in $(seq 50); do
    [[ -s $RUN/$name.pid ]] && return 0
    sleep 0.1
  done
  die "$name: the process did not start; see $LOGS/$name.out.log"
}

# Poll CHECK until it succeeds; fail early if the process died, or after TIMEOUT seconds.
wait_ready() { # name marker timeout logfile address check...
  local name=$1 marker=$2 timeout=$3 logfile=$4 addr=$5 deadline
  shift 5
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ! our_pid "$name" "$marker" >/dev/null; then
      # JVM/launch errors land in NAME.out.log, the server's own in its log.
      show_log "$logfile" 20
      show_log "$LOGS/$name.out.log" 5
      die "$name: exited during startup (last lines of $logfile and $name.out.log above)."
    fi
    ((SECONDS < deadline)) || die "$name: did not answer on $addr within ${timeout}s; see $logfile."
    sleep 0.2
  done
}

# Stop a process of ours: SIGTERM, wait up to STOP_TIMEOUT s, then SIGKILL.
stop_pid() { # name pid
  local name=$1 pid=$2 t0
  t0=$(now)
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((STOP_TIMEOUT * 5))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still running after ${STOP_TIMEOUT}s, sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  kill -0 "$pid" 2>/dev/null && die "$name: pid $pid survived SIGKILL"
  log "$name: stopped (pid $pid) in $(since "$t0") s"
}

# Install Debian packages. Root only. A policy-rc.d that says "no" keeps the packages'
# maintainer scripts from starting system-wide servers on the ports we want.
APT_UPDATED=
apt_install() {
  [[ $(id -u) == 0 ]] || die "missing $*; install it (sudo apt-get install $*) or run this as root."
  log "installing $* with apt-get (not on this machine)"
  local own_policy='' t0
  t0=$(now)
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  {
    if [[ -z $APT_UPDATED ]]; then apt-get update -q && APT_UPDATED=1; fi &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
  } >>"$LOGS/apt.log" 2>&1 || {
    if [[ -n $own_policy ]]; then rm -f /usr/sbin/policy-rc.d; fi
    tail -n 15 "$LOGS/apt.log" >&2
    die "apt-get install $* failed (log: $LOGS/apt.log)."
  }
  if [[ -n $own_policy ]]; then rm -f /usr/sbin/policy-rc.d; fi
  log "installed $* in $(since "$t0") s"
}

# ---------------------------------------------------------------- redis
REDIS_CONF=$STACK/redis/redis.conf

redis_up() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server redis-tools
  fi
  local pid t0
  if pid=$(our_pid redis "$REDIS_CONF"); then
    already_running redis "$pid" "$REDIS_PORT" STACK_REDIS_PORT
    return 0
  fi
  require_free_port redis "$REDIS_PORT" STACK_REDIS_PORT
  t0=$(now)
  mkdir -p "$STACK/redis"
  # A config file (not only flags) so the process title names it: that is our liveness marker.
  # AOF keeps dev data across down/up (reset: rm -rf .stack/redis); no RDB snapshots.
  cat >"$REDIS_CONF" <<EOF
# Written by ops/stack.sh at every start; edit the script, not this file.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize no
dir "$STACK/redis"
logfile "$LOGS/redis.log"
save ""
appendonly yes
appendfsync everysec
# Past maxmemory, writes fail loudly (OOM) instead of evicting trend counters; the worker retries.
maxmemory $REDIS_MAXMEMORY
maxmemory-policy noeviction
proc-title-template "{title} {listen-addr} {config-file}"
EOF
  launch redis redis-server "$REDIS_CONF"
  echo "127.0.0.1:$REDIS_PORT" >"$RUN/redis.addr"
  wait_ready redis "$REDIS_CONF" 20 "$LOGS/redis.log" "127.0.0.1:$REDIS_PORT" \
    redis_ping
  log "redis: ready on 127.0.0.1:$REDIS_PORT (pid $(<"$RUN/redis.pid")) in $(since "$t0") s"
}
redis_ping() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

redis_down() {
  local pid
  if pid=$(our_pid redis "$REDIS_CONF"); then
    stop_pid redis "$pid"
  else
    log "redis: not running"
  fi
  rm -f "$RUN/redis.pid" "$RUN/redis.addr"
}

# ---------------------------------------------------------------- redis-cluster
# Three masters, no replicas, no persistence: test data only. Each start makes a fresh cluster.
RC_DIR=$STACK/redis-cluster
rc_ports() { echo "$RC_PORT" $((RC_PORT + 1)) $((RC_PORT + 2)); }
rc_ping() { [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]; }
rc_ok() { redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }

redis-cluster_up() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    apt_install redis-server redis-tools
  fi
  local p up=0 t0
  for p in $(rc_ports); do
    if our_pid "redis-cluster-$p" "$RC_DIR/$p/redis.conf" >/dev/null && rc_ok "$p"; then up=$((up + 1)); fi
  done
  if ((up == 3)); then
    log "redis-cluster: already running on 127.0.0.1:$RC_PORT-$((RC_PORT + 2))"
    return 0
  fi
  redis-cluster_down # a partial cluster: start again from nothing
  for p in $(rc_ports); do
    check_port_number redis-cluster $((p + 10000)) STACK_REDIS_CLUSTER_PORT
    require_free_port redis-cluster "$p" STACK_REDIS_CLUSTER_PORT
    require_free_port redis-cluster $((p + 10000)) STACK_REDIS_CLUSTER_PORT
  done
  t0=$(now)
  rm -rf "$RC_DIR"
  for p in $(rc_ports); do
    mkdir -p "$RC_DIR/$p"
    cat >"$RC_DIR/$p/redis.conf" <<EOF
# Written by ops/stack.sh at every start; edit the script, not this file.
bind 127.0.0.1
port $p
protected-mode yes
daemonize no
dir "$RC_DIR/$p"
logfile "$LOGS/redis-cluster-$p.log"
save ""
appendonly no
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 5000
maxmemory 256mb
maxmemory-policy noeviction
proc-title-template "{title} {listen-addr} {config-file}"
EOF
    launch "redis-cluster-$p" redis-server "$RC_DIR/$p/redis.conf"
    echo "127.0.0.1:$p" >"$RUN/redis-cluster-$p.addr"
  done
  for p in $(rc_ports); do
    wait_ready "redis-cluster-$p" "$RC_DIR/$p/redis.conf" 20 "$LOGS/redis-cluster-$p.log" "127.0.0.1:$p" rc_ping "$p"
  done
  # shellcheck disable=SC2046 # one argument per node
  redis-cli --cluster create $(rc_ports | sed 's/[0-9]*/127.0.0.1:&/g') --cluster-replicas 0 --cluster-yes \
    >"$LOGS/redis-cluster-create.log" 2>&1 || {
    tail -n 10 "$LOGS/redis-cluster-create.log" >&2
    die "redis-cluster: redis-cli --cluster create failed (log: $LOGS/redis-cluster-create.log)."
  }
  for p in $(rc_ports); do
    wait_ready "redis-cluster-$p" "$RC_DIR/$p/redis.conf" 30 "$LOGS/redis-cluster-$p.log" "127.0.0.1:$p" rc_ok "$p"
  done
  log "redis-cluster: ready on 127.0.0.1:$RC_PORT-$((RC_PORT + 2)) (3 masters) in $(since "$t0") s"
}

redis-cluster_down() {
  local p pid
  for p in $(rc_ports); do
    if pid=$(our_pid "redis-cluster-$p" "$RC_DIR/$p/redis.conf"); then
      stop_pid "redis-cluster-$p" "$pid"
    fi
    rm -f "$RUN/redis-cluster-$p.pid" "$RUN/redis-cluster-$p.addr"
  done
}

# ---------------------------------------------------------------- postgres
# Debian puts PostgreSQL's server programs in /usr/lib/postgresql/<major>/bin; take 15 (Debian
# 12's) or else the newest installed. STACK_PG_BIN overrides.
find_pg_bin() {
  local d
  # shellcheck disable=SC2012 # version-sorted directory names
  for d in ${STACK_PG_BIN:-} /usr/lib/postgresql/15/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    [[ -x $d/pg_ctl ]] && { echo "$d"; return 0; }
  done
  return 1
}

PG_LINK=$STACK/postgres/data

# The postgres OS user must reach the data directory. Under a checkout it can't traverse
# (e.g. below /root, mode 700), the data lives in /var/lib/postgresql/sentiment-stack/<hash>
# and .stack/postgres/data is a symlink to it.
pg_data_dir() {
  if [[ -L $PG_LINK ]]; then
    mkdir -p "$(readlink "$PG_LINK")"
  elif [[ ! -d $PG_LINK ]]; then
    mkdir -p "$PG_LINK"
    chown postgres:postgres "$PG_LINK"
    chmod 700 "$PG_LINK"
    if ! (cd / && runuser -u postgres -- test -w "$PG_LINK"); then
      local alt
      alt=/var/lib/postgresql/sentiment-stack/$(echo "$STACK" | sha1sum | cut -c1-12)/data
      log "postgres: user postgres can't reach $PG_LINK; keeping the data in $alt"
      rmdir "$PG_LINK"
      rm -rf "$alt" # a fresh .stack/postgres means a fresh database
      mkdir -p "$alt"
      ln -s "$alt" "$PG_LINK"
    fi
  fi
  local real
  real=$(readlink -f "$PG_LINK")
  chown postgres:postgres "$real"
  chmod 700 "$real"
  echo "$real"
}

# The postmaster keeps its own pid file; copy it if ours went missing (e.g. .stack/run deleted).
pg_sync_pidfile() {
  if [[ ! -s $RUN/postgres.pid && -s $1/postmaster.pid ]]; then
    head -1 "$1/postmaster.pid" >"$RUN/postgres.pid"
    [[ -s $RUN/postgres.addr ]] || echo "127.0.0.1:$(sed -n 4p "$1/postmaster.pid")" >"$RUN/postgres.addr"
  fi
}

as_postgres() { (cd / && runuser -u postgres -- "$@"); }
pg_admin_sql() { as_postgres "$PG_BIN/psql" -h "$PG_SOCKET_DIR" -p "$PG_PORT" -X -q -v ON_ERROR_STOP=1 -d postgres; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }

# After a crash (kill -9) the dead postmaster can stay a zombie for a moment, which postgres
# takes for a live one ('lock file "postmaster.pid" already exists'), and its orphaned children
# may still hold the shared memory ("pre-existing shared memory block is still in use").
# Both clear within seconds: wait for the zombie, and retry the start a few times.
pg_start() { # data
  local old try
  if [[ -s $1/postmaster.pid ]]; then
    old=$(head -1 "$1/postmaster.pid")
    for _ in $(seq 75); do
      [[ $(awk '/^State:/ {print $2}' "/proc/$old/status" 2>/dev/null) == Z ]] || break
      sleep 0.2
    done
  fi
  for try in 1 2 3; do
    if as_postgres "$PG_BIN/pg_ctl" -D "$1" -o "-p $PG_PORT" -w -t 60 start >>"$LOGS/postgres.log" 2>&1 9>&-; then
      return 0
    fi
    tail -n 3 "$LOGS/postgres.log" | grep -qE 'postmaster.pid" already exists|shared memory block' || break
    log "postgres: the previous server's leftovers are still going away; retrying ($try/3)"
    sleep 2
  done
  tail -n 20 "$LOGS/postgres.log" >&2
  die "postgres: failed to start on 127.0.0.1:$PG_PORT (last lines of $LOGS/postgres.log above)."
}

postgres_up() {
  PG_BIN=$(find_pg_bin) || { apt_install postgresql && PG_BIN=$(find_pg_bin); } ||
    die "postgres: no PostgreSQL server programs found after installing; set STACK_PG_BIN."
  id postgres >/dev/null 2>&1 || die "postgres: the OS user 'postgres' is missing (reinstall: apt-get install --reinstall postgresql-common)."
  local data pid t0 started=
  data=$(pg_data_dir)
  pg_sync_pidfile "$data"
  t0=$(now)
  if pid=$(our_pid postgres "$data"); then
    already_running postgres "$pid" "$PG_PORT" STACK_PG_PORT
  else
    require_free_port postgres "$PG_PORT" STACK_PG_PORT
    # postgres refuses to run as root: initdb and pg_ctl run as the postgres OS user.
    if [[ ! -s $data/PG_VERSION ]]; then
      log "postgres: initdb $data"
      as_postgres "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >>"$LOGS/postgres.log" 2>&1 ||
        die "postgres: initdb failed; see $LOGS/postgres.log"
      cat >>"$data/postgresql.conf" <<EOF

# ---- ops/stack.sh (dev/CI only)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_SOCKET_DIR'
# Dev data: a crash of the machine may lose it; a crash of postgres itself can't.
fsync = off
EOF
    fi
    local have want
    have=$(<"$data/PG_VERSION") want=$("$PG_BIN/postgres" --version | sed -E 's/.* ([0-9]+).*/\1/')
    [[ $have == "$want" ]] || die "postgres: $data was made by PostgreSQL $have but $PG_BIN is $want.
  Reset the dev database (rm -rf .stack/postgres) or set STACK_PG_BIN=/usr/lib/postgresql/$have/bin."
    install -d -o postgres -g postgres -m 2775 "$PG_SOCKET_DIR"
    touch "$LOGS/postgres.log"
    # The server's log goes to pg_ctl's stdout, a file this (root) shell opened: the postgres
    # user needs no write access to .stack/logs.
    pg_start "$data"
    head -1 "$data/postmaster.pid" >"$RUN/postgres.pid"
    echo "127.0.0.1:$PG_PORT" >"$RUN/postgres.addr"
    started=1
  fi
  wait_ready postgres "$data" 30 "$LOGS/postgres.log" "127.0.0.1:$PG_PORT" pg_ready
  # The app's operator role and databases (idempotent; also repairs a dropped database). CREATEROLE lets
  # `sentiment init` create and maintain the worker, reader and feedback roles (storage/roles.py).
  pg_admin_sql >/dev/null <<'SQL' || die "postgres: could not create role/databases 'sentiment'; see the message above."
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sentiment') THEN
    CREATE ROLE sentiment LOGIN CREATEDB CREATEROLE PASSWORD 'sentiment';
  ELSIF NOT (SELECT rolcreaterole FROM pg_roles WHERE rolname = 'sentiment') THEN
    ALTER ROLE sentiment CREATEROLE;
  END IF;
END $$;
SELECT 'CREATE DATABASE sentiment OWNER sentiment'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'sentiment') \gexec
SELECT 'CREATE DATABASE sentiment_test OWNER sentiment'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'sentiment_test') \gexec
SQL
  # Functions every role may call by default that let one signal its own role's other sessions or write
  # large objects: revoked in template1 (new databases) and in each database there is (ops/postgres-revoke.sql).
  local db dbs
  dbs=$(as_postgres "$PG_BIN/psql" -h "$PG_SOCKET_DIR" -p "$PG_PORT" -X -At -d postgres \
    -c "SELECT datname FROM pg_database WHERE datallowconn") || die "postgres: could not list the databases"
  for db in $dbs; do
    as_postgres "$PG_BIN/psql" -h "$PG_SOCKET_DIR" -p "$PG_PORT" -X -q -v ON_ERROR_STOP=1 -d "$db" \
      <"$ROOT/ops/postgres-revoke.sql" || die "postgres: could not apply ops/postgres-revoke.sql to $db"
  done
  if [[ -n $started ]]; then
    log "postgres: ready on 127.0.0.1:$PG_PORT (pid $(<"$RUN/postgres.pid")), databases sentiment, sentiment_test in $(since "$t0") s"
  fi
}

postgres_down() {
  local data pid
  PG_BIN=$(find_pg_bin) || PG_BIN=
  data=$(readlink -f "$PG_LINK" 2>/dev/null) || data=$PG_LINK
  pg_sync_pidfile "$data"
  if ! pid=$(our_pid postgres "$data"); then
    log "postgres: not running"
    rm -f "$RUN/postgres.pid" "$RUN/postgres.addr"
    return 0
  fi
  # Fast shutdown: roll back open transactions, checkpoint, exit. SIGKILL only as a last resort.
  if [[ -n $PG_BIN ]] && as_postgres "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t "$STOP_TIMEOUT" stop >>"$LOGS/postgres.log" 2>&1; then
    log "postgres: stopped (pid $pid)"
  else
    stop_pid postgres "$pid"
  fi
  rm -f "$RUN/postgres.pid" "$RUN/postgres.addr"
}

# ---------------------------------------------------------------- kafka
KAFKA_CONF=$STACK/kafka/server.properties
KAFKA_LIBS=$STACK/kafka/libs
JAVA=${STACK_JAVA:-java}

java_major() { "$1" -version 2>&1 | sed -nE '1s/.*version "(1\.)?([0-9]+).*/\2/p'; }

kafka_prereqs() {
  # Kafka 4.x needs Java 17+.
  local v
  v=$(command -v "$JAVA" >/dev/null && java_major "$JAVA") || v=
  if ! [[ $v =~ ^[0-9]+$ ]] || ((v < 17)); then
    apt_install openjdk-17-jre-headless
    local javas=(/usr/lib/jvm/java-17-openjdk-*/bin/java)
    JAVA=${javas[0]}
  fi
  # The jars: resolved from Maven Central once, again only when ops/kafka/pom.xml changes.
  local stamp sum t0
  sum=$(sha1sum "$ROOT/ops/kafka/pom.xml" | cut -d' ' -f1)
  stamp=$KAFKA_LIBS/.pom.sha1
  [[ -s $stamp && $(<"$stamp") == "$sum" ]] && return 0
  command -v mvn >/dev/null || apt_install maven
  log "kafka: downloading the broker jars from Maven Central (mvn, ops/kafka/pom.xml)"
  t0=$(now)
  rm -rf "$KAFKA_LIBS.tmp"
  # outputDirectory must be absolute: Maven resolves a relative one against the pom's folder.
  mvn -B -q -Dstyle.color=never -f "$ROOT/ops/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_LIBS.tmp" >"$LOGS/mvn.log" 2>&1 || {
    tail -n 20 "$LOGS/mvn.log" >&2
    die "kafka: mvn could not fetch the Kafka jars (log: $LOGS/mvn.log). Is Maven Central reachable?"
  }
  rm -rf "$KAFKA_LIBS"
  mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
  echo "$sum" >"$stamp"
  local jars=("$KAFKA_LIBS"/*.jar)
  log "kafka: ${#jars[@]} jars, $(du -sh "$KAFKA_LIBS" | cut -f1) in $(since "$t0") s"
}

# Readiness: the broker opens its client port only once it can serve requests (Kafka's
# SocketServer defers the acceptor on purpose), then one real request proves the protocol.
kafka_port_open() { port_in_use "$KAFKA_PORT"; }
kafka_protocol_check() {
  local py=$ROOT/.venv/bin/python
  if [[ -x $py ]] && "$py" -c 'import kafka' 2>/dev/null; then
    "$py" - "127.0.0.1:$KAFKA_PORT" <<'PY'
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], client_id="stack-ready", request_timeout_ms=10000)
admin.list_topics()
admin.close()
PY
  else
    # Without the venv: the core jars' ConfigCommand asks the broker for its config.
    "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$ROOT/ops/kafka/tools-log4j2.properties" \
      -cp "$KAFKA_LIBS/*" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
      --describe --entity-type brokers --entity-name 1
  fi
}

kafka_up() {
  kafka_prereqs
  local pid t0 t1 t2 id
  if pid=$(our_pid kafka "$KAFKA_CONF"); then
    already_running kafka "$pid" "$KAFKA_PORT" STACK_KAFKA_PORT
    return 0
  fi
  [[ $KAFKA_PORT != "$KAFKA_CONTROLLER_PORT" ]] ||
    die "kafka: STACK_KAFKA_PORT and STACK_KAFKA_CONTROLLER_PORT are both $KAFKA_PORT; they must differ."
  require_free_port kafka "$KAFKA_PORT" STACK_KAFKA_PORT
  require_free_port kafka "$KAFKA_CONTROLLER_PORT" STACK_KAFKA_CONTROLLER_PORT
  t0=$(now)
  mkdir -p "$STACK/kafka/data"
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    -e "s|@DATA_DIR@|$STACK/kafka/data|g" "$ROOT/ops/kafka/server.properties" >"$KAFKA_CONF"
  # One cluster id per checkout, kept beside the data (22 chars of URL-safe base64, as
  # `kafka-storage.sh random-uuid` prints; not starting with '-').
  if [[ ! -s $STACK/kafka/cluster.id ]]; then
    python3 -c 'import base64, uuid
while (s := base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()).startswith("-"): pass
print(s)' >"$STACK/kafka/cluster.id"
  fi
  id=$(<"$STACK/kafka/cluster.id")
  # Static voters (see server.properties), so no --standalone; -g: a formatted dir is left alone.
  "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$ROOT/ops/kafka/tools-log4j2.properties" \
    -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format -g -t "$id" -c "$KAFKA_CONF" \
    >"$LOGS/kafka-format.log" 2>&1 || {
    show_log "$LOGS/kafka-format.log" 5
    die "kafka: formatting $STACK/kafka/data failed (message above). Check ops/kafka/server.properties
  (rendered to $KAFKA_CONF). If the data dir is damaged: ops/stack.sh down kafka && rm -rf .stack/kafka/data"
  }
  t1=$(now)
  # shellcheck disable=SC2086 # KAFKA_HEAP holds several flags
  launch kafka "$JAVA" $KAFKA_HEAP "${KAFKA_JVM_OPTS[@]}" \
    -Xlog:gc*:file="$LOGS/kafka-gc.log":time,tags:filecount=3,filesize=10M \
    -Dkafka.logs.dir="$LOGS" -Dlog4j2.configurationFile="$ROOT/ops/kafka/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF"
  echo "127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)" >"$RUN/kafka.addr"
  wait_ready kafka "$KAFKA_CONF" 90 "$LOGS/kafka.log" "127.0.0.1:$KAFKA_PORT" kafka_port_open
  t2=$(now)
  wait_ready kafka "$KAFKA_CONF" 60 "$LOGS/kafka.log" "127.0.0.1:$KAFKA_PORT" kafka_protocol_check
  log "kafka: ready on 127.0.0.1:$KAFKA_PORT (pid $(<"$RUN/kafka.pid")) in $(since "$t0") s" \
    "(format $(since "$t0" "$t1") s, port open $(since "$t1" "$t2") s, protocol check $(since "$t2") s)"
}

kafka_down() {
  local pid
  if pid=$(our_pid kafka "$KAFKA_CONF"); then
    stop_pid kafka "$pid" # SIGTERM: Kafka's shutdown hook does a controlled shutdown
  else
    log "kafka: not running"
  fi
  rm -f "$RUN/kafka.pid" "$RUN/kafka.addr"
}

# ---------------------------------------------------------------- status
service_status() { # name marker
  local pid addr
  if pid=$(our_pid "$1" "$2" 2>/dev/null); then
    addr=$(cat "$RUN/$1.addr" 2>/dev/null || echo '?')
    printf '%-9s running  pid %-8s %s\n' "$1" "$pid" "$addr"
  else
    printf '%-9s stopped\n' "$1"
  fi
}

status() {
  service_status postgres "$(readlink -f "$PG_LINK" 2>/dev/null || echo "$PG_LINK")"
  service_status redis "$REDIS_CONF"
  for p in $(rc_ports); do service_status "redis-cluster-$p" "$RC_DIR/$p/redis.conf"; done
  service_status kafka "$KAFKA_CONF"
}

# After `down`: nothing of ours may be left. Kafka names its server.properties on its command
# line, the postmaster its data dir, Redis its config file (process title): look for them.
check_none_left() {
  local f args m left=
  local markers=("$KAFKA_CONF" "$(readlink -f "$PG_LINK" 2>/dev/null || echo "$PG_LINK")" "$REDIS_CONF" "$RC_DIR/")
  for f in /proc/[0-9]*/cmdline; do
    args=$(tr '\0' ' ' 2>/dev/null <"$f") || continue
    for m in "${markers[@]}"; do
      if [[ $args == *"$m"* ]]; then left+="  pid ${f//[^0-9]/}: $args"$'\n'; fi
    done
  done
  [[ -z $left ]] || die "processes of this stack are still running:
$left  Stop them by pid (kill PID), then run ops/stack.sh status."
  log "down: no Kafka, Postgres or Redis process of this stack is left"
}

# ---------------------------------------------------------------- main
usage() {
  sed -n '2,10s/^# \{0,1\}//p' "$0"
  exit 2
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
targets=("$@")
((${#targets[@]})) || targets=("${SERVICES[@]}")
for s in "${targets[@]}"; do
  [[ " ${SERVICES[*]} " == *" $s "* ]] || die "unknown service '$s' (choose from: ${SERVICES[*]})"
done

check_port_number kafka "$KAFKA_PORT" STACK_KAFKA_PORT
check_port_number kafka "$KAFKA_CONTROLLER_PORT" STACK_KAFKA_CONTROLLER_PORT
check_port_number postgres "$PG_PORT" STACK_PG_PORT
check_port_number redis "$REDIS_PORT" STACK_REDIS_PORT
check_port_number redis-cluster "$RC_PORT" STACK_REDIS_CLUSTER_PORT

# One `up` or `down` at a time (e.g. `make up` while a chaos test restarts a service).
# fd 9 holds the lock; the servers we start don't inherit it (9>&- where they are launched).
lock() {
  mkdir -p "$LOGS" "$RUN"
  exec 9>"$RUN/stack.lock"
  flock -w 300 9 || die "another ops/stack.sh up/down has been running for 5 minutes; see $RUN/stack.lock"
}

case $cmd in
up)
  lock
  t_all=$(now)
  for s in "${targets[@]}"; do "${s}_up"; done
  log "up in $(since "$t_all") s"
  status
  ;;
down)
  lock
  # Kafka first: its clients (workers) are gone by now; the stores last.
  for s in kafka redis-cluster redis postgres; do
    if [[ " ${targets[*]} " == *" $s "* ]]; then "${s}_down"; fi
  done
  if ((${#targets[@]} == ${#SERVICES[@]})); then check_none_left; fi
  ;;
status) status ;;
*) usage ;;
esac
