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

echo "== cargo test"
cargo test --all-targets --no-fail-fast

echo "== browser tests"
tests/browser/run.sh
