#pragma once

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "asyncd/v1/asyncd.pb.h"
#include "daemon/config.h"

namespace asyncd::daemon {

/// The daemon-wide budgets (limits.max_inflight_total, limits.max_buffered_bytes):
/// operations in flight and payload bytes held, summed over every session.
///
/// An op is charged before it is converted (so a read buffer is only
/// allocated once it fits) and:
///   - its op count is released when it completes (or is refused after all);
///   - its bytes (Read.length or Write.data size) are released when its
///     Completion has left the daemon (written to the client) or was dropped
///     (the client went away). A client that never reads its results keeps
///     its bytes charged: it cannot make the daemon hold more than the budget.
///
/// Two atomics, no lock; the maxima are read from LiveLimits on each call so a
/// reload applies at once. Any thread; never blocks.
class Budget {
 public:
  explicit Budget(const LiveLimits& live) : live_(live) {}

  /// All or nothing: either both are charged and OK, or nothing changed and
  /// RESOURCE_EXHAUSTED names the limit.
  [[nodiscard]] absl::Status Reserve(uint64_t ops, uint64_t bytes) {
    const uint64_t max_ops = live_.max_inflight_total();
    const uint64_t max_bytes = live_.max_buffered_bytes();
    const uint64_t now_ops = ops_.fetch_add(ops, std::memory_order_relaxed) + ops;
    if (now_ops > max_ops) {
      ops_.fetch_sub(ops, std::memory_order_relaxed);
      return absl::ResourceExhaustedError(
          absl::StrCat("the daemon has ", now_ops - ops,
                       " operations in flight: at limits.max_inflight_total ", max_ops));
    }
    if (bytes != 0) {
      const uint64_t now_bytes = bytes_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
      if (now_bytes > max_bytes) {
        bytes_.fetch_sub(bytes, std::memory_order_relaxed);
        ops_.fetch_sub(ops, std::memory_order_relaxed);
        return absl::ResourceExhaustedError(
            absl::StrCat("the daemon holds ", now_bytes - bytes, " payload bytes; ", bytes,
                         " more would be over limits.max_buffered_bytes ", max_bytes));
      }
    }
    return absl::OkStatus();
  }
  void ReleaseOps(uint64_t n) { ops_.fetch_sub(n, std::memory_order_relaxed); }
  void ReleaseBytes(uint64_t n) {
    if (n != 0) bytes_.fetch_sub(n, std::memory_order_relaxed);
  }

  uint64_t ops() const { return ops_.load(std::memory_order_relaxed); }
  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }

 private:
  const LiveLimits& live_;
  std::atomic<uint64_t> ops_{0};
  std::atomic<uint64_t> bytes_{0};
};

/// The payload bytes an op holds while in flight: its read buffer or its
/// write data. Validation of the sizes is ToOpRequest's job.
inline uint64_t PayloadBytes(const v1::Operation& op) {
  switch (op.kind_case()) {
    case v1::Operation::kRead:
      return op.read().length();
    case v1::Operation::kWrite:
      return op.write().data().size();
    default:
      return 0;
  }
}

}  // namespace asyncd::daemon
