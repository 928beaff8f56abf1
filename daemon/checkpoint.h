#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "asyncd/state/v1/state.pb.h"

namespace asyncd::core {
class Registry;
}

namespace asyncd::daemon {

namespace state = ::asyncd::state::v1;
namespace v1 = ::asyncd::v1;

class History;
class SessionTable;

/// The format this daemon writes and the newest it loads.
inline constexpr uint32_t kCheckpointFormat = 1;

/// Takes the checkpoint of the clients' sessions in `sessions` (the
/// daemon's internal ones are left out; the id counters cover them too),
/// their handles and outstanding ops in `registry`, and the last
/// `history_limit` finished ops in `history`, as this daemon's version.
/// Never stops submission or completion: each op is a consistent snapshot
/// of itself. Any thread.
state::Checkpoint TakeCheckpoint(const SessionTable& sessions, const core::Registry& registry,
                                 const History& history, size_t history_limit);

/// `checkpoint` in a Sealed of kCheckpointFormat with its checksum,
/// serialized.
std::string Seal(const state::Checkpoint& checkpoint);

/// What a loaded checkpoint may hold at most: the loading daemon's limits.
struct CheckpointLimits {
  uint32_t max_sessions = 4096;
  uint32_t max_handles_per_session = 4096;
  uint32_t max_ops_per_session = 65536;
};

/// Unseals and validates a checkpoint whole (see state.proto): it parses,
/// its checksum matches, its format is known, and it agrees with itself and
/// with `limits`. FAILED_PRECONDITION for a format newer than
/// kCheckpointFormat; INVALID_ARGUMENT, naming what is wrong, for anything
/// else. Pure; any thread.
[[nodiscard]] absl::StatusOr<state::Checkpoint> LoadCheckpoint(std::string_view sealed,
                                                               const CheckpointLimits& limits);

}  // namespace asyncd::daemon
