#pragma once

#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "asyncd/v1/asyncd.pb.h"
#include "daemon/history.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// Drains the daemon, once: from then on it takes no new work; ops that may
/// wait forever (may_block: pipes, sockets, polls, timeouts) are cancelled at
/// once, the others get a grace period and are cancelled when it ends;
/// non-cancellable ones run to completion. A drain that found ops in flight
/// writes a manifest of them (v1::DrainManifest, as JSON) to state_dir and
/// prunes older manifests there. Later drains get the first one's result.
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
  /// Manifests are drain-manifest-YYYYMMDDTHHMMSS.ffffffZ.json (UTC, when the
  /// drain began), so their names sort by age.
  static constexpr std::string_view kManifestPrefix = "drain-manifest-";
  static constexpr std::string_view kManifestSuffix = ".json";

  struct Options {
    std::string state_dir;
    /// The newest manifests kept in state_dir (older ones are deleted after
    /// a new one is written); 0 = write none.
    uint32_t manifests_keep = 10;
    /// Where a finished op's final state is looked up for the manifest. Not
    /// owned; may be null (ops then appear as they were when the drain began).
    const History* history = nullptr;
    /// Runs once, on the draining thread, as soon as new work is refused (the
    /// service ends its streams there); `restart` as given to DrainAndWait.
    std::function<void(bool restart)> on_start;
    /// Runs once, on the draining thread, after the drain is over and every
    /// `done` has been called (the daemon stops there). Must not block.
    std::function<void()> on_end;
  };

  /// `registry` and `dispatcher` must outlive the drainer.
  Drainer(core::Registry& registry, core::Dispatcher& dispatcher, Options options)
      : registry_(registry), dispatcher_(dispatcher), options_(std::move(options)) {}
  /// Joins the drain thread (see Join).
  ~Drainer();

  /// The gRPC health service to turn NOT_SERVING when draining starts, so
  /// health checkers stop sending work before the daemon refuses it. Not
  /// owned. Set before any drain.
  void SetHealth(grpc::HealthCheckServiceInterface* health) { health_.store(health); }
  /// Whether a drain has started (it never stops). Any thread.
  bool draining() const { return draining_.load(std::memory_order_acquire); }
  /// Whether the drain is a live restart's. Any thread; meaningful once
  /// draining() is true.
  bool restarting() const { return restart_.load(std::memory_order_acquire); }

  /// For the Drain RPC: starts draining with `grace_ms` on the drainer's
  /// thread unless a drain has started already, and calls `done` with the
  /// result once that drain is over (at once, on this thread, if it is).
  /// Never blocks; any thread.
  void Start(uint32_t grace_ms, Done done);
  /// Drains with `grace_ms` on the calling thread, or waits for the drain
  /// that has started; returns its result. Blocks up to the grace period
  /// plus the time non-cancellable ops need. Any thread but the drainer's.
  /// `restart`: for a live restart, whose cancels say so (end reason
  /// kRestart: the next daemon runs a resumable stream's ops again, a
  /// client may submit the others again).
  v1::DrainResponse DrainAndWait(uint32_t grace_ms, bool restart = false);
  /// Waits for the drainer's thread, if Start started one, to end (its
  /// drain over and every `done` called). Blocks. Idempotent; not from a
  /// `done` callback.
  void Join();

 private:
  enum class State { kIdle, kRunning, kDone };
  // The drain itself. Blocks.
  v1::DrainResponse Run(uint32_t grace_ms, bool restart);

  // Writes `manifest` to a new file in state_dir and prunes older ones;
  // returns its path, or "" if it could not be written (logged).
  std::string WriteManifest(const v1::DrainManifest& manifest);

  core::Registry& registry_;
  core::Dispatcher& dispatcher_;
  const Options options_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> restart_{false};
  std::atomic<grpc::HealthCheckServiceInterface*> health_{nullptr};

  std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kIdle;
  std::optional<v1::DrainResponse> result_;  // set once, with state_ kDone
  std::vector<Done> waiting_;                // Start callers waiting for the result
  std::thread thread_;
};

}  // namespace asyncd::daemon
