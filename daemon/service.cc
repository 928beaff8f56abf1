#include "daemon/service.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <thread>

#include <google/protobuf/arena.h>
#include <google/protobuf/util/json_util.h>
#include <spdlog/spdlog.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/convert.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

constexpr uint32_t kMaxPageSize = 1000;
constexpr uint32_t kDefaultPageSize = 100;
constexpr size_t kMaxCancelOutcomes = 1000;
constexpr uint32_t kMaxDrainGraceMs = 3600000;

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Core's RESOURCE_EXHAUSTED messages say what is full; this adds the config
// key an operator would raise, so every over-limit message names its limit.
absl::Status NameLimit(absl::Status status) {
  if (status.code() != absl::StatusCode::kResourceExhausted) return status;
  const std::string m(status.message());
  const char* key = nullptr;
  if (m.find("operations in flight") != std::string::npos) {
    key = "limits.max_inflight_per_session";
  } else if (m.find("sessions") != std::string::npos) {
    key = "limits.max_sessions";
  } else if (m.find("handles") != std::string::npos) {
    key = "limits.max_handles_per_session";
  } else if (m.find("backend is full") != std::string::npos) {
    key = "backends.thread_pool_queue / backends.uring_entries";
  }
  if (key == nullptr || m.find(key) != std::string::npos) return status;
  return absl::ResourceExhaustedError(absl::StrCat(m, " (", key, ")"));
}

absl::Status Draining() {
  return absl::UnavailableError("asyncd is draining: it accepts no new work; retry elsewhere");
}

// The gRPC deadline of a call as a MonoNanos() deadline; 0 = none.
int64_t CallDeadline(grpc::CallbackServerContext* ctx) {
  const auto deadline = ctx->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return 0;
  const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
      deadline - std::chrono::system_clock::now());
  return core::MonoNanos() + std::max<int64_t>(left.count(), 1);
}

}  // namespace

Service::Service(const Config& config, core::Registry& registry, core::Dispatcher& dispatcher,
                 Observer& observer, const UnixListener* listener, BackendInfo backends)
    : config_(config),
      registry_(registry),
      dispatcher_(dispatcher),
      observer_(observer),
      listener_(listener),
      backends_(std::move(backends)),
      started_ns_(core::MonoNanos()),
      own_uid_(::geteuid()) {}

Service::~Service() = default;

Caller Service::Identify(grpc::CallbackServerContext* ctx) const {
  Caller c;
  auto listed = [](const std::vector<uint32_t>& ids, uint32_t id) {
    return std::find(ids.begin(), ids.end(), id) != ids.end();
  };
  const std::string peer = ctx->peer();
  std::optional<PeerCred> cred;
  if (listener_ != nullptr) cred = listener_->Lookup(peer);
  if (cred) {
    c.uid = cred->uid;
    c.gid = cred->gid;
    c.pid = cred->pid;
    c.peer = absl::StrCat("unix pid ", c.pid);
    // The daemon's own user can signal and trace it anyway: an admin of it,
    // so a daemon a user runs for themselves can be drained by them.
    c.admin = c.uid == 0 || c.uid == own_uid_ || listed(config_.admin_uids, c.uid);
    auto admin_gid = [&](uint32_t gid) {
      return listed(config_.admin_gids, gid) || listed(config_.admin_group_gids, gid);
    };
    if (!c.admin) c.admin = admin_gid(c.gid);
    for (size_t i = 0; !c.admin && i < cred->groups.size(); ++i) {
      c.admin = admin_gid(cred->groups[i]);
    }
    return c;
  }
  // Not our unix socket: TCP. Only a certificate the TLS layer verified
  // against server.tls_client_ca names anyone; everyone else is nobody.
  c.peer = peer;
  std::shared_ptr<const grpc::AuthContext> auth = ctx->auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return c;
  std::vector<grpc::string_ref> cns = auth->FindPropertyValues("x509_common_name");
  if (cns.empty()) return c;
  const std::string cn(cns.front().data(), cns.front().size());
  absl::StrAppend(&c.peer, " cert CN \"", cn, "\"");
  uint32_t uid = 0;
  if (cn.rfind("uid:", 0) == 0 && absl::SimpleAtoi(cn.substr(4), &uid) && uid != 0) c.uid = uid;
  c.admin = std::find(config_.admin_tls_cns.begin(), config_.admin_tls_cns.end(), cn) !=
            config_.admin_tls_cns.end();
  return c;
}

absl::Status Service::Deny(const Caller& caller, const std::string& why) const {
  // At most kDenialLogsPerSecond lines a second: a client looping on a
  // refused call must not flood the journal. The rest are counted.
  constexpr int64_t kDenialLogsPerSecond = 20;
  static std::atomic<int64_t> window{0};
  static std::atomic<int64_t> in_window{0};
  static std::atomic<int64_t> suppressed{0};
  const int64_t now_s = core::MonoNanos() / 1'000'000'000;
  int64_t seen = window.load(std::memory_order_relaxed);
  if (seen != now_s && window.compare_exchange_strong(seen, now_s)) {
    in_window.store(0, std::memory_order_relaxed);
    if (const int64_t n = suppressed.exchange(0); n > 0) {
      spdlog::warn("permission denied: {} more refusals not logged", n);
    }
  }
  if (in_window.fetch_add(1, std::memory_order_relaxed) < kDenialLogsPerSecond) {
    spdlog::warn("permission denied: uid {} gid {} ({}): {}", caller.uid, caller.gid, caller.peer,
                 why);
  } else {
    suppressed.fetch_add(1, std::memory_order_relaxed);
  }
  return absl::PermissionDeniedError(why);
}

v1::Limits Service::LimitsProto() const {
  v1::Limits l;
  l.set_max_batch_ops(live_.max_batch_ops());
  l.set_max_op_bytes(live_.max_op_bytes());
  l.set_max_inflight_per_session(config_.max_inflight_per_session);
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

absl::StatusOr<std::shared_ptr<SessionMeta>> Service::OwnSession(const Caller& caller,
                                                                 uint64_t session_id) const {
  if (session_id == 0) return absl::InvalidArgumentError("session_id: 0 is not a session");
  std::shared_ptr<SessionMeta> meta;
  {
    std::shared_lock lock(sessions_mu_);
    auto it = sessions_.find(session_id);
    if (it != sessions_.end()) meta = it->second;
  }
  if (meta == nullptr) {
    return absl::NotFoundError(absl::StrCat("no session ", session_id));
  }
  if (meta->uid != caller.uid) {
    return Deny(caller, absl::StrCat("session ", session_id, " belongs to another user (uid ",
                                     caller.uid, " may use only its own sessions)"));
  }
  if (meta->session->closing()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", session_id, " has ended"));
  }
  return meta;
}

absl::StatusOr<std::shared_ptr<SessionMeta>> Service::NewSession(const Caller& caller,
                                                                 const std::string& name,
                                                                 uint32_t lease_ms,
                                                                 bool stream_owned) {
  if (draining()) return Draining();
  if (name.size() > 256) return absl::InvalidArgumentError("client_name: longer than 256 bytes");
  if (!stream_owned) {
    if (lease_ms == 0) lease_ms = live_.default_lease_ms();
    if (lease_ms < 100 || lease_ms > config_.max_lease_ms) {
      return absl::InvalidArgumentError(
          absl::StrCat("lease_ms: must be in [100, ", config_.max_lease_ms, "]"));
    }
  }
  absl::StatusOr<std::shared_ptr<core::Session>> session =
      registry_.OpenSession({name, caller.uid, caller.gid, caller.pid});
  if (!session.ok()) return NameLimit(session.status());
  auto meta = std::make_shared<SessionMeta>();
  meta->session = *session;
  meta->uid = caller.uid;
  meta->stream_owned = stream_owned;
  meta->lease_ms = stream_owned ? 0 : lease_ms;
  meta->lease_deadline_ns.store(core::MonoNanos() + int64_t{lease_ms} * 1'000'000);
  std::unique_lock lock(sessions_mu_);
  sessions_[meta->session->id()] = meta;
  return meta;
}

absl::StatusOr<core::CancelCounts> Service::EndSession(uint64_t session_id,
                                                       core::EndReason reason) {
  {
    std::unique_lock lock(sessions_mu_);
    sessions_.erase(session_id);
  }
  return dispatcher_.CloseSession(session_id, reason);
}

void Service::ExpireLeases() {
  const int64_t now = core::MonoNanos();
  std::vector<uint64_t> expired;
  {
    std::shared_lock lock(sessions_mu_);
    for (const auto& [id, meta] : sessions_) {
      if (meta->lease_ms != 0 && meta->streams.load() == 0 &&
          meta->lease_deadline_ns.load(std::memory_order_relaxed) < now) {
        expired.push_back(id);
      }
    }
  }
  for (uint64_t id : expired) {
    spdlog::info("session {} lease expired: ending it", id);
    (void)EndSession(id, core::EndReason::kSessionClosed);
  }
}

grpc::ServerUnaryReactor* Service::OpenSession(grpc::CallbackServerContext* ctx,
                                               const v1::OpenSessionRequest* req,
                                               v1::OpenSessionResponse* resp) {
  auto meta = NewSession(Identify(ctx), req->client_name(), req->lease_ms(), false);
  if (!meta.ok()) return Done(ctx, meta.status());
  resp->set_session_id((*meta)->session->id());
  resp->set_lease_ms((*meta)->lease_ms);
  *resp->mutable_limits() = LimitsProto();
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* Service::KeepAlive(grpc::CallbackServerContext* ctx,
                                             const v1::KeepAliveRequest* req,
                                             v1::KeepAliveResponse* resp) {
  auto meta = OwnSession(Identify(ctx), req->session_id());
  if (!meta.ok()) return Done(ctx, meta.status());
  (*meta)->lease_deadline_ns.store(core::MonoNanos() + int64_t{(*meta)->lease_ms} * 1'000'000);
  resp->set_lease_ms((*meta)->lease_ms);
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* Service::CloseSession(grpc::CallbackServerContext* ctx,
                                                const v1::CloseSessionRequest* req,
                                                v1::CloseSessionResponse* resp) {
  const Caller caller = Identify(ctx);
  if (req->session_id() == 0) {
    return Done(ctx, absl::InvalidArgumentError("session_id: 0 is not a session"));
  }
  std::shared_ptr<SessionMeta> meta;
  {
    std::shared_lock lock(sessions_mu_);
    auto it = sessions_.find(req->session_id());
    if (it != sessions_.end()) meta = it->second;
  }
  if (meta == nullptr) {
    return Done(ctx, absl::NotFoundError(absl::StrCat("no session ", req->session_id())));
  }
  if (meta->uid != caller.uid && !caller.admin) {
    return Done(ctx, Deny(caller, absl::StrCat("close session ", req->session_id(),
                                               ": it belongs to another user and the caller is "
                                               "not an admin")));
  }
  auto counts = EndSession(req->session_id(), core::EndReason::kSessionClosed);
  if (!counts.ok()) {
    return Done(ctx, absl::FailedPreconditionError(
                         absl::StrCat("session ", req->session_id(), " has already ended")));
  }
  v1::CancelCounts* c = resp->mutable_counts();
  c->set_cancelled(counts->cancelled);
  c->set_not_cancellable(counts->not_cancellable);
  c->set_already_done(counts->already_done);
  c->set_not_found(counts->not_found);
  return Done(ctx, absl::OkStatus());
}

// ---------------------------------------------------------------------------
// Submit: one op, one call. The reactor is the op's sink; the reply is filled
// on the backend thread that finishes the op, or on this gRPC thread when the
// backend ran it inline (Dispatcher::RunOrSubmit).

class Service::SubmitCall final : public grpc::ServerUnaryReactor, public core::CompletionSink {
 public:
  SubmitCall(Service* service, grpc::CallbackServerContext* ctx, const v1::SubmitRequest* req,
             v1::Completion* resp)
      : service_(service), ctx_(ctx), req_(req), resp_(resp) {}

  // The reactor the handler returns: this one, or the context's default
  // reactor when the op ran inline and charged no payload bytes.
  grpc::ServerUnaryReactor* Start() {
    start_thread_ = std::this_thread::get_id();
    absl::Status s = Run();
    if (!s.ok()) {
      service_->observer().counters().OnRejected();
      Finish(ToGrpcStatus(s));
    } else if (finished_inline_ && charged_bytes_ == 0) {
      // Nothing to release once the reply is sent, so no OnDone is needed:
      // the default reactor's runs inline, where ours would be handed to
      // gRPC's executor thread (a wake-up per call).
      grpc::ServerUnaryReactor* reactor = ctx_->DefaultReactor();
      reactor->Finish(grpc::Status::OK);
      delete this;  // gRPC never sees this reactor
      return reactor;
    } else if (finished_inline_) {
      Finish(grpc::Status::OK);
    }
    Unref();
    return this;
  }

  void OnComplete(const core::Op& op) noexcept override {
    service_->budget().ReleaseOps(1);  // the bytes stay charged until the reply is sent
    FillCompletion(op, buffers_);
    buffers_.completion.set_tag(req_->op().tag());
    resp_->Swap(&buffers_.completion);
    // On the thread running Start: the op ran inline, inside RunOrSubmit.
    if (std::this_thread::get_id() == start_thread_) {
      finished_inline_ = true;  // Start finishes the call
      return;
    }
    Finish(grpc::Status::OK);
  }

  void OnCancel() override {
    const uint64_t id = op_id_.load(std::memory_order_acquire);
    if (id != 0) service_->dispatcher().Cancel(core::OpId{id}, CancelReason());
  }

  void OnDone() override {
    service_->budget().ReleaseBytes(charged_bytes_);
    Unref();
  }

 private:
  absl::Status Run() {
    if (service_->draining()) return Draining();
    auto meta = service_->OwnSession(service_->Identify(ctx_), req_->session_id());
    if (!meta.ok()) return meta.status();
    // Charge the daemon-wide budgets before the read buffer is allocated.
    const uint32_t max_op_bytes = service_->live().max_op_bytes();
    const uint64_t bytes = PayloadBytes(req_->op());
    const uint64_t charge = bytes <= max_op_bytes ? bytes : 0;  // else ToOpRequest refuses
    if (absl::Status s = service_->budget().Reserve(1, charge); !s.ok()) return s;
    auto refund = [&] {
      service_->budget().ReleaseOps(1);
      service_->budget().ReleaseBytes(charge);
    };
    core::OpRequest request;
    absl::Status s =
        ToOpRequest(req_->op(), max_op_bytes, CallDeadline(ctx_), buffers_, request);
    if (!s.ok()) {
      refund();
      return s;
    }
    request.sink = this;
    session_ = (*meta)->session;
    (*meta)->lease_deadline_ns.store(core::MonoNanos() +
                                     int64_t{(*meta)->lease_ms} * 1'000'000);
    charged_bytes_ = charge;  // before Submit: the completion (and OnDone) may come at once
    absl::StatusOr<core::OpId> id = service_->dispatcher().RunOrSubmit(*session_, request);
    if (!id.ok()) {
      charged_bytes_ = 0;
      refund();
      return NameLimit(id.status());
    }
    op_id_.store(id->value, std::memory_order_release);
    // A cancel that arrived before the id was known would have been missed.
    if (ctx_->IsCancelled()) service_->dispatcher().Cancel(*id, CancelReason());
    return absl::OkStatus();
  }

  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // A call that ended because its deadline passed times the op out; the
  // op's own deadline timer may lose that race to gRPC's.
  // gRPC's timer may fire a little before the wall-clock deadline: allow slack.
  core::EndReason CancelReason() const {
    const auto slack = std::chrono::milliseconds(50);
    return ctx_->deadline() <= std::chrono::system_clock::now() + slack
               ? core::EndReason::kDeadline
               : core::EndReason::kRpcCancelled;
  }

  Service* const service_;
  grpc::CallbackServerContext* const ctx_;
  const v1::SubmitRequest* const req_;
  v1::Completion* const resp_;
  OpBuffers buffers_;
  std::shared_ptr<core::Session> session_;  // keeps the op's memory while it runs
  uint64_t charged_bytes_ = 0;               // released by OnDone (the reply has left)
  std::atomic<uint64_t> op_id_{0};
  std::atomic<int> refs_{2};  // Start and OnDone
  std::thread::id start_thread_;
  bool finished_inline_ = false;  // the start thread's only
};

grpc::ServerUnaryReactor* Service::Submit(grpc::CallbackServerContext* ctx,
                                          const v1::SubmitRequest* req, v1::Completion* resp) {
  auto* call = new SubmitCall(this, ctx, req, resp);
  return call->Start();
}

// ---------------------------------------------------------------------------
// Stream: batches in, batches out. Backend threads append completions to an
// ordered outbox; one write is in flight at a time. Reading pauses while the
// stream holds max_inflight_per_session undelivered ops (flow control).

class Service::StreamCall final
    : public grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>,
      public core::CompletionSink {
 public:
  StreamCall(Service* service, grpc::CallbackServerContext* ctx)
      : service_(service), ctx_(ctx), caller_(service->Identify(ctx)), in_(new Batch) {
    StartRead(in_->request);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed, or the stream broke
      std::lock_guard lock(mu_);
      reading_ = false;
      half_closed_ = true;
      MaybeFinishLocked();
      return;
    }
    const Batch* handled = in_;
    absl::Status s = Handle();
    // Open and cancel messages are done with; a submit took its batch along.
    if (in_ == handled) in_->Reset();
    std::vector<uint64_t> to_cancel;
    core::Dispatcher& dispatcher = service_->dispatcher();
    {
      std::lock_guard lock(mu_);
      reading_ = false;
      if (s.ok()) {
        MaybeReadLocked();
        // A cancel that came while this read was being handled could not
        // finish the stream then (a read was outstanding): finish it now.
        MaybeFinishLocked();
        return;
      }
      end_status_ = ToGrpcStatus(s);
      half_closed_ = true;
      to_cancel = LiveIdsLocked();
      MaybeFinishLocked();
    }
    CancelIds(dispatcher, to_cancel);
  }

  void OnWriteDone(bool ok) override {
    std::vector<uint64_t> to_cancel;
    core::Dispatcher& dispatcher = service_->dispatcher();
    {
      std::lock_guard lock(mu_);
      writing_ = false;
      service_->budget().ReleaseBytes(current_charged_);  // written, or never will be
      current_charged_ = 0;
      RecycleMessageLocked(std::move(current_), current_data_bytes_);
      if (!ok) {
        // The client is gone: nothing more can be delivered.
        broken_ = true;  // the outbox is dropped with the reactor
        to_cancel = LiveIdsLocked();
      }
      WriteNextLocked();
      MaybeReadLocked();
      MaybeFinishLocked();
    }
    CancelIds(dispatcher, to_cancel);
  }

  void OnCancel() override {
    std::vector<uint64_t> to_cancel;
    core::Dispatcher& dispatcher = service_->dispatcher();
    {
      std::lock_guard lock(mu_);
      broken_ = true;
      to_cancel = LiveIdsLocked();
      MaybeFinishLocked();  // nothing may be outstanding to finish it otherwise
    }
    CancelIds(dispatcher, to_cancel);
  }

  void OnComplete(const core::Op& op) noexcept override {
    refs_.fetch_add(1, std::memory_order_relaxed);
    auto* ctx = reinterpret_cast<OpCtx*>(op.cookie);
    service_->budget().ReleaseOps(1);
    FillCompletion(op, ctx->buffers);
    ctx->buffers.completion.set_tag(ctx->tag);
    // In a backend's batch, take mu_ once for all of this stream's ops.
    if (core::CompletionBatch::Defer(this, op.cookie)) return;  // keeps the ref
    OnDeferred(std::span<const uint64_t>(&op.cookie, 1));
  }

  // Delivers completed ops and drops the ref each OnComplete took.
  void OnDeferred(std::span<const uint64_t> cookies) noexcept override {
    {
      std::lock_guard lock(mu_);
      for (uint64_t cookie : cookies) DeliverLocked(reinterpret_cast<OpCtx*>(cookie));
      WriteNextLocked();
      MaybeReadLocked();
      MaybeFinishLocked();
    }
    Unref(static_cast<int>(cookies.size()));
  }

  void OnDone() override {
    if (meta_ != nullptr) {
      meta_->streams.fetch_sub(1);
      if (meta_->stream_owned) {
        (void)service_->EndSession(meta_->session->id(), core::EndReason::kRpcCancelled);
      }
    }
    Unref();
  }

 private:
  // A received message, parsed onto an arena (one allocation per block, not
  // per op); its strings (paths, write data) are borrowed by its ops until the
  // last one completes. Pooled: the arena keeps its first block, small so that
  // an idle stream holds little (the batch it reads into and kSpareBatches).
  struct Batch {
    static constexpr size_t kFirstBlock = 4 << 10;
    Batch() : arena(ArenaOptions(first_block)) {
      request = google::protobuf::Arena::CreateMessage<v1::StreamRequest>(&arena);
    }
    static google::protobuf::ArenaOptions ArenaOptions(char* block) {
      google::protobuf::ArenaOptions o;
      o.initial_block = block;
      o.initial_block_size = kFirstBlock;
      o.max_block_size = 256 << 10;
      return o;
    }
    void Reset() {
      arena.Reset();
      request = google::protobuf::Arena::CreateMessage<v1::StreamRequest>(&arena);
    }
    alignas(16) char first_block[kFirstBlock];
    google::protobuf::Arena arena;
    v1::StreamRequest* request;
    uint32_t users = 0;  // HandleSubmit and each op still running; under mu_
  };
  struct OpCtx {
    OpBuffers buffers;
    uint64_t tag = 0;
    uint64_t op_id = 0;
    uint64_t charged = 0;  // Budget bytes, until its completion is written or dropped
    Batch* batch = nullptr;
    bool linked = false;  // in live_: submitted and not yet completed
    OpCtx* prev = nullptr;
    OpCtx* next = nullptr;
  };
  // Pools are bounded: a burst leaves at most this much behind.
  static constexpr size_t kSpareCtxs = 256;
  static constexpr size_t kKeptReadBuffer = 16 << 10;  // per pooled ctx
  static constexpr size_t kSpareBatches = 2;
  static constexpr size_t kSpareMessages = 2;           // per message kind
  static constexpr uint64_t kRecycledMessageData = 1 << 20;
  struct Outgoing {
    std::unique_ptr<v1::StreamResponse> msg;
    bool ready = true;
    uint32_t completions = 0;  // in msg, not yet handed to gRPC (flow control)
    uint64_t data_bytes = 0;   // read data in msg (message size cap)
    uint64_t charged = 0;      // Budget bytes released once msg is written
  };

  ~StreamCall() override {
    for (OpCtx* c : free_ctx_) delete c;
    for (Batch* b : spare_batches_) delete b;
    delete in_;
    uint64_t charged = current_charged_;
    for (const Outgoing& o : outbox_) charged += o.charged;
    service_->budget().ReleaseBytes(charged);
  }

  void Unref(int n = 1) {
    if (refs_.fetch_sub(n, std::memory_order_acq_rel) == n) delete this;
  }

  // A completed op's result goes out (or is dropped if nobody can take it).
  void DeliverLocked(OpCtx* ctx) {
    Unlink(ctx);
    --inflight_;
    if (!broken_) {
      AppendCompletionLocked(ctx->buffers.completion, ctx->charged);
    } else {
      service_->budget().ReleaseBytes(ctx->charged);  // dropped: nobody to deliver to
    }
    ctx->charged = 0;
    FreeCtxLocked(ctx);
  }

  absl::Status Handle() {
    const v1::StreamRequest& in = *in_->request;
    switch (in.msg_case()) {
      case v1::StreamRequest::kOpen:
        return HandleOpen(in.open());
      case v1::StreamRequest::kSubmit:
        if (meta_ == nullptr) return absl::InvalidArgumentError("the first message must be open");
        return HandleSubmit();
      case v1::StreamRequest::kCancel: {
        if (meta_ == nullptr) return absl::InvalidArgumentError("the first message must be open");
        absl::Status status;
        v1::CancelResponse resp = service_->DoCancel(caller_, in.cancel(), &status);
        // A refused cancel is answered in-band, not by ending the stream.
        resp.set_request_tag(in.cancel().request_tag());
        Outgoing out{.msg = std::make_unique<v1::StreamResponse>()};
        *out.msg->mutable_cancel_result() = std::move(resp);
        std::lock_guard lock(mu_);
        outbox_.push_back(std::move(out));
        WriteNextLocked();
        return absl::OkStatus();
      }
      default:
        return absl::InvalidArgumentError("empty stream message");
    }
  }

  absl::Status HandleOpen(const v1::StreamOpen& open) {
    if (meta_ != nullptr) return absl::InvalidArgumentError("open: sent twice");
    if (open.session_id() == 0) {
      auto meta = service_->NewSession(caller_, open.client_name(), 0, /*stream_owned=*/true);
      if (!meta.ok()) return meta.status();
      meta_ = *meta;
    } else {
      if (service_->draining()) return Draining();
      auto meta = service_->OwnSession(caller_, open.session_id());
      if (!meta.ok()) return meta.status();
      meta_ = *meta;
    }
    meta_->streams.fetch_add(1);
    Outgoing out{.msg = std::make_unique<v1::StreamResponse>()};
    v1::StreamOpened* opened = out.msg->mutable_opened();
    opened->set_session_id(meta_->session->id());
    opened->set_lease_ms(meta_->lease_ms);
    *opened->mutable_limits() = service_->LimitsProto();
    std::lock_guard lock(mu_);
    outbox_.push_back(std::move(out));
    WriteNextLocked();
    return absl::OkStatus();
  }

  absl::Status HandleSubmit() {
    // The batch stays with its ops; the next read gets another.
    Batch* batch = in_;
    const v1::SubmitBatch& sb = batch->request->submit();
    const int n = sb.ops_size();
    // Reserve the Accepted message's place before any op can complete.
    Outgoing* accepted_slot;
    std::vector<OpCtx*>& ctxs = scratch_ctxs_;
    ctxs.assign(n, nullptr);
    {
      std::lock_guard lock(mu_);
      in_ = TakeBatchLocked();
      batch->users = 1;
      submitting_ = true;
      outbox_.push_back(Outgoing{.msg = TakeMessageLocked(kAcceptedKind), .ready = false});
      accepted_slot = &outbox_.back();
      for (int i = 0; i < n; ++i) {
        if (free_ctx_.empty()) {
          ctxs[i] = new OpCtx;
        } else {
          ctxs[i] = free_ctx_.back();
          free_ctx_.pop_back();
        }
        ctxs[i]->op_id = 0;
      }
      batch->users += n;
    }
    std::vector<core::OpRequest>& requests = scratch_requests_;
    std::vector<int>& index = scratch_index_;  // request -> op position
    requests.clear();
    index.clear();
    std::vector<absl::Status>& rejected = scratch_rejected_;
    rejected.assign(n, absl::OkStatus());
    const int64_t no_deadline = 0;
    const uint32_t max_batch_ops = service_->live().max_batch_ops();
    const uint32_t max_op_bytes = service_->live().max_op_bytes();
    const bool over_batch = static_cast<uint32_t>(n) > max_batch_ops;
    for (int i = 0; i < n; ++i) {
      OpCtx* c = ctxs[i];
      c->tag = sb.ops(i).tag();
      c->batch = batch;
      if (service_->draining()) {
        rejected[i] = Draining();
        continue;
      }
      if (over_batch) {
        rejected[i] = absl::ResourceExhaustedError(absl::StrCat(
            "batch of ", n, " ops is over max_batch_ops ", max_batch_ops));
        continue;
      }
      // Charge the daemon-wide budgets before the read buffer is allocated.
      const uint64_t bytes = PayloadBytes(sb.ops(i));
      const uint64_t charge = bytes <= max_op_bytes ? bytes : 0;  // else ToOpRequest refuses
      rejected[i] = service_->budget().Reserve(1, charge);
      if (!rejected[i].ok()) continue;
      c->charged = charge;
      core::OpRequest r;
      rejected[i] = ToOpRequest(sb.ops(i), max_op_bytes, no_deadline, c->buffers, r);
      if (!rejected[i].ok()) {
        service_->budget().ReleaseOps(1);
        service_->budget().ReleaseBytes(c->charged);
        c->charged = 0;
        continue;
      }
      r.sink = this;
      r.cookie = reinterpret_cast<uint64_t>(c);
      requests.push_back(r);
      index.push_back(i);
    }
    std::vector<absl::StatusOr<core::OpId>>& ids = scratch_ids_;
    ids.assign(requests.size(), absl::StatusOr<core::OpId>());
    {
      // Count them in flight first: completions may arrive during SubmitBatch.
      std::lock_guard lock(mu_);
      inflight_ += requests.size();
      for (size_t j = 0; j < requests.size(); ++j) Link(ctxs[index[j]]);
    }
    if (!requests.empty()) service_->dispatcher().SubmitBatch(*meta_->session, requests, ids);
    std::vector<uint64_t> to_cancel;
    std::unique_lock lock(mu_);
    v1::Accepted& accepted = *accepted_slot->msg->mutable_accepted();
    accepted.set_batch_tag(sb.batch_tag());
    // An op may have completed already (its ctx is back in the pool, kept
    // there while submitting_): ids are read from `ids`, not from ctxs.
    std::vector<uint64_t>& op_ids = scratch_op_ids_;
    op_ids.assign(n, 0);
    for (size_t j = 0; j < requests.size(); ++j) {
      if (ids[j].ok()) {
        op_ids[index[j]] = ids[j]->value;
        if (ctxs[index[j]]->linked) ctxs[index[j]]->op_id = ids[j]->value;
      } else {
        rejected[index[j]] = NameLimit(ids[j].status());
        service_->budget().ReleaseOps(1);
        service_->budget().ReleaseBytes(ctxs[index[j]]->charged);
        ctxs[index[j]]->charged = 0;
      }
    }
    if (broken_) to_cancel = LiveIdsLocked();  // broke during the submit
    for (int i = 0; i < n; ++i) {
      v1::AcceptedOp* a = accepted.add_ops();
      a->set_tag(sb.ops(i).tag());
      a->set_op_id(op_ids[i]);
    }
    accepted_slot->ready = true;
    for (int i = 0; i < n; ++i) {
      if (rejected[i].ok()) continue;
      service_->observer().counters().OnRejected();
      if (ctxs[i]->linked) {  // was submitted, then refused
        Unlink(ctxs[i]);
        --inflight_;
      }
      FillRejected(rejected[i], sb.ops(i).tag(), ctxs[i]->buffers.completion);
      AppendCompletionLocked(ctxs[i]->buffers.completion, 0);
      FreeCtxLocked(ctxs[i]);
    }
    ReleaseBatchLocked(batch);  // HandleSubmit's use
    submitting_ = false;
    while (free_ctx_.size() > kSpareCtxs) {
      delete free_ctx_.back();
      free_ctx_.pop_back();
    }
    if (meta_->lease_ms != 0) {
      meta_->lease_deadline_ns.store(core::MonoNanos() + int64_t{meta_->lease_ms} * 1'000'000);
    }
    WriteNextLocked();
    lock.unlock();
    CancelIds(service_->dispatcher(), to_cancel);
    return absl::OkStatus();
  }

  void Link(OpCtx* c) {
    c->linked = true;
    c->prev = nullptr;
    c->next = live_;
    if (live_ != nullptr) live_->prev = c;
    live_ = c;
  }
  void Unlink(OpCtx* c) {
    if (c->prev != nullptr) c->prev->next = c->next;
    if (c->next != nullptr) c->next->prev = c->prev;
    if (live_ == c) live_ = c->next;
    c->prev = c->next = nullptr;
    c->linked = false;
  }

  // Moves `c` (by swap: no copy, and `c` gets a cleared spare) into the
  // last unsent batch: fewer, larger messages, each well under
  // max_message_bytes (read data counted; the rest is small).
  void AppendCompletionLocked(v1::Completion& c, uint64_t charged) {
    const uint64_t data = c.data().size();
    const uint64_t cap = std::min<uint64_t>(4 << 20, service_->config().max_message_bytes / 2);
    if (outbox_.empty() || !outbox_.back().msg->has_completions() ||
        outbox_.back().completions >= 1024 ||
        (outbox_.back().completions > 0 && outbox_.back().data_bytes + data > cap)) {
      outbox_.push_back(Outgoing{.msg = TakeMessageLocked(kCompletionsKind)});
    }
    Outgoing& out = outbox_.back();
    out.msg->mutable_completions()->add_completions()->Swap(&c);
    ++out.completions;
    out.data_bytes += data;
    out.charged += charged;
    ++undelivered_;
  }

  void WriteNextLocked() {
    if (writing_ || broken_ || outbox_.empty() || !outbox_.front().ready) return;
    current_ = std::move(outbox_.front().msg);
    current_charged_ = outbox_.front().charged;
    current_data_bytes_ = outbox_.front().data_bytes;
    undelivered_ -= outbox_.front().completions;
    outbox_.pop_front();
    writing_ = true;
    StartWrite(current_.get());
  }

  // --- pools (under mu_) ---

  // Messages are reused per kind, clearing the inner message only: clearing
  // a oneof frees its message, and with it every element kept for reuse.
  enum MessageKind { kCompletionsKind, kAcceptedKind };
  std::unique_ptr<v1::StreamResponse> TakeMessageLocked(MessageKind kind) {
    auto& spare = spare_messages_[kind];
    if (!spare.empty()) {
      auto msg = std::move(spare.back());
      spare.pop_back();
      return msg;
    }
    auto msg = std::make_unique<v1::StreamResponse>();
    if (kind == kCompletionsKind) {
      msg->mutable_completions();
    } else {
      msg->mutable_accepted();
    }
    return msg;
  }
  void RecycleMessageLocked(std::unique_ptr<v1::StreamResponse> msg, uint64_t data_bytes) {
    if (msg == nullptr || data_bytes > kRecycledMessageData) return;
    MessageKind kind;
    if (msg->has_completions()) {
      msg->mutable_completions()->Clear();
      kind = kCompletionsKind;
    } else if (msg->has_accepted()) {
      msg->mutable_accepted()->Clear();
      kind = kAcceptedKind;
    } else {
      return;
    }
    if (spare_messages_[kind].size() < kSpareMessages) {
      spare_messages_[kind].push_back(std::move(msg));
    }
  }

  Batch* TakeBatchLocked() {
    if (spare_batches_.empty()) return new Batch;
    Batch* b = spare_batches_.back();
    spare_batches_.pop_back();
    return b;
  }
  void ReleaseBatchLocked(Batch* b) {
    if (--b->users > 0) return;
    if (spare_batches_.size() >= kSpareBatches) {
      delete b;
      return;
    }
    b->Reset();
    spare_batches_.push_back(b);
  }

  // The ctx's op is over: its batch use ends, and it is kept for the next op
  // with its Completion cleared (a small read buffer stays allocated).
  void FreeCtxLocked(OpCtx* ctx) {
    if (ctx->batch != nullptr) {
      ReleaseBatchLocked(ctx->batch);
      ctx->batch = nullptr;
    }
    // HandleSubmit may still hold it (it trims the pool when it is done).
    if (!submitting_ && free_ctx_.size() >= kSpareCtxs) {
      delete ctx;
      return;
    }
    v1::Completion& c = ctx->buffers.completion;
    if (c.data().capacity() > kKeptReadBuffer) {
      c = v1::Completion();
    } else {
      c.Clear();
    }
    free_ctx_.push_back(ctx);
  }

  void MaybeReadLocked() {
    if (reading_ || half_closed_ || broken_ || finished_) return;
    // Flow control: stop taking work while the client is not taking results.
    // Completions count one by one (a coalesced message holds up to 1024),
    // so a client that never reads makes us hold at most about
    // max_inflight_per_session results plus the message gRPC is writing.
    if (inflight_ + undelivered_ + outbox_.size() >= service_->config().max_inflight_per_session) {
      return;
    }
    reading_ = true;
    StartRead(in_->request);
  }

  // Cancels run without mu_: a backend may complete a cancelled op on the
  // cancelling thread, and OnComplete takes mu_.
  std::vector<uint64_t> LiveIdsLocked() const {
    std::vector<uint64_t> ids;
    for (const OpCtx* c = live_; c != nullptr; c = c->next) {
      if (c->op_id != 0) ids.push_back(c->op_id);
    }
    return ids;
  }
  // Static: the reactor may be gone once the lock is released.
  static void CancelIds(core::Dispatcher& dispatcher, const std::vector<uint64_t>& ids) {
    for (uint64_t id : ids) dispatcher.Cancel(core::OpId{id}, core::EndReason::kRpcCancelled);
  }

  void MaybeFinishLocked() {
    if (finished_ || reading_ || !(half_closed_ || broken_) || inflight_ > 0) return;
    if (!broken_ && (writing_ || !outbox_.empty())) return;  // deliver everything first
    if (writing_) return;  // a failed write still owes us OnWriteDone
    finished_ = true;
    Finish(end_status_);
  }

  Service* const service_;
  grpc::CallbackServerContext* const ctx_;
  const Caller caller_;
  std::shared_ptr<SessionMeta> meta_;
  Batch* in_;  // read into; only the read flow changes it (under mu_ when it does)
  std::unique_ptr<v1::StreamResponse> current_;  // being written
  uint64_t current_data_bytes_ = 0;
  // HandleSubmit's per-batch vectors, kept (reads are one at a time).
  std::vector<OpCtx*> scratch_ctxs_;
  std::vector<core::OpRequest> scratch_requests_;
  std::vector<int> scratch_index_;
  std::vector<absl::Status> scratch_rejected_;
  std::vector<absl::StatusOr<core::OpId>> scratch_ids_;
  std::vector<uint64_t> scratch_op_ids_;

  std::mutex mu_;
  std::deque<Outgoing> outbox_;
  std::vector<OpCtx*> free_ctx_;
  bool submitting_ = false;  // HandleSubmit holds ctxs: FreeCtxLocked must not delete
  std::vector<Batch*> spare_batches_;
  std::vector<std::unique_ptr<v1::StreamResponse>> spare_messages_[2];
  OpCtx* live_ = nullptr;
  size_t inflight_ = 0;
  size_t undelivered_ = 0;        // completions in outbox_
  uint64_t current_charged_ = 0;  // Budget bytes of current_, released by OnWriteDone
  bool reading_ = true;
  bool writing_ = false;
  bool half_closed_ = false;
  bool broken_ = false;
  bool finished_ = false;
  grpc::Status end_status_ = grpc::Status::OK;
  std::atomic<int> refs_{1};  // OnDone's; each OnComplete holds one more until delivered
};

grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>* Service::Stream(
    grpc::CallbackServerContext* ctx) {
  return new StreamCall(this, ctx);
}

// ---------------------------------------------------------------------------
// Cancel, listing, history, sessions.

absl::StatusOr<Filter> Service::ToFilter(const Caller& caller, const v1::OpSelector& sel,
                                         bool require_criteria) const {
  Filter f;
  f.session_id = sel.session_id();
  f.client = sel.client();
  f.handle = sel.handle();
  if (f.handle != 0 && f.session_id == 0) {
    return absl::InvalidArgumentError("selector.handle: requires selector.session_id");
  }
  for (int k : sel.kinds()) {
    if (k < 1 || k > core::kOpKindCount) {
      return absl::InvalidArgumentError(absl::StrCat("selector.kinds: unknown kind ", k));
    }
    f.kinds |= 1u << k;
  }
  for (int st : sel.states()) {
    if (st < 1 || st > 7) {
      return absl::InvalidArgumentError(absl::StrCat("selector.states: unknown state ", st));
    }
    f.states |= 1u << st;
  }
  switch (sel.backend()) {
    case v1::BACKEND_UNSPECIFIED: break;
    case v1::BACKEND_IO_URING: f.backend = core::BackendKind::kIoUring; break;
    case v1::BACKEND_THREAD_POOL: f.backend = core::BackendKind::kThreadPool; break;
    case v1::BACKEND_INLINE: f.backend = core::BackendKind::kInline; break;
    default: return absl::InvalidArgumentError("selector.backend: unknown backend");
  }
  f.older_than_ns = static_cast<int64_t>(sel.older_than_ms()) * 1'000'000;
  const bool has_criteria = f.session_id != 0 || !f.client.empty() || f.kinds != 0 ||
                            f.states != 0 || f.backend != core::BackendKind::kNone ||
                            f.older_than_ns != 0;
  if (require_criteria && !has_criteria && !sel.all()) {
    return absl::InvalidArgumentError(
        "selector: empty; set criteria, or all=true to select every operation");
  }
  if (!caller.admin) f.uid = caller.uid;
  return f;
}

v1::CancelResponse Service::DoCancel(const Caller& caller, const v1::CancelRequest& req,
                                     absl::Status* status) {
  v1::CancelResponse resp;
  resp.set_request_tag(req.request_tag());
  core::CancelCounts counts;
  const core::EndReason default_reason =
      caller.admin ? core::EndReason::kOperatorRequest : core::EndReason::kClientRequest;
  auto cancel_one = [&](core::Registry::Found& found, uint32_t gen) {
    const core::ClientInfo& owner = found.session->client();
    const core::EndReason reason =
        owner.uid == caller.uid ? core::EndReason::kClientRequest : default_reason;
    const core::CancelResult r = dispatcher_.Cancel(*found.op, gen, reason);
    counts.Add(r);
    observer_.counters().OnCancelAnswered(r);
    const core::OpId id = core::OpId::Make(found.session->index(), found.op->slot_index, gen);
    if (r == core::CancelResult::kCancelled) {
      if (auto snap = core::Registry::Snapshot(*found.op, found.session->id(), gen)) {
        observer_.watch_hub().PublishCancelRequested(*snap, owner);
      }
    }
    if (resp.outcomes_size() < static_cast<int>(kMaxCancelOutcomes)) {
      v1::CancelOutcome* o = resp.add_outcomes();
      o->set_op_id(id.value);
      o->set_result(ToProto(r));
    } else {
      resp.set_outcomes_truncated(true);
    }
  };
  *status = absl::OkStatus();
  if (req.target_case() == v1::CancelRequest::kOpId) {
    const core::OpId id{req.op_id()};
    if (id.value == 0) {
      *status = absl::InvalidArgumentError("op_id: 0 is not an operation");
      return resp;
    }
    core::Registry::Found found = registry_.Find(id);
    if (!found) {
      counts.Add(core::CancelResult::kNotFound);
      observer_.counters().OnCancelAnswered(core::CancelResult::kNotFound);
      v1::CancelOutcome* o = resp.add_outcomes();
      o->set_op_id(id.value);
      o->set_result(v1::CANCEL_RESULT_NOT_FOUND);
    } else if (found.session->client().uid != caller.uid && !caller.admin) {
      *status = Deny(caller, absl::StrCat("cancel operation ", id.value,
                                          ": it belongs to another user"));
      return resp;
    } else {
      cancel_one(found, id.generation());
    }
  } else if (req.target_case() == v1::CancelRequest::kSelector) {
    absl::StatusOr<Filter> filter = ToFilter(caller, req.selector(), /*require_criteria=*/true);
    if (!filter.ok()) {
      *status = filter.status();
      return resp;
    }
    // Collect first: cancelling while iterating would see ops change under us.
    std::vector<std::pair<core::OpId, std::shared_ptr<core::Session>>> targets;
    const int64_t now = core::MonoNanos();
    registry_.ForEach([&](const core::OpSnapshot& snap,
                          const std::shared_ptr<core::Session>& session) {
      if (!core::IsTerminal(snap.state) &&
          filter->Matches(snap, session->client().uid, session->client().name, now)) {
        targets.emplace_back(snap.id, session);
      }
      return true;
    });
    for (auto& [id, session] : targets) {
      core::Registry::Found found{session, session->Find(id.slot(), id.generation())};
      if (!found) {
        counts.Add(core::CancelResult::kAlreadyDone);  // finished since we looked
        continue;
      }
      cancel_one(found, id.generation());
    }
  } else {
    *status = absl::InvalidArgumentError("target: set op_id or selector");
    return resp;
  }
  v1::CancelCounts* c = resp.mutable_counts();
  c->set_cancelled(counts.cancelled);
  c->set_not_cancellable(counts.not_cancellable);
  c->set_already_done(counts.already_done);
  c->set_not_found(counts.not_found);
  return resp;
}

grpc::ServerUnaryReactor* Service::Cancel(grpc::CallbackServerContext* ctx,
                                          const v1::CancelRequest* req, v1::CancelResponse* resp) {
  absl::Status status;
  *resp = DoCancel(Identify(ctx), *req, &status);
  return Done(ctx, status);
}

grpc::ServerUnaryReactor* Service::ListOperations(grpc::CallbackServerContext* ctx,
                                                  const v1::ListOperationsRequest* req,
                                                  v1::ListOperationsResponse* resp) {
  const Caller caller = Identify(ctx);
  absl::StatusOr<Filter> filter = ToFilter(caller, req->filter(), /*require_criteria=*/false);
  if (!filter.ok()) return Done(ctx, filter.status());
  uint64_t after = 0;
  if (!req->page_token().empty() && !absl::SimpleAtoi(req->page_token(), &after)) {
    return Done(ctx, absl::InvalidArgumentError("page_token: not a token from this daemon"));
  }
  const uint32_t page = req->page_size() == 0 ? kDefaultPageSize
                                              : std::min(req->page_size(), kMaxPageSize);
  struct Row {
    core::OpSnapshot snap;
    std::shared_ptr<core::Session> session;
  };
  std::vector<Row> rows;
  const int64_t now = core::MonoNanos();
  uint64_t matched = 0;
  registry_.ForEach([&](const core::OpSnapshot& snap,
                        const std::shared_ptr<core::Session>& session) {
    if (!filter->Matches(snap, session->client().uid, session->client().name, now)) return true;
    ++matched;
    if (snap.id.value > after) rows.push_back({snap, session});
    return true;
  });
  // Pages are ordered by op id, so a token is just the last id returned.
  const size_t n = std::min<size_t>(rows.size(), page);
  std::partial_sort(rows.begin(), rows.begin() + n, rows.end(),
                    [](const Row& a, const Row& b) { return a.snap.id.value < b.snap.id.value; });
  for (size_t i = 0; i < n; ++i) {
    const core::ClientInfo& client = rows[i].session->client();
    ToOperationInfo(rows[i].snap, client.uid, client.pid, client.name, req->include_timeline(),
                    now, *resp->add_ops());
  }
  if (rows.size() > n) resp->set_next_page_token(absl::StrCat(rows[n - 1].snap.id.value));
  resp->set_total_matched(matched);
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* Service::GetOperation(grpc::CallbackServerContext* ctx,
                                                const v1::GetOperationRequest* req,
                                                v1::OperationInfo* resp) {
  const Caller caller = Identify(ctx);
  if (req->op_id() == 0) return Done(ctx, absl::InvalidArgumentError("op_id: 0 is not an operation"));
  const core::OpId id{req->op_id()};
  const int64_t now = core::MonoNanos();
  core::Registry::Found found = registry_.Find(id);
  if (found) {
    const core::ClientInfo& client = found.session->client();
    if (client.uid != caller.uid && !caller.admin) {
      return Done(ctx, Deny(caller, absl::StrCat("get operation ", id.value,
                                                 ": it belongs to another user")));
    }
    if (auto snap = core::Registry::Snapshot(*found.op, found.session->id(), id.generation())) {
      ToOperationInfo(*snap, client.uid, client.pid, client.name, true, now, *resp);
      return Done(ctx, absl::OkStatus());
    }
  }
  if (std::optional<FinishedOp> f = observer_.history().FindFinished(id.value)) {
    if (f->uid != caller.uid && !caller.admin) {
      return Done(ctx, Deny(caller, absl::StrCat("get operation ", id.value,
                                                 ": it belongs to another user")));
    }
    ToOperationInfo(f->snap, f->uid, f->pid, f->client, true, now, *resp);
    return Done(ctx, absl::OkStatus());
  }
  return Done(ctx, absl::NotFoundError(absl::StrCat(
                       "operation ", id.value, " is neither in flight nor in the history")));
}

grpc::ServerUnaryReactor* Service::ListHistory(grpc::CallbackServerContext* ctx,
                                               const v1::ListHistoryRequest* req,
                                               v1::ListHistoryResponse* resp) {
  const Caller caller = Identify(ctx);
  absl::StatusOr<Filter> filter = ToFilter(caller, req->filter(), /*require_criteria=*/false);
  if (!filter.ok()) return Done(ctx, filter.status());
  const uint32_t limit =
      req->limit() == 0 ? kDefaultPageSize : std::min(req->limit(), kMaxPageSize);
  const std::vector<FinishedOp> ops =
      req->slowest() ? observer_.history().Slowest(*filter, limit)
                     : observer_.history().Recent(*filter, limit);
  const int64_t now = core::MonoNanos();
  for (const FinishedOp& f : ops) {
    ToOperationInfo(f.snap, f.uid, f.pid, f.client, req->include_timeline(), now,
                    *resp->add_ops());
  }
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* Service::ListSessions(grpc::CallbackServerContext* ctx,
                                                const v1::ListSessionsRequest*,
                                                v1::ListSessionsResponse* resp) {
  const Caller caller = Identify(ctx);
  const int64_t now = core::MonoNanos();
  std::shared_lock lock(sessions_mu_);
  for (const auto& [id, meta] : sessions_) {
    const core::Session& s = *meta->session;
    if (meta->uid != caller.uid && !caller.admin) continue;
    v1::SessionInfo* info = resp->add_sessions();
    info->set_session_id(id);
    info->set_client_name(s.client().name);
    info->set_uid(s.client().uid);
    info->set_gid(s.client().gid);
    info->set_pid(s.client().pid);
    info->set_inflight(s.live_ops());
    info->set_handles(meta->session->handles().open_count());
    info->set_age_us((now - s.created_ns()) / 1000);
    if (meta->lease_ms != 0) {
      const int64_t left = meta->lease_deadline_ns.load() - now;
      info->set_lease_remaining_ms(left > 0 ? static_cast<uint32_t>(left / 1'000'000) : 0);
    }
    info->set_bound_to_stream(meta->streams.load() > 0);
  }
  lock.unlock();
  std::sort(resp->mutable_sessions()->begin(), resp->mutable_sessions()->end(),
            [](const v1::SessionInfo& a, const v1::SessionInfo& b) {
              return a.session_id() < b.session_id();
            });
  return Done(ctx, absl::OkStatus());
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
  resp->set_inflight(registry_.live_ops());
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
  observer_.counters().FillStats(*resp);
}

// ---------------------------------------------------------------------------
// Watch: a bounded queue per watcher (see Watcher); one write in flight.

class Service::WatchCall final : public grpc::ServerWriteReactor<v1::WatchEvent> {
 public:
  WatchCall(Service* service, grpc::CallbackServerContext* ctx, const v1::WatchRequest* req)
      : service_(service) {
    const Caller caller = service->Identify(ctx);
    absl::StatusOr<Filter> filter = service->ToFilter(caller, req->filter(), false);
    uint32_t types = 0;
    for (int t : req->types()) {
      if (t < 1 || t > v1::EventType_MAX) {
        filter = absl::InvalidArgumentError(absl::StrCat("types: unknown event type ", t));
        break;
      }
      types |= 1u << t;
    }
    if (!filter.ok()) {
      Finish(ToGrpcStatus(filter.status()));
      return;
    }
    watcher_ = std::make_shared<Watcher>(*filter, types, service->config().watch_buffer_events,
                                         [this] { Pump(); });
    if (service->draining()) {
      watcher_.reset();
      Finish(ToGrpcStatus(Draining()));
      return;
    }
    if (!service->observer().watch_hub().Add(watcher_, service->config().max_watchers)) {
      watcher_.reset();
      Finish(ToGrpcStatus(absl::ResourceExhaustedError(absl::StrCat(
          "the daemon serves the maximum of ", service->config().max_watchers, " watchers"))));
      return;
    }
    std::lock_guard lock(service->watch_calls_mu_);
    service->watch_calls_.push_back(this);
  }

  /// Ends the watch (shutdown). Any thread.
  void Stop(const grpc::Status& status) {
    std::lock_guard lock(mu_);
    if (done_) return;
    done_ = true;
    Finish(status);
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard lock(mu_);
      writing_ = false;
      if (!ok && !done_) {
        done_ = true;
        Finish(grpc::Status::CANCELLED);
        return;
      }
    }
    Pump();
  }

  void OnCancel() override { Stop(grpc::Status::CANCELLED); }

  void OnDone() override {
    if (watcher_ != nullptr) {
      service_->observer().watch_hub().Remove(watcher_.get());
      std::lock_guard lock(service_->watch_calls_mu_);
      std::erase(service_->watch_calls_, this);
    }
    delete this;
  }

 private:
  void Pump() {
    std::lock_guard lock(mu_);
    if (writing_ || done_) return;
    std::optional<v1::WatchEvent> next = watcher_->Pop();
    if (!next) return;
    current_ = std::move(*next);
    writing_ = true;
    StartWrite(&current_);
  }

  Service* const service_;
  std::shared_ptr<Watcher> watcher_;
  std::mutex mu_;
  v1::WatchEvent current_;
  bool writing_ = false;
  bool done_ = false;
};

grpc::ServerWriteReactor<v1::WatchEvent>* Service::Watch(grpc::CallbackServerContext* ctx,
                                                        const v1::WatchRequest* req) {
  return new WatchCall(this, ctx, req);
}

void Service::StopWatchers() {
  std::lock_guard lock(watch_calls_mu_);
  for (WatchCall* call : watch_calls_) {
    call->Stop(grpc::Status(grpc::StatusCode::UNAVAILABLE, "asyncd is shutting down"));
  }
}

// ---------------------------------------------------------------------------
// Drain.

v1::DrainResponse Service::DrainAndWait(uint32_t grace_ms) {
  std::lock_guard lock(drain_mu_);
  if (drain_result_) return *drain_result_;
  draining_.store(true, std::memory_order_release);
  if (auto* health = health_.load()) health->SetServingStatus(false);  // every service name
  const uint64_t at_start = registry_.live_ops();
  spdlog::info("draining: {} operations in flight, grace {} ms", at_start, grace_ms);
  v1::ListHistoryResponse manifest;  // what we cancelled, for the record
  uint32_t cancelled = 0;
  auto cancel_where = [&](auto&& pred) {
    std::vector<std::pair<core::OpSnapshot, std::shared_ptr<core::Session>>> targets;
    registry_.ForEach([&](const core::OpSnapshot& s, const std::shared_ptr<core::Session>& owner) {
      if (!core::IsTerminal(s.state) && pred(s)) targets.emplace_back(s, owner);
      return true;
    });
    const int64_t now = core::MonoNanos();
    for (const auto& [s, session] : targets) {
      if (dispatcher_.Cancel(s.id, core::EndReason::kDrain) != core::CancelResult::kCancelled) {
        continue;
      }
      ++cancelled;
      const core::ClientInfo& client = session->client();
      ToOperationInfo(s, client.uid, client.pid, client.name, false, now, *manifest.add_ops());
    }
  };
  // Ops that may wait forever are cancelled at once; the rest get the grace.
  cancel_where([](const core::OpSnapshot& s) { return s.may_block; });
  const int64_t grace_end = core::MonoNanos() + int64_t{grace_ms} * 1'000'000;
  while (registry_.live_ops() > 0 && core::MonoNanos() < grace_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const uint64_t left = registry_.live_ops();
  cancel_where([](const core::OpSnapshot&) { return true; });
  // Non-cancellable ops run to completion; every accepted op ends.
  while (registry_.live_ops() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));

  v1::DrainResponse result;
  result.set_inflight_at_start(static_cast<uint32_t>(at_start));
  result.set_cancelled(cancelled);
  result.set_completed_during_grace(
      static_cast<uint32_t>(at_start > left + cancelled ? at_start - left - cancelled : 0));
  std::error_code ec;
  std::filesystem::create_directories(config_.state_dir, ec);
  const std::string path =
      absl::StrCat(config_.state_dir, "/drain-manifest-", core::UnixNanos() / 1'000'000'000, ".json");
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(manifest, &json, options);
  std::ofstream out(path);
  out << json;
  if (out.good()) {
    result.set_manifest_path(path);
  } else {
    spdlog::error("drain: could not write the manifest {}", path);
  }
  spdlog::info("drained: {} in flight at start, {} cancelled, manifest {}", at_start, cancelled,
               result.manifest_path());
  drain_result_ = result;
  return result;
}

grpc::ServerUnaryReactor* Service::Drain(grpc::CallbackServerContext* ctx,
                                         const v1::DrainRequest* req, v1::DrainResponse* resp) {
  const Caller caller = Identify(ctx);
  if (!caller.admin) {
    return Done(ctx, Deny(caller, "drain needs an admin (uid 0, the daemon's own uid, "
                                  "or one named in [admin])"));
  }
  if (req->grace_ms() > kMaxDrainGraceMs) {
    return Done(ctx, absl::InvalidArgumentError("grace_ms: over one hour"));
  }
  const uint32_t grace = req->grace_ms() == 0 ? live_.drain_grace_ms() : req->grace_ms();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  // Draining waits; a reactor must not, so it runs on its own thread.
  std::thread([this, reactor, resp, grace] {
    *resp = DrainAndWait(grace);
    reactor->Finish(grpc::Status::OK);
  }).detach();
  return reactor;
}

}  // namespace asyncd::daemon
