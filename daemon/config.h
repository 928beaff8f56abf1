#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace asyncd::daemon {

/// Every tunable, with the embedded default. deploy/asyncd.toml.example
/// documents each key; `asyncd --help` documents the flags.
struct Config {
  // [server]
  std::string socket;       // default: core::DefaultSocketPath()
  std::string root;         // default: core::DefaultRootDir()
  std::string tcp;          // "ADDR:PORT"; empty = no TCP listener
  std::string log_level = "info";
  std::string state_dir;    // drain manifests; default: $STATE_DIRECTORY or next to root
  uint32_t socket_mode = 0660;
  uint32_t drain_grace_ms = 10000;

  // [backends]
  bool io_uring = true;
  uint32_t uring_entries = 4096;
  uint32_t thread_pool_threads = 0;  // 0 = max(4, 2 x cores)
  uint32_t thread_pool_queue = 8192;

  // [limits]
  uint32_t max_sessions = 1024;
  uint32_t max_inflight_per_session = 4096;
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
  std::vector<uint32_t> admin_uids;  // uid 0 is always an admin
  std::vector<uint32_t> admin_gids;
};

/// Reads a TOML file over `base`. Unknown keys and bad values are refused
/// with "FILE:LINE: reason" (INVALID_ARGUMENT); a missing file is NOT_FOUND.
[[nodiscard]] absl::StatusOr<Config> LoadConfigFile(const std::string& path, Config base);

/// Fills empty paths with their defaults.
void ApplyDefaults(Config& config);

}  // namespace asyncd::daemon
