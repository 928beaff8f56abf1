#!/bin/bash
# The Debian packages as lintian (Debian 12) and an operator see them: builds
# them from BUILD_DIR with cpack (into a scratch directory), fails on any
# lintian error or warning, and checks where files land: the daemon's package
# has no headers or static libraries, the -dev package nothing else; the
# operator guide's links resolve in /usr/share/doc/asyncd; debian/changelog's
# version is the package's. Exit 77 (skip) without lintian or dpkg-deb.
#
#   tests/deploy/package_test.sh BUILD_DIR     (ctest -L package; ~1 min)
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:?usage: package_test.sh BUILD_DIR}" && pwd)
command -v dpkg-deb >/dev/null || { echo "SKIP: no dpkg-deb"; exit 77; }
command -v lintian >/dev/null || { echo "SKIP: no lintian (apt-get install lintian)"; exit 77; }
# Sanitizer trees are never packaged (and lack the hardening flags lintian wants).
grep -q '^ASYNCD_SANITIZE:[A-Z]*=.\+' "$BUILD/CMakeCache.txt" &&
  { echo "SKIP: a sanitizer build (ASYNCD_SANITIZE) is not what is packaged"; exit 77; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/asyncd-package.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
failures=0
bad() { echo "FAIL: $*"; failures=$((failures + 1)); }

cmake --build "$BUILD" --target asyncd asyncctl asyncd-bench asyncd_client asyncd-man \
  -- -j2 >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
(cd "$BUILD" && cpack -G DEB -B "$WORK/out") >"$WORK/cpack.log" 2>&1 ||
  { tail -30 "$WORK/cpack.log"; exit 1; }
RUN=$(ls "$WORK"/out/asyncd_*.deb) && DEV=$(ls "$WORK"/out/libasyncd-dev_*.deb) ||
  { ls "$WORK/out"; exit 1; }

# lintian prints only errors and warnings by default; info tags are listed
# for the log but do not fail the test.
lint=$(lintian "$RUN" "$DEV" 2>&1 | grep -v '^N: \|running with root privileges')
if [ -n "$lint" ]; then bad "lintian:"; echo "$lint"; fi
lintian -i --display-level '=info' "$RUN" "$DEV" 2>/dev/null | grep '^I:' || true

dpkg-deb -c "$RUN" | awk '{ print $6 }' | sed 's|^\./|/|' >"$WORK/run.list"
dpkg-deb -c "$DEV" | awk '{ print $6 }' | sed 's|^\./|/|' >"$WORK/dev.list"
triplet=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
has() { grep -qx -- "$2" "$WORK/$1.list" || bad "$1 lacks $2"; }
lacks() { ! grep -q -- "$2" "$WORK/$1.list" || bad "$1 has $2: $(grep -- "$2" "$WORK/$1.list" | head -3)"; }
for f in /usr/sbin/asyncd /usr/bin/asyncctl /usr/lib/asyncd/asyncd-bench \
  /lib/systemd/system/asyncd.service /lib/systemd/system/asyncd.socket \
  /usr/lib/sysusers.d/asyncd.conf /usr/lib/tmpfiles.d/asyncd.conf /etc/asyncd/asyncd.toml \
  /usr/share/man/man8/asyncd.8.gz /usr/share/man/man1/asyncctl.1.gz \
  /usr/share/man/man5/asyncd.toml.5.gz /usr/share/doc/asyncd/README.md \
  /usr/share/doc/asyncd/copyright /usr/share/doc/asyncd/changelog.gz; do
  has run "$f"
done
lacks run '\.a$'
lacks run '^/usr/include'
lacks run '/cmake/'
lacks run '^/usr/bin/asyncd-bench'
for f in /usr/include/asyncd/client.h /usr/include/asyncd/v1/asyncd.grpc.pb.h \
  "/usr/lib/$triplet/libasyncd_client.a" "/usr/lib/$triplet/libasyncd_proto.a" \
  "/usr/lib/$triplet/cmake/asyncd/asyncdConfig.cmake" \
  /usr/share/doc/libasyncd-dev/copyright /usr/share/doc/libasyncd-dev/changelog.gz; do
  has dev "$f"
done
lacks dev '^/usr/s\?bin/'
lacks dev '^/etc/'
lacks dev '^/lib/'
lacks dev '^/usr/lib/[^/]*\.a$'
dpkg-deb -f "$DEV" Depends | grep -q 'libgrpc++-dev' || bad "libasyncd-dev does not depend on libgrpc++-dev"
dpkg-deb --ctrl-tarfile "$RUN" | tar -xOf - ./conffiles | grep -qx /etc/asyncd/asyncd.toml ||
  bad "asyncd.toml is not a conffile"

# The operator guide's relative links resolve where it is installed.
for link in $(grep -o '](\([^)#]*\))' "$SRC/deploy/README.md" | sed 's/^](//; s/)$//' |
  grep -v '^[a-z]*:'); do
  has run "/usr/share/doc/asyncd/$link"
done

version=$(dpkg-deb -f "$RUN" Version)
changelog=$(dpkg-parsechangelog -l "$SRC/deploy/debian/changelog" -S Version 2>/dev/null ||
  sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' "$SRC/deploy/debian/changelog")
[ "$changelog" = "$version" ] || bad "debian/changelog is at $changelog, the package at $version"

[ "$failures" = 0 ] || { echo "$failures failed"; exit 1; }
echo "package test: OK ($(basename "$RUN"), $(basename "$DEV"))"
