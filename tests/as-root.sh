#!/bin/sh
# Runs a test binary as root: directly when we are root, through sudo when
# that needs no password prompt (the binary writes only under /tmp, so the
# build tree gets no root-owned files), else as we are: the tests that need
# root then skip themselves. Used for auth_test and fault_test, whose tests
# act as a second user or mount a tmpfs, and by the systemd test.
keep=ASAN_OPTIONS,UBSAN_OPTIONS,LSAN_OPTIONS,TSAN_OPTIONS,ASYNCD_SOAK_SECONDS
if [ "$(id -u)" != 0 ] && sudo -n --preserve-env="$keep" true 2>/dev/null; then
  exec sudo -n --preserve-env="$keep" -- "$@"
fi
exec "$@"
