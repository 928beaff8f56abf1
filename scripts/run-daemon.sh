#!/usr/bin/env bash
# Installs what is missing, builds the release daemon, and starts it in the
# foreground with its embedded defaults (no config file needed). Extra
# arguments go to asyncd (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target asyncd asyncctl
exec ./build/release/daemon/asyncd "$@"
