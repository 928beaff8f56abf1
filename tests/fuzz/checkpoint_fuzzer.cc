// libFuzzer target for the checkpoint loader (daemon/checkpoint.h
// LoadCheckpoint), which a restarting daemon runs on what its predecessor
// left. The first byte picks what the rest is: 0, the sealed bytes as they
// would reach the loader (a checksum the fuzzer rarely matches: truncation
// and damage); else a serialized Checkpoint, sealed here with its true
// checksum, so the fuzzer explores the validation behind it.
//
// Invariants (a violation aborts, and libFuzzer reports it):
//   - the loader never crashes, leaks or reads out of bounds (ASan, UBSan);
//   - what it accepts, sealed again, loads back equal: no checkpoint is
//     accepted in a form its own daemon would refuse or change.
#include <google/protobuf/util/message_differencer.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "daemon/checkpoint.h"

namespace {

using asyncd::daemon::CheckpointLimits;
using asyncd::daemon::LoadCheckpoint;
namespace state = asyncd::state::v1;

std::string SealRaw(std::string_view checkpoint) {
  state::Sealed sealed;
  sealed.set_format(asyncd::daemon::kCheckpointFormat);
  sealed.set_checkpoint(std::string(checkpoint));
  const unsigned char format_le[4] = {asyncd::daemon::kCheckpointFormat, 0, 0, 0};
  const uLong crc = crc32(0, format_le, sizeof format_le);
  sealed.set_crc32(static_cast<uint32_t>(crc32(
      crc, reinterpret_cast<const Bytef*>(checkpoint.data()), static_cast<uInt>(checkpoint.size()))));
  return sealed.SerializeAsString();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::string input = data[0] == 0 ? std::string(rest) : SealRaw(rest);
  // Small limits, so that the fuzzer reaches them.
  const CheckpointLimits limits{.max_sessions = 16, .max_handles_per_session = 16,
                                .max_ops_per_session = 16};
  absl::StatusOr<state::Checkpoint> loaded = LoadCheckpoint(input, limits);
  if (!loaded.ok()) {
    if (loaded.status().message().rfind("checkpoint: ", 0) != 0) {
      std::fprintf(stderr, "invariant broken: a refusal that does not say what: %s\n",
                   std::string(loaded.status().message()).c_str());
      std::abort();
    }
    return 0;
  }
  absl::StatusOr<state::Checkpoint> again =
      LoadCheckpoint(asyncd::daemon::Seal(*loaded), limits);
  if (!again.ok() || !google::protobuf::util::MessageDifferencer::Equals(*again, *loaded)) {
    std::fprintf(stderr, "invariant broken: an accepted checkpoint does not reload equal\n");
    std::abort();
  }
  return 0;
}
