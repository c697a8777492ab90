#!/usr/bin/env bash
# Runs Herald's whole test suite: Rust unit and integration tests (SQLite and
# PostgreSQL), then the browser tests in headless Chromium and Firefox ESR.
# Installs what the browser tests need on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x scripts/install-browser-deps.sh ]; then
  scripts/install-browser-deps.sh
fi

echo "== the shipped binary links no OpenSSL"
if cargo tree -e normal,build -i openssl-sys --prefix none 2>/dev/null | grep -q openssl; then
  echo "openssl-sys is a dependency of the shipped binary:" >&2
  cargo tree -e normal,build -i openssl-sys >&2
  exit 1
fi

echo "== PostgreSQL"
scripts/require-postgres.sh

echo "== cargo test"
cargo test --all-targets --no-fail-fast

echo "== service tests again, on PostgreSQL"
HERALD_TEST_DATABASE=postgres cargo test --no-fail-fast --test service --test api_errors --test store_conformance

echo "== browser tests"
tests/browser/run.sh
