#!/bin/bash
# The real-systemd test: builds the .deb (cpack), installs it into a Debian
# 12 tree (debootstrap, cached), boots that tree under systemd-nspawn and
# runs checks.sh inside as a oneshot unit that writes its results and powers
# off. Checks: Type=notify readiness + STATUS=, asyncctl through the socket,
# socket activation, reload (RELOADING/READY, live limits), stop = drain with
# manifest, Restart=on-failure after SIGKILL, the watchdog restarting a
# SIGSTOPped daemon; and every op kind, checked on disk, under the shipped
# unit (io_uring), with the no-io_uring drop-in (thread pool), and with a
# drop-in refusing io_uring and openat2 as container runtimes do; then the
# operator's life cycle: group members as clients, a bad config at reload and
# at start, asyncctl drain, systemctl restart keeping a session and its 1,001
# handles (the descriptor store; the new daemon's descriptors and VmRSS
# against the old one's) where a stop drains, or where the store has no room
# (FileDescriptorStoreMax=0) drains and says so, a client riding through a
# restart and an upgrade on a resumable stream (restart_probe, built here and
# copied in), dpkg -r, -i, an upgrade keeping a session and --purge (the
# package, and a copy with a higher version, wait in /var/cache/asyncd-test
# in the tree). Exit 0 = pass, 1 = fail, 77 = skipped (not root, no
# debootstrap/nspawn, nspawn cannot start a container here, as inside some
# containers, no network for debootstrap).
#
#   tests/systemd/run.sh [BUILD_DIR]      (~1 min, +1 min first run)
#   ctest --test-dir BUILD_DIR -L systemd
#
# As root it works in BUILD_DIR/systemd-test. As a user it builds the package
# as that user, then runs itself again through tests/as-root.sh (sudo without
# a password prompt) for the rest, in /var/tmp/asyncd-systemd-test, so the
# build tree gets no root-owned files.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
BUILD=$(cd "${1:-$SRC/build/sd}" && pwd)
WORK=${ASYNCD_SYSTEMD_WORK:-$BUILD/systemd-test}
ROOT=$WORK/root
TIMEOUT=${ASYNCD_SYSTEMD_TEST_TIMEOUT:-420}

export PATH=$PATH:/usr/sbin:/sbin  # debootstrap and chroot, for a user's PATH too

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }

command -v debootstrap >/dev/null || skip "no debootstrap (apt-get install debootstrap)"
command -v systemd-nspawn >/dev/null || skip "no systemd-nspawn (apt-get install systemd-container)"

# 1. The package, built by whoever owns the build tree.
if [ -z "${ASYNCD_SYSTEMD_DEB:-}" ]; then
  LOGS=$WORK
  [ "$(id -u)" = 0 ] || LOGS=$BUILD/systemd-test-logs
  mkdir -p "$LOGS"
  echo "== building the package"
  cmake --build "$BUILD" --target asyncd asyncctl asyncd-bench asyncd_client asyncd-man \
    restart_probe -- -j2 >"$LOGS/build.log" 2>&1 \
    || fail "build failed (see $LOGS/build.log)"
  (cd "$BUILD" && cpack -G DEB >"$LOGS/cpack.log" 2>&1) || fail "cpack failed (see $LOGS/cpack.log)"
  DEB=$(ls -t "$BUILD"/asyncd_*.deb | head -1)
  [ -f "$DEB" ] || fail "no .deb in $BUILD"
  if [ "$(id -u)" != 0 ]; then
    exec "$SRC/tests/as-root.sh" env ASYNCD_SYSTEMD_DEB="$DEB" \
      ASYNCD_SYSTEMD_WORK=/var/tmp/asyncd-systemd-test ASYNCD_SYSTEMD_TEST_TIMEOUT="$TIMEOUT" \
      "$HERE/run.sh" "$BUILD"
  fi
else
  DEB=$ASYNCD_SYSTEMD_DEB
fi
[ "$(id -u)" = 0 ] ||
  skip "needs root, or sudo without a password prompt (debootstrap, chroot, systemd-nspawn)"
# Can this machine run a container at all? Inside some containers nspawn
# cannot (e.g. "Failed to read resource limit RLIMIT_NPROC of PID 1"): try
# the cheapest one, the host's own /usr on a scratch root, and say why not.
if ! probe=$(systemd-nspawn -q --register=no --keep-unit -D / --volatile=yes /bin/true 2>&1); then
  virt=$(systemd-detect-virt --container 2>/dev/null || echo none)
  skip "systemd-nspawn cannot start a container here (container: $virt): $(echo "$probe" | head -1)"
fi
mkdir -p "$WORK"

# 2. The base tree: debootstrap once, then reuse a tarball of it.
# The package's Depends (dpkg -i does not fetch them); the cache is per list.
DEPS=systemd,dbus,procps,adduser,init-system-helpers,liburing2,libgrpc++1.51,libprotobuf32,libspdlog1.10,libsystemd0,libtomlplusplus3,libabsl20220623,libfmt9
BASE_TAR=$WORK/systemd-root-$(echo "$DEPS" | md5sum | cut -c1-8).tar
if [ ! -s "$BASE_TAR" ]; then
  echo "== debootstrap (about a minute; cached in $BASE_TAR)"
  MIRROR=$(grep -m1 '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | awk '{print $2}')
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  rm -rf "$WORK/root-base"
  if ! debootstrap --variant=minbase --include="$DEPS" bookworm "$WORK/root-base" "$MIRROR" \
      >"$WORK/debootstrap.log" 2>&1; then
    skip "debootstrap failed (network?): see $WORK/debootstrap.log"
  fi
  tar -C "$WORK/root-base" -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$WORK/root-base"
fi

# 3. A fresh tree with the package installed and the checks enabled.
echo "== preparing $ROOT"
rm -rf "$ROOT" && mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$BASE_TAR" || fail "cannot unpack $BASE_TAR"
mkdir -p "$ROOT/var/cache/asyncd-test/next"
cp "$DEB" "$ROOT/var/cache/asyncd-test/"
# The upgrade: the same files under a higher version (no second build).
rm -rf "$WORK/next" && dpkg-deb -R "$DEB" "$WORK/next" &&
  sed -i 's/^Version: .*/&+next1/' "$WORK/next/DEBIAN/control" &&
  dpkg-deb -b "$WORK/next" "$ROOT/var/cache/asyncd-test/next/asyncd_next.deb" >/dev/null ||
  fail "cannot repack $DEB with a higher version"
chroot "$ROOT" dpkg -i "/var/cache/asyncd-test/$(basename "$DEB")" >"$WORK/dpkg.log" 2>&1 \
  || { cat "$WORK/dpkg.log"; fail "dpkg -i failed: a missing runtime dependency?"; }
install -m755 "$HERE/checks.sh" "$ROOT/usr/local/bin/asyncd-checks"
# The client that rides through the restarts: a test tool, not in the
# package; the tree has the same Debian gRPC and protobuf it links.
[ -x "$BUILD/tests/restart_probe" ] || fail "no $BUILD/tests/restart_probe (build it)"
install -m755 "$BUILD/tests/restart_probe" "$ROOT/usr/local/bin/asyncd-restart-probe"
# The checks take about 3 minutes on a quiet 2-core machine; on a loaded
# one they get what the boot leaves of TIMEOUT.
cat >"$ROOT/etc/systemd/system/asyncd-checks.service" <<UNIT
[Unit]
Description=asyncd checks under a real systemd
After=multi-user.target asyncd.socket
[Service]
Type=oneshot
ExecStart=/usr/local/bin/asyncd-checks /results.txt
ExecStopPost=/bin/systemctl --no-block poweroff
StandardOutput=journal+console
TimeoutStartSec=$((TIMEOUT - 30))
UNIT
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
ln -sf ../asyncd-checks.service "$ROOT/etc/systemd/system/multi-user.target.wants/"
# No getty on the container console: the checks own it.
ln -sf /dev/null "$ROOT/etc/systemd/system/console-getty.service"
echo asyncd-test >"$ROOT/etc/hostname"
rm -f "$ROOT/results.txt" "$ROOT/results.txt.tmp"

# 4. Boot.
echo "== booting (timeout ${TIMEOUT}s)"
timeout --foreground -k 10 "$TIMEOUT" systemd-nspawn -q -D "$ROOT" --boot --register=no \
  --keep-unit --console=pipe >"$WORK/console.log" 2>&1 </dev/null
rc=$?
[ "$rc" = 124 ] && echo "nspawn timed out after ${TIMEOUT}s"
if [ ! -s "$ROOT/results.txt" ]; then
  tail -40 "$WORK/console.log"
  # The checks write as they go: they ran, and did not finish in time.
  if [ -s "$ROOT/results.txt.tmp" ]; then
    cat "$ROOT/results.txt.tmp"
    fail "the checks did not finish (nspawn rc $rc): the last line above is the last check to end;" \
      "journal: journalctl -D $ROOT/var/log/journal"
  fi
  # nspawn that never got systemd going is this machine's limit, not ours.
  # It got going if it said so on the console or its journald wrote.
  grep -q 'systemd 2[0-9][0-9] running\|Welcome to' "$WORK/console.log" ||
    compgen -G "$ROOT/var/log/journal/*/system.journal" >/dev/null ||
    skip "systemd-nspawn could not boot the tree (rc $rc)"
  fail "no results (nspawn rc $rc; console: $WORK/console.log)"
fi
cat "$ROOT/results.txt"
grep -q '^RESULT: PASS' "$ROOT/results.txt" || fail "checks failed (console: $WORK/console.log)"
echo "PASS"
