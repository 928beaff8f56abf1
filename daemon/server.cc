#include "daemon/server.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/checkpoint.h"
#include "daemon/convert.h"
#include "daemon/decode_guard.h"
#include "daemon/handover.h"
#include "daemon/listener.h"
#include "daemon/metrics.h"
#include "daemon/observer.h"
#include "daemon/passed_fds.h"
#include "daemon/restore.h"
#include "daemon/service.h"
#include "daemon/systemd_notify.h"
#include "daemon/ring_server.h"
#include "daemon/takeover.h"
#include "src/backends/probe.h"
#include "src/backends/thread_pool_backend.h"
#include "src/backends/uring_backend.h"
#include "src/core/clock.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

/// The watchdog's proof of liveness: a NOP submitted through the same path
/// as a client's op (registry slot, dispatcher, the backend that runs NOPs,
/// completion). systemd gets WATCHDOG=1 only when the previous probe came
/// back, so a wedged dispatcher or backend thread is restarted. Its session
/// is internal: not counted in Stats/metrics, its ops not kept in history.
class WatchdogProbe final : public core::CompletionSink {
 public:
  WatchdogProbe(core::Dispatcher& dispatcher, std::shared_ptr<core::Session> session)
      : dispatcher_(dispatcher), session_(std::move(session)) {}

  /// Called by the housekeeping thread only. True when the daemon proved
  /// alive since the last call (the previous probe completed, or this is the
  /// first); then a new probe is on its way.
  bool Check() {
    if (outstanding_ && !done_.load(std::memory_order_acquire)) {
      if (!warned_) {
        spdlog::warn("watchdog probe (a NOP) has not completed: withholding WATCHDOG=1");
        warned_ = true;
      }
      return false;
    }
    warned_ = false;
    done_.store(false, std::memory_order_relaxed);
    core::OpRequest request;
    request.kind = core::OpKind::kNop;
    request.sink = this;
    absl::StatusOr<core::OpId> id = dispatcher_.Submit(*session_, request);
    outstanding_ = id.ok();
    if (!id.ok()) {
      spdlog::warn("watchdog probe refused: {}; withholding WATCHDOG=1",
                   std::string(id.status().message()));
      return false;
    }
    return true;
  }

  void OnComplete(const core::Op&) noexcept override {
    done_.store(true, std::memory_order_release);
  }

  uint64_t session_id() const { return session_->id(); }

 private:
  core::Dispatcher& dispatcher_;
  const std::shared_ptr<core::Session> session_;
  std::atomic<bool> done_{false};
  bool outstanding_ = false;
  bool warned_ = false;
};

namespace {

absl::StatusOr<std::string> ReadPem(const char* key, const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::FailedPreconditionError(absl::StrCat(key, ": cannot read ", path));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(key, ": ", path, " is not PEM"));
  }
  return text.str();
}

// TLS for the TCP listener (server.tls_*), or plaintext when tcp_insecure.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> TcpCredentials(const Config& config) {
  if (config.tcp_insecure) {
    spdlog::warn(
        "TCP listener on {} is PLAINTEXT and unauthenticated (server.tcp_insecure = true): "
        "anyone who can reach it is uid 65534 with no privileges, and traffic is readable",
        config.tcp);
    return grpc::InsecureServerCredentials();
  }
  absl::StatusOr<std::string> cert = ReadPem("server.tls_cert", config.tls_cert);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPem("server.tls_key", config.tls_key);
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions options(
      config.tls_client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                   : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  if (!config.tls_client_ca.empty()) {
    absl::StatusOr<std::string> ca = ReadPem("server.tls_client_ca", config.tls_client_ca);
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
  }
  options.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(options);
}

// Session serials start from the clock: 256 per millisecond since 2025,
// above any a predecessor that left no counters (killed, or stopped) can
// have reached, so a client's old session id is not issued again (unless
// the clock was stepped back across the restart).
uint64_t FreshSerialBase() {
  constexpr int64_t k2025UnixMs = 1'735'689'600'000;
  const int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count() -
                     k2025UnixMs;
  return ms > 0 ? (static_cast<uint64_t>(ms) << 8) + 1 : 1;
}

}  // namespace

Server::Server(const Config& config) : config_(config) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const Config& config, Handover* handover,
                                                     std::string refused) {
  std::unique_ptr<Server> server(new Server(config));
  if (absl::Status s = server->Init(handover, std::move(refused)); !s.ok()) return s;
  return server;
}

absl::Status Server::Init(Handover* handover, std::string refused) {
  restore_error_ = std::move(refused);
  if (absl::Status s = ValidateConfig(config_); !s.ok()) return s;
  std::error_code ec;
  std::filesystem::create_directories(config_.root, ec);
  root_fd_ = open(config_.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd_ < 0) return absl::ErrnoToStatus(errno, absl::StrCat("root ", config_.root));
  absl::StatusOr<std::unique_ptr<FileAreas>> areas = FileAreas::Open(root_fd_, config_.shares);
  if (!areas.ok()) return areas.status();
  areas_ = *std::move(areas);

  registry_ = std::make_unique<core::Registry>(core::Registry::Options{
      .max_sessions = config_.max_sessions,
      .max_ops_per_session = config_.max_inflight_per_session,
      .max_handles_per_session = config_.max_handles_per_session,
      .first_serial = FreshSerialBase()});
  // The predecessor's id counters first: no id it issued is issued again,
  // whether or not its sessions come back.
  std::optional<state::Checkpoint> checkpoint;
  if (handover != nullptr) {
    absl::StatusOr<state::Checkpoint> loaded = LoadCheckpoint(
        handover->sealed_checkpoint,
        CheckpointLimits{.max_sessions = config_.max_sessions,
                         .max_handles_per_session = config_.max_handles_per_session,
                         .max_ops_per_session = config_.max_inflight_per_session});
    if (!loaded.ok()) {
      restore_error_ = std::string(loaded.status().message());
      spdlog::error("the predecessor's state is refused, starting without it: {}", restore_error_);
    } else if (absl::Status s = registry_->RestoreCounters(CountersOf(*loaded)); !s.ok()) {
      restore_error_ = std::string(s.message());
      spdlog::error("the predecessor's id counters are refused, starting without its state: {}",
                    restore_error_);
    } else {
      checkpoint = *std::move(loaded);
    }
  }
  dispatcher_ = std::make_unique<core::Dispatcher>(*registry_, root_fd_);
  observer_ = std::make_unique<Observer>(config_.history_capacity, config_.slow_history_capacity);
  dispatcher_->SetObserver(observer_.get());

  BackendInfo info;
  const backends::ResolverProbe resolver = backends::ProbeResolver(root_fd_);
  info.path_resolver = resolver.resolver;
  if (config_.path_resolver == "userspace") {
    info.path_resolver = backends::PathResolver::kUserspace;
  } else if (config_.path_resolver == "openat2" && !resolver.reason.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backends.path_resolver = \"openat2\", but ", resolver.reason,
        "; use \"auto\" or \"userspace\""));
  }
  if (info.path_resolver == backends::PathResolver::kOpenat2) {
    spdlog::info("paths resolve beneath {} with openat2 (RESOLVE_IN_ROOT)", config_.root);
  } else {
    spdlog::info("paths resolve beneath {} in user space ({})", config_.root,
                 resolver.reason.empty() ? "backends.path_resolver = \"userspace\""
                                         : resolver.reason);
  }
  pool_ = std::make_unique<backends::ThreadPoolBackend>(
      *dispatcher_,
      backends::ThreadPoolOptions{.threads = config_.thread_pool_threads,
                                  .queue_capacity = config_.thread_pool_queue,
                                  .session_queue = config_.max_pool_queued_per_session,
                                  .session_running = config_.max_pool_running_per_session,
                                  .resolver = info.path_resolver});
  info.thread_pool_size = pool_->Stats().threads;
  info.pool_running_per_session = pool_->session_running();
  std::vector<core::Backend*> order;
  if (!config_.io_uring) {
    info.io_uring_unavailable_reason = "disabled by configuration (backends.io_uring = false)";
    spdlog::warn("io_uring {}: serving every operation from the thread pool",
                 info.io_uring_unavailable_reason);
  } else if (auto uring = backends::UringBackend::Create(
                 *dispatcher_, backends::UringOptions{.entries = config_.uring_entries,
                                                        .max_ops = config_.max_inflight_total});
             uring.ok()) {
    uring_ = std::move(*uring);
    order.push_back(uring_.get());
    info.io_uring_enabled = true;
    for (int k = 1; k <= core::kOpKindCount; ++k) {
      if (uring_->Supports(static_cast<core::OpKind>(k))) {
        info.uring_kinds.push_back(static_cast<core::OpKind>(k));
      }
    }
  } else {
    info.io_uring_unavailable_reason = std::string(uring.status().message());
  }
  order.push_back(pool_.get());
  info.backends = order;
  dispatcher_->SetBackends(order);

  watchdog_usec_ = notify::WatchdogUsec();
  if (watchdog_usec_ > 0) info.internal_sessions = 1;  // opened once restored sessions took their ids
  info_ = std::make_unique<BackendInfo>(info);

  // A takeover: the predecessor's own socket, whose path it had bound.
  if (const std::optional<int> inherited = TakePassedFd(kTakenOverSocketFdName)) {
    auto adopted = UnixListener::Adopt(*inherited, config_.socket, config_.socket_mode,
                                       config_.socket_gid, UnixListener::Origin::kPredecessor);
    if (!adopted.ok()) {
      close(*inherited);
      return adopted.status();
    }
    listener_ = std::move(*adopted);
    spdlog::info("listening on the predecessor's socket ({})", listener_->path());
  } else if (const std::optional<int> activated = TakeActivatedSocket()) {
    // Socket activation: systemd hands us the listening socket, next to what
    // its descriptor store holds for us (or a predecessor that had it so
    // passed it on by takeover).
    auto adopted =
        UnixListener::Adopt(*activated, config_.socket, config_.socket_mode, config_.socket_gid);
    if (!adopted.ok()) {
      close(*activated);
      return adopted.status();
    }
    listener_ = std::move(*adopted);
    spdlog::info("listening on socket-activated descriptor ({})", listener_->path());
  } else {
    auto bound = UnixListener::Bind(config_.socket, config_.socket_mode, config_.socket_gid);
    if (!bound.ok()) return bound.status();
    listener_ = std::move(*bound);
  }
  // Anything else passed is not ours to use; holding it would keep it open.
  for (const PassedFd& passed : UntakenPassedFds()) {
    if (!TakePassedFdAt(passed.fd)) continue;
    spdlog::warn("systemd passed descriptor {} ({}), which asyncd does not use: closing it",
                 passed.fd, passed.name);
    close(passed.fd);
  }

  // A drain ends the daemon: Wait() stops it once the drain is over.
  service_ = std::make_unique<Service>(config_, *registry_, *dispatcher_, *observer_,
                                       listener_.get(), info, areas_.get(), [this] {
                                         {
                                           std::lock_guard lock(mu_);
                                           drained_ = true;
                                         }
                                         cv_.notify_all();
                                       });
  v1::Restart restart;
  if (checkpoint) {
    absl::StatusOr<RestoreSummary> restored = RestoreCheckpoint(
        *checkpoint, std::move(handover->fds), *registry_, service_->sessions());
    if (restored.ok()) {
      spdlog::info("restored the predecessor's {} sessions and {} handles ({} bytes of "
                   "checkpoint); {} operations run again",
                   restored->sessions, restored->handles, handover->sealed_checkpoint.size(),
                   restored->ops);
      restart.set_sessions(restored->sessions);
      restart.set_handles(restored->handles);
    } else {
      restore_error_ = std::string(restored.status().message());
      spdlog::error("the predecessor's sessions are lost: {}", restore_error_);
    }
    restart.set_checkpoint_unix_nanos(checkpoint->taken_unix_nanos());
    // The operators' history goes on where the predecessor's ended.
    for (auto it = checkpoint->history().rbegin(); it != checkpoint->history().rend(); ++it) {
      FinishedOp f;
      if (!FromOperationInfo(*it, f.snap)) continue;
      f.uid = it->uid();
      f.pid = it->pid();
      std::snprintf(f.client, sizeof f.client, "%s", it->client().c_str());
      observer_->history().Record(f);
    }
  }
  if (handover != nullptr) restart.set_checkpoint_bytes(handover->sealed_checkpoint.size());
  restart.set_error(restore_error_);
  // None came, or refused whole: which sessions the predecessor held is
  // unknown, so every older id says it.
  if (!checkpoint) service_->sessions().NoteLostBeforeStart(restore_error_);
  if (watchdog_usec_ > 0) {
    auto session = registry_->OpenSession({"asyncd-watchdog", static_cast<uint32_t>(getuid()),
                                           static_cast<uint32_t>(getgid()),
                                           static_cast<uint32_t>(getpid())});
    if (!session.ok()) return session.status();
    probe_ = std::make_unique<WatchdogProbe>(*dispatcher_, *session);
    observer_->IgnoreSession(probe_->session_id());
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.RegisterService(service_.get());
  builder.experimental().SetInterceptorCreators(DecodeGuardCreators());
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config_.max_message_bytes));
  if (!config_.tcp.empty()) {
    auto creds = TcpCredentials(config_);
    if (!creds.ok()) return creds.status();
    builder.AddListeningPort(config_.tcp, *creds, &tcp_port_);
  }
  if (handover != nullptr || !restore_error_.empty()) {
    const int64_t now = ToUnixNanos(core::MonoNanos());
    if (restart.checkpoint_unix_nanos() > 0 && now > restart.checkpoint_unix_nanos()) {
      restart.set_handover_us((now - restart.checkpoint_unix_nanos()) / 1000);
    }
    service_->SetLastRestart(restart);
  }
  // Rings first: a client that reaches the gRPC socket may ask for one at once.
  if (config_.ring_socket != kNoRingSocket) {
    auto rings = RingServer::Bind(*service_, {.path = config_.ring_socket,
                                              .mode = config_.socket_mode,
                                              .gid = config_.socket_gid,
                                              .spin_us = config_.ring_spin_us});
    if (rings.ok()) {
      rings_ = std::move(*rings);
      rings_->Start();
    } else {
      // Clients without a ring keep the gRPC stream.
      spdlog::warn("no local rings: {}", std::string(rings.status().message()));
    }
  }
  grpc_ = builder.BuildAndStart();
  if (grpc_ == nullptr) return absl::UnavailableError("gRPC server failed to start");
  if (!config_.tcp.empty()) {
    if (tcp_port_ == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on TCP ", config_.tcp));
    }
    spdlog::info("TCP listener on {} (port {}): {}", config_.tcp, tcp_port_,
                 config_.tcp_insecure           ? "plaintext"
                 : config_.tls_client_ca.empty() ? "TLS; callers are uid 65534"
                                                 : "mutual TLS; client certificates required");
  }
  // Health answers for the daemon ("") and for its service by name.
  grpc::HealthCheckServiceInterface* health = grpc_->GetHealthCheckService();
  health->SetServingStatus(std::string(v1::Asyncd::service_full_name()), true);
  service_->SetHealth(health);
  listener_->Start(grpc_.get());
  started_ns_ = core::MonoNanos();
  if (config_.takeover_socket != kNoTakeoverSocket) {
    auto takeover = TakeoverListener::Bind(config_.takeover_socket);
    if (takeover.ok()) {
      takeover_ = std::move(*takeover);
      takeover_->Start([this](int conn) { ServeTakeover(conn); });
    } else {
      // Not worth refusing to serve for: a restart still works, by systemd's
      // descriptor store or a plain stop and start.
      spdlog::warn("no takeover socket, `asyncd --takeover` cannot replace this daemon: {}",
                   std::string(takeover.status().message()));
    }
  }

  if (!config_.metrics.empty()) {
    auto metrics = MetricsServer::Start(config_.metrics, [this] {
      v1::Stats stats;
      service_->FillStats(&stats);
      return RenderPrometheus(GatherMetrics(stats, *observer_, *info_,
                                            double(core::MonoNanos() - started_ns_) * 1e-9));
    });
    if (!metrics.ok()) return metrics.status();
    metrics_ = std::move(*metrics);
    spdlog::info("Prometheus metrics on http://{}/metrics", metrics_->address());
  }

  housekeeping_ = std::thread([this] { Housekeeping(); });
  spdlog::info("asyncd serving on {} (root {}); backends: {}{}", listener_->path(), config_.root,
               info.io_uring_enabled
                   ? absl::StrCat("io_uring for ", info.uring_kinds.size(), " of ",
                                  core::kOpKindCount, " op kinds, ")
                   : "",
               absl::StrCat("thread pool of ", info.thread_pool_size));
  if (!info.io_uring_enabled && config_.io_uring) {
    spdlog::warn("io_uring unavailable ({}): serving every operation from the thread pool",
                 info.io_uring_unavailable_reason);
  }
  if (watchdog_usec_ > 0) {
    spdlog::info("systemd watchdog: {} ms; a NOP probe must complete every {} ms",
                 watchdog_usec_ / 1000, watchdog_usec_ / 2000);
  }
  notify::Ready(StatusLine());
  return absl::OkStatus();
}

void Server::Housekeeping() {
  using Clock = std::chrono::steady_clock;
  const auto ping_every = std::chrono::microseconds(watchdog_usec_ / 2);
  const auto status_every = std::chrono::seconds(2);
  auto next_ping = Clock::now();
  auto next_status = Clock::now() + status_every;
  std::string last_status;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (stopping_) break;
    lock.unlock();
    service_->ExpireLeases();
    const auto now = Clock::now();
    if (probe_ != nullptr && now >= next_ping) {
      if (probe_->Check()) notify::Watchdog();
      next_ping = now + ping_every;
    }
    if (now >= next_status) {
      std::string status = StatusLine();
      if (status != last_status) notify::Status(status);
      last_status = std::move(status);
      next_status = now + status_every;
    }
    lock.lock();
  }
}

std::string Server::StatusLine() const {
  const uint32_t all = registry_->session_count();
  const uint32_t sessions = all > info_->internal_sessions ? all - info_->internal_sessions : 0;
  const uint64_t inflight = registry_->inflight_ops();
  const bool draining = service_ != nullptr && service_->draining();
  return absl::StrCat(draining ? "draining: " : "serving: ", sessions,
                      sessions == 1 ? " session, " : " sessions, ", inflight, " in flight, ",
                      info_->io_uring_enabled ? "io_uring" : "thread pool only (no io_uring)");
}

Server::~Server() {
  Shutdown();
  takeover_.reset();  // waits for a takeover's last answer, which reads listener_
  if (root_fd_ >= 0) close(root_fd_);
}

void Server::Wait() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return stopped_ || drained_; });
  if (!stopping_) {
    lock.unlock();
    spdlog::info("drained (Drain RPC): stopping");
    Shutdown();
    lock.lock();
  }
  cv_.wait(lock, [this] { return stopped_; });
}

void Server::Shutdown() { Stop(nullptr); }

void Server::HandOver(HandOverTo send) { Stop(&send); }

bool Server::Stop(const HandOverTo* send, absl::Status* handed) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      return false;
    }
    stopping_ = true;
  }
  cv_.notify_all();
  // First, so a successor can bind the takeover socket by the time it
  // serves; a takeover calls this from the takeover thread itself.
  if (takeover_ != nullptr) takeover_->Stop();
  notify::Stopping(absl::StrCat(send != nullptr ? "handing over; " : "", "draining ",
                                registry_ != nullptr ? registry_->live_ops() : 0,
                                " in-flight ops"));
  if (housekeeping_.joinable()) housekeeping_.join();
  if (service_ != nullptr) {
    service_->DrainAndWait(config_.drain_grace_ms, /*restart=*/send != nullptr);
    service_->StopWatchers();
  }
  // The drain closed the rings; this ends any left and waits for their ops.
  if (rings_ != nullptr) rings_->Stop(/*restart=*/send != nullptr);
  if (metrics_ != nullptr) metrics_->Stop();
  if (listener_ != nullptr) listener_->Stop();
  spdlog::debug("shutdown: stopping gRPC");
  // Every accepted op has ended by now; what is left are idle streams and
  // connections, cancelled after a short grace for their last writes. An
  // open connection holds the shutdown for the whole grace: a handover, whose
  // clients wait for the next daemon, keeps it short.
  const auto grace = send != nullptr ? std::chrono::milliseconds(100) : std::chrono::seconds(1);
  if (grpc_ != nullptr) grpc_->Shutdown(std::chrono::system_clock::now() + grace);
  // Nothing runs or is served any more: the sessions and handles hold still.
  if (send != nullptr && service_ != nullptr) {
    if (!service_->WaitResumableStreams(std::chrono::seconds(2))) {
      spdlog::warn("handing over: a resumable stream did not end in 2 s; its state may be left out");
    }
    absl::Status sent = SendState(*send);
    if (handed != nullptr) *handed = std::move(sent);
  }
  spdlog::debug("shutdown: stopping backends");
  if (uring_ != nullptr) uring_->Shutdown();
  if (pool_ != nullptr) pool_->Shutdown();
  spdlog::info("asyncd stopped");
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
  return true;
}

absl::Status Server::SendState(const HandOverTo& send) {
  const int64_t started = core::MonoNanos();
  state::Checkpoint checkpoint = TakeCheckpoint(service_->sessions(), *registry_,
                                                observer_->history(), config_.history_capacity);
  // A session bound to a stream ended with it, unless the stream is
  // resumable; one whose end is still on its way would close its
  // descriptors under the package.
  auto* sessions = checkpoint.mutable_sessions();
  sessions->erase(std::remove_if(sessions->begin(), sessions->end(),
                                 [](const state::Session& s) {
                                   return s.bound_to_stream() && !s.resumable();
                                 }),
                  sessions->end());
  // An op the next daemon runs again has not finished: the restart's
  // cancel is no outcome of it.
  std::unordered_set<uint64_t> again;
  for (const state::Session& s : checkpoint.sessions()) {
    for (const state::Resubmit& r : s.resubmit()) again.insert(r.op_id());
  }
  auto* history = checkpoint.mutable_history();
  history->erase(std::remove_if(history->begin(), history->end(),
                                [&](const v1::OperationInfo& op) { return again.contains(op.op_id()); }),
                 history->end());
  std::vector<int> fds;
  for (const state::Session& s : checkpoint.sessions()) {
    for (const state::Handle& h : s.handles()) fds.push_back(h.fd());
  }
  const std::string sealed = Seal(checkpoint);
  absl::StatusOr<int> packed = PackHandover(sealed, fds);
  absl::Status sent = packed.ok() ? send(*packed) : packed.status();
  if (packed.ok()) close(*packed);
  if (!sent.ok()) {
    spdlog::error("cannot hand over ({}): {} sessions end with this daemon",
                  std::string(sent.message()), checkpoint.sessions_size());
    return sent;
  }
  spdlog::info("handed over {} sessions and {} handles ({} bytes of checkpoint) in {} us; "
               "{} operations to run again",
               checkpoint.sessions_size(), fds.size(), sealed.size(),
               (core::MonoNanos() - started) / 1000, again.size());
  return absl::OkStatus();
}

void Server::ServeTakeover(int conn) {
  {
    std::lock_guard lock(mu_);
    // A Drain RPC ends the daemon and its sessions: a takeover must not
    // keep them.
    if (stopping_ || drained_ || service_->draining()) {
      const char* why = stopping_ ? "it is already stopping (a signal, or another handover)"
                                  : "it is draining (a Drain RPC), then stops";
      spdlog::warn("takeover refused: {}", why);
      (void)SendTakeoverAnswer(
          conn, TakeoverKind::kRefused, 0,
          absl::StrCat(why, "; start asyncd without --takeover once it has exited"), {});
      return;
    }
  }
  spdlog::info("takeover: handing over to the successor, then stopping");
  const uint32_t flags = listener_->owns_path() ? kTakeoverSocketPathBound : 0;
  bool answered = false;
  const HandOverTo send = [&](int package_fd) {
    const int fds[] = {listener_->fd(), package_fd};
    absl::Status sent = SendTakeoverAnswer(conn, TakeoverKind::kHandedOver, flags, {}, fds);
    if (sent.ok()) {
      answered = true;
      listener_->LeavePathInPlace();
    }
    return sent;
  };
  absl::Status handed;
  if (!Stop(&send, &handed)) {
    // A signal or a Drain RPC's stop came in between.
    (void)SendTakeoverAnswer(conn, TakeoverKind::kRefused, 0,
                             "it began stopping meanwhile (a signal or a drain); start asyncd "
                             "without --takeover once it has exited",
                             {});
    return;
  }
  if (answered) return;
  // Drained, but the state did not go (logged): the successor serves on the
  // socket all the same, so clients still meet no refused connection.
  const int fds[] = {listener_->fd()};
  const std::string why(handed.message());
  if (SendTakeoverAnswer(conn, TakeoverKind::kStateLost, flags, why, fds).ok()) {
    listener_->LeavePathInPlace();
    spdlog::warn("takeover: the successor serves on {}, without the sessions", listener_->path());
  }
}

std::optional<std::string> Server::Reload(const Config& config) {
  // Held throughout: Shutdown sets stopping_ under it, then reads config_.
  std::lock_guard lock(mu_);
  if (stopping_) return std::nullopt;
  std::vector<std::string> applied;
  std::vector<std::string> not_applied;
  auto live = [&](const char* key, auto Config::*field) {
    if (config.*field == config_.*field) return;
    applied.push_back(absl::StrCat(key, " ", config_.*field, " -> ", config.*field));
    config_.*field = config.*field;
  };
  if (config.log_level != config_.log_level) {
    applied.push_back(absl::StrCat("server.log_level ", config_.log_level, " -> ",
                                   config.log_level));
    spdlog::set_level(spdlog::level::from_str(config.log_level));
    config_.log_level = config.log_level;
  }
  live("limits.max_batch_ops", &Config::max_batch_ops);
  live("limits.max_op_bytes", &Config::max_op_bytes);
  live("server.drain_grace_ms", &Config::drain_grace_ms);
  if (config.max_inflight_total != config_.max_inflight_total) {
    // io_uring was sized for it at start: raising it needs a restart.
    if (uring_ == nullptr || config.max_inflight_total <= uring_->Stats().capacity) {
      live("limits.max_inflight_total", &Config::max_inflight_total);
    } else {
      not_applied.push_back("limits.max_inflight_total (over what io_uring was sized for at start)");
    }
  }
  live("limits.max_buffered_bytes", &Config::max_buffered_bytes);
  if (config.default_lease_ms != config_.default_lease_ms) {
    if (config.default_lease_ms <= config_.max_lease_ms) {
      live("limits.default_lease_ms", &Config::default_lease_ms);
    } else {
      not_applied.push_back("limits.default_lease_ms (over the running limits.max_lease_ms)");
    }
  }
  if (service_ != nullptr) service_->ApplyLiveLimits(config_);

  auto differs = [&](const char* key, bool changed) {
    if (changed) not_applied.push_back(key);
  };
  differs("server.socket", config.socket != config_.socket);
  differs("server.takeover_socket", config.takeover_socket != config_.takeover_socket);
  differs("server.ring_socket", config.ring_socket != config_.ring_socket);
  differs("ring.spin_us", config.ring_spin_us != config_.ring_spin_us);
  differs("server.root", config.root != config_.root);
  differs("share", config.shares != config_.shares);
  differs("server.tcp", config.tcp != config_.tcp);
  differs("server.tcp_insecure", config.tcp_insecure != config_.tcp_insecure);
  differs("server.tls_cert", config.tls_cert != config_.tls_cert);
  differs("server.tls_key", config.tls_key != config_.tls_key);
  differs("server.tls_client_ca", config.tls_client_ca != config_.tls_client_ca);
  differs("server.socket_group", config.socket_gid != config_.socket_gid);
  differs("server.metrics", config.metrics != config_.metrics);
  differs("server.state_dir", config.state_dir != config_.state_dir);
  differs("server.drain_manifests_keep",
          config.drain_manifests_keep != config_.drain_manifests_keep);
  differs("server.socket_mode", config.socket_mode != config_.socket_mode);
  differs("backends.io_uring", config.io_uring != config_.io_uring);
  differs("backends.uring_entries", config.uring_entries != config_.uring_entries);
  differs("backends.thread_pool_threads",
          config.thread_pool_threads != config_.thread_pool_threads);
  differs("backends.thread_pool_queue", config.thread_pool_queue != config_.thread_pool_queue);
  differs("backends.path_resolver", config.path_resolver != config_.path_resolver);
  differs("limits.max_sessions", config.max_sessions != config_.max_sessions);
  differs("limits.max_inflight_per_session",
          config.max_inflight_per_session != config_.max_inflight_per_session);
  differs("limits.max_pool_queued_per_session",
          config.max_pool_queued_per_session != config_.max_pool_queued_per_session);
  differs("limits.max_pool_running_per_session",
          config.max_pool_running_per_session != config_.max_pool_running_per_session);
  differs("limits.max_handles_per_session",
          config.max_handles_per_session != config_.max_handles_per_session);
  differs("limits.max_message_bytes", config.max_message_bytes != config_.max_message_bytes);
  differs("limits.max_lease_ms", config.max_lease_ms != config_.max_lease_ms);
  differs("limits.history_capacity", config.history_capacity != config_.history_capacity);
  differs("limits.slow_history_capacity",
          config.slow_history_capacity != config_.slow_history_capacity);
  differs("limits.max_watchers", config.max_watchers != config_.max_watchers);
  differs("limits.watch_buffer_events",
          config.watch_buffer_events != config_.watch_buffer_events);
  differs("admin.uids", config.admin_uids != config_.admin_uids);
  differs("admin.gids", config.admin_gids != config_.admin_gids);
  differs("admin.groups", config.admin_group_gids != config_.admin_group_gids);
  differs("admin.tls_cns", config.admin_tls_cns != config_.admin_tls_cns);
  std::string out = applied.empty() ? std::string("no live setting changed")
                                    : absl::StrCat("applied: ", absl::StrJoin(applied, ", "));
  if (!not_applied.empty()) {
    absl::StrAppend(&out, "; not applied, needs a restart: ", absl::StrJoin(not_applied, ", "));
  }
  return out;
}

}  // namespace asyncd::daemon
