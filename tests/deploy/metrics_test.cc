// The Prometheus exposition: every line is valid text format (0.0.4), each
// family has one HELP and TYPE before its samples, histogram buckets are
// cumulative with increasing le and end in +Inf == _count; and the HTTP
// endpoint serves it at GET /metrics only.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "daemon/metrics.h"

namespace asyncd::daemon {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

MetricsSnapshot Sample() {
  MetricsSnapshot m;
  MetricsSnapshot::Series nop{"nop", "io_uring", {}};
  nop.counters.by_outcome[0] = 90;
  nop.counters.by_outcome[1] = 5;
  nop.counters.by_outcome[2] = 3;
  nop.counters.by_outcome[3] = 2;
  nop.counters.latency_buckets[0] = 10;
  nop.counters.latency_buckets[3] = 80;
  nop.counters.latency_buckets[31] = 10;
  nop.counters.duration_ns_sum = 123456789;
  MetricsSnapshot::Series read{"read", "thread_pool", {}};
  read.counters.by_outcome[0] = 1;
  read.counters.latency_buckets[12] = 1;
  m.series = {nop, read};
  m.inflight = 7;
  m.buffered_bytes = 65536;
  m.limits = {{"max_inflight_total", 1000}, {"max_buffered_bytes", 1 << 20}};
  m.sessions = 3;
  m.rejected = 4;
  m.cancels[0] = 1;
  m.cancels[3] = 2;
  m.queue_depth = {{"io_uring", 0}, {"thread_pool", 5}};
  m.io_uring_enabled = true;
  m.path_resolver = "userspace";
  m.thread_pool_threads = 4;
  m.uptime_seconds = 12.5;
  return m;
}

struct Sample_ {
  std::string name;
  std::map<std::string, std::string> labels;
  double value;
};

// Parses the text format strictly enough to catch our mistakes.
std::vector<Sample_> Parse(const std::string& text, std::map<std::string, std::string>* types) {
  static const std::regex kHelp(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+)");
  static const std::regex kType(
      R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
  static const std::regex kSample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*\})? (\S+))");
  static const std::regex kLabel(R"(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)\")");
  std::vector<Sample_> out;
  std::set<std::string> helped;
  std::istringstream in(text);
  std::string line;
  EXPECT_EQ(text.back(), '\n');
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, kHelp)) {
      EXPECT_TRUE(helped.insert(m[1]).second) << "second HELP for " << m[1];
    } else if (std::regex_match(line, m, kType)) {
      EXPECT_TRUE(helped.count(m[1])) << "TYPE before HELP: " << line;
      EXPECT_TRUE(types->emplace(m[1], m[2]).second) << "second TYPE for " << m[1];
    } else if (std::regex_match(line, m, kSample)) {
      Sample_ s;
      s.name = m[1];
      std::string family = s.name;
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        if (!types->count(family) && family.ends_with(suffix)) {
          family = family.substr(0, family.size() - std::strlen(suffix));
        }
      }
      EXPECT_TRUE(types->count(family)) << "sample before its TYPE: " << line;
      const std::string labels = m[2];
      for (auto it = std::sregex_iterator(labels.begin(), labels.end(), kLabel);
           it != std::sregex_iterator(); ++it) {
        s.labels[(*it)[1]] = (*it)[2];
      }
      const std::string v = m[5];
      s.value = v == "+Inf" ? INFINITY : std::stod(v);
      out.push_back(s);
    } else {
      ADD_FAILURE() << "not a valid exposition line: [" << line << "]";
    }
  }
  return out;
}

TEST(MetricsTest, ExpositionIsValidTextFormat) {
  std::map<std::string, std::string> types;
  const std::vector<Sample_> samples = Parse(RenderPrometheus(Sample()), &types);
  EXPECT_EQ(types["asyncd_ops_total"], "counter");
  EXPECT_EQ(types["asyncd_op_duration_seconds"], "histogram");
  EXPECT_EQ(types["asyncd_inflight_ops"], "gauge");
  EXPECT_EQ(types["asyncd_cancels_total"], "counter");
  EXPECT_EQ(types["asyncd_queue_depth"], "gauge");
  EXPECT_EQ(types["asyncd_sessions"], "gauge");
  EXPECT_EQ(types["asyncd_io_uring_enabled"], "gauge");
  EXPECT_EQ(types["asyncd_rejected_total"], "counter");
  EXPECT_EQ(types["asyncd_draining"], "gauge");
  auto value = [&](const std::string& name, std::map<std::string, std::string> labels) {
    for (const Sample_& s : samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
    ADD_FAILURE() << "no sample " << name;
    return -1.0;
  };
  EXPECT_EQ(value("asyncd_ops_total", {{"kind", "nop"}, {"backend", "io_uring"},
                                       {"outcome", "timed_out"}}),
            3);
  EXPECT_EQ(value("asyncd_ops_total", {{"kind", "read"}, {"backend", "thread_pool"},
                                       {"outcome", "completed"}}),
            1);
  EXPECT_EQ(value("asyncd_inflight_ops", {}), 7);
  EXPECT_EQ(value("asyncd_sessions", {}), 3);
  EXPECT_EQ(value("asyncd_rejected_total", {}), 4);
  EXPECT_EQ(value("asyncd_cancels_total", {{"result", "not_found"}}), 2);
  EXPECT_EQ(value("asyncd_queue_depth", {{"backend", "thread_pool"}}), 5);
  EXPECT_EQ(value("asyncd_io_uring_enabled", {}), 1);
  EXPECT_EQ(types["asyncd_path_resolver"], "gauge");
  EXPECT_EQ(value("asyncd_path_resolver", {{"resolver", "userspace"}}), 1);
  EXPECT_EQ(value("asyncd_draining", {}), 0);
  EXPECT_EQ(types["asyncd_buffered_bytes"], "gauge");
  EXPECT_EQ(value("asyncd_buffered_bytes", {}), 65536);
  EXPECT_EQ(types["asyncd_limit"], "gauge");
  EXPECT_EQ(value("asyncd_limit", {{"limit", "max_inflight_total"}}), 1000);
  EXPECT_EQ(value("asyncd_limit", {{"limit", "max_buffered_bytes"}}), 1 << 20);
  EXPECT_DOUBLE_EQ(
      value("asyncd_op_duration_seconds_sum", {{"kind", "nop"}, {"backend", "io_uring"}}),
      0.123456789);
}

TEST(MetricsTest, HistogramBucketsAreCumulativeAndEndAtCount) {
  std::map<std::string, std::string> types;
  const std::vector<Sample_> samples = Parse(RenderPrometheus(Sample()), &types);
  std::map<std::string, std::vector<std::pair<double, double>>> buckets;  // kind -> (le, n)
  std::map<std::string, double> counts;
  for (const Sample_& s : samples) {
    if (s.name == "asyncd_op_duration_seconds_bucket") {
      const std::string le = s.labels.at("le");
      buckets[s.labels.at("kind")].emplace_back(le == "+Inf" ? INFINITY : std::stod(le), s.value);
    } else if (s.name == "asyncd_op_duration_seconds_count") {
      counts[s.labels.at("kind")] = s.value;
    }
  }
  ASSERT_EQ(buckets.size(), 2u);
  for (const auto& [kind, b] : buckets) {
    ASSERT_EQ(b.size(), 32u) << kind;
    EXPECT_DOUBLE_EQ(b.front().first, 1e-6);  // below 1 µs
    EXPECT_TRUE(std::isinf(b.back().first));
    for (size_t i = 1; i < b.size(); ++i) {
      EXPECT_GT(b[i].first, b[i - 1].first) << kind << " le not increasing at " << i;
      EXPECT_GE(b[i].second, b[i - 1].second) << kind << " not cumulative at " << i;
    }
    EXPECT_EQ(b.back().second, counts[kind]) << kind;
  }
  // nop: 10 below 1 µs, 80 in [4, 8) µs, 10 beyond the last finite bound.
  const auto& nop = buckets["nop"];
  EXPECT_EQ(nop[0].second, 10);
  EXPECT_DOUBLE_EQ(nop[3].first, 8e-6);
  EXPECT_EQ(nop[3].second, 90);
  EXPECT_EQ(nop[30].second, 90);
  EXPECT_EQ(nop[31].second, 100);
  // read: one op in [2048, 4096) µs.
  EXPECT_DOUBLE_EQ(buckets["read"][12].first, 4096e-6);
  EXPECT_EQ(buckets["read"][11].second, 0);
  EXPECT_EQ(buckets["read"][12].second, 1);
}

// Every metric the shipped dashboard, scrape config and docs name is one we
// export (a renamed metric would otherwise leave an empty panel).
TEST(MetricsTest, DeployFilesNameOnlyExportedMetrics) {
  std::map<std::string, std::string> types;
  Parse(RenderPrometheus(Sample()), &types);
  const std::filesystem::path deploy =
      std::filesystem::path(__FILE__).parent_path() / "../../deploy";
  const std::regex name(R"(asyncd_[a-z_]*[a-z])");
  int checked = 0;
  for (const char* file : {"grafana-asyncd.json", "prometheus.yml", "README.md"}) {
    std::ifstream in(deploy / file);
    ASSERT_TRUE(in) << file;
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (auto it = std::sregex_iterator(text.begin(), text.end(), name);
         it != std::sregex_iterator(); ++it) {
      std::string metric = it->str();
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        const std::string base = metric.substr(0, metric.size() - std::strlen(suffix));
        if (metric.ends_with(suffix) && types[base] == "histogram") metric = base;
      }
      EXPECT_TRUE(types.count(metric)) << file << " names " << metric << ", which is not exported";
      ++checked;
    }
  }
  EXPECT_GT(checked, 20);
}

TEST(MetricsTest, EmptyDaemonStillExposesGauges) {
  std::map<std::string, std::string> types;
  const std::vector<Sample_> samples = Parse(RenderPrometheus(MetricsSnapshot{}), &types);
  EXPECT_EQ(types.size(), 14u);
  EXPECT_FALSE(samples.empty());
}

// A plain HTTP/1.1 GET over a socket; returns the whole response.
std::string HttpGet(uint16_t port, const std::string& path, const std::string& method = "GET") {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "connect failed";
  }
  const std::string req =
      method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  EXPECT_EQ(write(fd, req.data(), req.size()), ssize_t(req.size()));
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) out.append(buf, size_t(n));
  close(fd);
  return out;
}

TEST(MetricsServerTest, ServesMetricsOnlyAtSlashMetrics) {
  int renders = 0;
  auto server = MetricsServer::Start("127.0.0.1:0", [&] {
    ++renders;
    return RenderPrometheus(Sample());
  });
  ASSERT_TRUE(server.ok()) << server.status();
  const uint16_t port = (*server)->port();
  ASSERT_NE(port, 0);
  EXPECT_THAT((*server)->address(), StartsWith("127.0.0.1:"));

  const std::string ok = HttpGet(port, "/metrics");
  EXPECT_THAT(ok, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(ok, HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_THAT(ok, HasSubstr("\r\n\r\n# HELP asyncd_ops_total"));
  EXPECT_THAT(ok, HasSubstr("asyncd_inflight_ops 7\n"));
  EXPECT_EQ(renders, 1);

  EXPECT_THAT(HttpGet(port, "/metrics?x=1"), StartsWith("HTTP/1.1 200 OK"));
  EXPECT_THAT(HttpGet(port, "/"), StartsWith("HTTP/1.1 404 Not Found"));
  EXPECT_THAT(HttpGet(port, "/metricsx"), StartsWith("HTTP/1.1 404"));
  EXPECT_THAT(HttpGet(port, "/metrics", "POST"), StartsWith("HTTP/1.1 405"));
  (*server)->Stop();
  (*server)->Stop();  // idempotent
  EXPECT_EQ(HttpGet(port, "/metrics"), "connect failed");
}

TEST(MetricsServerTest, BusyPortIsUnavailable) {
  auto first = MetricsServer::Start("127.0.0.1:0", [] { return std::string(); });
  ASSERT_TRUE(first.ok());
  auto second = MetricsServer::Start(
      "127.0.0.1:" + std::to_string((*first)->port()), [] { return std::string(); });
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

TEST(MetricsServerTest, BadAddressIsInvalid) {
  auto bad = MetricsServer::Start("no-port", [] { return std::string(); });
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace asyncd::daemon
