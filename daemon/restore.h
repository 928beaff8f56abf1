#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/checkpoint.h"
#include "src/core/registry.h"


namespace asyncd::daemon {

class SessionTable;

/// What a restore kept.
struct RestoreSummary {
  uint32_t sessions = 0;
  uint32_t handles = 0;
  uint32_t ops = 0;  // run again for resumable streams
};

/// The id counters of `checkpoint`, for Registry::RestoreCounters.
std::vector<core::Registry::IndexCounters> CountersOf(const state::Checkpoint& checkpoint);

/// Restores a predecessor's checkpoint (validated by LoadCheckpoint) into a
/// daemon that serves nothing yet and whose registry has restored its id
/// counters (CountersOf) and opened no session of a client: every session with its id, owner, file area, the lease
/// left and its handles, each with its number and descriptor (`fds`: one
/// per handle, in checkpoint order; owned), and for a session a resumable
/// stream held, that stream's state, whose ops run again at once. Other
/// sessions bound to a stream ended with it and are not restored.
///
/// All or nothing: on an error (INVALID_ARGUMENT when `fds` does not match
/// the handles; else what failed) the sessions restored so far end, every
/// descriptor is closed, and only the id counters stay, so no id of the
/// predecessor's is issued again and each of its sessions answers
/// FAILED_PRECONDITION saying why it was lost.
[[nodiscard]] absl::StatusOr<RestoreSummary> RestoreCheckpoint(const state::Checkpoint& checkpoint,
                                                               std::vector<int> fds,
                                                               core::Registry& registry,
                                                               SessionTable& sessions);

}  // namespace asyncd::daemon
