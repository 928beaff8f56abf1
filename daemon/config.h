#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace asyncd::daemon {

/// server.takeover_socket for a daemon that cannot be taken over.
inline constexpr char kNoTakeoverSocket[] = "off";
/// server.ring_socket for a daemon without local rings.
inline constexpr char kNoRingSocket[] = "off";

/// A [[share]]: a directory beneath the root that the listed users and
/// groups reach by its path, outside their own area.
struct ShareConfig {
  std::string path;  // relative to the root, e.g. "common" or "team/build"
  std::vector<uint32_t> uids;
  std::vector<uint32_t> gids;
  std::vector<std::string> groups;      // names, resolved at load (getgrnam)
  std::vector<uint32_t> group_gids;     // groups resolved
  bool operator==(const ShareConfig&) const = default;
};

/// At most this many [[share]] tables (a caller's shares are a bit mask).
inline constexpr size_t kMaxShares = 64;

/// Every tunable, with the embedded default. deploy/asyncd.toml.example
/// documents each key; `asyncd --help` documents the flags.
struct Config {
  // [server]
  std::string socket;       // default: core::DefaultSocketPath()
  // Where `asyncd --takeover` asks (daemon/takeover.h); default: socket +
  // ".takeover"; kNoTakeoverSocket: nowhere.
  std::string takeover_socket;
  // The local ring's socket (daemon/ring_server.h); default: socket +
  // ".ring"; kNoRingSocket: no rings.
  std::string ring_socket;
  std::string root;         // default: core::DefaultRootDir()
  std::string tcp;          // "ADDR:PORT"; empty = no TCP listener
  bool tcp_insecure = false;  // plaintext TCP (no TLS): only when set explicitly
  std::string tls_cert;       // PEM server certificate chain (required for TCP)
  std::string tls_key;        // PEM private key of tls_cert
  std::string tls_client_ca;  // PEM CA bundle: when set, clients must present a cert (mTLS)
  std::string metrics;      // Prometheus "ADDR:PORT" (GET /metrics); empty = off
  std::string log_level = "info";
  std::string state_dir;    // drain manifests; default: $STATE_DIRECTORY or next to root
  uint32_t socket_mode = 0660;
  std::string socket_group;  // group of the socket file (name); empty = the daemon's group
  int64_t socket_gid = -1;   // socket_group resolved at load; -1 = unchanged
  uint32_t drain_grace_ms = 10000;
  uint32_t drain_manifests_keep = 10;  // newest drain manifests kept; 0 = write none

  // [backends]
  bool io_uring = true;
  uint32_t uring_entries = 4096;
  uint32_t thread_pool_threads = 0;  // 0 = max(4, 2 x cores)
  uint32_t thread_pool_queue = 8192;
  std::string path_resolver = "auto";  // auto | openat2 | userspace

  // [ring]
  uint32_t ring_spin_us = 30;  // the idle poller spins this long before it sleeps

  // [limits]
  uint32_t max_sessions = 1024;
  uint32_t max_inflight_per_session = 4096;
  uint32_t max_pool_queued_per_session = 1024;  // of backends.thread_pool_queue
  uint32_t max_pool_running_per_session = 0;    // 0 = thread-pool workers - 1 (at least 1)
  uint32_t max_inflight_total = 65536;
  uint64_t max_buffered_bytes = 256ull << 20;  // read buffers + write data held, all sessions
  uint32_t max_batch_ops = 1024;
  uint32_t max_op_bytes = 1 << 20;
  uint32_t max_handles_per_session = 1024;
  uint32_t max_message_bytes = 16 << 20;
  uint32_t default_lease_ms = 30000;
  uint32_t max_lease_ms = 3600000;
  uint32_t history_capacity = 10000;
  uint32_t slow_history_capacity = 100;
  uint32_t max_watchers = 64;
  uint32_t watch_buffer_events = 4096;

  // [admin]
  std::vector<uint32_t> admin_uids;  // uid 0 and the daemon's own uid are always admins
  std::vector<uint32_t> admin_gids;        // primary or supplementary group of the peer
  std::vector<std::string> admin_groups;   // group names, resolved at load (getgrnam)
  std::vector<uint32_t> admin_group_gids;  // admin_groups resolved
  std::vector<std::string> admin_tls_cns;  // client-cert CNs that are admins (mTLS on TCP)

  // [[share]]
  std::vector<ShareConfig> shares;

  bool operator==(const Config&) const = default;
};

/// The limits a reload (SIGHUP) may change while serving. Written by the
/// reloading thread, read by any thread on every call; each value on its own
/// (a reader may see one new value next to an old one, which is harmless for
/// these). Everything else in Config needs a restart.
class LiveLimits {
 public:
  explicit LiveLimits(const Config& config) { Apply(config); }
  void Apply(const Config& config) {
    max_batch_ops_.store(config.max_batch_ops, std::memory_order_relaxed);
    max_op_bytes_.store(config.max_op_bytes, std::memory_order_relaxed);
    default_lease_ms_.store(config.default_lease_ms, std::memory_order_relaxed);
    drain_grace_ms_.store(config.drain_grace_ms, std::memory_order_relaxed);
    max_inflight_total_.store(config.max_inflight_total, std::memory_order_relaxed);
    max_buffered_bytes_.store(config.max_buffered_bytes, std::memory_order_relaxed);
  }
  uint32_t max_batch_ops() const { return max_batch_ops_.load(std::memory_order_relaxed); }
  uint32_t max_op_bytes() const { return max_op_bytes_.load(std::memory_order_relaxed); }
  uint32_t default_lease_ms() const { return default_lease_ms_.load(std::memory_order_relaxed); }
  uint32_t drain_grace_ms() const { return drain_grace_ms_.load(std::memory_order_relaxed); }
  uint32_t max_inflight_total() const {
    return max_inflight_total_.load(std::memory_order_relaxed);
  }
  uint64_t max_buffered_bytes() const {
    return max_buffered_bytes_.load(std::memory_order_relaxed);
  }

 private:
  std::atomic<uint32_t> max_batch_ops_;
  std::atomic<uint32_t> max_op_bytes_;
  std::atomic<uint32_t> default_lease_ms_;
  std::atomic<uint32_t> drain_grace_ms_;
  std::atomic<uint32_t> max_inflight_total_;
  std::atomic<uint64_t> max_buffered_bytes_;
};

/// Reads a TOML file over `base`. Unknown keys and bad values are refused
/// with "FILE:LINE: reason" (INVALID_ARGUMENT); a missing file is NOT_FOUND.
[[nodiscard]] absl::StatusOr<Config> LoadConfigFile(const std::string& path, Config base);

/// Fills empty paths with their defaults.
void ApplyDefaults(Config& config);

/// Cross-key checks on the final config (file + flags): TCP needs TLS
/// (tls_cert + tls_key) unless tcp_insecure; TLS keys need TCP.
/// INVALID_ARGUMENT naming the keys.
[[nodiscard]] absl::Status ValidateConfig(const Config& config);

}  // namespace asyncd::daemon
