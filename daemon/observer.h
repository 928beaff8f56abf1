#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "daemon/counters.h"
#include "daemon/history.h"
#include "daemon/watch_hub.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

/// Sees every op's life (core's observer) and fans it out to its parts: the
/// counters behind Stats, the history (recent and slowest finished ops) and
/// the watchers. Everything here is off the registry's hot path: sharded
/// rings, relaxed counters, and a watcher fan-out that costs one atomic load
/// when nobody watches. Owns its parts; lives as long as the dispatcher that
/// calls it.
class Observer final : public core::CompletionObserver {
 public:
  Observer(size_t history_capacity, size_t slow_capacity)
      : history_(history_capacity, slow_capacity) {}

  /// Counts the op, keeps it in the history and tells watchers. Completing
  /// thread; never blocks beyond the history's and watchers' short locks.
  void OnFinished(const core::Op& op) noexcept override;
  /// Tells watchers (nothing to do when nobody watches). Submitting thread.
  void OnSubmitted(const core::Op& op) noexcept override;
  /// Counts the answer and tells watchers of every end request: cancels from
  /// any source, and deadlines. The requesting thread; never blocks beyond
  /// the watchers' short locks.
  void OnEndRequested(const core::Op& op, uint32_t gen, core::EndReason reason,
                      core::CancelResult result) noexcept override;
  /// Ops of this session (the daemon's own watchdog probe) are not counted,
  /// kept in history or watched. Set before its first op.
  void IgnoreSession(uint64_t session_id) {
    ignored_session_.store(session_id, std::memory_order_relaxed);
  }

  History& history() { return history_; }
  const History& history() const { return history_; }
  WatchHub& watch_hub() { return watch_hub_; }
  Counters& counters() { return counters_; }
  const Counters& counters() const { return counters_; }

 private:
  Counters counters_;
  History history_;
  WatchHub watch_hub_;
  std::atomic<uint64_t> ignored_session_{0};
};

}  // namespace asyncd::daemon
