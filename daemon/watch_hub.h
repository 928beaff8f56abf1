#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "asyncd/v1/asyncd.pb.h"
#include "daemon/selector.h"
#include "src/core/registry.h"

namespace asyncd::daemon {

/// One subscriber of Watch: a bounded queue; a full queue drops and counts,
/// and the next event queued carries the count (WatchEvent.dropped).
class Watcher {
 public:
  /// `types`: bit per v1::EventType, 0 = every type. `wake` is called (on
  /// the pushing thread, with no lock held) after each event queued; it
  /// must not block.
  Watcher(Filter filter, uint32_t types, size_t capacity, std::function<void()> wake)
      : filter_(std::move(filter)), types_(types), capacity_(capacity), wake_(std::move(wake)) {}
  /// Queues a copy of `event`, or counts it dropped when `capacity` events
  /// wait. Called by the hub on any thread; never blocks.
  void Push(const v1::WatchEvent& event);
  /// Takes the oldest event (`dropped` set: how many were lost before it),
  /// or nullopt when none waits. Any thread (the Watch call's).
  std::optional<v1::WatchEvent> Pop();
  const Filter& filter() const { return filter_; }
  bool Wants(v1::EventType type) const { return types_ == 0 || (types_ & (1u << type)) != 0; }

 private:
  const Filter filter_;
  const uint32_t types_;
  const size_t capacity_;
  const std::function<void()> wake_;
  std::mutex mu_;
  std::deque<v1::WatchEvent> queue_;
  uint64_t dropped_ = 0;
};

/// Fans op events out to the watchers whose filter and types match. Costs
/// one atomic load per event while nobody watches.
class WatchHub {
 public:
  /// Adds `w` unless `max_watchers` are already served (then false). The
  /// hub shares ownership until Remove. Any thread.
  bool Add(std::shared_ptr<Watcher> w, size_t max_watchers);
  /// Removes `w` (no-op if absent); no event reaches it after this returns.
  /// Any thread.
  void Remove(const Watcher* w);
  /// Whether anyone watches: one acquire load. Any thread.
  bool active() const { return watcher_count_.load(std::memory_order_acquire) > 0; }

  /// An op was accepted (SUBMITTED). Submitting thread.
  void PublishSubmitted(const core::OpSnapshot& snap, uint32_t uid, std::string_view client);
  /// An op ended (COMPLETED, CANCELLED, TIMED_OUT or FAILED, with its
  /// outcome and end reason). Completing thread.
  void PublishFinished(const core::OpSnapshot& snap, uint32_t uid, std::string_view client);
  /// An end was requested on an op, by a cancel from any source
  /// (CANCEL_REQUESTED, with the request's end reason) or by its deadline
  /// (DEADLINE_EXPIRED), granted or not. The requesting thread.
  void PublishEndRequested(const core::OpSnapshot& snap, core::EndReason reason, uint32_t uid,
                           std::string_view client);

  /// `event` with the op's fields (id, session, kind, target) filled from
  /// `snap`, to every matching watcher. Never blocks beyond the hub's lock
  /// and each watcher's queue lock. Any thread.
  void Publish(const v1::WatchEvent& event, const core::OpSnapshot& snap, uint32_t uid,
               std::string_view client);

 private:
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<Watcher>> watchers_;
  std::atomic<int> watcher_count_{0};
};

}  // namespace asyncd::daemon
