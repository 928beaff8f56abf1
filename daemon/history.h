#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
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

/// The finished ops operators can still look at: a ring of the most recent
/// and the set of the slowest. The ring is sharded by op slot, so that
/// completing threads seldom meet on a lock and a lookup by id reads one
/// shard; each shard keeps the last capacity/8 ops of its slots, whichever
/// thread finished them. Off the registry's hot path.
class History {
 public:
  /// Keeps up to `capacity` recent ops (in 8 shards) and the
  /// `slow_capacity` slowest; either may be 0 (keep none).
  History(size_t capacity, size_t slow_capacity);

  /// Keeps `f`: in the ring (overwriting the oldest of its shard) and, when
  /// it is slower than the fastest kept there, in the slowest set. Called on
  /// completing threads; takes one shard lock, and the slowest set's lock
  /// only for an op slower than every op in a full set.
  void Record(const FinishedOp& f) noexcept;

  /// The most recent ops `filter` matches, most recent (by finish time)
  /// first; at most `limit`. A copy. Any thread; holds each shard's lock
  /// while it copies that shard.
  std::vector<FinishedOp> Recent(const Filter& filter, size_t limit) const;
  /// The slowest ops `filter` matches, slowest first; at most `limit`. A
  /// copy. Any thread.
  std::vector<FinishedOp> Slowest(const Filter& filter, size_t limit) const;
  /// The op `op_id` if the ring (the latest to finish under that id) or
  /// else the slowest set still has it. Any thread.
  std::optional<FinishedOp> FindFinished(uint64_t op_id) const;

 private:
  static constexpr int kShards = 8;
  struct alignas(64) Shard {
    mutable std::mutex mu;
    std::vector<FinishedOp> ring;
    size_t next = 0;
    uint64_t count = 0;
  };

  // By slot (the id's middle bits), not generation: reuses of a slot meet
  // in one shard, and the others spread evenly.
  Shard& ShardOf(uint64_t op_id) { return shards_[core::OpId{op_id}.slot() % kShards]; }
  const Shard& ShardOf(uint64_t op_id) const {
    return shards_[core::OpId{op_id}.slot() % kShards];
  }

  const size_t shard_capacity_;
  std::array<Shard, kShards> shards_;

  mutable std::mutex slow_mu_;
  std::vector<FinishedOp> slow_;  // min-heap on duration
  const size_t slow_capacity_;
  std::atomic<int64_t> slow_floor_ns_{0};
};

}  // namespace asyncd::daemon
