// The takeover socket (daemon/takeover.h) without the daemon: a successor's
// request reaches the handler once, and its answer's descriptors arrive as
// the same open files, in order; a refusal arrives with its reason; no
// listener, a request that is not one, and an answer that is not one are
// errors that name what happened. The socket file is the owner's alone
// (0600), replaces a stale one but never a live one, and goes with Stop(),
// which a handler may call itself.
#include "daemon/takeover.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

namespace asyncd::daemon {
namespace {

using ::testing::HasSubstr;

class TakeoverSocketTest : public ::testing::Test {
 protected:
  TakeoverSocketTest() {
    char tmpl[] = "/tmp/asyncd-takeover-socket-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/asyncd.sock.takeover";
  }
  ~TakeoverSocketTest() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string dir_, path_;
};

// Same open file: a write through one shows through the other.
bool SameOpenFile(int a, int b) {
  struct stat sa {};
  struct stat sb {};
  return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_ino == sb.st_ino &&
         sa.st_dev == sb.st_dev;
}

TEST_F(TakeoverSocketTest, TheAnswerCarriesTheSocketThenThePackage) {
  auto listener = TakeoverListener::Bind(path_);
  ASSERT_TRUE(listener.ok()) << listener.status();
  struct stat st {};
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  int sockets[2], pipe_fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets), 0);
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  std::atomic<int> calls{0};
  (*listener)->Start([&](int conn) {
    ++calls;
    (*listener)->Stop();  // as the daemon does, from the handler itself
    const int fds[] = {sockets[0], pipe_fds[0]};
    ASSERT_TRUE(
        SendTakeoverAnswer(conn, TakeoverKind::kHandedOver, kTakeoverSocketPathBound, {}, fds)
            .ok());
  });
  absl::StatusOr<TakenOver> got = RequestTakeover(path_, std::chrono::seconds(10));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(calls.load(), 1);
  EXPECT_TRUE(got->socket_path_bound);
  EXPECT_TRUE(SameOpenFile(got->socket_fd, sockets[0]));
  EXPECT_TRUE(SameOpenFile(got->package_fd, pipe_fds[0]));
  EXPECT_EQ(fcntl(got->socket_fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  // Stop() removed the file, so a successor can bind its own.
  EXPECT_FALSE(std::filesystem::exists(path_));
  auto successor = TakeoverListener::Bind(path_);
  EXPECT_TRUE(successor.ok()) << successor.status();
  for (int fd :
       {got->socket_fd, got->package_fd, sockets[0], sockets[1], pipe_fds[0], pipe_fds[1]}) {
    close(fd);
  }
}

TEST_F(TakeoverSocketTest, AStateLostAnswerCarriesTheSocketAndWhy) {
  auto listener = TakeoverListener::Bind(path_);
  ASSERT_TRUE(listener.ok()) << listener.status();
  int sockets[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets), 0);
  (*listener)->Start([&](int conn) {
    const int fds[] = {sockets[0]};
    (void)SendTakeoverAnswer(conn, TakeoverKind::kStateLost, 0, "too many descriptors", fds);
  });
  absl::StatusOr<TakenOver> got = RequestTakeover(path_, std::chrono::seconds(10));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->socket_path_bound);
  EXPECT_EQ(got->package_fd, -1);
  EXPECT_EQ(got->state_lost, "too many descriptors");
  EXPECT_TRUE(SameOpenFile(got->socket_fd, sockets[0]));
  close(got->socket_fd);
  close(sockets[0]);
  close(sockets[1]);
}

TEST_F(TakeoverSocketTest, ARefusalSaysWhy) {
  auto listener = TakeoverListener::Bind(path_);
  ASSERT_TRUE(listener.ok()) << listener.status();
  (*listener)->Start([](int conn) {
    (void)SendTakeoverAnswer(conn, TakeoverKind::kRefused, 0, "it is already stopping", {});
  });
  absl::StatusOr<TakenOver> got = RequestTakeover(path_, std::chrono::seconds(10));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition) << got.status();
  EXPECT_THAT(std::string(got.status().message()),
              HasSubstr("the daemon on " + path_ + " refused: it is already stopping"));
  // Refused, it still answers the next one.
  got = RequestTakeover(path_, std::chrono::seconds(10));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition) << got.status();
}

TEST_F(TakeoverSocketTest, NoListenerIsUnavailableAndSaysWhatToDo) {
  absl::StatusOr<TakenOver> got = RequestTakeover(path_, std::chrono::seconds(1));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_THAT(std::string(got.status().message()),
              HasSubstr("no daemon to take over: nothing answers on " + path_));
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("without --takeover"));
}

TEST_F(TakeoverSocketTest, AHandlerThatClosesWithoutAnAnswerIsUnavailable) {
  auto listener = TakeoverListener::Bind(path_);
  ASSERT_TRUE(listener.ok()) << listener.status();
  (*listener)->Start([](int) {});
  absl::StatusOr<TakenOver> got = RequestTakeover(path_, std::chrono::seconds(10));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("without an answer"));
}

TEST_F(TakeoverSocketTest, WhatIsNotARequestNeverReachesTheHandler) {
  auto listener = TakeoverListener::Bind(path_);
  ASSERT_TRUE(listener.ok()) << listener.status();
  std::atomic<int> calls{0};
  (*listener)->Start([&](int) { ++calls; });
  const int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
  ASSERT_EQ(connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(send(sock, "junk", 4, 0), 4);
  char buf[sizeof(TakeoverHeader) + kMaxTakeoverText];
  const ssize_t n = recv(sock, buf, sizeof(buf), 0);
  ASSERT_GE(n, static_cast<ssize_t>(sizeof(TakeoverHeader)));
  TakeoverHeader answer;
  std::memcpy(&answer, buf, sizeof(answer));
  EXPECT_EQ(answer.kind, TakeoverKind::kRefused);
  EXPECT_THAT(std::string(buf + sizeof(answer), n - sizeof(answer)),
              HasSubstr("no takeover request"));
  close(sock);
  EXPECT_EQ(calls.load(), 0);
}

TEST_F(TakeoverSocketTest, AStaleFileIsReplacedALiveOneIsNot) {
  {
    auto first = TakeoverListener::Bind(path_);
    ASSERT_TRUE(first.ok()) << first.status();
    auto second = TakeoverListener::Bind(path_);
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
    EXPECT_TRUE(std::filesystem::exists(path_)) << "a refused bind must not remove the live one";
  }
  // A killed daemon's file: bound, then its socket closed without unlink.
  const int stale = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
  ASSERT_EQ(bind(stale, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(stale);
  auto replaced = TakeoverListener::Bind(path_);
  EXPECT_TRUE(replaced.ok()) << replaced.status();
  // Not a socket: left alone.
  replaced->reset();
  std::ofstream(path_) << "mine";
  auto refused = TakeoverListener::Bind(path_);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("is not a socket"));
}

}  // namespace
}  // namespace asyncd::daemon
