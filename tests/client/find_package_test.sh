#!/usr/bin/env bash
# Checks that the installed client package works for another project:
# builds asyncd_client, installs the asyncd_dev component into a temp prefix,
# then configures, builds and runs tests/client/find_package/ against it.
# Usage: find_package_test.sh [BUILD_DIR]   (default: build/cl under the repo)
# Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
build="${1:-${repo}/build/cl}"
[[ -f "${build}/CMakeCache.txt" ]] || { echo "no configured build in ${build}" >&2; exit 1; }
work="$(mktemp -d "${TMPDIR:-/tmp}/asyncd-find-package.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

cmake --build "${build}" -j2 --target asyncd_client
cmake --install "${build}" --prefix "${work}/prefix" --component asyncd_dev
cmake -S "${here}/find_package" -B "${work}/build" "${generator[@]}" \
  -DCMAKE_PREFIX_PATH="${work}/prefix" -DCMAKE_BUILD_TYPE=Release
cmake --build "${work}/build" -j2
"${work}/build/consumer"
echo "find_package test: OK"
