#!/usr/bin/env bash
# Runs every browser test, in this order:
#   1. pages, herald.js and the service worker in headless Chromium, with the
#      stand-in API (tests/browser/run.mjs);
#   2. the same against a fresh Herald, plus the live-service tests
#      (tests/browser/with-herald.mjs);
#   3. end to end in headless Firefox ESR: opt in on the settings page, Herald
#      encrypts and sends through a local push service, Firefox decrypts
#      (tests/browser/firefox/e2e.mjs).
# Runs all three, then exits non-zero if any failed. A missing browser, driver
# or module is a failure, not a skip: scripts/install-browser-deps.sh installs
# them. Screenshots and logs go to test-artifacts/browser/.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "browser tests: $*" >&2; exit 1; }
need_install() { fail "$1 (run scripts/install-browser-deps.sh)"; }

command -v node >/dev/null 2>&1 || need_install "node not found"
command -v openssl >/dev/null 2>&1 || need_install "openssl not found"
[ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || need_install "${CHROMIUM_PATH:-/usr/bin/chromium} not found"
[ -x "${FIREFOX_PATH:-/usr/bin/firefox-esr}" ] || need_install "${FIREFOX_PATH:-/usr/bin/firefox-esr} not found"
if [ -z "${GECKODRIVER:-}" ] && ! command -v geckodriver >/dev/null 2>&1 && \
   [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/geckodriver" ]; then
  need_install "geckodriver not found"
fi
for m in playwright-core ws; do
  [ -f "tests/browser/node_modules/$m/package.json" ] || need_install "node module $m is not installed in tests/browser"
done

if [ -z "${HERALD_BIN:-}" ]; then
  echo "-- building Herald"
  cargo build --bin herald
fi

# The stage running now. If this script is stopped, it gets SIGTERM (each
# stage then stops what it started) and SIGKILL 15 s later.
stage_pid=""
cleanup() {
  [ -n "$stage_pid" ] || return 0
  kill -TERM "$stage_pid" 2>/dev/null || return 0
  for _ in $(seq 150); do
    kill -0 "$stage_pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$stage_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

failed=()
stage() {
  local name="$1"; shift
  local start=$SECONDS
  echo "== browser: $name"
  "$@" &
  stage_pid=$!
  if wait "$stage_pid"; then
    echo "-- $name: passed in $((SECONDS - start)) s"
  else
    echo "-- $name: FAILED (after $((SECONDS - start)) s)" >&2
    failed+=("$name")
  fi
  stage_pid=""
}

stage "Chromium, stand-in API" node tests/browser/run.mjs
stage "Chromium, live Herald" node tests/browser/with-herald.mjs node tests/browser/run.mjs
stage "Firefox ESR end to end" node tests/browser/firefox/e2e.mjs

if [ "${#failed[@]}" -gt 0 ]; then
  echo "browser tests FAILED: ${failed[*]} (see test-artifacts/browser/)" >&2
  exit 1
fi
echo "browser tests: all passed"
