#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/observer.h"

namespace asyncd::daemon {

struct BackendInfo;

/// Everything GET /metrics shows, copied at scrape time. The figures are the
/// ones GetStats (`asyncctl stats`) reports, from the same sources.
struct MetricsSnapshot {
  struct Series {
    std::string kind;     // core::Name(OpKind)
    std::string backend;  // core::Name(BackendKind)
    KindCounters counters;
  };
  std::vector<Series> series;  // (kind, backend) pairs that finished at least one op
  uint64_t inflight = 0;
  uint64_t buffered_bytes = 0;
  std::vector<std::pair<std::string, uint64_t>> limits;  // [limits] key -> value
  uint64_t sessions = 0;
  uint64_t rejected = 0;
  uint64_t cancels[4] = {};  // cancelled, not_cancellable, already_done, not_found
  std::vector<std::pair<std::string, uint64_t>> queue_depth;  // backend -> queued ops
  bool io_uring_enabled = false;
  std::string path_resolver;
  bool draining = false;
  uint32_t thread_pool_threads = 0;
  double uptime_seconds = 0;
};

/// The figures of `stats` (Service::FillStats, what GetStats answers) plus
/// per-backend queue depths and per-(kind, backend) counters. Any thread;
/// never blocks submission or completion.
MetricsSnapshot GatherMetrics(const v1::Stats& stats, const Observer& observer,
                              const BackendInfo& backends, double uptime_seconds);

/// The Prometheus text exposition format (version 0.0.4) of `m`:
/// asyncd_ops_total{kind,backend,outcome}, asyncd_op_duration_seconds
/// histogram{kind,backend} (le = the log2 microsecond buckets' upper bounds),
/// asyncd_inflight_ops, asyncd_cancels_total{result}, asyncd_queue_depth{backend},
/// asyncd_sessions, asyncd_io_uring_enabled, asyncd_path_resolver, asyncd_rejected_total,
/// asyncd_draining, asyncd_thread_pool_threads, asyncd_uptime_seconds.
std::string RenderPrometheus(const MetricsSnapshot& m);

/// A minimal HTTP/1.1 server (Boost.Beast) for Prometheus: GET /metrics
/// answers 200 with render()'s text, any other path 404, other methods 405.
/// One thread of its own; each connection gets a 5 s deadline; one request
/// per connection.
class MetricsServer {
 public:
  using Render = std::function<std::string()>;
  /// Binds `host_port` ("127.0.0.1:9464", "[::1]:9464", "localhost:0") and
  /// starts serving. Errors: INVALID_ARGUMENT (bad address), UNAVAILABLE
  /// (bind failed, e.g. port in use).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& host_port,
                                                              Render render);
  /// Stops (see Stop).
  ~MetricsServer();
  /// Stops accepting, drops open connections and joins the thread. Blocks
  /// until a render in progress finishes. Idempotent; not from render().
  void Stop();
  /// The bound port (useful with port 0).
  uint16_t port() const;
  /// The bound address, "ADDR:PORT".
  std::string address() const;

 private:
  struct Impl;
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace asyncd::daemon
