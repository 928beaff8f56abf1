#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace asyncd::daemon {

/// The one adapter from absl::Status to grpc::Status: the codes are the same
/// numbers, the message is kept. Any thread.
grpc::Status ToGrpcStatus(const absl::Status& status);

/// Core's RESOURCE_EXHAUSTED messages say what is full; this appends the
/// config key an operator would raise ("(limits.max_sessions)"), so every
/// over-limit message names its limit (and its key, where the two differ:
/// limits.pool_queue_depth is backends.thread_pool_queue). Other statuses
/// pass unchanged.
[[nodiscard]] absl::Status NameLimit(absl::Status status);

/// What every call that would add work answers while the daemon drains:
/// UNAVAILABLE, so clients retry elsewhere.
[[nodiscard]] absl::Status Draining();

}  // namespace asyncd::daemon
