#include "daemon/service.h"

#include <unistd.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "daemon/checkpoint.h"
#include "daemon/convert.h"
#include "daemon/stream_call.h"
#include "daemon/submit_call.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

namespace {

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

void FillCancelCounts(const core::CancelCounts& counts, v1::CancelCounts* out) {
  out->set_cancelled(counts.cancelled);
  out->set_not_cancellable(counts.not_cancellable);
  out->set_already_done(counts.already_done);
  out->set_not_found(counts.not_found);
}

}  // namespace

Service::Service(const Config& config, core::Registry& registry, core::Dispatcher& dispatcher,
                 Observer& observer, const UnixListener* listener, BackendInfo backends,
                 FileAreas* areas, std::function<void()> on_drained)
    : config_(config),
      registry_(registry),
      dispatcher_(dispatcher),
      observer_(observer),
      backends_(std::move(backends)),
      started_ns_(core::MonoNanos()),
      identifier_(AdminRules::FromConfig(config_, ::geteuid()), listener),
      sessions_(registry, dispatcher, live_, config_.max_lease_ms, areas),
      canceller_(registry, dispatcher, observer.counters(), observer.history()),
      listing_(registry, observer.history()),
      drainer_(registry, dispatcher,
               {.state_dir = config_.state_dir,
                .manifests_keep = config_.drain_manifests_keep,
                .history = &observer.history(),
                .on_start = [this](bool restart) { sessions_.NotifyDraining(restart); },
                .on_end = std::move(on_drained)}) {}

Service::~Service() = default;

v1::Limits Service::LimitsProto() const {
  v1::Limits l;
  l.set_max_batch_ops(live_.max_batch_ops());
  l.set_max_op_bytes(live_.max_op_bytes());
  l.set_max_inflight_per_session(config_.max_inflight_per_session);
  l.set_pool_queue_depth(config_.thread_pool_queue);
  l.set_max_pool_queued_per_session(config_.max_pool_queued_per_session);
  l.set_max_pool_running_per_session(backends_.pool_running_per_session);
  l.set_max_handles_per_session(config_.max_handles_per_session);
  l.set_max_sessions(config_.max_sessions);
  l.set_max_message_bytes(config_.max_message_bytes);
  l.set_default_lease_ms(live_.default_lease_ms());
  l.set_max_lease_ms(config_.max_lease_ms);
  l.set_history_capacity(config_.history_capacity);
  l.set_slow_history_capacity(config_.slow_history_capacity);
  l.set_max_watchers(config_.max_watchers);
  l.set_watch_buffer_events(config_.watch_buffer_events);
  l.set_max_inflight_total(live_.max_inflight_total());
  l.set_max_buffered_bytes(live_.max_buffered_bytes());
  return l;
}

void Service::ExpireLeases() { sessions_.ExpireLeases(core::MonoNanos()); }

// --- sessions ---

grpc::ServerUnaryReactor* Service::OpenSession(grpc::CallbackServerContext* ctx,
                                               const v1::OpenSessionRequest* req,
                                               v1::OpenSessionResponse* resp) {
  const Caller caller = Identify(ctx);
  if (draining()) return Done(ctx, Draining());
  auto meta = sessions_.Open(caller, req->client_name(), req->lease_ms(), SessionLifetime::kLeased);
  if (!meta.ok()) return Done(ctx, meta.status());
  resp->set_session_id((*meta)->session->id());
  resp->set_lease_ms((*meta)->lease_ms);
  *resp->mutable_limits() = LimitsProto();
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* Service::KeepAlive(grpc::CallbackServerContext* ctx,
                                             const v1::KeepAliveRequest* req,
                                             v1::KeepAliveResponse* resp) {
  absl::StatusOr<uint32_t> lease_ms =
      sessions_.KeepAlive(Identify(ctx), req->session_id(), core::MonoNanos());
  if (!lease_ms.ok()) return Done(ctx, lease_ms.status());
  resp->set_lease_ms(*lease_ms);
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* Service::CloseSession(grpc::CallbackServerContext* ctx,
                                                const v1::CloseSessionRequest* req,
                                                v1::CloseSessionResponse* resp) {
  absl::StatusOr<core::CancelCounts> counts = sessions_.Close(Identify(ctx), req->session_id());
  if (!counts.ok()) return Done(ctx, counts.status());
  FillCancelCounts(*counts, resp->mutable_counts());
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* Service::ListSessions(grpc::CallbackServerContext* ctx,
                                                const v1::ListSessionsRequest*,
                                                v1::ListSessionsResponse* resp) {
  sessions_.List(Identify(ctx), core::MonoNanos(), resp);
  return Done(ctx, absl::OkStatus());
}

// --- ops ---

grpc::ServerUnaryReactor* Service::Submit(grpc::CallbackServerContext* ctx,
                                          const v1::SubmitRequest* req, v1::Completion* resp) {
  auto* call = new SubmitCall(this, ctx, req, resp);
  return call->Start();
}

grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>* Service::Stream(
    grpc::CallbackServerContext* ctx) {
  return new StreamCall(this, ctx);
}

grpc::ServerUnaryReactor* Service::Cancel(grpc::CallbackServerContext* ctx,
                                          const v1::CancelRequest* req, v1::CancelResponse* resp) {
  absl::Status status;
  *resp = canceller_.Cancel(Identify(ctx), *req, &status);
  return Done(ctx, status);
}

// --- looking ---

grpc::ServerUnaryReactor* Service::ListOperations(grpc::CallbackServerContext* ctx,
                                                  const v1::ListOperationsRequest* req,
                                                  v1::ListOperationsResponse* resp) {
  return Done(ctx, listing_.ListOperations(Identify(ctx), *req, resp));
}

grpc::ServerUnaryReactor* Service::GetOperation(grpc::CallbackServerContext* ctx,
                                                const v1::GetOperationRequest* req,
                                                v1::OperationInfo* resp) {
  return Done(ctx, listing_.GetOperation(Identify(ctx), *req, resp));
}

grpc::ServerUnaryReactor* Service::ListHistory(grpc::CallbackServerContext* ctx,
                                               const v1::ListHistoryRequest* req,
                                               v1::ListHistoryResponse* resp) {
  return Done(ctx, listing_.ListHistory(Identify(ctx), *req, resp));
}

grpc::ServerWriteReactor<v1::WatchEvent>* Service::Watch(grpc::CallbackServerContext* ctx,
                                                         const v1::WatchRequest* req) {
  return new WatchCall(this, ctx, req);
}

void Service::StopWatchers() {
  watch_calls_.StopAll(grpc::Status(grpc::StatusCode::UNAVAILABLE, "asyncd is shutting down"));
}

grpc::ServerUnaryReactor* Service::GetStats(grpc::CallbackServerContext* ctx,
                                            const v1::GetStatsRequest*, v1::Stats* resp) {
  FillStats(resp);
  return Done(ctx, absl::OkStatus());
}

void Service::FillStats(v1::Stats* resp) const {
  resp->set_uptime_s((core::MonoNanos() - started_ns_) / 1'000'000'000);
  const uint32_t sessions = registry_.session_count();
  resp->set_sessions(sessions > backends_.internal_sessions ? sessions - backends_.internal_sessions
                                                            : 0);
  resp->set_inflight(registry_.inflight_ops());
  uint64_t queued = 0;
  for (core::Backend* b : backends_.backends) queued += b->Stats().queued;
  resp->set_queued(queued);
  resp->set_io_uring_enabled(backends_.io_uring_enabled);
  resp->set_io_uring_unavailable_reason(backends_.io_uring_unavailable_reason);
  for (core::OpKind k : backends_.uring_kinds) resp->add_supported_uring_ops(ToProto(k));
  resp->set_thread_pool_size(backends_.thread_pool_size);
  resp->set_path_resolver(std::string(backends::Name(backends_.path_resolver)));
  resp->set_draining(draining());
  *resp->mutable_limits() = LimitsProto();
  resp->set_buffered_bytes(budget_.bytes());
  if (last_restart_) *resp->mutable_last_restart() = *last_restart_;
  observer_.counters().FillStats(*resp);
}

// --- drain ---

grpc::ServerUnaryReactor* Service::Drain(grpc::CallbackServerContext* ctx,
                                         const v1::DrainRequest* req, v1::DrainResponse* resp) {
  const Caller caller = Identify(ctx);
  if (!caller.admin) {
    return Done(ctx, Deny(caller,
                          "drain needs an admin (uid 0, the daemon's own uid, "
                          "or one named in [admin])"));
  }
  if (req->grace_ms() > Drainer::kMaxGraceMs) {
    return Done(ctx, absl::InvalidArgumentError("grace_ms: over one hour"));
  }
  const uint32_t grace = req->grace_ms() == 0 ? live_.drain_grace_ms() : req->grace_ms();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  // Draining waits; a reactor must not: it runs on the drainer's thread.
  drainer_.Start(grace, [reactor, resp](const v1::DrainResponse& result) {
    *resp = result;
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* Service::GetCheckpoint(grpc::CallbackServerContext* ctx,
                                                 const v1::GetCheckpointRequest*,
                                                 v1::GetCheckpointResponse* resp) {
  const Caller caller = Identify(ctx);
  if (!caller.admin) {
    return Done(ctx, Deny(caller,
                          "checkpoint needs an admin (uid 0, the daemon's own uid, "
                          "or one named in [admin])"));
  }
  const state::Checkpoint checkpoint = TakeCheckpoint(
      sessions_, registry_, observer_.history(), config_.history_capacity);
  *resp->mutable_checkpoint() = Seal(checkpoint);
  // Said here, naming the limit: gRPC would refuse to send it with a
  // message of its own that names none.
  if (const size_t bytes = resp->ByteSizeLong(); bytes > config_.max_message_bytes) {
    resp->clear_checkpoint();
    return Done(ctx, absl::ResourceExhaustedError(absl::StrCat(
                         "the checkpoint (", bytes, " bytes) is over limits.max_message_bytes (",
                         config_.max_message_bytes, ")")));
  }
  return Done(ctx, absl::OkStatus());
}

bool Service::WaitResumableStreams(std::chrono::milliseconds timeout) const {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (resumable_streams_.load() > 0) {
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

v1::DrainResponse Service::DrainAndWait(uint32_t grace_ms, bool restart) {
  v1::DrainResponse result = drainer_.DrainAndWait(grace_ms, restart);
  drainer_.Join();
  return result;
}

}  // namespace asyncd::daemon
