#!/bin/bash
# libasyncd-dev's Depends are enough: in a clean Debian 12 tree (debootstrap
# minbase, cached as a tarball), apt installs the package (pulling what it
# depends on) with only a compiler and cmake beside it, then builds and runs
# tests/client/find_package/ against /usr. A missing -dev dependency fails
# find_package(asyncd) or the link. The tree needs root (chroot): as a user
# it builds the package, then runs the rest through tests/as-root.sh (sudo
# without a prompt) in /var/tmp, so the build tree gets no root-owned files.
# Exit 77 = skipped (no root or sudo, no debootstrap, no network).
#
#   tests/deploy/dev_package_test.sh BUILD_DIR      (~2 min, +1 min first run)
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:?usage: dev_package_test.sh BUILD_DIR}" && pwd)
WORK=${ASYNCD_DEV_PACKAGE_WORK:-$BUILD/dev-package-test}
export PATH=$PATH:/usr/sbin:/sbin
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
command -v debootstrap >/dev/null || skip "no debootstrap (apt-get install debootstrap)"
grep -q '^ASYNCD_SANITIZE:[A-Z]*=.\+' "$BUILD/CMakeCache.txt" &&
  skip "a sanitizer build (ASYNCD_SANITIZE) is not what is packaged"

# 1. The package, built by whoever owns the build tree.
if [ -z "${ASYNCD_DEV_DEB:-}" ]; then
  OUT=$BUILD/dev-package-out
  mkdir -p "$OUT"
  cmake --build "$BUILD" --target asyncd_client asyncd asyncctl asyncd-bench asyncd-man -- -j2 \
    >"$OUT/build.log" 2>&1 || fail "build failed (see $OUT/build.log)"
  rm -rf "$OUT/debs"
  (cd "$BUILD" && cpack -G DEB -B "$OUT/debs") >"$OUT/cpack.log" 2>&1 ||
    fail "cpack failed (see $OUT/cpack.log)"
  DEV=$(ls "$OUT"/debs/libasyncd-dev_*.deb) || fail "no libasyncd-dev package"
  if [ "$(id -u)" != 0 ]; then
    exec "$SRC/tests/as-root.sh" env ASYNCD_DEV_DEB="$DEV" \
      ASYNCD_DEV_PACKAGE_WORK=/var/tmp/asyncd-dev-package-test "$0" "$BUILD"
  fi
else
  DEV=$ASYNCD_DEV_DEB
fi
[ "$(id -u)" = 0 ] || skip "needs root, or sudo without a password prompt (debootstrap, chroot)"
mkdir -p "$WORK"
cd "$WORK" || fail "cannot enter $WORK"  # debootstrap's wget leaves logs in the cwd

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
