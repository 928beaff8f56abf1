#!/bin/sh
# Encodes each text-format checkpoint here into a checkpoint_fuzzer seed in
# ../checkpoint_corpus: one byte 1 (seal it with its true checksum), then the
# serialized asyncd.state.v1.Checkpoint. Run from anywhere; needs protoc.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
proto=$here/../../../proto
for seed in "$here"/*.txtpb; do
  out=$here/../checkpoint_corpus/$(basename "$seed" .txtpb)
  { printf '\001'; protoc -I "$proto" --encode=asyncd.state.v1.Checkpoint \
      "$proto/asyncd/state/v1/state.proto" < "$seed"; } > "$out"
done
