#include "daemon/history.h"

#include <algorithm>
#include <functional>

#include "src/core/clock.h"

namespace asyncd::daemon {

History::History(size_t capacity, size_t slow_capacity)
    : capacity_(capacity),
      ring_(capacity),
      ids_(std::make_unique<std::atomic<uint64_t>[]>(capacity)),
      slow_capacity_(slow_capacity) {}

void History::Record(const FinishedOp& f) noexcept {
  const int64_t duration = f.duration_ns();
  if (capacity_ > 0) {
    const size_t pos = next_.fetch_add(1, std::memory_order_relaxed) % capacity_;
    std::lock_guard lock(stripes_[pos % kStripes].mu);
    ring_[pos] = f;
    ids_[pos].store(f.snap.id.value, std::memory_order_relaxed);
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
  const size_t used = std::min<uint64_t>(next_.load(std::memory_order_relaxed), capacity_);
  for (size_t stripe = 0; stripe < kStripes; ++stripe) {
    std::lock_guard lock(stripes_[stripe].mu);
    for (size_t pos = stripe; pos < used; pos += kStripes) {
      const FinishedOp& f = ring_[pos];
      if (ids_[pos].load(std::memory_order_relaxed) != 0 &&
          filter.Matches(f.snap, f.uid, f.client, now)) {
        all.push_back(f);
      }
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
  std::optional<FinishedOp> found;
  const size_t used = std::min<uint64_t>(next_.load(std::memory_order_relaxed), capacity_);
  for (size_t pos = 0; pos < used; ++pos) {
    if (ids_[pos].load(std::memory_order_relaxed) != op_id) continue;
    std::lock_guard lock(stripes_[pos % kStripes].mu);
    const FinishedOp& f = ring_[pos];
    // Checked again: overwritten meanwhile? An id seen twice (its
    // generation wrapped) answers for the latest to finish.
    if (f.snap.id.value == op_id && (!found || f.snap.finished_ns > found->snap.finished_ns)) {
      found = f;
    }
  }
  if (!found) {
    std::lock_guard lock(slow_mu_);
    for (const FinishedOp& f : slow_) {
      if (f.snap.id.value == op_id) found = f;
    }
  }
  return found;
}

}  // namespace asyncd::daemon
