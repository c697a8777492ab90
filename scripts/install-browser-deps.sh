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
#    which the tests see and click the notifications Chromium shows; openssl
#    for the Firefox test's throw-away certificate authority.
apt_pkgs=(chromium chromium-driver firefox-esr dbus python3-dbus python3-gi openssl)
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

# 2. Node test harness dependencies: playwright-core (it drives the system
#    Chromium at /usr/bin/chromium and never downloads a browser) and ws (the
#    Firefox test's push service). Up to date when every locked package is
#    installed at its locked version.
cd "$ROOT/tests/browser"
modules_match_lock() {
  node -e '
    const fs = require("fs");
    const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8"));
    for (const [p, info] of Object.entries(lock.packages || {})) {
      if (!p) continue;
      const v = JSON.parse(fs.readFileSync(p + "/package.json", "utf8")).version;
      if (v !== info.version) process.exit(1);
    }' 2>/dev/null
}
if [ -d node_modules ] && modules_match_lock; then
  log "node modules up to date"
else
  log "installing node modules"
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
fi

# 3. geckodriver (WebDriver for Firefox), built from crates.io.
if ! command -v geckodriver >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/geckodriver" ]; then
  if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: it is needed to build geckodriver (cargo install geckodriver)" >&2
    exit 1
  fi
  log "installing geckodriver"
  cargo install geckodriver --locked
else
  log "geckodriver already installed"
fi

log "done"
