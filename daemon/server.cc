#include "daemon/server.h"

#include <fcntl.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <filesystem>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/listener.h"
#include "daemon/observer.h"
#include "daemon/service.h"
#include "src/backends/probe.h"
#include "src/backends/thread_pool_backend.h"
#include "src/backends/uring_backend.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

Server::Server(const Config& config) : config_(config) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const Config& config) {
  std::unique_ptr<Server> server(new Server(config));
  if (absl::Status s = server->Init(); !s.ok()) return s;
  return server;
}

absl::Status Server::Init() {
  std::error_code ec;
  std::filesystem::create_directories(config_.root, ec);
  root_fd_ = open(config_.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd_ < 0) return absl::ErrnoToStatus(errno, absl::StrCat("root ", config_.root));

  registry_ = std::make_unique<core::Registry>(core::Registry::Options{
      .max_sessions = config_.max_sessions,
      .max_ops_per_session = config_.max_inflight_per_session,
      .max_handles_per_session = config_.max_handles_per_session});
  dispatcher_ = std::make_unique<core::Dispatcher>(*registry_, root_fd_);
  observer_ = std::make_unique<Observer>(config_.history_capacity, config_.slow_history_capacity);
  dispatcher_->SetObserver(observer_.get());

  BackendInfo info;
  pool_ = std::make_unique<backends::ThreadPoolBackend>(
      *dispatcher_, backends::ThreadPoolOptions{.threads = config_.thread_pool_threads,
                                                .queue_capacity = config_.thread_pool_queue});
  info.thread_pool_size = pool_->Stats().threads;
  std::vector<core::Backend*> order;
  if (!config_.io_uring) {
    info.io_uring_unavailable_reason = "disabled by configuration (backends.io_uring = false)";
    spdlog::warn("io_uring {}: serving every operation from the thread pool",
                 info.io_uring_unavailable_reason);
  } else if (auto uring = backends::UringBackend::Create(
                 *dispatcher_, backends::UringOptions{.entries = config_.uring_entries});
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

  // Socket activation: systemd hands us the listening socket.
  const int activated = sd_listen_fds(1);
  if (activated >= 1) {
    listener_ = UnixListener::Adopt(SD_LISTEN_FDS_START, config_.socket);
    spdlog::info("listening on socket-activated descriptor ({})", config_.socket);
  } else {
    auto bound = UnixListener::Bind(config_.socket, config_.socket_mode);
    if (!bound.ok()) return bound.status();
    listener_ = std::move(*bound);
  }

  service_ = std::make_unique<Service>(config_, *registry_, *dispatcher_, *observer_,
                                       listener_.get(), info);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config_.max_message_bytes));
  if (!config_.tcp.empty()) {
    spdlog::warn("TCP listener on {} is plaintext and unauthenticated: callers get no privileges",
                 config_.tcp);
    builder.AddListeningPort(config_.tcp, grpc::InsecureServerCredentials());
  }
  grpc_ = builder.BuildAndStart();
  if (grpc_ == nullptr) return absl::UnavailableError("gRPC server failed to start");
  listener_->Start(grpc_.get());

  housekeeping_ = std::thread([this] {
    std::unique_lock lock(mu_);
    while (!stopping_) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
      lock.unlock();
      service_->ExpireLeases();
      lock.lock();
    }
  });
  spdlog::info("asyncd serving on {} (root {}); backends: {}{}", config_.socket, config_.root,
               info.io_uring_enabled
                   ? absl::StrCat("io_uring for ", info.uring_kinds.size(), " of ",
                                  core::kOpKindCount, " op kinds, ")
                   : "",
               absl::StrCat("thread pool of ", info.thread_pool_size));
  if (!info.io_uring_enabled && config_.io_uring) {
    spdlog::warn("io_uring unavailable ({}): serving every operation from the thread pool",
                 info.io_uring_unavailable_reason);
  }
  sd_notifyf(0, "READY=1\nSTATUS=serving on %s", config_.socket.c_str());
  return absl::OkStatus();
}

Server::~Server() {
  Shutdown();
  if (root_fd_ >= 0) close(root_fd_);
}

void Server::Wait() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return stopped_; });
}

void Server::Shutdown() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      return;
    }
    stopping_ = true;
  }
  cv_.notify_all();
  sd_notify(0, "STOPPING=1\nSTATUS=draining");
  if (housekeeping_.joinable()) housekeeping_.join();
  if (service_ != nullptr) {
    service_->DrainAndWait(config_.drain_grace_ms);
    service_->StopWatchers();
  }
  if (listener_ != nullptr) listener_->Stop();
  if (grpc_ != nullptr) grpc_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (uring_ != nullptr) uring_->Shutdown();
  if (pool_ != nullptr) pool_->Shutdown();
  spdlog::info("asyncd stopped");
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
}

std::string Server::Reload(const Config& config) {
  std::vector<std::string> not_applied;
  spdlog::set_level(spdlog::level::from_str(config.log_level));
  config_.log_level = config.log_level;
  auto differs = [&](const char* key, bool changed) {
    if (changed) not_applied.push_back(key);
  };
  differs("server.socket", config.socket != config_.socket);
  differs("server.root", config.root != config_.root);
  differs("server.tcp", config.tcp != config_.tcp);
  differs("backends.*", config.io_uring != config_.io_uring ||
                            config.thread_pool_threads != config_.thread_pool_threads ||
                            config.uring_entries != config_.uring_entries);
  return not_applied.empty() ? std::string()
                             : absl::StrCat("needs a restart: ", absl::StrJoin(not_applied, ", "));
}

}  // namespace asyncd::daemon
