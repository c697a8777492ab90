#!/usr/bin/env bash
# Fails, saying how to start it, unless the PostgreSQL the tests use answers.
# The tests read the same variable: HERALD_TEST_PG_URL
# (default postgres://postgres@127.0.0.1:5432/test).
set -euo pipefail

url="${HERALD_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}"

fail() {
  cat >&2 <<MSG
PostgreSQL is needed by the tests and cannot be reached at $url:
  $1
Start the local server with:
  pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start
or set HERALD_TEST_PG_URL to a server that accepts this connection (trust
auth, an existing database; tests create and drop their own schemas).
MSG
  exit 1
}

if command -v psql >/dev/null 2>&1; then
  if ! out=$(psql "$url" -Atqc 'SELECT 1' 2>&1); then
    fail "$out"
  fi
else
  # No client installed: at least the port must answer.
  hostport="${url#*@}"
  hostport="${hostport%%/*}"
  host="${hostport%%:*}"
  port="${hostport##*:}"
  [ "$port" = "$hostport" ] && port=5432
  if ! (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    fail "nothing listens on $host:$port (and psql is not installed to say more)"
  fi
fi
echo "PostgreSQL answers at $url"
