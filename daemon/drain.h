#pragma once

#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "asyncd/v1/asyncd.pb.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// Drains the daemon, once: from then on it takes no new work; ops that may
/// wait forever (may_block: pipes, sockets, polls, timeouts) are cancelled at
/// once, the others get a grace period and are cancelled when it ends;
/// non-cancellable ones run to completion. What it cancelled is written, as
/// JSON, to a manifest in state_dir. Later drains get the first one's result.
class Drainer {
 public:
  /// Drain grace periods are at most one hour.
  static constexpr uint32_t kMaxGraceMs = 3600000;

  /// `registry` and `dispatcher` must outlive the drainer.
  Drainer(core::Registry& registry, core::Dispatcher& dispatcher, std::string state_dir)
      : registry_(registry), dispatcher_(dispatcher), state_dir_(std::move(state_dir)) {}

  /// The gRPC health service to turn NOT_SERVING when draining starts, so
  /// health checkers stop sending work before the daemon refuses it. Not
  /// owned. Set before any drain.
  void SetHealth(grpc::HealthCheckServiceInterface* health) { health_.store(health); }
  /// Whether a drain has started (it never stops). Any thread.
  bool draining() const { return draining_.load(std::memory_order_acquire); }

  /// Drains with `grace_ms` on the calling thread, or waits for the drain
  /// that has started; returns its result. Blocks up to the grace period
  /// plus the time non-cancellable ops need. Any thread.
  v1::DrainResponse DrainAndWait(uint32_t grace_ms);

 private:
  // The drain itself. Blocks.
  v1::DrainResponse Run(uint32_t grace_ms);

  core::Registry& registry_;
  core::Dispatcher& dispatcher_;
  const std::string state_dir_;
  std::atomic<bool> draining_{false};
  std::atomic<grpc::HealthCheckServiceInterface*> health_{nullptr};

  std::mutex mu_;
  std::optional<v1::DrainResponse> result_;
};

}  // namespace asyncd::daemon
