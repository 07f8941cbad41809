# Throwaway PostgreSQL 15 clusters for the demo and the tests. Source it (as root):
#   source scripts/cluster.sh
#   cluster_tmpdir dir                          # dir := mktemp -d under /tmp, owned by postgres, removed at exit
#   cluster_start "$dir" "sluice.database = 'app'"   # initdb + start; exports PGHOST/PGPORT/PGUSER
#   cluster_psql -c 'select 1'
#   cluster_ctl -m immediate stop; cluster_ctl -w start
#   cluster_stop                                # also done at exit (see at_exit)

# SLUICE_PGBIN: another PostgreSQL 15 (a private copy, to test side by side without installing into the system one)
PGBIN=${SLUICE_PGBIN:-/usr/lib/postgresql/15/bin}
CLUSTER_DIR=

# A locale every Debian has, so initdb, pg_regress and the TAP tests behave the same everywhere.
unset LANGUAGE LC_ALL LC_CTYPE LC_COLLATE LC_MESSAGES LC_MONETARY LC_NUMERIC LC_TIME
export LANG=C.UTF-8

# at_exit CMD: run CMD when the script exits (last registered runs first), also on error or Ctrl-C.
_at_exit_cmds=()
at_exit() {
  _at_exit_cmds+=("$1")
  trap _run_at_exit EXIT
  trap 'exit 130' INT TERM
}
_run_at_exit() {
  local i
  for ((i = ${#_at_exit_cmds[@]} - 1; i >= 0; i--)); do eval "${_at_exit_cmds[i]}" || true; done
}

# as_postgres CMD...: run CMD as the postgres user from a directory it can read.
as_postgres() {
  (cd "${CLUSTER_DIR:-/tmp}" 2>/dev/null || cd /tmp || exit; runuser -u postgres -- "$@")
}

# cluster_tmpdir VAR: VAR := a new temp dir owned by postgres, removed at exit.
# (Sets a variable rather than printing: the exit hook must belong to this shell, not a $(...).)
cluster_tmpdir() {
  local _d
  _d=$(mktemp -d /tmp/sluice.XXXXXX)
  chown postgres: "$_d"
  at_exit "rm -rf '$_d'"
  printf -v "$1" %s "$_d"
}

_port_in_use() {
  if command -v ss >/dev/null; then
    [[ -n $(ss -Hltn "sport = :$1") ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

cluster_free_port() {
  local port=$((20000 + RANDOM % 30000)) i
  for ((i = 0; i < 500; i++, port++)); do
    _port_in_use "$port" || { echo "$port"; return 0; }
  done
  echo "cluster: no free port found" >&2
  return 1
}

# cluster_start DIR [postgresql.conf line...]
cluster_start() {
  local dir=$1 port line
  shift
  CLUSTER_DIR=$dir
  as_postgres "$PGBIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  port=$(cluster_free_port)
  {
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$dir'"
    echo "port = $port"
    echo "shared_preload_libraries = 'sluice'"
    for line in "$@"; do echo "$line"; done
  } >>"$dir/data/postgresql.conf"
  export PGHOST=$dir PGPORT=$port PGUSER=postgres PGDATABASE=postgres
  at_exit cluster_stop
  cluster_ctl -w -t 60 start >/dev/null || { tail -n 20 "$dir/log" >&2; return 1; }
}

# cluster_ctl ARGS...: pg_ctl on the current cluster, logging to $CLUSTER_DIR/log
cluster_ctl() {
  as_postgres "$PGBIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/log" "$@"
}

cluster_stop() {
  [[ -n $CLUSTER_DIR && -f $CLUSTER_DIR/data/postmaster.pid ]] || return 0
  cluster_ctl -m fast -w -t 30 stop >/dev/null 2>&1 || cluster_ctl -m immediate -w stop >/dev/null 2>&1 || true
}

cluster_psql() {
  as_postgres "$PGBIN/psql" -X -v ON_ERROR_STOP=1 "$@"
}

# kafka_mock_start DIR [command...]: start the tests' Kafka cluster (test/kafka_mock,
# librdkafka's mock cluster on loopback) with its files in DIR, run the commands
# (e.g. "topic bank 4"), each waiting for its answer, and export
# SLUICE_KAFKA_BROKERS. Stopped at exit.
kafka_mock_start() {
  local dir=$1 cmd n=1 i
  shift
  mkfifo "$dir/kafka.in"
  : >"$dir/kafka.out"
  sleep infinity >"$dir/kafka.in" &   # holds the pipe open between commands
  at_exit "kill $! 2>/dev/null"
  "$(dirname "${BASH_SOURCE[0]}")/../test/kafka_mock" -f "$dir/kafka.brokers" <"$dir/kafka.in" >"$dir/kafka.out" 2>&1 &
  at_exit "kill $! 2>/dev/null"
  for cmd in "" "$@"; do   # first the "bootstrap ..." line, then each command's answer
    [[ -z $cmd ]] || { echo "$cmd" >"$dir/kafka.in"; n=$((n + 1)); }
    for ((i = 0; i < 100 && $(wc -l <"$dir/kafka.out") < n; i++)); do sleep 0.1; done
    [[ -n $cmd ]] || continue
    [[ $(tail -n 1 "$dir/kafka.out") == ok* ]] || { echo "kafka_mock: $cmd: $(tail -n 1 "$dir/kafka.out")" >&2; return 1; }
  done
  SLUICE_KAFKA_BROKERS=$(cat "$dir/kafka.brokers")
  export SLUICE_KAFKA_BROKERS
}
