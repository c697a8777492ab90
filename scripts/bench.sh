#!/usr/bin/env bash
# Delivery benchmark: builds the release binary, installs the web-push
# reference sender, and runs benches/delivery.rs. Arguments go to the
# benchmark (--quick for a short run, --help for the rest).
#
#   scripts/bench.sh            # full run, about 10 minutes
#   scripts/bench.sh --quick    # 10 000 subscriptions, one run
set -euo pipefail
cd "$(dirname "$0")/.."

for arg in "$@"; do
  if [ "$arg" = "--help" ] || [ "$arg" = "-h" ]; then
    exec cargo bench --quiet --bench delivery -- --help
  fi
done

peer=1
for arg in "$@"; do
  if [ "$arg" = "--no-peer" ]; then peer=0; fi
done

if [ "$peer" = 1 ]; then
  if ! command -v node >/dev/null; then
    echo "node is required for the web-push reference (or pass --no-peer)" >&2
    exit 1
  fi
  # Install, and reinstall when the lock file is newer than the install.
  if [ ! -f bench/peer/node_modules/.package-lock.json ] \
     || [ bench/peer/package-lock.json -nt bench/peer/node_modules/.package-lock.json ]; then
    echo "== npm ci (bench/peer)"
    npm ci --prefix bench/peer --no-audit --no-fund --loglevel=error
  fi
fi

echo "== cargo build --release"
cargo build --release --bin herald
# `cargo bench` rebuilds target/release/herald with the dev-dependencies'
# features unified in, so measure a copy of the binary `cargo run --release`
# runs. A --herald given on the command line comes later and wins.
target_dir="$(pwd)/target"
if [ -n "${CARGO_TARGET_DIR:-}" ]; then target_dir="$(cd "$CARGO_TARGET_DIR" && pwd)"; fi
mkdir -p "$target_dir/bench"
cp "$target_dir/release/herald" "$target_dir/bench/herald"
echo "== delivery benchmark"
exec cargo bench --bench delivery -- --herald "$target_dir/bench/herald" "$@"
