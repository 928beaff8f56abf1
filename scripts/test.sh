#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the developer build
# (all labels), then the core/backend/daemon tests under ASan+UBSan and the
# core/backend tests under TSan. Works as root or as a user with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --test

jobs=$(nproc)
run_preset() {
  local preset=$1; shift
  echo "== ${preset}: configure and build" >&2
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  echo "== ${preset}: test" >&2
  ctest --preset "$preset" -j "$jobs" --timeout 300 "$@"
}

run_preset dev
run_preset asan -L 'unit|stress|integration'
# Debian's gRPC is not built with TSan, so only code without gRPC runs here.
run_preset tsan -L 'unit|stress' -LE 'daemon|client'
