// The daemon's operator life cycle on the real binary: --check-config
// validates file and flags as a start would (exit 0 and "ok", or 2 and
// "FILE:LINE: reason") and touches nothing; a config error at start exits 2;
// a Drain ends the daemon with status 0 once it is over, its own socket file
// removed (a socket-activated one left to systemd); `asyncctl drain` prints
// where the manifest is, or why there is none.
#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <future>

#include "tests/integration/daemon_fixture.h"
#include "tests/integration/security_util.h"

namespace asyncd::testing {
namespace {

using client::Client;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;

struct Ran {
  int exit_code = -1;
  std::string out, err;
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Runs `argv` with `env` added, stdout and stderr captured apart.
Ran Exec(std::vector<std::string> argv, std::vector<std::pair<std::string, std::string>> env = {}) {
  char tmpl[] = "/tmp/asyncd-run.XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string out = dir + "/out", err = dir + "/err";
  // Built before fork: the child of a threaded process must not allocate.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string var(*e);
    bool replaced = false;
    for (const auto& added : env) replaced |= var.rfind(added.first + "=", 0) == 0;
    if (!replaced) env_strings.push_back(var);
  }
  for (const auto& [name, value] : env) env_strings.push_back(name + "=" + value);
  std::vector<char*> args, envp;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(open(out.c_str(), O_WRONLY | O_CREAT, 0644), 1);
    dup2(open(err.c_str(), O_WRONLY | O_CREAT, 0644), 2);
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  int status = -1;
  waitpid(pid, &status, 0);
  Ran r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, Slurp(out), Slurp(err)};
  std::filesystem::remove_all(dir);
  return r;
}

// A scratch directory: --socket, --root and STATE_DIRECTORY beneath it,
// none of which exist yet.
class Scratch {
 public:
  Scratch() {
    char tmpl[] = "/tmp/asyncd-life.XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  ~Scratch() { std::filesystem::remove_all(dir_); }
  std::vector<std::string> Args(std::vector<std::string> more) const {
    std::vector<std::string> args = {ASYNCD_BINARY, "--socket", dir_ + "/run/asyncd.sock", "--root",
                                     dir_ + "/root"};
    args.insert(args.end(), more.begin(), more.end());
    return args;
  }
  std::vector<std::pair<std::string, std::string>> Env() const {
    return {{"STATE_DIRECTORY", dir_ + "/state"}};
  }
  bool Untouched() const { return std::filesystem::is_empty(dir_); }

 private:
  std::string dir_;
};

TEST(CheckConfigTest, AValidConfigPrintsOkAndTouchesNothing) {
  Scratch scratch;
  ConfigFile config("[server]\ndrain_manifests_keep = 3\n[limits]\nmax_sessions = 8\n");
  const Ran r = Exec(scratch.Args({"--check-config", "--config", config.path()}), scratch.Env());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ok\n");
  EXPECT_EQ(r.err, "");
  EXPECT_TRUE(scratch.Untouched()) << "no socket, root or state directory";
}

TEST(CheckConfigTest, ErrorsExit2WithFileLineAndTouchNothing) {
  Scratch scratch;
  ConfigFile bad_key("[server]\nlog_level = \"info\"\nbogus = 1\n");
  Ran r = Exec(scratch.Args({"--check-config", "--config", bad_key.path()}), scratch.Env());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "asyncd: " + bad_key.path() + ":3: unknown key server.bogus\n");

  ConfigFile bad_value("[server]\ndrain_manifests_keep = -1\n");
  r = Exec(scratch.Args({"--check-config", "--config", bad_value.path()}), scratch.Env());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "asyncd: " + bad_value.path() +
                       ":2: server.drain_manifests_keep must be an integer in [0, 100000]\n");

  // Flags count, and so do checks across keys.
  r = Exec(scratch.Args({"--check-config", "--tcp", "127.0.0.1:0"}), scratch.Env());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("server.tcp (127.0.0.1:0) requires TLS"));
  r = Exec(scratch.Args({"--check-config", "--log-level", "loud"}), scratch.Env());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--log-level"));

  r = Exec(scratch.Args({"--check-config", "--config", "/nonexistent/asyncd.toml"}), scratch.Env());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("/nonexistent/asyncd.toml"));
  EXPECT_TRUE(scratch.Untouched());
}

TEST(CheckConfigTest, HelpDocumentsTheExitStatus) {
  const Ran r = Exec({ASYNCD_BINARY, "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.out, HasSubstr("--check-config"));
  EXPECT_THAT(r.out, HasSubstr("2 config\nerror"));
}

TEST(StartTest, AConfigErrorExits2AndTouchesNothing) {
  Scratch scratch;
  ConfigFile bad("[limits]\nmax_sessions = 0\n");
  const Ran r = Exec(scratch.Args({"--config", bad.path()}), scratch.Env());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "asyncd: " + bad.path() + ":2: limits.max_sessions must be an integer in [1, 65535]\n");
  EXPECT_TRUE(scratch.Untouched());
  EXPECT_EQ(Exec(scratch.Args({"--no-such-flag"}), scratch.Env()).exit_code, 2);
  EXPECT_TRUE(scratch.Untouched());
}

// An op that keeps the daemon's drain busy: a 60 s timeout on a unary
// Submit (cancelled at once by a drain). Returns once it is in flight.
std::future<absl::StatusOr<v1::Completion>> InFlight(Client& client) {
  const uint64_t s = *client.OpenSession("busy");
  auto pending = std::async(std::launch::async,
                            [&client, s] { return client.Submit(s, TimeoutOp(seconds(60))); });
  EXPECT_TRUE(WaitFor([&] {
    auto all = client.ListAll(v1::OpSelector());
    return all.ok() && !all->empty();
  }));
  return pending;
}

bool Connects(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

class DrainEndsTheDaemonTest : public ::testing::TestWithParam<BackendMode> {};

// A datagram socket playing systemd's NOTIFY_SOCKET: what the daemon told it.
class NotifySocket {
 public:
  NotifySocket() {
    char tmpl[] = "/tmp/asyncd-notify.XXXXXX";
    dir_ = mkdtemp(tmpl);
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path().c_str());
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  ~NotifySocket() {
    close(fd_);
    std::filesystem::remove_all(dir_);
  }
  std::string path() const { return dir_ + "/notify"; }
  // Every message received so far, in order, each followed by "|".
  std::string Received() {
    char buf[4096];
    for (ssize_t n; (n = recv(fd_, buf, sizeof(buf), 0)) > 0;) text_.append(buf, n) += "|";
    return text_;
  }

 private:
  std::string dir_, text_;
  int fd_ = -1;
};

TEST_P(DrainEndsTheDaemonTest, ItExits0AndItsSocketIsGone) {
  NotifySocket notify;
  Daemon daemon(GetParam(), DaemonOptions{.extra_args = {"--log-level", "info"},
                                          .env = {{"NOTIFY_SOCKET", notify.path()}}});
  Client client(daemon.channel());
  auto pending = InFlight(client);
  const auto start = std::chrono::steady_clock::now();
  auto drained = client.Drain(2000);
  ASSERT_TRUE(drained.ok()) << drained.status();
  EXPECT_EQ(pending.get()->end_reason(), v1::END_REASON_DRAIN);
  // Orderly, within the grace (the op was cancelled at once) and a margin.
  EXPECT_EQ(daemon.WaitExit(seconds(5)), 0) << daemon.Log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(7));
  const std::string log = daemon.Log();
  EXPECT_THAT(log, HasSubstr("drained: 1 in flight at start, 1 cancelled, manifest " +
                             drained->manifest_path()));
  EXPECT_THAT(log, HasSubstr("drained (Drain RPC): stopping"));
  EXPECT_THAT(log, HasSubstr("asyncd stopped"));
  // systemd heard it stop: STOPPING=1 after READY=1.
  const std::string told = notify.Received();
  ASSERT_NE(told.find("READY=1"), std::string::npos) << told;
  EXPECT_NE(told.find("STOPPING=1", told.find("READY=1")), std::string::npos) << told;
  // It removed the socket file it bound: a second client finds no daemon.
  EXPECT_FALSE(std::filesystem::exists(daemon.socket()));
  EXPECT_FALSE(Connects(daemon.socket()));
  Client late(daemon.NewChannel());
  EXPECT_EQ(late.GetStats().status().code(), absl::StatusCode::kUnavailable);
}

TEST_P(DrainEndsTheDaemonTest, ASocketSystemdHandedItStays) {
  char tmpl[] = "/tmp/asyncd-life.XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string path = dir + "/asyncd.sock";
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  {
    Daemon daemon(GetParam(), DaemonOptions{.dir = dir, .listen_fd = fd});
    Client client(daemon.channel());
    auto drained = client.Drain(100);
    ASSERT_TRUE(drained.ok()) << drained.status();
    EXPECT_EQ(daemon.WaitExit(seconds(5)), 0) << daemon.Log();
    // systemd's socket: still there and listening, for the next daemon.
    EXPECT_TRUE(std::filesystem::exists(path));
    EXPECT_TRUE(Connects(path));
  }
  close(fd);
  std::filesystem::remove_all(dir);
}

TEST_P(DrainEndsTheDaemonTest, AsyncctlDrainPrintsTheManifest) {
  Daemon daemon(GetParam());
  Client client(daemon.channel());
  auto pending = InFlight(client);
  const Ran r = Exec({ASYNCCTL_BINARY, "--socket", daemon.socket(), "drain", "--grace", "1s"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string prefix = daemon.dir() + "/state/drain-manifest-";
  const size_t at = r.out.find("manifest:");
  ASSERT_NE(at, std::string::npos) << r.out;
  const size_t value = r.out.find(prefix, at);
  ASSERT_NE(value, std::string::npos) << r.out;
  const std::string path = r.out.substr(value, r.out.find('\n', value) - value);
  EXPECT_TRUE(std::filesystem::exists(path)) << path;
  v1::DrainManifest manifest;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(Slurp(path), &manifest).ok());
  ASSERT_EQ(manifest.ops_size(), 1);
  EXPECT_EQ(manifest.ops(0).kind(), v1::OP_KIND_TIMEOUT);
  EXPECT_EQ(manifest.ops(0).end_reason(), v1::END_REASON_DRAIN);
  EXPECT_EQ(daemon.WaitExit(seconds(5)), 0) << daemon.Log();
  (void)pending.get();

  // Nothing in flight: no manifest, and -o json says so with an empty path.
  Daemon idle(GetParam());
  const Ran json =
      Exec({ASYNCCTL_BINARY, "--socket", idle.socket(), "drain", "--grace", "1s", "-o", "json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  v1::DrainResponse response;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.out, &response).ok()) << json.out;
  EXPECT_EQ(response.inflight_at_start(), 0u);
  EXPECT_EQ(response.manifest_path(), "");
  EXPECT_THAT(json.out, HasSubstr("\"manifest_path\": \"\""));
  EXPECT_EQ(idle.WaitExit(seconds(5)), 0) << idle.Log();
  EXPECT_FALSE(std::filesystem::exists(idle.dir() + "/state")) << "nothing written";
}

// server.drain_manifests_keep needs a restart: a reload says so and the
// running value stays.
TEST(DrainManifestsKeepTest, AReloadLeavesItAndSaysItNeedsARestart) {
  ConfigFile config("[server]\ndrain_manifests_keep = 1\n");
  std::vector<std::string> args = config.Args();
  args.insert(args.end(), {"--log-level", "info"});
  Daemon daemon(BackendMode::kThreadPoolOnly, args);
  Client client(daemon.channel());
  std::ofstream(config.path()) << "[server]\ndrain_manifests_keep = 0\n";
  ASSERT_EQ(kill(daemon.pid(), SIGHUP), 0);
  ASSERT_TRUE(WaitFor([&] { return daemon.Log().find("reloaded:") != std::string::npos; }));
  EXPECT_THAT(daemon.Log(), HasSubstr("not applied, needs a restart: server.drain_manifests_keep"));
  auto pending = InFlight(client);
  auto drained = client.Drain(1000);
  ASSERT_TRUE(drained.ok()) << drained.status();
  EXPECT_TRUE(std::filesystem::exists(drained->manifest_path())) << drained->manifest_path();
  EXPECT_EQ(daemon.WaitExit(seconds(5)), 0) << daemon.Log();
  (void)pending.get();
}

INSTANTIATE_TEST_SUITE_P(Backends, DrainEndsTheDaemonTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

}  // namespace
}  // namespace asyncd::testing
