#include "daemon/passed_fds.h"

#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

#include <spdlog/spdlog.h>

namespace asyncd::daemon {
namespace {

struct Table {
  std::mutex mu;
  bool read = false;  // guarded by mu, as is untaken
  std::vector<PassedFd> untaken;
};

// The table, read from LISTEN_* on first use. Unsetting them keeps anyone
// else (a child process too) from taking the same descriptors again.
Table& LockedTable(std::unique_lock<std::mutex>& lock) {
  static Table table;
  lock = std::unique_lock(table.mu);
  if (table.read) return table;
  table.read = true;
  char** names = nullptr;
  const int n = sd_listen_fds_with_names(/*unset_environment=*/1, &names);
  if (n < 0) {
    spdlog::warn("ignoring the descriptors systemd passed: LISTEN_FDS/LISTEN_FDNAMES: {}",
                 std::strerror(-n));
  }
  for (int i = 0; i < n; ++i) {
    table.untaken.push_back(
        PassedFd{SD_LISTEN_FDS_START + i, names != nullptr && names[i] != nullptr ? names[i] : ""});
  }
  if (names != nullptr) {
    for (char** name = names; *name != nullptr; ++name) std::free(*name);
    std::free(names);
  }
  return table;
}

}  // namespace

std::vector<PassedFd> UntakenPassedFds() {
  std::unique_lock<std::mutex> lock;
  return LockedTable(lock).untaken;
}

bool TakePassedFdAt(int fd) {
  std::unique_lock<std::mutex> lock;
  std::vector<PassedFd>& untaken = LockedTable(lock).untaken;
  for (auto it = untaken.begin(); it != untaken.end(); ++it) {
    if (it->fd == fd) {
      untaken.erase(it);
      return true;
    }
  }
  return false;
}

std::optional<int> TakePassedFd(std::string_view name) {
  std::unique_lock<std::mutex> lock;
  std::vector<PassedFd>& untaken = LockedTable(lock).untaken;
  for (auto it = untaken.begin(); it != untaken.end(); ++it) {
    if (it->name == name) {
      const int fd = it->fd;
      untaken.erase(it);
      return fd;
    }
  }
  return std::nullopt;
}

void AddPassedFd(int fd, std::string name) {
  std::unique_lock<std::mutex> lock;
  LockedTable(lock).untaken.push_back(PassedFd{fd, std::move(name)});
}

}  // namespace asyncd::daemon
