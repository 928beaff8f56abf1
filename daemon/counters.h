#pragma once

#include <atomic>
#include <cstdint>

#include "asyncd/v1/asyncd.pb.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// A copy of one (kind, backend)'s counters, for Stats and metrics.
struct KindCounters {
  uint64_t by_outcome[4] = {};        // completed, cancelled, timed out, failed
  uint64_t latency_buckets[32] = {};  // log2 microseconds
  uint64_t duration_ns_sum = 0;       // of every finished op
};

/// The counters behind Stats and /metrics: finished ops per kind, backend
/// and outcome with a log2 latency histogram; cancel answers; refused ops.
/// Relaxed atomics, no lock: any thread, never blocks.
class Counters {
 public:
  static constexpr int kBuckets = 32;

  /// Counts the finished op `snap` (terminal). Completing thread.
  void OnFinished(const core::OpSnapshot& snap) noexcept;
  /// Counts one answer to a cancel request (by op or one op of a selector).
  void OnCancelAnswered(core::CancelResult r) noexcept;
  /// Counts an op refused before it was accepted (validation, limits, draining).
  void OnRejected() noexcept { rejected_.fetch_add(1, std::memory_order_relaxed); }

  /// A copy of `kind` on `backend`'s counters.
  KindCounters Get(core::OpKind kind, core::BackendKind backend) const;
  /// Fills the counters' part of Stats: per (kind, backend) that finished at
  /// least one op its outcomes and p50/p99 (a log2 bucket's upper bound, in
  /// microseconds); the cancel answers; the refused ops.
  void FillStats(v1::Stats& stats) const;

 private:
  struct Counter {
    std::atomic<uint64_t> outcome[4] = {};
    std::atomic<uint64_t> buckets[kBuckets] = {};
    std::atomic<uint64_t> duration_ns_sum{0};
  };

  // [kind][backend]
  Counter counters_[core::kOpKindCount + 1][4];
  std::atomic<uint64_t> cancels_[4] = {};
  std::atomic<uint64_t> rejected_{0};
};

}  // namespace asyncd::daemon
