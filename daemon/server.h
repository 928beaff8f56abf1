#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "daemon/config.h"

namespace grpc {
class Server;
}

namespace asyncd::core {
class Registry;
class Dispatcher;
}  // namespace asyncd::core

namespace asyncd::backends {
class UringBackend;
class ThreadPoolBackend;
}  // namespace asyncd::backends

namespace asyncd::daemon {

class FileAreas;
struct Handover;

class MetricsServer;
class Observer;
class RingServer;
class Service;
class TakeoverListener;
class UnixListener;
class WatchdogProbe;
struct BackendInfo;

/// The whole daemon: backends chosen by probing, the registry, the gRPC
/// service on the unix socket (and TCP when configured).
class Server {
 public:
  /// Starts serving. Adopts the listening socket a predecessor passed by
  /// takeover, else a socket-activated one when systemd passed one, else
  /// binds config.socket. Then answers takeovers on config.takeover_socket
  /// (daemon/takeover.h) and local rings on config.ring_socket
  /// (daemon/ring_server.h); a socket it cannot bind is logged, and the
  /// daemon serves without.
  /// With `handover` (a predecessor's, see HandOver) it first restores the
  /// sessions and handles it holds; a checkpoint that does not load, or a
  /// restore that fails, is logged and the daemon starts without them (but
  /// never reissues their ids). `refused` says why a predecessor's handover
  /// could not even be unpacked; Stats.last_restart shows either.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const Config& config,
                                                       Handover* handover = nullptr,
                                                       std::string refused = {});
  ~Server();

  /// Blocks until the daemon has stopped: Shutdown() has finished, or a
  /// Drain RPC's drain is over and Wait() itself shut down (same path).
  void Wait();
  /// Drains (the configured grace), then stops. Any thread; idempotent.
  void Shutdown();
  /// Where a handover goes: systemd's descriptor store, or a successor's
  /// takeover connection. Gets the packed handover's descriptor (not owned).
  using HandOverTo = std::function<absl::Status(int handover_fd)>;
  /// Stops as Shutdown does, but keeps the sessions and their handles: once
  /// no op is in flight and no call is served, packs a checkpoint with the
  /// handles' descriptors (PackHandover) and gives it to `send`. When that
  /// fails (logged), the sessions end with this daemon, as after a drain.
  /// Any thread; a no-op once stopping. A takeover (daemon/takeover.h) runs
  /// it too, with a `send` that answers the successor.
  void HandOver(HandOverTo send);
  /// Applies what can change live from a new config (log level; limits
  /// max_batch_ops, max_op_bytes, default_lease_ms; server.drain_grace_ms)
  /// and says what it applied and what needs a restart. Called by one thread
  /// (the signal thread) at a time. Once stopping (a signal or a Drain
  /// RPC's stop) it changes nothing and returns nullopt: the stop reads the
  /// config it had.
  std::optional<std::string> Reload(const Config& config);
  /// A short live summary for systemd's STATUS=, e.g. "serving: 3 sessions,
  /// 12 in flight, io_uring". Any thread.
  std::string StatusLine() const;

  const Config& config() const { return config_; }
  Service& service() { return *service_; }
  /// The TCP port serving (the chosen one for "ADDR:0"); 0 = no TCP.
  int tcp_port() const { return tcp_port_; }

 private:
  explicit Server(const Config& config);
  absl::Status Init(Handover* handover, std::string refused);
  // Shutdown, and HandOver when `send` is set; then `handed` (when given)
  // says whether the state went. False, doing nothing, once stopping.
  bool Stop(const HandOverTo* send, absl::Status* handed = nullptr);
  // Packs the sessions and handles and gives them to `send`. Logged.
  absl::Status SendState(const HandOverTo& send);
  // Answers a successor's takeover request on `conn`: hands over (Stop),
  // passing the listening socket with the package, or refuses when this
  // daemon is already stopping. On the takeover listener's thread.
  void ServeTakeover(int conn);
  // The housekeeping thread: leases, the watchdog probe, STATUS= updates.
  void Housekeeping();

  Config config_;
  int root_fd_ = -1;
  std::unique_ptr<FileAreas> areas_;  // beneath root_fd_
  std::unique_ptr<core::Registry> registry_;
  std::unique_ptr<core::Dispatcher> dispatcher_;
  std::unique_ptr<Observer> observer_;
  std::unique_ptr<backends::UringBackend> uring_;
  std::unique_ptr<backends::ThreadPoolBackend> pool_;
  std::unique_ptr<UnixListener> listener_;
  std::unique_ptr<TakeoverListener> takeover_;  // null when off or not bound
  std::unique_ptr<RingServer> rings_;           // null when off or not bound
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<BackendInfo> info_;
  std::unique_ptr<WatchdogProbe> probe_;  // set when systemd's watchdog is on
  uint64_t watchdog_usec_ = 0;
  std::unique_ptr<MetricsServer> metrics_;
  int64_t started_ns_ = 0;
  int tcp_port_ = 0;
  std::thread housekeeping_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool stopped_ = false;
  bool drained_ = false;  // a drain is over (the Drain RPC's or Shutdown's)
  std::string restore_error_;  // why the predecessor's state was not (all) restored
};

}  // namespace asyncd::daemon
