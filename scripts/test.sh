#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the developer build
# (all labels), then the core/backend/daemon tests under ASan+UBSan and the
# core/backend tests under TSan. Works as root or as a user with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --test
# The systemd test runs its privileged part through sudo: ask once, now, and
# keep the credential fresh until the tests are done.
if ((EUID != 0)); then
  sudo -v
  (while sleep 60; do sudo -n -v 2>/dev/null || exit; done) &
  sudo_keepalive=$!
  trap 'kill $sudo_keepalive 2>/dev/null' EXIT
fi

jobs=$(nproc)
# Each test the last ctest run in build dir $1 skipped, with its reason.
report_skips() {
  local log=$1/Testing/Temporary/LastTest.log
  [ -f "$log" ] || return 0
  awk '/^[0-9]+\/[0-9]+ Test: / { name = $0; sub(/^[0-9]+\/[0-9]+ Test: /, "", name);
                                   sub(/  #.*/, "", name) }
       /^SKIP: / { print "   SKIPPED " name ": " substr($0, 7) }
       /: Skipped$/ { getline why; print "   SKIPPED " name ": " why }' "$log" >&2
}
run_preset() {
  local preset=$1; shift
  echo "== ${preset}: configure and build" >&2
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  echo "== ${preset}: test" >&2
  local rc=0
  ctest --preset "$preset" -j "$jobs" --timeout 300 "$@" || rc=$?
  report_skips "build/$preset"
  return "$rc"
}

# Everything, including the soak test (label soak, ~90 s; ASYNCD_SOAK_SECONDS)
# and the systemd-in-a-container test (label systemd).
run_preset dev
# Under ASan+UBSan all but systemd (boots a container), the soak test for
# 45 s (it found a use-after-free only ASan saw).
ASYNCD_SOAK_SECONDS=45 run_preset asan -LE systemd
# Debian's gRPC is not built with TSan: this preset builds core and backends only.
run_preset tsan

# libFuzzer: the request, checkpoint and ring fuzzers in a clang tree of their
# own (ASYNCD_FUZZ=ON builds nothing else), run briefly over its seed corpus.
# ASYNCD_FUZZ_SECONDS (default 30) sets the run's budget.
fuzz_probe='extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }'
if command -v clang++ >/dev/null &&
   echo "$fuzz_probe" | clang++ -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "== fuzz: configure and build (clang, ASYNCD_FUZZ=ON)" >&2
  CC=clang CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DASYNCD_FUZZ=ON >/dev/null
  cmake --build build/fuzz -j "$jobs" --target request_fuzzer checkpoint_fuzzer ring_fuzzer
  echo "== fuzz: test" >&2
  ctest --test-dir build/fuzz -L fuzz --output-on-failure
else
  echo "== fuzz: SKIPPED (clang++ with libFuzzer not found: apt-get install clang libclang-rt-14-dev)" >&2
fi
