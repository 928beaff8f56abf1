#include "daemon/takeover.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "daemon/handover.h"

namespace asyncd::daemon {
namespace {

// A peer has this long to send its request once connected.
constexpr int kRequestWaitMs = 5000;

absl::StatusOr<sockaddr_un> Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("takeover socket path must be 1..",
                                                   sizeof(addr.sun_path) - 1, " bytes: ", path));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

bool SomeoneListens(const sockaddr_un& addr) {
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool live = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return live;
}

std::optional<ucred> PeerOf(int conn) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return std::nullopt;
  return cred;
}

bool MayTakeOver(uid_t uid) { return uid == geteuid() || uid == 0; }

}  // namespace

absl::Status SendTakeoverAnswer(int conn, TakeoverKind kind, uint32_t flags, std::string_view text,
                                std::span<const int> fds) {
  text = text.substr(0, kMaxTakeoverText);
  TakeoverHeader header{
      .kind = kind, .flags = flags, .text_size = static_cast<uint32_t>(text.size())};
  std::string message(reinterpret_cast<const char*>(&header), sizeof(header));
  message.append(text);
  if (const int err = SendWithDescriptors(conn, message, fds); err != 0) {
    return absl::ErrnoToStatus(err, "takeover: sending the answer");
  }
  return absl::OkStatus();
}

TakeoverListener::TakeoverListener(int fd, std::string path, ino_t inode)
    : fd_(fd), path_(std::move(path)), inode_(inode) {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

absl::StatusOr<std::unique_ptr<TakeoverListener>> TakeoverListener::Bind(const std::string& path) {
  absl::StatusOr<sockaddr_un> addr = Address(path);
  if (!addr.ok()) return addr.status();
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a socket"));
    }
    if (SomeoneListens(*addr)) {
      return absl::FailedPreconditionError(
          absl::StrCat("another daemon answers takeovers on ", path));
    }
    unlink(path.c_str());
  }
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("socket for ", path));
  const mode_t old_umask = umask(0177);
  const int rc = bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr));
  umask(old_umask);
  if (rc != 0) {
    absl::Status s = absl::ErrnoToStatus(errno, absl::StrCat("bind ", path));
    close(fd);
    return s;
  }
  struct stat bound {};
  if (lstat(path.c_str(), &bound) != 0 || listen(fd, 8) != 0) {
    absl::Status s = absl::ErrnoToStatus(errno, absl::StrCat("listen ", path));
    close(fd);
    unlink(path.c_str());
    return s;
  }
  return std::unique_ptr<TakeoverListener>(new TakeoverListener(fd, path, bound.st_ino));
}

TakeoverListener::~TakeoverListener() {
  Stop();
  if (thread_.joinable()) thread_.join();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void TakeoverListener::Start(Handler handler) {
  handler_ = std::move(handler);
  thread_ = std::thread([this] { AcceptLoop(); });
}

void TakeoverListener::Stop() {
  if (stopping_.exchange(true)) return;
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  // From the handler the thread is ours, and out of its poll and accept.
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  close(fd_);
  fd_ = -1;
  // Only if the file is still ours: a successor may have bound its own.
  struct stat st;
  if (lstat(path_.c_str(), &st) == 0 && st.st_ino == inode_) unlink(path_.c_str());
}

void TakeoverListener::AcceptLoop() {
  pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  while (!stopping_.load()) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("takeover socket poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    const int conn = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) continue;
      spdlog::warn("accept on {}: {}", path_, std::strerror(errno));
      usleep(10000);
      continue;
    }
    Serve(conn);
  }
}

void TakeoverListener::Serve(int conn) {
  const std::optional<ucred> peer = PeerOf(conn);
  if (!peer || !MayTakeOver(peer->uid)) {
    const std::string why =
        peer ? absl::StrCat("uid ", peer->uid, " may not take over: only the daemon's own uid ",
                            geteuid(), " or root may")
             : std::string("its peer credentials are unknown");
    spdlog::warn("takeover refused (pid {}): {}", peer ? peer->pid : 0, why);
    (void)SendTakeoverAnswer(conn, TakeoverKind::kRefused, 0, why, {});
    close(conn);
    return;
  }
  pollfd fds[2] = {{conn, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  int ready;
  do {
    ready = poll(fds, 2, kRequestWaitMs);
  } while (ready < 0 && errno == EINTR);
  TakeoverHeader request;
  const ssize_t n =
      (ready > 0 && fds[0].revents != 0) ? recv(conn, &request, sizeof(request), MSG_DONTWAIT) : -1;
  if (n != static_cast<ssize_t>(sizeof(request)) || request.magic != kTakeoverMagic ||
      request.version != kTakeoverVersion || request.kind != TakeoverKind::kRequest) {
    if (fds[1].revents == 0) {
      spdlog::warn("takeover connection from pid {} sent no takeover request: closed", peer->pid);
      (void)SendTakeoverAnswer(conn, TakeoverKind::kRefused, 0,
                               absl::StrCat("no takeover request (version ", kTakeoverVersion,
                                            ") within ", kRequestWaitMs, " ms"),
                               {});
    }
    close(conn);
    return;
  }
  spdlog::info("takeover requested by pid {} (uid {})", peer->pid, peer->uid);
  handler_(conn);
  close(conn);
}

absl::StatusOr<TakenOver> RequestTakeover(const std::string& path, std::chrono::milliseconds wait) {
  absl::StatusOr<sockaddr_un> addr = Address(path);
  if (!addr.ok()) return addr.status();
  const int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (sock < 0) return absl::ErrnoToStatus(errno, "takeover: socket");
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{sock};
  if (connect(sock, reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    const int err = errno;
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot connect to the takeover socket ", path, ": ", std::strerror(err),
                       " (it is for the daemon's own user and root)"));
    }
    return absl::UnavailableError(absl::StrCat("no daemon to take over: nothing answers on ", path,
                                               " (", std::strerror(err),
                                               "); start asyncd without --takeover"));
  }
  // The socket's path is the config's: make sure whoever answers there is
  // trusted with our clients' files.
  const std::optional<ucred> daemon = PeerOf(sock);
  if (!daemon || !MayTakeOver(daemon->uid)) {
    return absl::PermissionDeniedError(absl::StrCat(
        path, " is served by ", daemon ? absl::StrCat("uid ", daemon->uid) : "an unknown peer",
        ", neither our uid ", geteuid(), " nor root: not taking over from it"));
  }
  TakeoverHeader request{.kind = TakeoverKind::kRequest};
  // A daemon that refuses us has answered and closed before reading (EPIPE):
  // its answer is still ours to read.
  const int send_error =
      send(sock, &request, sizeof(request), MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof(request))
          ? 0
          : errno;
  pollfd p{sock, POLLIN, 0};
  int ready;
  do {
    ready = poll(&p, 1, static_cast<int>(wait.count()));
  } while (ready < 0 && errno == EINTR);
  if (ready == 0) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the daemon on ", path, " did not answer within ", wait.count() / 1000,
        " s (still draining?); it may still hand over, to nobody: check that it runs"));
  }
  std::vector<char> buf(sizeof(TakeoverHeader) + kMaxTakeoverText);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 2)];
  iovec iov{buf.data(), buf.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  // A daemon that refused us closed with our request unread: the kernel
  // reports that first (ECONNRESET, once), its answer is still queued.
  ssize_t n;
  for (int resets = 0;;) {
    n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == ECONNRESET && resets++ == 0) continue;
    break;
  }
  std::vector<int> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); n >= 0 && c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const size_t at = fds.size();
    fds.resize(at + k);
    std::memcpy(fds.data() + at, CMSG_DATA(c), k * sizeof(int));
  }
  auto close_all = [&fds] {
    for (int fd : fds) close(fd);
  };
  if (n <= 0) {
    const int err = n < 0 ? errno : 0;
    close_all();
    if (send_error != 0) {
      return absl::UnavailableError(
          absl::StrCat("takeover: sending the request on ", path, ": ", std::strerror(send_error)));
    }
    return absl::UnavailableError(
        absl::StrCat("the daemon on ", path, " closed the connection without an answer",
                     err != 0 ? absl::StrCat(" (", std::strerror(err), ")") : std::string(),
                     ": did it crash? If it is gone, start asyncd without --takeover"));
  }
  TakeoverHeader header;
  if (static_cast<size_t>(n) < sizeof(header)) {
    close_all();
    return absl::InvalidArgumentError(absl::StrCat("takeover: a short answer (", n, " bytes)"));
  }
  std::memcpy(&header, buf.data(), sizeof(header));
  if (header.magic != kTakeoverMagic || header.version != kTakeoverVersion ||
      header.text_size != static_cast<size_t>(n) - sizeof(header) ||
      (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) != 0) {
    close_all();
    return absl::InvalidArgumentError(
        absl::StrCat("takeover: the answer from ", path, " is not one this asyncd reads (version ",
                     header.version, ", ours ", kTakeoverVersion, ")"));
  }
  const std::string text(buf.data() + sizeof(header), header.text_size);
  TakenOver got;
  got.socket_path_bound = (header.flags & kTakeoverSocketPathBound) != 0;
  switch (header.kind) {
    case TakeoverKind::kRefused:
      close_all();
      return absl::FailedPreconditionError(
          absl::StrCat("the daemon on ", path, " refused: ", text));
    case TakeoverKind::kHandedOver:
      if (fds.size() != 2) break;
      got.socket_fd = fds[0];
      got.package_fd = fds[1];
      return got;
    case TakeoverKind::kStateLost:
      if (fds.size() != 1) break;
      got.socket_fd = fds[0];
      got.state_lost = text;
      return got;
    case TakeoverKind::kRequest:
      break;
  }
  close_all();
  return absl::InvalidArgumentError(absl::StrCat("takeover: answer kind ",
                                                 static_cast<int>(header.kind), " with ",
                                                 fds.size(), " descriptors from ", path));
}

}  // namespace asyncd::daemon
