#include "daemon/config.h"

#include <toml++/toml.h>

#include <grp.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "src/common/runtime_paths.h"

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

absl::StatusOr<std::vector<uint32_t>> ParseIds(const toml::node& n) {
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
  return out;
}

absl::StatusOr<std::vector<std::string>> ParseStrs(const toml::node& n) {
  const toml::array* a = n.as_array();
  if (a == nullptr) return absl::InvalidArgumentError("must be an array of strings");
  std::vector<std::string> out;
  for (const toml::node& e : *a) {
    auto v = e.value<std::string>();
    if (!v || v->empty()) return absl::InvalidArgumentError("must be an array of non-empty strings");
    out.push_back(*v);
  }
  return out;
}

Setter Ids(std::vector<uint32_t> Config::*field) {
  return [=](const toml::node& n, Config& c) -> absl::Status {
    absl::StatusOr<std::vector<uint32_t>> ids = ParseIds(n);
    if (!ids.ok()) return ids.status();
    c.*field = *std::move(ids);
    return absl::OkStatus();
  };
}

Setter Strs(std::vector<std::string> Config::*field) {
  return [=](const toml::node& n, Config& c) -> absl::Status {
    absl::StatusOr<std::vector<std::string>> strs = ParseStrs(n);
    if (!strs.ok()) return strs.status();
    c.*field = *std::move(strs);
    return absl::OkStatus();
  };
}

// A group name as the system's group database knows it (getgrnam).
absl::StatusOr<uint32_t> ResolveGroup(const std::string& name) {
  group grp;
  group* found = nullptr;
  std::vector<char> buf(16384);
  const int rc = getgrnam_r(name.c_str(), &grp, buf.data(), buf.size(), &found);
  if (rc != 0 || found == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("names unknown group \"", name, "\""));
  }
  return static_cast<uint32_t>(found->gr_gid);
}

// Group names resolved now, so a typo stops the start, not a user.
absl::StatusOr<std::vector<uint32_t>> ResolveGroups(const std::vector<std::string>& names) {
  std::vector<uint32_t> gids;
  for (const std::string& name : names) {
    absl::StatusOr<uint32_t> gid = ResolveGroup(name);
    if (!gid.ok()) return gid.status();
    gids.push_back(*gid);
  }
  return gids;
}

Setter AdminGroups() {
  return [](const toml::node& n, Config& c) -> absl::Status {
    absl::StatusOr<std::vector<std::string>> names = ParseStrs(n);
    if (!names.ok()) return names.status();
    absl::StatusOr<std::vector<uint32_t>> gids = ResolveGroups(*names);
    if (!gids.ok()) return gids.status();
    c.admin_groups = *std::move(names);
    c.admin_group_gids = *std::move(gids);
    return absl::OkStatus();
  };
}

Setter SocketGroup() {
  return [](const toml::node& n, Config& c) -> absl::Status {
    auto v = n.value<std::string>();
    if (!v) return absl::InvalidArgumentError("must be a string (a group name)");
    if (v->empty()) {
      c.socket_group.clear();
      c.socket_gid = -1;
      return absl::OkStatus();
    }
    absl::StatusOr<uint32_t> gid = ResolveGroup(*v);
    if (!gid.ok()) return gid.status();
    c.socket_group = *v;
    c.socket_gid = *gid;
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

// A string that must be one of `values`.
Setter OneOf(std::string Config::*field, std::vector<std::string> values) {
  return [=](const toml::node& n, Config& c) -> absl::Status {
    auto v = n.value<std::string>();
    if (v && std::find(values.begin(), values.end(), *v) != values.end()) {
      c.*field = *v;
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(absl::StrCat("must be one of ", absl::StrJoin(values, ", ")));
  };
}

const std::map<std::string, std::map<std::string, Setter>>& Schema() {
  static const auto* schema = new std::map<std::string, std::map<std::string, Setter>>{
      {"server",
       {{"socket", Str(&Config::socket)},
        {"takeover_socket", Str(&Config::takeover_socket)},
        {"ring_socket", Str(&Config::ring_socket)},
        {"root", Str(&Config::root)},
        {"tcp", HostPort(&Config::tcp)},
        {"tcp_insecure", Bool(&Config::tcp_insecure)},
        {"tls_cert", Str(&Config::tls_cert)},
        {"tls_key", Str(&Config::tls_key)},
        {"tls_client_ca", Str(&Config::tls_client_ca)},
        {"socket_group", SocketGroup()},
        {"metrics", HostPort(&Config::metrics)},
        {"log_level", OneOf(&Config::log_level, {"trace", "debug", "info", "warn", "error", "critical", "off"})},
        {"state_dir", Str(&Config::state_dir)},
        {"socket_mode", U32(&Config::socket_mode, 0, 0777)},
        {"drain_grace_ms", U32(&Config::drain_grace_ms, 0, 3600000)},
        {"drain_manifests_keep", U32(&Config::drain_manifests_keep, 0, 100000)}}},
      {"backends",
       {{"io_uring", Bool(&Config::io_uring)},
        {"uring_entries", U32(&Config::uring_entries, 8, 32768)},
        {"thread_pool_threads", U32(&Config::thread_pool_threads, 0, 4096)},
        {"thread_pool_queue", U32(&Config::thread_pool_queue, 1, 1 << 24)},
        {"path_resolver", OneOf(&Config::path_resolver, {"auto", "openat2", "userspace"})}}},
      {"ring", {{"spin_us", U32(&Config::ring_spin_us, 0, 10000)}}},
      {"limits",
       {{"max_sessions", U32(&Config::max_sessions, 1, 65535)},
        {"max_inflight_per_session", U32(&Config::max_inflight_per_session, 1, (1 << 20) - 1)},
        {"max_pool_queued_per_session", U32(&Config::max_pool_queued_per_session, 1, 1 << 24)},
        {"max_pool_running_per_session", U32(&Config::max_pool_running_per_session, 0, 4096)},
        {"max_inflight_total", U32(&Config::max_inflight_total, 1, 1u << 24)},
        {"max_buffered_bytes", U32(&Config::max_buffered_bytes, 4096, uint64_t{1} << 40)},
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
      {"admin",
       {{"uids", Ids(&Config::admin_uids)},
        {"gids", Ids(&Config::admin_gids)},
        {"groups", AdminGroups()},
        {"tls_cns", Strs(&Config::admin_tls_cns)}}},
  };
  return *schema;
}

// A share's path: relative components beneath the root, none "." or
// "..", the first not all digits (that names a uid's own area).
absl::Status CheckSharePath(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("must not be empty");
  if (path.front() == '/') return absl::InvalidArgumentError("must be relative to server.root");
  const std::vector<std::string> parts = absl::StrSplit(path, '/');
  for (const std::string& part : parts) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError("must be plain names joined by '/' (no \"\", \".\" or \"..\")");
    }
    if (part.find('\0') != std::string::npos) return absl::InvalidArgumentError("contains NUL");
  }
  if (std::all_of(parts[0].begin(), parts[0].end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
    return absl::InvalidArgumentError(
        absl::StrCat("must not start with a number: \"", parts[0], "\" is uid ", parts[0], "'s own area"));
  }
  return absl::OkStatus();
}

// True if `a` is `b` or a directory above it, component by component.
bool Contains(const std::string& a, const std::string& b) {
  return b.size() >= a.size() && b.compare(0, a.size(), a) == 0 &&
         (b.size() == a.size() || b[a.size()] == '/');
}

// [[share]]: an array of tables, each {path, uids, gids, groups}.
absl::Status LoadShares(const std::string& file, const toml::node& node,
                        std::vector<ShareConfig>& out) {
  const toml::array* tables = node.as_array();
  if (tables == nullptr || !tables->is_array_of_tables()) {
    return absl::InvalidArgumentError(absl::StrCat(
        Where(file, node.source()), ": share must be an array of tables ([[share]] sections)"));
  }
  if (tables->size() > kMaxShares) {
    return absl::InvalidArgumentError(
        absl::StrCat(Where(file, node.source()), ": at most ", kMaxShares, " [[share]] sections"));
  }
  std::vector<ShareConfig> shares;
  for (const toml::node& t : *tables) {
    ShareConfig share;
    bool has_path = false;
    for (const auto& [key_node, value] : *t.as_table()) {
      const std::string key(key_node.str());
      auto fail = [&](const absl::Status& s) {
        return absl::InvalidArgumentError(
            absl::StrCat(Where(file, value.source()), ": share.", key, " ", s.message()));
      };
      if (key == "path") {
        auto v = value.value<std::string>();
        if (!v) return fail(absl::InvalidArgumentError("must be a string"));
        if (absl::Status s = CheckSharePath(*v); !s.ok()) return fail(s);
        share.path = *v;
        has_path = true;
      } else if (key == "uids" || key == "gids") {
        absl::StatusOr<std::vector<uint32_t>> ids = ParseIds(value);
        if (!ids.ok()) return fail(ids.status());
        (key == "uids" ? share.uids : share.gids) = *std::move(ids);
      } else if (key == "groups") {
        absl::StatusOr<std::vector<std::string>> names = ParseStrs(value);
        if (!names.ok()) return fail(names.status());
        absl::StatusOr<std::vector<uint32_t>> gids = ResolveGroups(*names);
        if (!gids.ok()) return fail(gids.status());
        share.groups = *std::move(names);
        share.group_gids = *std::move(gids);
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(Where(file, value.source()), ": unknown key share.", key));
      }
    }
    const std::string where = Where(file, t.source());
    if (!has_path) return absl::InvalidArgumentError(absl::StrCat(where, ": [[share]] needs a path"));
    if (share.uids.empty() && share.gids.empty() && share.groups.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": share \"", share.path, "\" names nobody: set uids, gids or groups"));
    }
    for (const ShareConfig& other : shares) {
      if (Contains(other.path, share.path) || Contains(share.path, other.path)) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": share \"", share.path,
                                                       "\" overlaps share \"", other.path, "\""));
      }
    }
    shares.push_back(std::move(share));
  }
  out = std::move(shares);
  return absl::OkStatus();
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
    if (section == "share") {
      if (absl::Status s = LoadShares(path, section_node, base.shares); !s.ok()) return s;
      continue;
    }
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
  if (config.takeover_socket.empty()) config.takeover_socket = config.socket + ".takeover";
  if (config.ring_socket.empty()) config.ring_socket = config.socket + ".ring";
  if (config.root.empty()) config.root = core::DefaultRootDir();
  if (config.state_dir.empty()) {
    const char* state = std::getenv("STATE_DIRECTORY");
    config.state_dir = (state != nullptr && *state != '\0')
                           ? std::string(state)
                           : (std::filesystem::path(config.root).parent_path() / "state").string();
  }
}

absl::Status ValidateConfig(const Config& config) {
  const bool tls = !config.tls_cert.empty() || !config.tls_key.empty();
  if (!config.tcp.empty()) {
    if (tls && (config.tls_cert.empty() || config.tls_key.empty())) {
      return absl::InvalidArgumentError("server.tls_cert and server.tls_key go together");
    }
    if (!tls && !config.tcp_insecure) {
      return absl::InvalidArgumentError(absl::StrCat(
          "server.tcp (", config.tcp,
          ") requires TLS: set server.tls_cert and server.tls_key (and server.tls_client_ca "
          "for client certificates), or server.tcp_insecure = true for plaintext"));
    }
    if (tls && config.tcp_insecure) {
      return absl::InvalidArgumentError(
          "server.tcp_insecure = true contradicts server.tls_cert/tls_key: choose one");
    }
  } else if (tls || !config.tls_client_ca.empty()) {
    return absl::InvalidArgumentError("server.tls_* are set but server.tcp is not");
  }
  if (!config.tls_client_ca.empty() && !tls) {
    return absl::InvalidArgumentError("server.tls_client_ca needs server.tls_cert and tls_key");
  }
  return absl::OkStatus();
}

}  // namespace asyncd::daemon
