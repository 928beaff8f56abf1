#pragma once

// What a test needs of a service manager: the notify socket a daemon sends
// READY=1, STATUS= and FDSTORE=1 (with descriptors) to, and a listening
// socket made as a .socket unit makes it, to pass as socket-activated.
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace asyncd::testing {

// The service manager's notify socket, as far as a test needs it.
class NotifySocket {
 public:
  struct Message {
    std::string text;
    std::vector<int> fds;  // owned by the caller
  };
  explicit NotifySocket(const std::string& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << strerror(errno);
  }
  ~NotifySocket() { close(fd_); }
  const std::string& path() const { return path_; }

  // The first message containing `what` within `timeout`; others are dropped
  // (their descriptors closed).
  std::optional<Message> WaitFor(const std::string& what, std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      char text[4096];
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
      iovec iov{text, sizeof text - 1};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      const ssize_t n = recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC);
      if (n < 0) continue;
      Message m{std::string(text, static_cast<size_t>(n)), {}};
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const int* fds = reinterpret_cast<const int*>(CMSG_DATA(c));
        m.fds.assign(fds, fds + count);
      }
      if (m.text.find(what) != std::string::npos) return m;
      for (int fd : m.fds) close(fd);
    }
    return std::nullopt;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

/// A listening unix socket at `path` with `mode`, as a .socket unit makes it.
inline int ListenSocket(const std::string& path, mode_t mode = 0666) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 4096) != 0 ||
      chmod(path.c_str(), mode) != 0) {
    ADD_FAILURE() << "bind/listen " << path << ": " << std::strerror(errno);
  }
  return fd;
}

}  // namespace asyncd::testing
