#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "asyncd/v1/asyncd.grpc.pb.h"
#include "daemon/budget.h"
#include "daemon/caller.h"
#include "daemon/cancel.h"
#include "daemon/config.h"
#include "daemon/drain.h"
#include "daemon/listener.h"
#include "daemon/listing.h"
#include "daemon/observer.h"
#include "daemon/session_table.h"
#include "daemon/status.h"
#include "daemon/watch_call.h"
#include "src/backends/resolve.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// What the backends are, for Stats.
struct BackendInfo {
  bool io_uring_enabled = false;
  std::string io_uring_unavailable_reason;
  std::vector<core::OpKind> uring_kinds;
  uint32_t thread_pool_size = 0;
  uint32_t pool_running_per_session = 0;  // the pool's effective per-session cap
  backends::PathResolver path_resolver = backends::PathResolver::kOpenat2;
  std::vector<core::Backend*> backends;
  uint32_t internal_sessions = 0;  // the daemon's own (watchdog probe); not counted in Stats
};

/// The asyncd.v1 service, on gRPC's callback API: each handler identifies
/// the caller and hands the call to the part that keeps its promise
/// (SessionTable, SubmitCall, StreamCall, WatchCall, Canceller, Listing,
/// Drainer). Reactors never block and hold no lock across callbacks. Ops
/// complete on backend threads straight into their reactor
/// (core::CompletionSink).
class Service final : public v1::Asyncd::CallbackService {
 public:
  /// `registry`, `dispatcher`, `observer`, `listener` (may be null: no
  /// unix socket) and `areas` (may be null: every path beneath the whole
  /// root) must outlive the service. `on_drained` runs once, on the
  /// draining thread, when a drain is over and its answers were handed to
  /// gRPC (the server stops there); it must not block.
  Service(const Config& config, core::Registry& registry, core::Dispatcher& dispatcher,
          Observer& observer, const UnixListener* listener, BackendInfo backends,
          FileAreas* areas, std::function<void()> on_drained = {});
  ~Service() override;

  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* ctx,
                                        const v1::OpenSessionRequest* req,
                                        v1::OpenSessionResponse* resp) override;
  grpc::ServerUnaryReactor* KeepAlive(grpc::CallbackServerContext* ctx,
                                      const v1::KeepAliveRequest* req,
                                      v1::KeepAliveResponse* resp) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* ctx,
                                         const v1::CloseSessionRequest* req,
                                         v1::CloseSessionResponse* resp) override;
  grpc::ServerUnaryReactor* Submit(grpc::CallbackServerContext* ctx, const v1::SubmitRequest* req,
                                   v1::Completion* resp) override;
  grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>* Stream(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx, const v1::CancelRequest* req,
                                   v1::CancelResponse* resp) override;
  grpc::ServerUnaryReactor* ListOperations(grpc::CallbackServerContext* ctx,
                                           const v1::ListOperationsRequest* req,
                                           v1::ListOperationsResponse* resp) override;
  grpc::ServerUnaryReactor* GetOperation(grpc::CallbackServerContext* ctx,
                                         const v1::GetOperationRequest* req,
                                         v1::OperationInfo* resp) override;
  grpc::ServerUnaryReactor* ListHistory(grpc::CallbackServerContext* ctx,
                                        const v1::ListHistoryRequest* req,
                                        v1::ListHistoryResponse* resp) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* ctx,
                                         const v1::ListSessionsRequest* req,
                                         v1::ListSessionsResponse* resp) override;
  grpc::ServerWriteReactor<v1::WatchEvent>* Watch(grpc::CallbackServerContext* ctx,
                                                  const v1::WatchRequest* req) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* ctx,
                                     const v1::GetStatsRequest* req, v1::Stats* resp) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* ctx, const v1::DrainRequest* req,
                                  v1::DrainResponse* resp) override;
  grpc::ServerUnaryReactor* GetCheckpoint(grpc::CallbackServerContext* ctx,
                                          const v1::GetCheckpointRequest* req,
                                          v1::GetCheckpointResponse* resp) override;

  /// Ends sessions whose lease ran out. Called periodically by the server's
  /// housekeeping thread.
  void ExpireLeases();
  /// Drains at shutdown (see Drainer::DrainAndWait; `restart` for a live
  /// restart), then joins the thread a
  /// Drain RPC started, so that its reply has been handed to gRPC. Blocks up
  /// to the grace period plus the time non-cancellable ops need.
  /// Idempotent: later callers get the first result.
  v1::DrainResponse DrainAndWait(uint32_t grace_ms, bool restart = false);
  bool draining() const { return drainer_.draining(); }
  /// Whether the drain is a live restart's (see DrainAndWait).
  bool restarting() const { return drainer_.restarting(); }
  /// The gRPC health service to turn NOT_SERVING when draining starts, so
  /// health checkers stop sending work before the daemon refuses it.
  void SetHealth(grpc::HealthCheckServiceInterface* health) { drainer_.SetHealth(health); }
  /// What GetStats answers; also the source of GET /metrics. Any thread.
  void FillStats(v1::Stats* stats) const;
  /// The restart this daemon took over, for Stats. Before serving.
  void SetLastRestart(const v1::Restart& restart) { last_restart_ = restart; }
  /// Ends every Watch stream (shutdown). Any thread.
  void StopWatchers();
  /// Resumable streams attached now: one attaches, one is done (OnDone).
  void ResumableAttached() { resumable_streams_.fetch_add(1); }
  void ResumableDone() { resumable_streams_.fetch_sub(1); }
  /// Waits, at most `timeout`, until every resumable stream is done: at a
  /// restart, each has then left its state to its session's carry. False
  /// if one is not done by then.
  bool WaitResumableStreams(std::chrono::milliseconds timeout) const;

  // --- the parts, for the reactors ---

  /// The caller of `ctx`'s call (see Identifier). gRPC threads.
  Caller Identify(grpc::CallbackServerContext* ctx) const { return identifier_.Identify(ctx); }
  /// Who administers the daemon, for callers identified elsewhere (the ring
  /// socket).
  const AdminRules& admin_rules() const { return identifier_.rules(); }
  /// The limits as clients see them (OpenSession, StreamOpened, Stats).
  v1::Limits LimitsProto() const;
  SessionTable& sessions() { return sessions_; }
  Canceller& canceller() { return canceller_; }
  WatchCalls& watch_calls() { return watch_calls_; }

  const Config& config() const { return config_; }
  /// The limits a reload changes (config() keeps the start-up values).
  const LiveLimits& live() const { return live_; }
  /// Applies a reloaded config's live limits. Any thread.
  void ApplyLiveLimits(const Config& config) { live_.Apply(config); }
  /// The daemon-wide op and byte budgets (limits.max_inflight_total,
  /// limits.max_buffered_bytes).
  Budget& budget() { return budget_; }
  core::Dispatcher& dispatcher() { return dispatcher_; }
  Observer& observer() { return observer_; }

 private:
  const Config config_;
  LiveLimits live_{config_};
  Budget budget_{live_};
  core::Registry& registry_;
  core::Dispatcher& dispatcher_;
  Observer& observer_;
  const BackendInfo backends_;
  std::optional<v1::Restart> last_restart_;  // set before serving, then read-only
  const int64_t started_ns_;

  const Identifier identifier_;
  SessionTable sessions_;
  Canceller canceller_;
  const Listing listing_;
  Drainer drainer_;
  WatchCalls watch_calls_;
  std::atomic<int> resumable_streams_{0};
};

}  // namespace asyncd::daemon
