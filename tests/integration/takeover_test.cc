// A live restart without systemd: `asyncd --takeover`, started with the
// running daemon's config, asks it on its takeover socket for its sessions,
// handles and listening socket, and serves in its place on the very same
// socket: the old daemon exits 0, the socket file is never removed or bound
// anew, a connection attempt made meanwhile is never refused, and clients
// carry on with the same session ids and handles. A takeover that cannot
// happen (no daemon, another user) fails with a clear message and exit
// status 1, and a daemon that refused serves on.
#include <gmock/gmock.h>
#include <grp.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <atomic>
#include <thread>

#include "tests/integration/daemon_fixture.h"
#include "tests/integration/security_util.h"
#include "tests/integration/service_manager.h"

namespace asyncd::testing {
namespace {

using std::chrono::seconds;
using ::testing::HasSubstr;

struct Finished {
  int status = -1;     // exit status; -1 killed or timed out
  std::string output;  // stdout and stderr
};

// Runs asyncd with `args` to its end (at most 60 s), as `uid` when given
// (needs root; gid 65534, no supplementary groups).
Finished RunAsyncd(std::vector<std::string> args, std::optional<uid_t> uid = std::nullopt) {
  args.insert(args.begin(), ASYNCD_BINARY);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return {};
  // Another user may not reach the binary by its path.
  const int exe = open(ASYNCD_BINARY, O_PATH | O_CLOEXEC);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(out[1], 2);
    if (uid && (setgroups(0, nullptr) != 0 || setresgid(65534, 65534, 65534) != 0 ||
                setresuid(*uid, *uid, *uid) != 0)) {
      _exit(124);
    }
    syscall(SYS_execveat, exe, "", argv.data(), environ, AT_EMPTY_PATH);
    _exit(127);
  }
  close(out[1]);
  close(exe);
  Finished run;
  const auto until = std::chrono::steady_clock::now() + seconds(60);
  for (;;) {
    pollfd p{out[0], POLLIN, 0};
    if (poll(&p, 1, 100) > 0) {
      char buf[4096];
      const ssize_t n = read(out[0], buf, sizeof buf);
      if (n <= 0) break;
      run.output.append(buf, static_cast<size_t>(n));
    }
    if (std::chrono::steady_clock::now() > until) {
      kill(pid, SIGKILL);
      break;
    }
  }
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

// Connects to `path` again and again until stopped, counting the attempts
// the kernel refused (ECONNREFUSED: nothing listens; ENOENT: no file).
class ConnectProber {
 public:
  explicit ConnectProber(std::string path) : path_(std::move(path)) {
    thread_ = std::thread([this] {
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
      while (!stop_.load()) {
        const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
          ++connected_;
        } else {
          ++refused_;
          last_error_ = errno;
        }
        close(fd);
        // Gently: every attempt waits in the backlog until someone accepts.
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  ~ConnectProber() { Stop(); }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int connected() const { return connected_.load(); }
  int refused() const { return refused_.load(); }
  int last_error() const { return last_error_.load(); }

 private:
  const std::string path_;
  std::atomic<bool> stop_{false};
  std::atomic<int> connected_{0}, refused_{0}, last_error_{0};
  std::thread thread_;
};

ino_t InodeOf(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

class TakeoverTest : public ::testing::TestWithParam<BackendMode> {
 protected:
  TakeoverTest() {
    char tmpl[] = "/tmp/asyncd-takeover-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  ~TakeoverTest() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // Every daemon here runs on dir_/asyncd.sock with dir_/root: the same
  // config, as a takeover needs.
  std::unique_ptr<Daemon> Start(bool takeover = false) {
    DaemonOptions options{.extra_args = {"--log-level", "info"}, .dir = dir_};
    if (takeover) options.extra_args.push_back("--takeover");
    return std::make_unique<Daemon>(GetParam(), options);
  }
  std::vector<std::string> SameFlags() const {
    std::vector<std::string> flags = {"--socket", dir_ + "/asyncd.sock", "--root", dir_ + "/root",
                                      "--takeover"};
    if (GetParam() == BackendMode::kThreadPoolOnly) flags.push_back("--no-io-uring");
    return flags;
  }
  std::string socket() const { return dir_ + "/asyncd.sock"; }
  std::string takeover_socket() const { return dir_ + "/asyncd.sock.takeover"; }

  std::string dir_;
};

TEST_P(TakeoverTest, SessionsHandlesAndTheSocketPassToTheNewProcess) {
  auto first = Start();
  struct stat st {};
  ASSERT_EQ(lstat(takeover_socket().c_str(), &st), 0) << first->Log();
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // A client connected before the takeover, which keeps its channel.
  client::Client early(first->NewChannel());
  const uint64_t one = *early.OpenSession("one", 600000);
  const uint32_t data = *early.Open(one, "data", v1::OPEN_MODE_READ_WRITE, {.create = true});
  ASSERT_TRUE(early.Write(one, data, -1, "hello ").ok());  // the offset moves to 6
  ASSERT_EQ(mkfifo((first->root() + "/fifo").c_str(), 0600), 0);
  const uint32_t fifo = *early.Open(one, "fifo", v1::OPEN_MODE_READ_WRITE);
  const ino_t inode = InodeOf(socket());
  ASSERT_NE(inode, 0u);

  ConnectProber prober(socket());
  ASSERT_TRUE(WaitFor([&] { return prober.connected() > 0; }));
  auto next = Start(/*takeover=*/true);
  EXPECT_EQ(first->WaitExit(seconds(30)), 0) << first->Log();
  ASSERT_TRUE(next->Alive()) << next->Log();
  client::Client d(next->NewChannel());
  ASSERT_TRUE(KeepAliveRetried(d, one).ok()) << next->Log();
  const int connected_during = prober.connected();
  prober.Stop();
  EXPECT_EQ(prober.refused(), 0) << "last error: " << std::strerror(prober.last_error());
  EXPECT_GT(connected_during, 0);
  // The very same socket: never removed, never bound anew.
  EXPECT_EQ(InodeOf(socket()), inode);
  const std::string log = next->Log();  // both daemons write there
  EXPECT_THAT(log, HasSubstr("takeover requested by pid"));
  EXPECT_THAT(log, HasSubstr("handed over 1 sessions and 2 handles"));
  EXPECT_THAT(log, HasSubstr("listening on the predecessor's socket"));
  EXPECT_THAT(log, HasSubstr("restored the predecessor's 1 sessions and 2 handles"));

  // The same session and handles: the file's offset carried on, the FIFO works.
  ExpectHandlesCarryOn(d, one, data, one, fifo);
  // The client from before carries on, on its own channel, after a reconnect.
  ASSERT_TRUE(KeepAliveRetried(early, one).ok());
  auto again = early.Read(one, data, 0, 64);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, "hello world");
  auto stats = d.GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->last_restart().sessions(), 1u);
  EXPECT_EQ(stats->last_restart().handles(), 2u);
  EXPECT_EQ(stats->last_restart().error(), "");

  // The new process answers takeovers in turn, on the same path, and owns
  // the socket file as its predecessor did: a stop removes it.
  ASSERT_TRUE(WaitFor([&] { return InodeOf(takeover_socket()) != 0; }));
  auto third = Start(/*takeover=*/true);
  EXPECT_EQ(next->WaitExit(seconds(30)), 0) << next->Log();
  client::Client e(third->NewChannel());
  ASSERT_TRUE(KeepAliveRetried(e, one).ok()) << third->Log();
  EXPECT_EQ(*e.Read(one, data, 0, 64), "hello world");
  EXPECT_EQ(InodeOf(socket()), inode);
  EXPECT_EQ(third->Stop(), 0);
  EXPECT_EQ(InodeOf(socket()), 0u) << "a stop leaves no socket file behind";
  EXPECT_EQ(InodeOf(takeover_socket()), 0u);
}

// A daemon that had its socket from socket activation passes it on as such:
// the socket's file is the .socket unit's, and stays when the successor stops.
TEST_P(TakeoverTest, ASocketActivatedDaemonPassesTheUnitsSocketOn) {
  const int fd = ListenSocket(socket(), 0660);
  auto first = std::make_unique<Daemon>(
      GetParam(),
      DaemonOptions{.extra_args = {"--log-level", "info"}, .dir = dir_, .listen_fd = fd});
  close(fd);  // the daemon holds its own copy
  client::Client c(first->NewChannel());
  const uint64_t one = *c.OpenSession("one");
  const ino_t inode = InodeOf(socket());
  auto next = Start(/*takeover=*/true);
  EXPECT_EQ(first->WaitExit(seconds(30)), 0) << first->Log();
  client::Client d(next->NewChannel());
  ASSERT_TRUE(KeepAliveRetried(d, one).ok()) << next->Log();
  EXPECT_THAT(next->Log(), HasSubstr("listening on socket-activated descriptor"));
  EXPECT_EQ(next->Stop(), 0);
  EXPECT_EQ(InodeOf(socket()), inode) << "the unit's socket file is systemd's to remove";
}

TEST_P(TakeoverTest, WithNoDaemonRunningItFailsAndSaysSo) {
  const Finished run = RunAsyncd(SameFlags());
  EXPECT_EQ(run.status, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("--takeover: no daemon to take over: nothing answers on " +
                                    takeover_socket()));
  EXPECT_THAT(run.output, HasSubstr("start asyncd without --takeover"));
  EXPECT_EQ(InodeOf(socket()), 0u) << "it must not bind a socket of its own";
}

// server.takeover_socket = "off": no takeover socket, and --takeover with
// that config is a config error.
TEST_P(TakeoverTest, OffMeansNoTakeoverSocket) {
  ConfigFile config("[server]\ntakeover_socket = \"off\"\n");
  DaemonOptions options{.extra_args = config.Args(), .dir = dir_};
  Daemon first(GetParam(), options);
  ASSERT_TRUE(first.Alive()) << first.Log();
  EXPECT_EQ(InodeOf(takeover_socket()), 0u);
  std::vector<std::string> flags = SameFlags();
  const std::vector<std::string> config_args = config.Args();
  flags.insert(flags.end(), config_args.begin(), config_args.end());
  const Finished run = RunAsyncd(flags);
  EXPECT_EQ(run.status, 2) << run.output;
  EXPECT_THAT(run.output, HasSubstr("--takeover: server.takeover_socket is \"off\""));
  EXPECT_TRUE(first.Alive());
}

TEST_P(TakeoverTest, AnotherUserCannotTakeOverAndTheDaemonServesOn) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run asyncd --takeover as another uid";
  auto first = Start();
  client::Client c(first->NewChannel());
  const uint64_t one = *c.OpenSession("one");
  // Past the directory: the socket file's own mode (0600) keeps them out.
  ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
  Finished run = RunAsyncd(SameFlags(), 65534);
  EXPECT_EQ(run.status, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("cannot connect to the takeover socket " + takeover_socket() +
                                    ": Permission denied"));
  // Past the file's mode too: the daemon vets the peer (SO_PEERCRED) itself.
  ASSERT_EQ(chmod(takeover_socket().c_str(), 0666), 0);
  run = RunAsyncd(SameFlags(), 65534);
  EXPECT_EQ(run.status, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("refused: uid 65534 may not take over: only the daemon's own "
                                    "uid 0 or root may"));
  EXPECT_THAT(first->Log(), HasSubstr("takeover refused"));
  // It serves on, with its session.
  EXPECT_TRUE(first->Alive());
  EXPECT_TRUE(c.KeepAlive(one).ok());
  EXPECT_TRUE(c.OpenSession("two").ok());
  EXPECT_EQ(first->Stop(), 0);
}

INSTANTIATE_TEST_SUITE_P(Backends, TakeoverTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

}  // namespace
}  // namespace asyncd::testing
