#include "daemon/history.h"

#include <algorithm>
#include <functional>

#include "src/core/clock.h"

namespace asyncd::daemon {

History::History(size_t capacity, size_t slow_capacity)
    : shard_capacity_((capacity + kShards - 1) / kShards), slow_capacity_(slow_capacity) {
  for (Shard& s : shards_) s.ring.resize(shard_capacity_);
}

void History::Record(const FinishedOp& f) noexcept {
  const int64_t duration = f.duration_ns();
  if (shard_capacity_ > 0) {
    Shard& shard = ShardOf(f.snap.id.value);
    std::lock_guard lock(shard.mu);
    shard.ring[shard.next] = f;
    shard.next = (shard.next + 1) % shard_capacity_;
    ++shard.count;
  }
  if (slow_capacity_ > 0 && duration > slow_floor_ns_.load(std::memory_order_relaxed)) {
    std::lock_guard lock(slow_mu_);
    auto longer = [](const FinishedOp& a, const FinishedOp& b) {
      return a.duration_ns() > b.duration_ns();
    };
    if (slow_.size() < slow_capacity_) {
      slow_.push_back(f);
      std::push_heap(slow_.begin(), slow_.end(), longer);
    } else if (duration > slow_.front().duration_ns()) {
      std::pop_heap(slow_.begin(), slow_.end(), longer);
      slow_.back() = f;
      std::push_heap(slow_.begin(), slow_.end(), longer);
    }
    if (slow_.size() == slow_capacity_) {
      slow_floor_ns_.store(slow_.front().duration_ns(), std::memory_order_relaxed);
    }
  }
}

std::vector<FinishedOp> History::Recent(const Filter& filter, size_t limit) const {
  std::vector<FinishedOp> all;
  const int64_t now = core::MonoNanos();
  for (const Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    const size_t n = std::min<uint64_t>(shard.count, shard_capacity_);
    for (size_t i = 0; i < n; ++i) {
      const FinishedOp& f = shard.ring[(shard.next + shard_capacity_ - 1 - i) % shard_capacity_];
      if (filter.Matches(f.snap, f.uid, f.client, now)) all.push_back(f);
    }
  }
  std::sort(all.begin(), all.end(), [](const FinishedOp& a, const FinishedOp& b) {
    return a.snap.finished_ns > b.snap.finished_ns;
  });
  if (all.size() > limit) all.resize(limit);
  return all;
}

std::vector<FinishedOp> History::Slowest(const Filter& filter, size_t limit) const {
  std::vector<FinishedOp> all;
  const int64_t now = core::MonoNanos();
  {
    std::lock_guard lock(slow_mu_);
    for (const FinishedOp& f : slow_) {
      if (filter.Matches(f.snap, f.uid, f.client, now)) all.push_back(f);
    }
  }
  std::sort(all.begin(), all.end(), [](const FinishedOp& a, const FinishedOp& b) {
    return a.duration_ns() > b.duration_ns();
  });
  if (all.size() > limit) all.resize(limit);
  return all;
}

std::optional<FinishedOp> History::FindFinished(uint64_t op_id) const {
  std::optional<FinishedOp> best;
  {
    const Shard& shard = ShardOf(op_id);
    std::lock_guard lock(shard.mu);
    const size_t n = std::min<uint64_t>(shard.count, shard_capacity_);
    for (size_t i = 0; i < n; ++i) {
      const FinishedOp& f = shard.ring[i];
      if (f.snap.id.value == op_id && (!best || f.snap.finished_ns > best->snap.finished_ns)) {
        best = f;
      }
    }
  }
  if (!best) {
    std::lock_guard lock(slow_mu_);
    for (const FinishedOp& f : slow_) {
      if (f.snap.id.value == op_id) best = f;
    }
  }
  return best;
}

}  // namespace asyncd::daemon
