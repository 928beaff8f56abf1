#!/bin/bash
# libasyncd-dev's Depends are enough: in a clean Debian 12 tree (debootstrap
# minbase, cached as a tarball), apt installs the package (pulling what it
# depends on) with only a compiler and cmake beside it, then builds and runs
# tests/client/find_package/ against /usr. A missing -dev dependency fails
# find_package(asyncd) or the link. Root only (chroot); exit 77 = skipped
# (not root, no debootstrap, no network).
#
#   tests/deploy/dev_package_test.sh BUILD_DIR      (~2 min, +1 min first run)
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:?usage: dev_package_test.sh BUILD_DIR}" && pwd)
WORK=$BUILD/dev-package-test
export PATH=$PATH:/usr/sbin:/sbin
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || skip "no debootstrap (apt-get install debootstrap)"
grep -q '^ASYNCD_SANITIZE:[A-Z]*=.\+' "$BUILD/CMakeCache.txt" &&
  skip "a sanitizer build (ASYNCD_SANITIZE) is not what is packaged"
mkdir -p "$WORK"

cmake --build "$BUILD" --target asyncd_client asyncd asyncctl asyncd-bench asyncd-man -- -j2 \
  >"$WORK/build.log" 2>&1 || fail "build failed (see $WORK/build.log)"
rm -rf "$WORK/out"
(cd "$BUILD" && cpack -G DEB -B "$WORK/out") >"$WORK/cpack.log" 2>&1 ||
  fail "cpack failed (see $WORK/cpack.log)"
DEV=$(ls "$WORK"/out/libasyncd-dev_*.deb) || fail "no libasyncd-dev package"

BASE_TAR=$WORK/bookworm-minbase.tar
MIRROR=$(grep -m1 '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | awk '{print $2}')
MIRROR=${MIRROR:-http://deb.debian.org/debian}
if [ ! -s "$BASE_TAR" ]; then
  rm -rf "$WORK/base"
  debootstrap --variant=minbase bookworm "$WORK/base" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    skip "debootstrap failed (network?): see $WORK/debootstrap.log"
  tar -C "$WORK/base" -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$WORK/base"
fi
ROOT=$WORK/root
rm -rf "$ROOT" && mkdir -p "$ROOT" && tar -C "$ROOT" -xf "$BASE_TAR" || fail "cannot unpack"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp "$DEV" "$ROOT/tmp/"
cp -r "$SRC/tests/client/find_package" "$ROOT/tmp/consumer"
chroot "$ROOT" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends /tmp/$(basename "$DEV") cmake g++ make" >"$WORK/apt.log" 2>&1 ||
  skip "apt-get in the tree failed (network?): see $WORK/apt.log"
chroot "$ROOT" sh -c "cmake -S /tmp/consumer -B /tmp/cb -DCMAKE_BUILD_TYPE=Release &&
  cmake --build /tmp/cb && /tmp/cb/consumer" >"$WORK/consumer.log" 2>&1 ||
  { tail -30 "$WORK/consumer.log"; fail "the consumer does not build against libasyncd-dev"; }
rm -rf "$ROOT"
echo "libasyncd-dev: a consumer builds and runs against it in a clean tree: OK"
