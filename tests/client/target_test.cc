// NormalizeTarget maps every accepted target spelling to one gRPC target, and
// the status conversions keep code and message.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "asyncd/connection.h"

namespace asyncd::client {
namespace {

TEST(NormalizeTargetTest, EmptyIsDefaultSocket) {
  ::setenv("ASYNCD_SOCKET", "/tmp/x/asyncd.sock", 1);
  EXPECT_EQ(NormalizeTarget(""), "unix:/tmp/x/asyncd.sock");
  EXPECT_EQ(DefaultSocketPath(), "/tmp/x/asyncd.sock");
  ::unsetenv("ASYNCD_SOCKET");
  EXPECT_EQ(NormalizeTarget(""), "unix:" + DefaultSocketPath());
}

// Without $ASYNCD_SOCKET a non-root client connects to its user's daemon
// where one listens, else to the system daemon's socket. Returns what went
// wrong, or "" (run as a non-root uid).
std::string CheckDefaultFallsBackToTheSystemSocket(const std::string& xdg) {
  const std::string system = "/run/asyncd/asyncd.sock";
  const std::string own = xdg + "/asyncd/asyncd.sock";
  ::setenv("XDG_RUNTIME_DIR", xdg.c_str(), 1);
  ::unsetenv("ASYNCD_SOCKET");
  auto expect = [](const std::string& what, const std::string& want) {
    const std::string got = DefaultSocketPath();
    return got == want ? "" : what + ": got " + got + ", want " + want + "\n";
  };
  std::string errors = expect("no per-user socket", system);
  if (::mkdir((xdg + "/asyncd").c_str(), 0700) != 0) return "mkdir failed";
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", own.c_str());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return "bind failed";
  errors += expect("a socket file nobody listens on", system);
  ::listen(fd, 4);
  errors += expect("a listening per-user daemon", own);
  ::close(fd);
  errors += expect("a stale per-user socket", system);
  ::setenv("ASYNCD_SOCKET", "/tmp/x/asyncd.sock", 1);
  errors += expect("$ASYNCD_SOCKET", "/tmp/x/asyncd.sock");
  ::unsetenv("ASYNCD_SOCKET");
  return errors;
}

TEST(DefaultSocketTest, PerUserDaemonWhereOneListensElseTheSystemOne) {
  char tmpl[] = "/tmp/asyncd-xdg.XXXXXX";
  const std::string xdg = ::mkdtemp(tmpl);
  if (::geteuid() != 0) {
    EXPECT_EQ(CheckDefaultFallsBackToTheSystemSocket(xdg), "");
  } else {
    // Root's default is the system socket; check a user's from nobody.
    EXPECT_EQ(DefaultSocketPath(), "/run/asyncd/asyncd.sock");
    ASSERT_EQ(::chown(xdg.c_str(), 65534, 65534), 0);
    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(pipe_fds[0]);
      std::string errors = ::setgid(65534) == 0 && ::setuid(65534) == 0
                               ? CheckDefaultFallsBackToTheSystemSocket(xdg)
                               : "cannot become nobody";
      if (::write(pipe_fds[1], errors.data(), errors.size()) < 0) ::_exit(2);
      ::_exit(0);
    }
    ::close(pipe_fds[1]);
    std::string errors;
    char buf[512];
    for (ssize_t n; (n = ::read(pipe_fds[0], buf, sizeof buf)) > 0;) errors.append(buf, n);
    ::close(pipe_fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT_EQ(errors, "");
  }
  std::filesystem::remove_all(xdg);
}

TEST(NormalizeTargetTest, GrpcSchemesPassThrough) {
  EXPECT_EQ(NormalizeTarget("unix:/run/asyncd/asyncd.sock"), "unix:/run/asyncd/asyncd.sock");
  EXPECT_EQ(NormalizeTarget("unix:rel.sock"), "unix:rel.sock");
  EXPECT_EQ(NormalizeTarget("unix-abstract:asyncd"), "unix-abstract:asyncd");
  EXPECT_EQ(NormalizeTarget("dns:///example.com:443"), "dns:///example.com:443");
  EXPECT_EQ(NormalizeTarget("ipv4:127.0.0.1:5000"), "ipv4:127.0.0.1:5000");
  EXPECT_EQ(NormalizeTarget("ipv6:[::1]:5000"), "ipv6:[::1]:5000");
}

TEST(NormalizeTargetTest, BarePathsBecomeUnix) {
  EXPECT_EQ(NormalizeTarget("/run/asyncd/asyncd.sock"), "unix:/run/asyncd/asyncd.sock");
  EXPECT_EQ(NormalizeTarget("./a.sock"), "unix:./a.sock");
  EXPECT_EQ(NormalizeTarget("../a.sock"), "unix:../a.sock");
  EXPECT_EQ(NormalizeTarget("dir/a.sock"), "unix:dir/a.sock");
  EXPECT_EQ(NormalizeTarget("asyncd.sock"), "unix:asyncd.sock");
  // A path that happens to contain a colon is still a path.
  EXPECT_EQ(NormalizeTarget("/tmp/a:b.sock"), "unix:/tmp/a:b.sock");
}

TEST(NormalizeTargetTest, TildeExpandsHome) {
  ::setenv("HOME", "/home/someone", 1);
  EXPECT_EQ(NormalizeTarget("~/asyncd.sock"), "unix:/home/someone/asyncd.sock");
}

TEST(NormalizeTargetTest, HostPortIsTcp) {
  EXPECT_EQ(NormalizeTarget("localhost:50051"), "localhost:50051");
  EXPECT_EQ(NormalizeTarget("10.0.0.1:7"), "10.0.0.1:7");
  EXPECT_EQ(NormalizeTarget("[::1]:50051"), "[::1]:50051");
  EXPECT_FALSE(IsUnixTarget(NormalizeTarget("localhost:50051")));
  EXPECT_TRUE(IsUnixTarget(NormalizeTarget("/x.sock")));
  EXPECT_TRUE(IsUnixTarget("unix-abstract:x"));
}

TEST(ConnectTest, NeverNullAndDoesNotBlock) {
  EXPECT_NE(Connect("/nonexistent/dir/asyncd.sock"), nullptr);
  EXPECT_NE(Connect("localhost:1"), nullptr);
}

TEST(ToAbslStatusTest, KeepsCodeAndMessage) {
  EXPECT_TRUE(ToAbslStatus(grpc::Status::OK).ok());
  absl::Status s = ToAbslStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "max_sessions"));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "max_sessions");
  for (int code = 1; code <= 16; ++code) {
    EXPECT_EQ(static_cast<int>(
                  ToAbslStatus(grpc::Status(static_cast<grpc::StatusCode>(code), "m")).code()),
              code);
  }
}

TEST(CompletionToStatusTest, MapsOutcomes) {
  v1::Completion c;
  c.set_outcome(v1::OUTCOME_COMPLETED);
  EXPECT_TRUE(CompletionToStatus(c).ok());

  c.set_error_number(2);
  c.set_error_name("ENOENT");
  absl::Status s = CompletionToStatus(c, "open a");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("open a"), absl::string_view::npos);

  c.Clear();
  c.set_outcome(v1::OUTCOME_CANCELLED);
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kCancelled);
  c.set_outcome(v1::OUTCOME_TIMED_OUT);
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kDeadlineExceeded);
  c.set_outcome(v1::OUTCOME_FAILED);
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kInternal);
  c.set_error_number(12);  // ENOMEM
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kResourceExhausted);

  c.Clear();
  c.set_outcome(v1::OUTCOME_REJECTED);
  c.set_status_code(3);
  c.set_message("read.offset: must be >= -1");
  s = CompletionToStatus(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "read.offset: must be >= -1");

  c.Clear();  // outcome unknown to the client (e.g. a synthesized one)
  c.set_status_code(14);
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kUnavailable);
  c.set_status_code(0);
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kUnknown);
}

}  // namespace
}  // namespace asyncd::client
