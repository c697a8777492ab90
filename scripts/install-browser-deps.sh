#!/usr/bin/env bash
# Installs what the browser tests need on a Debian 12 machine (run as root).
# Safe to run repeatedly: every step is skipped when its result is already there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-browser-deps: run as root (or install sudo)" >&2; exit 1
  fi
fi

log() { printf 'install-browser-deps: %s\n' "$*"; }

is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_updated=""
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$apt_updated" ]; then $SUDO apt-get update; apt_updated=1; fi
  $SUDO apt-get install -y --no-install-recommends "$@"
}

# 1. Debian packages: Chromium + ChromeDriver and Firefox ESR; D-Bus with
#    Python bindings for the stand-in desktop notification server through
#    which the tests see and click the notifications Chromium shows.
apt_pkgs=(chromium chromium-driver firefox-esr dbus python3-dbus python3-gi)
command -v npm >/dev/null 2>&1 || apt_pkgs+=(nodejs npm)
missing=()
for p in "${apt_pkgs[@]}"; do
  is_installed "$p" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt_install "${missing[@]}"
else
  log "browsers and D-Bus tools already installed"
fi

# 2. Node test harness dependencies (playwright-core only: it drives the
#    system Chromium at /usr/bin/chromium and never downloads a browser).
cd "$ROOT/tests/browser"
if [ -d node_modules/playwright-core ] && \
   [ "$(node -p "require('./node_modules/playwright-core/package.json').version" 2>/dev/null)" = \
     "$(node -p "require('./package-lock.json').packages['node_modules/playwright-core'].version" 2>/dev/null)" ]; then
  log "node modules up to date"
else
  log "installing node modules"
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
fi

# 3. geckodriver (WebDriver for Firefox), built from crates.io.
if ! command -v geckodriver >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/geckodriver" ]; then
  if command -v cargo >/dev/null 2>&1; then
    log "installing geckodriver"
    cargo install geckodriver --locked
  else
    log "cargo not found: skipping geckodriver" >&2
  fi
else
  log "geckodriver already installed"
fi

log "done"
