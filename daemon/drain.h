#pragma once

#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "asyncd/v1/asyncd.pb.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// Drains the daemon, once: from then on it takes no new work; ops that may
/// wait forever (may_block: pipes, sockets, polls, timeouts) are cancelled at
/// once, the others get a grace period and are cancelled when it ends;
/// non-cancellable ones run to completion. What it cancelled is written, as
/// JSON, to a manifest in state_dir. Later drains get the first one's result.
///
/// The Drain RPC drains on a thread the Drainer owns (a reactor must not
/// wait); shutdown drains on its own thread. The thread is joined by Join()
/// and at destruction, never detached.
class Drainer {
 public:
  /// Called with the drain's result, on the thread that drained (or on the
  /// caller's when the drain was already over). Must not block.
  using Done = std::function<void(const v1::DrainResponse&)>;

  /// Drain grace periods are at most one hour.
  static constexpr uint32_t kMaxGraceMs = 3600000;

  /// `registry` and `dispatcher` must outlive the drainer. `on_start` runs
  /// once, on the draining thread, as soon as new work is refused (the
  /// service ends its streams there).
  Drainer(core::Registry& registry, core::Dispatcher& dispatcher, std::string state_dir,
          std::function<void()> on_start = {})
      : registry_(registry),
        dispatcher_(dispatcher),
        state_dir_(std::move(state_dir)),
        on_start_(std::move(on_start)) {}
  /// Joins the drain thread (see Join).
  ~Drainer();

  /// The gRPC health service to turn NOT_SERVING when draining starts, so
  /// health checkers stop sending work before the daemon refuses it. Not
  /// owned. Set before any drain.
  void SetHealth(grpc::HealthCheckServiceInterface* health) { health_.store(health); }
  /// Whether a drain has started (it never stops). Any thread.
  bool draining() const { return draining_.load(std::memory_order_acquire); }

  /// For the Drain RPC: starts draining with `grace_ms` on the drainer's
  /// thread unless a drain has started already, and calls `done` with the
  /// result once that drain is over (at once, on this thread, if it is).
  /// Never blocks; any thread.
  void Start(uint32_t grace_ms, Done done);
  /// Drains with `grace_ms` on the calling thread, or waits for the drain
  /// that has started; returns its result. Blocks up to the grace period
  /// plus the time non-cancellable ops need. Any thread but the drainer's.
  v1::DrainResponse DrainAndWait(uint32_t grace_ms);
  /// Waits for the drainer's thread, if Start started one, to end (its
  /// drain over and every `done` called). Blocks. Idempotent; not from a
  /// `done` callback.
  void Join();

 private:
  enum class State { kIdle, kRunning, kDone };
  // The drain itself. Blocks.
  v1::DrainResponse Run(uint32_t grace_ms);

  core::Registry& registry_;
  core::Dispatcher& dispatcher_;
  const std::string state_dir_;
  const std::function<void()> on_start_;
  std::atomic<bool> draining_{false};
  std::atomic<grpc::HealthCheckServiceInterface*> health_{nullptr};

  std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kIdle;
  std::optional<v1::DrainResponse> result_;  // set once, with state_ kDone
  std::vector<Done> waiting_;                // Start callers waiting for the result
  std::thread thread_;
};

}  // namespace asyncd::daemon
