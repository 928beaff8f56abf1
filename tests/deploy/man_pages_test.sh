#!/bin/bash
# The generated man pages say what the binaries and the config example say:
# every long option of `asyncd --help` is in asyncd(8), every one of
# `asyncctl --help` in asyncctl(1), every key of deploy/asyncd.toml.example
# in asyncd.toml(5), and so does each table it shows commented out; none
# names the build tree. Exit 77 without help2man.
#
#   tests/deploy/man_pages_test.sh BUILD_DIR
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:?usage: man_pages_test.sh BUILD_DIR}" && pwd)
command -v help2man >/dev/null || { echo "SKIP: no help2man (apt-get install help2man)"; exit 77; }
cmake --build "$BUILD" --target asyncd-man -- -j2 >/dev/null || exit 1
MAN=$BUILD/deploy/man
failures=0
bad() { echo "FAIL: $*"; failures=$((failures + 1)); }
# roff escapes a hyphen as \-; compare plain text (a file: grep -q on a pipe
# would fail the pipeline with SIGPIPE under pipefail).
TEXT=$(mktemp) && trap 'rm -f "$TEXT"' EXIT

for pair in asyncd:asyncd.8 asyncctl:asyncctl.1; do
  bin=${pair%%:*} page=${pair#*:}
  exe=$(find "$BUILD/daemon" "$BUILD/client" -maxdepth 1 -name "$bin" -type f | head -1)
  options=$("$exe" --help | grep -o -- '--[a-z][a-z0-9-]*' | sort -u)
  [ -n "$options" ] || bad "$bin --help lists no options"
  sed 's/\\-/-/g' "$MAN/$page" >"$TEXT"
  for o in $options; do
    grep -q -- "$o" "$TEXT" || bad "$page lacks $o"
  done
  grep -q "$BUILD" "$MAN/$page" && bad "$page names the build tree $BUILD"
  grep -q '^\.SH "\?SEE ALSO' "$TEXT" || bad "$page lacks its extra sections"
done
keys=$(grep -o '^[a-z_]* =' "$SRC/deploy/asyncd.toml.example" | sed 's/ =$//')
[ -n "$keys" ] || bad "no keys found in the example"
for k in $keys; do
  grep -qF "\\fB$k\\fR =" "$MAN/asyncd.toml.5" || bad "asyncd.toml.5 lacks $k"
done
# Tables the example shows commented out ("# [[share]]") have their own part.
for t in $(grep -o '^# \[\[[a-z_]*\]\]$' "$SRC/deploy/asyncd.toml.example" | cut -c3-); do
  grep -qF ".SS $t" "$MAN/asyncd.toml.5" || bad "asyncd.toml.5 lacks $t"
done
[ "$failures" = 0 ] || { echo "$failures failed"; exit 1; }
echo "man pages: OK ($(echo "$keys" | wc -l) config keys)"
