#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "daemon/selector.h"
#include "src/core/registry.h"

namespace asyncd::daemon {

/// A finished op as the history keeps it: its last snapshot plus who owned it.
struct FinishedOp {
  core::OpSnapshot snap;
  uint32_t uid = 0;
  uint32_t pid = 0;
  char client[32] = {};  // the client's name, truncated
  int64_t duration_ns() const { return snap.finished_ns - snap.submitted_ns; }
};

/// The finished ops operators can still look at: a ring of the last
/// `capacity` to finish and the set of the slowest. Completing threads take
/// ring positions from one counter and write under one of a few striped
/// locks, so they seldom meet; a lookup by id scans a compact array of ids,
/// not the ring. Off the registry's hot path.
class History {
 public:
  /// Keeps the last `capacity` finished ops and the `slow_capacity`
  /// slowest; either may be 0 (keep none).
  History(size_t capacity, size_t slow_capacity);

  /// Keeps `f`: in the ring (overwriting the oldest) and, when it is slower
  /// than the fastest kept there, in the slowest set. Called on completing
  /// threads; takes one stripe lock, and the slowest set's lock only for an
  /// op slower than every op in a full set.
  void Record(const FinishedOp& f) noexcept;

  /// The most recent ops `filter` matches, most recent (by finish time)
  /// first; at most `limit`. A copy. Any thread; holds each stripe's lock
  /// while it copies that stripe.
  std::vector<FinishedOp> Recent(const Filter& filter, size_t limit) const;
  /// The slowest ops `filter` matches, slowest first; at most `limit`. A
  /// copy. Any thread.
  std::vector<FinishedOp> Slowest(const Filter& filter, size_t limit) const;
  /// The op `op_id` if the ring (the latest to finish under that id) or
  /// else the slowest set still has it. Any thread.
  std::optional<FinishedOp> FindFinished(uint64_t op_id) const;

 private:
  static constexpr size_t kStripes = 8;  // position % kStripes names the lock
  struct alignas(64) Stripe {
    mutable std::mutex mu;
  };

  const size_t capacity_;
  std::vector<FinishedOp> ring_;
  // ring_[i]'s op id (0 = empty), written under its stripe's lock, read
  // without it by lookups, which then check under the lock.
  std::unique_ptr<std::atomic<uint64_t>[]> ids_;
  alignas(64) std::atomic<uint64_t> next_{0};  // positions handed out
  std::array<Stripe, kStripes> stripes_;

  mutable std::mutex slow_mu_;
  std::vector<FinishedOp> slow_;  // min-heap on duration
  const size_t slow_capacity_;
  std::atomic<int64_t> slow_floor_ns_{0};
};

}  // namespace asyncd::daemon
