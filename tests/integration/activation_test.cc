// Socket activation outside a container: the test plays systemd, binds the
// socket itself and hands it to the daemon as fd 3 with LISTEN_FDS. The
// daemon serves on it (peer credentials included), warns where the .socket
// unit's path and permissions differ from its config (they cannot apply), and
// refuses a descriptor that is not a listening unix stream socket. With a
// config error it closes the connections pending on the socket (else systemd
// starts it again at once for them, until asyncd.socket fails) and exits 2,
// changing nothing else. A handover package systemd passes from the
// descriptor store next to the socket (named asyncd-handover, before or after
// it) is never taken for the listener, and the daemon does not keep it open.
#include <gmock/gmock.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <optional>

#include "absl/strings/str_cat.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/service_manager.h"
#include "tests/integration/security_util.h"

namespace asyncd::testing {
namespace {

using client::Client;
using ::testing::HasSubstr;
using ::testing::Not;

std::string TempDir() {
  char tmpl[] = "/tmp/asyncd-act.XXXXXX";
  return mkdtemp(tmpl);
}

TEST(ActivationTest, ServesTheInheritedSocketAndSaysWhereTheUnitOverridesTheConfig) {
  const std::string dir = TempDir();
  const std::string unit_path = dir + "/asyncd.sock";
  const int fd = ListenSocket(unit_path, 0600);
  ConfigFile config("[server]\nsocket_mode = 0o660\nsocket_group = \"nogroup\"\n");
  std::vector<std::string> args = config.Args();
  {
    // --socket names another path: the descriptor wins, with a warning.
    Daemon daemon(BackendMode::kIoUring,
                  DaemonOptions{.extra_args = args, .dir = dir, .listen_fd = fd,
                                .configured_socket = dir + "/configured.sock"});
    close(fd);  // the daemon holds its own copy
    ASSERT_TRUE(daemon.Alive()) << daemon.Log();
    Client c(daemon.channel());
    auto s = c.OpenSession("activated");
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(c.Submit(*s, NopOp()).ok());
    auto sessions = c.ListSessions();
    ASSERT_TRUE(sessions.ok()) << sessions.status();
    ASSERT_EQ(sessions->size(), 1u);
    EXPECT_EQ(sessions->front().uid(), getuid()) << "identity comes from SO_PEERCRED";
    EXPECT_EQ(sessions->front().pid(), static_cast<uint32_t>(getpid()));
    const std::string log = daemon.Log();
    EXPECT_THAT(log, HasSubstr(absl::StrCat("listening on ", unit_path,
                                            " (from the .socket unit), not on the configured "
                                            "server.socket ", dir, "/configured.sock")));
    EXPECT_THAT(log, HasSubstr("has mode 0600, not server.socket_mode 0660"));
    EXPECT_THAT(log, HasSubstr("SocketMode="));
    EXPECT_THAT(log, HasSubstr(absl::StrCat("has group ", getgid(), ", not server.socket_group's 65534")));
    EXPECT_THAT(log, HasSubstr("SocketGroup="));
    EXPECT_EQ(daemon.Stop(), 0);
  }
  struct stat st;
  EXPECT_EQ(lstat(unit_path.c_str(), &st), 0) << "the unit's socket file is systemd's to remove";
  std::filesystem::remove_all(dir);
}

TEST(ActivationTest, MatchingUnitAndConfigRaiseNoWarning) {
  const std::string dir = TempDir();
  const int fd = ListenSocket(dir + "/asyncd.sock", 0660);
  Daemon daemon(BackendMode::kThreadPoolOnly, DaemonOptions{.dir = dir, .listen_fd = fd});
  close(fd);
  ASSERT_TRUE(daemon.Alive()) << daemon.Log();
  Client c(daemon.channel());
  auto s = c.OpenSession("activated");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(daemon.Log(), Not(HasSubstr("socket activation")));
  daemon.Stop();
  std::filesystem::remove_all(dir);
}

TEST(ActivationTest, AHandoverPackageNextToTheSocketIsNotAdoptedAndAnEmptyOneIsRefused) {
  for (const bool handover_first : {true, false}) {
    SCOPED_TRACE(handover_first ? "handover package at fd 3, socket at 4"
                                : "socket at fd 3, handover package at 4");
    const std::string dir = TempDir();
    const int listening = ListenSocket(dir + "/asyncd.sock", 0660);
    // A package's receiving end is a unix socket too, which is what makes it
    // a candidate for the listener unless its name rules it out. This one
    // holds nothing.
    int package[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, package), 0);
    std::vector<std::pair<int, std::string>> passed = {{listening, "asyncd.socket"},
                                                       {package[1], "asyncd-handover"}};
    if (handover_first) std::swap(passed[0], passed[1]);
    {
      Daemon daemon(BackendMode::kThreadPoolOnly, DaemonOptions{.dir = dir, .passed_fds = passed});
      close(listening);
      close(package[1]);
      ASSERT_TRUE(daemon.Alive()) << daemon.Log();
      Client c(daemon.channel());
      auto s = c.OpenSession("activated");
      ASSERT_TRUE(s.ok()) << s.status();
      EXPECT_TRUE(c.Submit(*s, NopOp()).ok());
      // It closed its copy of the package's end before serving: ours hangs up.
      pollfd p{package[0], 0, 0};
      EXPECT_EQ(poll(&p, 1, 5000), 1);
      EXPECT_TRUE(p.revents & POLLHUP) << "the daemon still holds the handover package";
      // Nothing was packed into it: cut short.
      EXPECT_THAT(daemon.Log(), HasSubstr("the predecessor's handover is refused, starting without "
                                          "its state"));
      EXPECT_THAT(daemon.Log(), Not(HasSubstr("socket activation")));
      EXPECT_EQ(daemon.Stop(), 0);
    }
    close(package[0]);
    std::filesystem::remove_all(dir);
  }
}

// Runs the daemon with `fd` as its activated descriptor; returns its exit
// status and output.
// Waits up to 10 s for child `pid` to exit: its wait status, or nullopt
// when it kept running (then it is killed).
std::optional<int> WaitForExit(pid_t pid) {
  int status = -1;
  for (int i = 0; i < 200 && waitpid(pid, &status, WNOHANG) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (kill(pid, 0) != 0) return status;
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return std::nullopt;
}

std::pair<int, std::string> RunActivated(int fd) {
  const std::string dir = TempDir();
  const std::string log = dir + "/log";
  const pid_t pid = fork();
  if (pid == 0) {
    const int out = open(log.c_str(), O_WRONLY | O_CREAT, 0644);
    dup2(out, 1);
    dup2(out, 2);
    // dup2 onto itself would keep close-on-exec.
    if (fd == 3 ? fcntl(3, F_SETFD, 0) != 0 : dup2(fd, 3) != 3) _exit(125);
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    setenv("STATE_DIRECTORY", dir.c_str(), 1);
    const std::string socket = dir + "/asyncd.sock", root = dir;
    execl(ASYNCD_BINARY, ASYNCD_BINARY, "--socket", socket.c_str(), "--root", root.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  const std::optional<int> exited = WaitForExit(pid);
  if (!exited) ADD_FAILURE() << "the daemon kept running on a bad descriptor";
  const int status = exited.value_or(-1);
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::filesystem::remove_all(dir);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text};
}

TEST(ActivationTest, RefusesADescriptorThatIsNotAListeningUnixSocket) {
  const int file = open("/dev/null", O_RDONLY | O_CLOEXEC);
  auto [status, log] = RunActivated(file);
  close(file);
  EXPECT_NE(status, 0);
  EXPECT_THAT(log, HasSubstr("descriptor 3 is not a listening unix stream socket"));

  const int unlistened = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);  // never listen()ed
  std::tie(status, log) = RunActivated(unlistened);
  close(unlistened);
  EXPECT_NE(status, 0);
  EXPECT_THAT(log, HasSubstr("not a listening unix stream socket"));
}

TEST(ActivationTest, ConfigErrorClosesPendingConnectionsAndExits2) {
  const std::string dir = TempDir();
  const std::string unit_path = dir + "/asyncd.sock";
  const int fd = ListenSocket(unit_path, 0660);
  // The connection that made systemd start the daemon, waiting in the queue.
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", unit_path.c_str());
  const int pending = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_EQ(connect(pending, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ConfigFile config("[server]\ndrain_grace_ms = 10\nbogus = 1\n");
  const std::string log = dir + "/log", own_socket = dir + "/own.sock", root = dir + "/root",
                    state = dir + "/state";
  const pid_t pid = fork();
  if (pid == 0) {
    const int out = open(log.c_str(), O_WRONLY | O_CREAT, 0644);
    dup2(out, 1);
    dup2(out, 2);
    // dup2 onto itself would keep close-on-exec.
    if (fd == 3 ? fcntl(3, F_SETFD, 0) != 0 : dup2(fd, 3) != 3) _exit(125);
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    setenv("STATE_DIRECTORY", state.c_str(), 1);
    execl(ASYNCD_BINARY, ASYNCD_BINARY, "--config", config.path().c_str(), "--socket",
          own_socket.c_str(), "--root", root.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const std::optional<int> exited = WaitForExit(pid);
  ASSERT_TRUE(exited) << "the daemon kept running with a bad config";
  const int status = *exited;
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_THAT(text, HasSubstr(config.path() + ":3: unknown key server.bogus"));
  EXPECT_THAT(text, HasSubstr("config error: closed 1 pending connection(s) on the "
                              "socket-activated listener, so systemd does not restart asyncd "
                              "for them"));
  // The pending connection was accepted and closed: its reader sees the end.
  const timeval five_s{5, 0};
  setsockopt(pending, SOL_SOCKET, SO_RCVTIMEO, &five_s, sizeof(five_s));
  char byte;
  const ssize_t n = recv(pending, &byte, 1, 0);
  EXPECT_TRUE(n == 0 || (n < 0 && errno == ECONNRESET)) << n << " " << std::strerror(errno);
  close(pending);
  // Nothing else changed: the unit's socket still listens, and the daemon
  // created no socket, root or state directory of its own.
  const int later = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_EQ(connect(later, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
      << std::strerror(errno);
  close(later);
  close(fd);
  EXPECT_FALSE(std::filesystem::exists(own_socket));
  EXPECT_FALSE(std::filesystem::exists(root));
  EXPECT_FALSE(std::filesystem::exists(state));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace asyncd::testing
