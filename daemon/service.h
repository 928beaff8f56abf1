#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "asyncd/v1/asyncd.grpc.pb.h"
#include "daemon/budget.h"
#include "daemon/config.h"
#include "daemon/listener.h"
#include "daemon/observer.h"
#include "src/backends/resolve.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// Who is calling, from the connection: SO_PEERCRED/SO_PEERGROUPS on the unix
/// socket (see UnixListener), the verified client certificate on TCP with
/// mutual TLS, else nobody (uid 65534, no privileges).
struct Caller {
  uint32_t uid = 65534;
  uint32_t gid = 65534;
  uint32_t pid = 0;
  bool admin = false;
  std::string peer;  // for logs: "unix pid N" or the TCP peer and its cert CN
};

/// What the backends are, for Stats.
struct BackendInfo {
  bool io_uring_enabled = false;
  std::string io_uring_unavailable_reason;
  std::vector<core::OpKind> uring_kinds;
  uint32_t thread_pool_size = 0;
  backends::PathResolver path_resolver = backends::PathResolver::kOpenat2;
  std::vector<core::Backend*> backends;
  uint32_t internal_sessions = 0;  // the daemon's own (watchdog probe); not counted in Stats
};

/// The daemon's view of a session: the core session plus its owner and lease.
struct SessionMeta {
  std::shared_ptr<core::Session> session;
  uint32_t uid = 0;
  uint32_t lease_ms = 0;  // 0 = bound to a stream, no lease
  std::atomic<int64_t> lease_deadline_ns{0};
  std::atomic<int> streams{0};  // attached streams pause the lease
  bool stream_owned = false;    // ends with the stream that created it
};

/// The asyncd.v1 service, on gRPC's callback API: reactors never block and
/// hold no lock across callbacks. Ops complete on backend threads straight
/// into their reactor (core::CompletionSink).
class Service final : public v1::Asyncd::CallbackService {
 public:
  Service(const Config& config, core::Registry& registry, core::Dispatcher& dispatcher,
          Observer& observer, const UnixListener* listener, BackendInfo backends);
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

  /// Ends sessions whose lease ran out. Called periodically by the server.
  void ExpireLeases();
  /// Drains (see the Drain RPC); blocks up to the grace period plus the time
  /// non-cancellable ops need. Idempotent: later callers get the first result.
  v1::DrainResponse DrainAndWait(uint32_t grace_ms);
  bool draining() const { return draining_.load(std::memory_order_acquire); }
  /// The gRPC health service to turn NOT_SERVING when draining starts, so
  /// health checkers stop sending work before the daemon refuses it.
  void SetHealth(grpc::HealthCheckServiceInterface* health) { health_.store(health); }
  /// What GetStats answers; also the source of GET /metrics. Any thread.
  void FillStats(v1::Stats* stats) const;
  /// Ends every Watch stream (shutdown).
  void StopWatchers();

  // Used by the reactors.
  Caller Identify(grpc::CallbackServerContext* ctx) const;
  absl::StatusOr<std::shared_ptr<SessionMeta>> OwnSession(const Caller& caller,
                                                          uint64_t session_id) const;
  absl::StatusOr<std::shared_ptr<SessionMeta>> NewSession(const Caller& caller,
                                                          const std::string& name,
                                                          uint32_t lease_ms, bool stream_owned);
  absl::StatusOr<core::CancelCounts> EndSession(uint64_t session_id, core::EndReason reason);
  v1::CancelResponse DoCancel(const Caller& caller, const v1::CancelRequest& req,
                              absl::Status* status);
  absl::StatusOr<Filter> ToFilter(const Caller& caller, const v1::OpSelector& sel,
                                  bool require_criteria) const;
  /// PERMISSION_DENIED with `why`, logged (warn, rate-limited) with the caller.
  absl::Status Deny(const Caller& caller, const std::string& why) const;
  v1::Limits LimitsProto() const;

  const Config& config() const { return config_; }
  /// The limits a reload changes (config() keeps the start-up values).
  const LiveLimits& live() const { return live_; }
  /// Applies a reloaded config's live limits. Any thread.
  void ApplyLiveLimits(const Config& config) { live_.Apply(config); }
  /// The daemon-wide op and byte budgets (limits.max_inflight_total,
  /// limits.max_buffered_bytes).
  Budget& budget() { return budget_; }
  core::Registry& registry() { return registry_; }
  core::Dispatcher& dispatcher() { return dispatcher_; }
  Observer& observer() { return observer_; }

 private:
  class SubmitCall;
  class StreamCall;
  class WatchCall;

  const Config config_;
  LiveLimits live_{config_};
  Budget budget_{live_};
  core::Registry& registry_;
  core::Dispatcher& dispatcher_;
  Observer& observer_;
  const UnixListener* const listener_;
  const BackendInfo backends_;
  const int64_t started_ns_;
  const uint32_t own_uid_;  // the daemon's effective uid: always an admin

  mutable std::shared_mutex sessions_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<SessionMeta>> sessions_;

  std::atomic<bool> draining_{false};
  std::atomic<grpc::HealthCheckServiceInterface*> health_{nullptr};
  std::mutex drain_mu_;
  std::optional<v1::DrainResponse> drain_result_;

  std::mutex watch_calls_mu_;
  std::vector<WatchCall*> watch_calls_;
};

/// The one adapter from absl::Status to grpc::Status.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace asyncd::daemon
