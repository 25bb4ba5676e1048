#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and development, run as a local process.
#
#   hack/postgres.sh start <dir>   initdb (first time) and start on a free loopback port (again: the
#                                  port it had, if free); prints the DSN
#   hack/postgres.sh dsn <dir>     prints the DSN of the server in <dir>
#   hack/postgres.sh stop <dir>    stops it (does nothing when it is not running)
#
# The server is tuned for throwaway use (fsync off): never keep data in it.
# As root, the server runs as the `postgres` user (created if missing), which
# must be able to reach <dir>: use a directory under /tmp, not under a 0700 one.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|dsn <dir>" >&2
  exit 2
}

[[ $# -eq 2 ]] || usage
action=$1
dir=$(realpath -m "$2")
data=$dir/data

find_bindir() {
  local candidate
  if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir
    return
  fi
  for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x $candidate/initdb ]]; then
      echo "$candidate"
      return
    fi
  done
  return 1
}

bindir() {
  if ! find_bindir; then
    if [[ $(id -u) -ne 0 ]]; then
      echo "postgres.sh: PostgreSQL server binaries not found; install the postgresql package" >&2
      exit 1
    fi
    echo "postgres.sh: installing PostgreSQL (apt-get install postgresql)" >&2
    apt-get install -y postgresql >&2 || { apt-get update >&2 && apt-get install -y postgresql >&2; }
    find_bindir
  fi
}

# Run a command as the server's owner: `postgres` when we are root, else ourselves.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

print_dsn() {
  [[ -f $dir/port && -f $dir/password ]] || { echo "postgres.sh: no server in $dir" >&2; exit 1; }
  echo "postgresql://postgres:$(cat "$dir/password")@127.0.0.1:$(cat "$dir/port")/postgres"
}

running() {
  [[ -f $data/PG_VERSION ]] && as_owner "$BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

init() {
  mkdir -p "$dir"
  chmod 0700 "$dir"
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --user-group --no-create-home postgres
    chown postgres: "$dir"
    runuser -u postgres -- test -w "$dir" ||
      { echo "postgres.sh: user postgres cannot reach $dir (a parent is private)" >&2; exit 1; }
  fi
  (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(16))' >"$dir/password")
  [[ $(id -u) -ne 0 ]] || chown postgres: "$dir/password"
  as_owner "$BIN/initdb" --pgdata="$data" --username=postgres --auth=scram-sha-256 \
    --pwfile="$dir/password" --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  cat >>"$data/postgresql.conf" <<'EOF'
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
}

start() {
  [[ -f $data/PG_VERSION ]] || init
  if running; then
    print_dsn
    return
  fi
  local port attempt
  for attempt in 1 2 3 4 5; do
    # A restarted server keeps its address while that port is free, as a database does.
    if [[ $attempt -eq 1 && -f $dir/port ]]; then port=$(cat "$dir/port"); else port=$(free_port); fi
    if as_owner "$BIN/pg_ctl" -D "$data" -l "$dir/postgres.log" -o "-p $port" -w -t 60 start \
      >/dev/null; then
      echo "$port" >"$dir/port"
      print_dsn
      return
    fi
    echo "postgres.sh: start on port $port failed (attempt $attempt), see $dir/postgres.log" >&2
  done
  exit 1
}

stop() {
  if running; then
    as_owner "$BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null
  fi
}

case $action in
  start) BIN=$(bindir); start ;;
  stop)
    BIN=$(find_bindir || true)
    if [[ -n $BIN ]]; then stop; fi
    ;;
  dsn) print_dsn ;;
  *) usage ;;
esac
