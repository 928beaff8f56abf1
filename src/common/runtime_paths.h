#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

// Defaults the daemon and its clients must agree on. Header-only and free of
// dependencies, so the client library can use it without any core header.
namespace asyncd::common {

/// The system daemon's socket (asyncd.socket; systemd's RuntimeDirectory).
inline constexpr const char* kSystemSocketPath = "/run/asyncd/asyncd.sock";

/// Where the daemon listens when nothing says otherwise: $ASYNCD_SOCKET,
/// else the system socket for root, else $XDG_RUNTIME_DIR/asyncd, else
/// /tmp/asyncd-<uid>. Clients try this first (client::DefaultSocketPath).
inline std::string DefaultSocketPath() {
  if (const char* env = std::getenv("ASYNCD_SOCKET"); env != nullptr && *env != '\0') return env;
  if (geteuid() == 0) return kSystemSocketPath;
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/asyncd/asyncd.sock";
  }
  return "/tmp/asyncd-" + std::to_string(geteuid()) + "/asyncd.sock";
}

/// The directory client paths resolve beneath, by default: $STATE_DIRECTORY
/// (set by systemd's StateDirectory=) + /files, /var/lib/asyncd/files for root,
/// else $XDG_DATA_HOME (or ~/.local/share) + /asyncd/files.
inline std::string DefaultRootDir() {
  if (const char* state = std::getenv("STATE_DIRECTORY"); state != nullptr && *state != '\0') {
    return std::string(state) + "/files";
  }
  if (geteuid() == 0) return "/var/lib/asyncd/files";
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/asyncd/files";
  }
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "/tmp") + "/.local/share/asyncd/files";
}

}  // namespace asyncd::common

// The daemon names these through asyncd::core, where they lived before.
namespace asyncd::core {
using common::DefaultRootDir;
using common::DefaultSocketPath;
}  // namespace asyncd::core
