#include "daemon/listener.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>

#include <grpcpp/server.h>
#include <grpcpp/server_posix.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/handover.h"
#include "daemon/passed_fds.h"

namespace asyncd::daemon {
namespace {

absl::Status Errno(const char* what, const std::string& path) {
  return absl::ErrnoToStatus(errno, absl::StrCat(what, " ", path));
}

bool SomeoneListens(const sockaddr_un& addr, int type) {
  const int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool live = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return live;
}

}  // namespace

std::optional<PeerCred> PeerCredOf(int conn) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return std::nullopt;
  PeerCred peer{cred.uid, cred.gid, static_cast<uint32_t>(cred.pid), {}};
  // Supplementary groups as the kernel recorded them at connect
  // (SO_PEERGROUPS, Linux 4.13+); without them only uid/gid count.
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 3; ++attempt) {
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(conn, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      peer.groups.assign(groups.begin(), groups.begin() + glen / sizeof(gid_t));
      break;
    }
    if (errno != ERANGE) break;
    groups.resize(glen / sizeof(gid_t) + 1);
  }
  return peer;
}

UnixListener::UnixListener(int fd, std::string path, bool owns_path)
    : fd_(fd), path_(std::move(path)), owns_path_(owns_path) {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

absl::StatusOr<BoundUnixSocket> BindUnixSocket(const std::string& path, int type, uint32_t mode,
                                               int64_t gid, int backlog) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path must be 1..", sizeof(addr.sun_path) - 1, " bytes: ", path));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  std::error_code ec;
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a socket"));
    }
    if (SomeoneListens(addr, type)) {
      return absl::FailedPreconditionError(
          absl::StrCat("another daemon is serving ", path, "; stop it first"));
    }
    spdlog::info("removing stale socket {} (nothing listens on it)", path);
    unlink(path.c_str());
  }
  const int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Errno("socket", path);
  // Permissions apply from the first moment the file exists: with a group to
  // set, the owner alone until it is set (the old group must never get access).
  const mode_t first_mode = gid >= 0 ? (mode & 0700) : mode;
  const mode_t old_umask = umask(0777 & ~first_mode);
  const int rc = bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  umask(old_umask);
  if (rc != 0) {
    absl::Status s = Errno("bind", path);
    close(fd);
    return s;
  }
  if (gid >= 0 && chown(path.c_str(), static_cast<uid_t>(-1), static_cast<gid_t>(gid)) != 0) {
    absl::Status s = Errno(absl::StrCat("chown to gid ", gid).c_str(), path);
    close(fd);
    unlink(path.c_str());
    return s;
  }
  chmod(path.c_str(), mode);
  struct stat bound;
  lstat(path.c_str(), &bound);
  if (listen(fd, backlog) != 0) {
    absl::Status s = Errno("listen", path);
    close(fd);
    unlink(path.c_str());
    return s;
  }
  return BoundUnixSocket{fd, bound.st_ino};
}

absl::StatusOr<std::unique_ptr<UnixListener>> UnixListener::Bind(const std::string& path,
                                                                 uint32_t mode, int64_t gid) {
  absl::StatusOr<BoundUnixSocket> bound = BindUnixSocket(path, SOCK_STREAM, mode, gid, 1024);
  if (!bound.ok()) return bound.status();
  auto listener =
      std::unique_ptr<UnixListener>(new UnixListener(bound->fd, path, /*owns_path=*/true));
  listener->inode_ = bound->inode;
  return listener;
}

absl::StatusOr<std::unique_ptr<UnixListener>> UnixListener::Adopt(int fd,
                                                                  const std::string& configured,
                                                                  uint32_t mode, int64_t gid,
                                                                  Origin origin) {
  const bool activated = origin == Origin::kSocketActivation;
  const char* from = activated ? "socket activation" : "takeover";
  if (sd_is_socket_unix(fd, SOCK_STREAM, /*listening=*/1, nullptr, 0) <= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(from, ": descriptor ", fd, " is not a listening unix stream socket",
                     activated ? " (ListenStream= with a path in the .socket unit)" : ""));
  }
  sockaddr_un addr{};
  socklen_t len = sizeof(addr);
  std::string path;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
      len > offsetof(sockaddr_un, sun_path) && addr.sun_path[0] != '\0') {
    path.assign(addr.sun_path, strnlen(addr.sun_path, len - offsetof(sockaddr_un, sun_path)));
  }
  if (path.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(from, ": descriptor ", fd, " is not bound to a filesystem path"));
  }
  // The .socket unit, or the predecessor's bind, made the file and its
  // permissions; the config's keys cannot apply. Say so rather than let an
  // admin believe they do.
  const std::string owner = activated ? "from the .socket unit" : "the predecessor's";
  if (path != configured) {
    spdlog::warn("{}: listening on {} ({}), not on the configured server.socket {}", from, path,
                 owner, configured);
  }
  const std::string fix = activated ? "set SocketMode= in the .socket unit"
                                    : "it keeps it until a daemon binds the socket anew";
  const std::string fix_group = activated ? "set SocketGroup= in the .socket unit"
                                          : "it keeps it until a daemon binds the socket anew";
  struct stat st {};
  const bool found = stat(path.c_str(), &st) == 0;
  if (found) {
    if ((st.st_mode & 0777) != mode) {
      spdlog::warn("{}: {} has mode {:04o}, not server.socket_mode {:04o}: {}", from, path,
                   st.st_mode & 0777, mode, fix);
    }
    if (gid >= 0 && st.st_gid != static_cast<gid_t>(gid)) {
      spdlog::warn("{}: {} has group {}, not server.socket_group's {}: {}", from, path, st.st_gid,
                   gid, fix_group);
    }
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  auto listener = std::unique_ptr<UnixListener>(new UnixListener(fd, std::move(path), !activated));
  if (found) listener->inode_ = st.st_ino;
  return listener;
}

UnixListener::~UnixListener() {
  Stop();
  close(fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
  // Remove the file only if it is still ours: a successor may have replaced
  // it, or serves on it since a takeover.
  struct stat st;
  if (owns_path_ && !path_left_.load() && lstat(path_.c_str(), &st) == 0 && st.st_ino == inode_) {
    unlink(path_.c_str());
  }
}

void UnixListener::Start(grpc::Server* server) {
  thread_ = std::thread([this, server] { AcceptLoop(server); });
}

void UnixListener::Stop() {
  if (stopping_.exchange(true)) return;
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

void UnixListener::AcceptLoop(grpc::Server* server) {
  pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  while (!stopping_.load()) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("listener poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    for (;;) {
      const int conn = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (conn < 0) {
        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) break;
        // EMFILE and friends: log, back off briefly, keep serving existing clients.
        spdlog::warn("accept on {}: {}", path_, std::strerror(errno));
        usleep(10000);
        break;
      }
      std::optional<PeerCred> peer = PeerCredOf(conn);
      if (!peer) {
        close(conn);
        continue;
      }
      {
        std::lock_guard lock(mu_);
        peers_[conn] = *std::move(peer);
      }
      grpc::AddInsecureChannelFromFd(server, conn);
    }
  }
}

std::optional<PeerCred> UnixListener::Lookup(const std::string& peer) const {
  int fd;
  if (peer.rfind("fd:", 0) != 0 || !absl::SimpleAtoi(peer.substr(3), &fd)) return std::nullopt;
  std::lock_guard lock(mu_);
  auto it = peers_.find(fd);
  if (it == peers_.end()) return std::nullopt;
  return it->second;
}

std::optional<int> TakeActivatedSocket() {
  std::optional<int> stray;
  for (const PassedFd& passed : UntakenPassedFds()) {
    if (passed.name == kHandoverFdName) continue;
    if (sd_is_socket(passed.fd, AF_UNSPEC, 0, -1) > 0) {
      if (TakePassedFdAt(passed.fd)) return passed.fd;
    } else if (!stray) {
      stray = passed.fd;
    }
  }
  if (stray && TakePassedFdAt(*stray)) return stray;
  return std::nullopt;
}

size_t CloseActivatedConnections(size_t max) {
  size_t closed = 0;
  for (const PassedFd& passed : UntakenPassedFds()) {
    if (passed.name == kHandoverFdName) continue;
    const int fd = passed.fd;
    // Unix sockets only: an aborted connection there cannot leave accept()
    // blocking between poll and accept, as one on TCP can. poll first: the
    // descriptor is shared with systemd, so its blocking mode is left alone.
    if (sd_is_socket(fd, AF_UNIX, SOCK_STREAM, /*listening=*/1) <= 0) continue;
    for (size_t i = 0; i < max; ++i) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 0) <= 0 || (p.revents & POLLIN) == 0) break;
      const int conn = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (conn < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        break;
      }
      close(conn);
      ++closed;
    }
  }
  return closed;
}

}  // namespace asyncd::daemon
