#include "daemon/config.h"

#include <toml++/toml.h>

#include <filesystem>
#include <functional>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "src/core/runtime_paths.h"

namespace asyncd::daemon {
namespace {

std::string Where(const std::string& path, const toml::source_region& src) {
  return absl::StrCat(path, ":", src.begin.line);
}

using Setter = std::function<absl::Status(const toml::node&, Config&)>;

template <typename T>
Setter U32(T Config::*field, uint64_t min, uint64_t max) {
  return [=](const toml::node& n, Config& c) -> absl::Status {
    auto v = n.value<int64_t>();
    if (!v || *v < int64_t(min) || uint64_t(*v) > max) {
      return absl::InvalidArgumentError(absl::StrCat("must be an integer in [", min, ", ", max, "]"));
    }
    c.*field = static_cast<T>(*v);
    return absl::OkStatus();
  };
}

Setter Str(std::string Config::*field) {
  return [=](const toml::node& n, Config& c) -> absl::Status {
    auto v = n.value<std::string>();
    if (!v) return absl::InvalidArgumentError("must be a string");
    c.*field = *v;
    return absl::OkStatus();
  };
}

Setter Bool(bool Config::*field) {
  return [=](const toml::node& n, Config& c) -> absl::Status {
    auto v = n.value<bool>();
    if (!v) return absl::InvalidArgumentError("must be true or false");
    c.*field = *v;
    return absl::OkStatus();
  };
}

Setter Ids(std::vector<uint32_t> Config::*field) {
  return [=](const toml::node& n, Config& c) -> absl::Status {
    const toml::array* a = n.as_array();
    if (a == nullptr) return absl::InvalidArgumentError("must be an array of integers");
    std::vector<uint32_t> out;
    for (const toml::node& e : *a) {
      auto v = e.value<int64_t>();
      if (!v || *v < 0 || *v > 0xffffffffLL) {
        return absl::InvalidArgumentError("must be an array of integers >= 0");
      }
      out.push_back(static_cast<uint32_t>(*v));
    }
    c.*field = std::move(out);
    return absl::OkStatus();
  };
}

// "HOST:PORT" or "[V6]:PORT"; empty = off.
Setter HostPort(std::string Config::*field) {
  return [=](const toml::node& n, Config& c) -> absl::Status {
    auto v = n.value<std::string>();
    if (!v) return absl::InvalidArgumentError("must be a string");
    if (!v->empty()) {
      const size_t colon = v->rfind(':');
      uint32_t port = 0;
      if (colon == std::string::npos || colon == 0 ||
          !absl::SimpleAtoi(v->substr(colon + 1), &port) || port > 65535) {
        return absl::InvalidArgumentError(
            "must be \"HOST:PORT\" (e.g. \"127.0.0.1:9464\"; port 0 = any free one) or \"\" "
            "for off");
      }
    }
    c.*field = *v;
    return absl::OkStatus();
  };
}

Setter LogLevel() {
  return [](const toml::node& n, Config& c) -> absl::Status {
    auto v = n.value<std::string>();
    static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
    if (v) {
      for (const char* l : kLevels) {
        if (*v == l) {
          c.log_level = *v;
          return absl::OkStatus();
        }
      }
    }
    return absl::InvalidArgumentError(
        "must be one of trace, debug, info, warn, error, critical, off");
  };
}

const std::map<std::string, std::map<std::string, Setter>>& Schema() {
  static const auto* schema = new std::map<std::string, std::map<std::string, Setter>>{
      {"server",
       {{"socket", Str(&Config::socket)},
        {"root", Str(&Config::root)},
        {"tcp", Str(&Config::tcp)},
        {"metrics", HostPort(&Config::metrics)},
        {"log_level", LogLevel()},
        {"state_dir", Str(&Config::state_dir)},
        {"socket_mode", U32(&Config::socket_mode, 0, 0777)},
        {"drain_grace_ms", U32(&Config::drain_grace_ms, 0, 3600000)}}},
      {"backends",
       {{"io_uring", Bool(&Config::io_uring)},
        {"uring_entries", U32(&Config::uring_entries, 8, 32768)},
        {"thread_pool_threads", U32(&Config::thread_pool_threads, 0, 4096)},
        {"thread_pool_queue", U32(&Config::thread_pool_queue, 1, 1 << 24)}}},
      {"limits",
       {{"max_sessions", U32(&Config::max_sessions, 1, 65535)},
        {"max_inflight_per_session", U32(&Config::max_inflight_per_session, 1, (1 << 20) - 1)},
        {"max_batch_ops", U32(&Config::max_batch_ops, 1, 65536)},
        {"max_op_bytes", U32(&Config::max_op_bytes, 1, 64 << 20)},
        {"max_handles_per_session", U32(&Config::max_handles_per_session, 1, 65535)},
        {"max_message_bytes", U32(&Config::max_message_bytes, 4096, 1u << 30)},
        {"default_lease_ms", U32(&Config::default_lease_ms, 100, 3600000)},
        {"max_lease_ms", U32(&Config::max_lease_ms, 100, 86400000)},
        {"history_capacity", U32(&Config::history_capacity, 0, 1 << 22)},
        {"slow_history_capacity", U32(&Config::slow_history_capacity, 0, 100000)},
        {"max_watchers", U32(&Config::max_watchers, 0, 4096)},
        {"watch_buffer_events", U32(&Config::watch_buffer_events, 16, 1 << 20)}}},
      {"admin", {{"uids", Ids(&Config::admin_uids)}, {"gids", Ids(&Config::admin_gids)}}},
  };
  return *schema;
}

}  // namespace

absl::StatusOr<Config> LoadConfigFile(const std::string& path, Config base) {
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    if (e.source().begin.line == 0) {
      return absl::NotFoundError(absl::StrCat(path, ": ", std::string(e.description())));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(Where(path, e.source()), ": ", std::string(e.description())));
  }
  for (const auto& [section_key, section_node] : table) {
    const std::string section(section_key.str());
    auto schema = Schema().find(section);
    if (schema == Schema().end() || !section_node.is_table()) {
      return absl::InvalidArgumentError(absl::StrCat(Where(path, section_node.source()),
                                                     ": unknown section [", section, "]"));
    }
    for (const auto& [key_node, value] : *section_node.as_table()) {
      const std::string key(key_node.str());
      auto setter = schema->second.find(key);
      if (setter == schema->second.end()) {
        return absl::InvalidArgumentError(absl::StrCat(Where(path, value.source()),
                                                       ": unknown key ", section, ".", key));
      }
      if (absl::Status s = setter->second(value, base); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(Where(path, value.source()), ": ", section,
                                                       ".", key, " ", s.message()));
      }
    }
  }
  if (base.default_lease_ms > base.max_lease_ms) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": limits.default_lease_ms is over limits.max_lease_ms"));
  }
  return base;
}

void ApplyDefaults(Config& config) {
  if (config.socket.empty()) config.socket = core::DefaultSocketPath();
  if (config.root.empty()) config.root = core::DefaultRootDir();
  if (config.state_dir.empty()) {
    const char* state = std::getenv("STATE_DIRECTORY");
    config.state_dir = (state != nullptr && *state != '\0')
                           ? std::string(state)
                           : (std::filesystem::path(config.root).parent_path() / "state").string();
  }
}

}  // namespace asyncd::daemon
