#include "daemon/metrics.h"

#include <chrono>
#include <cstdio>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/service.h"
#include "src/core/registry.h"

namespace asyncd::daemon {
namespace {

constexpr const char* kOutcomes[4] = {"completed", "cancelled", "timed_out", "failed"};
constexpr const char* kCancelResults[4] = {"cancelled", "not_cancellable", "already_done",
                                           "not_found"};
constexpr int kBuckets = 32;

// Label values are our own identifiers, but escape as the format requires.
std::string Escape(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

// Upper bound, in seconds, of log2 bucket b (bucket b holds [2^(b-1), 2^b) µs;
// bucket 0 below 1 µs). The last bucket also takes everything longer: +Inf.
double BucketUpperSeconds(int b) { return double(uint64_t{1} << b) * 1e-6; }

void Header(std::string& out, const char* name, const char* type, const char* help) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

}  // namespace

MetricsSnapshot GatherMetrics(const v1::Stats& stats, const Observer& observer,
                              const BackendInfo& backends, double uptime_seconds) {
  MetricsSnapshot m;
  m.cancels[0] = stats.cancels_cancelled();
  m.cancels[1] = stats.cancels_not_cancellable();
  m.cancels[2] = stats.cancels_already_done();
  m.cancels[3] = stats.cancels_not_found();
  m.rejected = stats.rejected();
  for (int k = 1; k <= core::kOpKindCount; ++k) {
    for (core::BackendKind b : {core::BackendKind::kIoUring, core::BackendKind::kThreadPool,
                                core::BackendKind::kInline}) {
      KindCounters c = observer.counters().Get(static_cast<core::OpKind>(k), b);
      uint64_t total = 0;
      for (uint64_t n : c.by_outcome) total += n;
      if (total == 0) continue;
      m.series.push_back({std::string(core::Name(static_cast<core::OpKind>(k))),
                          std::string(core::Name(b)), c});
    }
  }
  m.sessions = stats.sessions();
  m.inflight = stats.inflight();
  m.buffered_bytes = stats.buffered_bytes();
  const v1::Limits& l = stats.limits();
  m.limits = {{"max_inflight_total", l.max_inflight_total()},
              {"max_buffered_bytes", l.max_buffered_bytes()},
              {"max_sessions", l.max_sessions()},
              {"max_inflight_per_session", l.max_inflight_per_session()},
              {"pool_queue_depth", l.pool_queue_depth()},
              {"max_pool_queued_per_session", l.max_pool_queued_per_session()},
              {"max_pool_running_per_session", l.max_pool_running_per_session()}};
  for (core::Backend* b : backends.backends) {
    m.queue_depth.emplace_back(std::string(core::Name(b->kind())), b->Stats().queued);
  }
  m.io_uring_enabled = stats.io_uring_enabled();
  m.path_resolver = stats.path_resolver();
  m.draining = stats.draining();
  m.thread_pool_threads = stats.thread_pool_size();
  m.uptime_seconds = uptime_seconds;
  return m;
}

std::string RenderPrometheus(const MetricsSnapshot& m) {
  std::string out;
  out.reserve(4096 + m.series.size() * 4096);
  Header(out, "asyncd_ops_total", "counter",
         "Operations that reached a terminal outcome, by kind, backend and outcome.");
  for (const auto& s : m.series) {
    for (int o = 0; o < 4; ++o) {
      absl::StrAppend(&out, "asyncd_ops_total{kind=\"", Escape(s.kind), "\",backend=\"",
                      Escape(s.backend), "\",outcome=\"", kOutcomes[o], "\"} ",
                      s.counters.by_outcome[o], "\n");
    }
  }
  Header(out, "asyncd_op_duration_seconds", "histogram",
         "Operation duration from submission to completion (log2 microsecond buckets).");
  for (const auto& s : m.series) {
    const std::string labels =
        absl::StrCat("kind=\"", Escape(s.kind), "\",backend=\"", Escape(s.backend), "\"");
    uint64_t cumulative = 0;
    for (int b = 0; b < kBuckets - 1; ++b) {
      cumulative += s.counters.latency_buckets[b];
      absl::StrAppend(&out, "asyncd_op_duration_seconds_bucket{", labels, ",le=\"",
                      Number(BucketUpperSeconds(b)), "\"} ", cumulative, "\n");
    }
    cumulative += s.counters.latency_buckets[kBuckets - 1];
    absl::StrAppend(&out, "asyncd_op_duration_seconds_bucket{", labels, ",le=\"+Inf\"} ",
                    cumulative, "\n");
    absl::StrAppend(&out, "asyncd_op_duration_seconds_sum{", labels, "} ",
                    Number(double(s.counters.duration_ns_sum) * 1e-9), "\n");
    absl::StrAppend(&out, "asyncd_op_duration_seconds_count{", labels, "} ", cumulative, "\n");
  }
  Header(out, "asyncd_inflight_ops", "gauge", "Operations accepted and not yet finished.");
  absl::StrAppend(&out, "asyncd_inflight_ops ", m.inflight, "\n");
  Header(out, "asyncd_buffered_bytes", "gauge",
         "Payload bytes held for in-flight ops and undelivered results "
         "(limit: asyncd_limit{limit=\"max_buffered_bytes\"}).");
  absl::StrAppend(&out, "asyncd_buffered_bytes ", m.buffered_bytes, "\n");
  Header(out, "asyncd_limit", "gauge", "Configured limits, by config key under [limits].");
  for (const auto& [key, value] : m.limits) {
    absl::StrAppend(&out, "asyncd_limit{limit=\"", key, "\"} ", value, "\n");
  }
  Header(out, "asyncd_cancels_total", "counter", "Cancel requests answered, by result.");
  for (int r = 0; r < 4; ++r) {
    absl::StrAppend(&out, "asyncd_cancels_total{result=\"", kCancelResults[r], "\"} ",
                    m.cancels[r], "\n");
  }
  Header(out, "asyncd_queue_depth", "gauge",
         "Operations accepted by a backend and not yet started, by backend.");
  for (const auto& [backend, queued] : m.queue_depth) {
    absl::StrAppend(&out, "asyncd_queue_depth{backend=\"", Escape(backend), "\"} ", queued, "\n");
  }
  Header(out, "asyncd_sessions", "gauge", "Live client sessions.");
  absl::StrAppend(&out, "asyncd_sessions ", m.sessions, "\n");
  Header(out, "asyncd_io_uring_enabled", "gauge",
         "1 when io_uring serves operations, 0 when everything runs on the thread-pool fallback.");
  absl::StrAppend(&out, "asyncd_io_uring_enabled ", m.io_uring_enabled ? 1 : 0, "\n");
  Header(out, "asyncd_path_resolver", "gauge",
         "1 for the resolver confining client paths beneath the root (openat2 or userspace).");
  absl::StrAppend(&out, "asyncd_path_resolver{resolver=\"", Escape(m.path_resolver), "\"} 1\n");
  Header(out, "asyncd_rejected_total", "counter",
         "Submissions refused before they were accepted (bad input, limits, draining).");
  absl::StrAppend(&out, "asyncd_rejected_total ", m.rejected, "\n");
  Header(out, "asyncd_draining", "gauge", "1 while the daemon drains (admits no new work).");
  absl::StrAppend(&out, "asyncd_draining ", m.draining ? 1 : 0, "\n");
  Header(out, "asyncd_thread_pool_threads", "gauge", "Worker threads of the thread-pool backend.");
  absl::StrAppend(&out, "asyncd_thread_pool_threads ", m.thread_pool_threads, "\n");
  Header(out, "asyncd_uptime_seconds", "gauge", "Seconds since the daemon started serving.");
  absl::StrAppend(&out, "asyncd_uptime_seconds ", Number(m.uptime_seconds), "\n");
  return out;
}

// ---------------------------------------------------------------------------
// The HTTP server.

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(tcp::socket socket, const MetricsServer::Render& render)
      : stream_(std::move(socket)), render_(render) {}

  void Run() {
    stream_.expires_after(std::chrono::seconds(5));
    http::async_read(stream_, buffer_, req_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       if (!ec) self->Respond();
                     });
  }

 private:
  void Respond() {
    res_.version(req_.version());
    res_.keep_alive(false);
    res_.set(http::field::server, "asyncd");
    const std::string_view target(req_.target().data(), req_.target().size());
    const std::string_view path = target.substr(0, target.find('?'));
    if (req_.method() != http::verb::get && req_.method() != http::verb::head) {
      res_.result(http::status::method_not_allowed);
      res_.set(http::field::allow, "GET, HEAD");
      res_.set(http::field::content_type, "text/plain");
      res_.body() = "method not allowed\n";
    } else if (path != "/metrics") {
      res_.result(http::status::not_found);
      res_.set(http::field::content_type, "text/plain");
      res_.body() = "not found: asyncd serves only /metrics\n";
    } else {
      res_.result(http::status::ok);
      res_.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      res_.body() = render_();
    }
    res_.prepare_payload();
    if (req_.method() == http::verb::head) res_.body().clear();
    http::async_write(stream_, res_, [self = shared_from_this()](beast::error_code, size_t) {
      beast::error_code ignored;
      self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    });
  }

  beast::tcp_stream stream_;
  const MetricsServer::Render& render_;
  beast::flat_buffer buffer_;
  http::request<http::string_body> req_;
  http::response<http::string_body> res_;
};

}  // namespace

struct MetricsServer::Impl {
  explicit Impl(Render r) : render(std::move(r)) {}
  void Accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (!acceptor.is_open()) return;
      if (!ec) std::make_shared<Connection>(std::move(socket), render)->Run();
      Accept();
    });
  }

  Render render;
  net::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  tcp::endpoint bound;
  std::thread thread;
};

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& host_port,
                                                                     Render render) {
  const size_t colon = host_port.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(host_port.substr(colon + 1), &port) || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", host_port, "\": must be HOST:PORT"));
  }
  std::string host = host_port.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  auto impl = std::make_unique<Impl>(std::move(render));
  beast::error_code ec;
  tcp::resolver resolver(impl->ioc);
  auto results = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
  if (ec || results.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", host_port, "\": ", ec ? ec.message() : "no address"));
  }
  const tcp::endpoint endpoint = results.begin()->endpoint();
  auto fail = [&](const char* what) {
    return absl::UnavailableError(
        absl::StrCat("metrics on ", host_port, ": ", what, ": ", ec.message()));
  };
  impl->acceptor.open(endpoint.protocol(), ec);
  if (ec) return fail("socket");
  impl->acceptor.set_option(net::socket_base::reuse_address(true), ec);
  impl->acceptor.bind(endpoint, ec);
  if (ec) return fail("bind");
  impl->acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return fail("listen");
  impl->bound = impl->acceptor.local_endpoint(ec);
  impl->Accept();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] {
    try {
      raw->ioc.run();
    } catch (const std::exception& e) {
      // Handlers do not throw; a bug here must not take the daemon down.
      std::fprintf(stderr, "asyncd: metrics server stopped: %s\n", e.what());
    }
  });
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() { Stop(); }

void MetricsServer::Stop() {
  if (!impl_->thread.joinable()) return;
  impl_->ioc.stop();
  impl_->thread.join();
  // The io thread is gone: nothing else touches the acceptor now. Closing it
  // refuses new connections at once (rather than leaving them in the backlog).
  beast::error_code ignored;
  impl_->acceptor.close(ignored);
}

uint16_t MetricsServer::port() const { return impl_->bound.port(); }

std::string MetricsServer::address() const {
  const auto a = impl_->bound.address();
  return a.is_v6() ? absl::StrCat("[", a.to_string(), "]:", impl_->bound.port())
                   : absl::StrCat(a.to_string(), ":", impl_->bound.port());
}

}  // namespace asyncd::daemon
