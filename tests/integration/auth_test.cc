// Identity and authorization against the real daemon, with a second real
// user: the test runs as root, and a child process drops to uid/gid 65534
// (nobody/nogroup) before it connects (peer credentials are taken at
// connect). That "other user" must not see, get, cancel, keep alive, close,
// submit into or take a ring for root's sessions and operations, nor drain
// or take a checkpoint; its denials are PERMISSION_DENIED and logged. A member of the configured admin group (by
// name, through a supplementary group: SO_PEERGROUPS) may see and cancel
// everything, take a checkpoint holding it, and drain. The socket file gets
// the configured group and mode.
#include <gmock/gmock.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/ring_raw.h"
#include "tests/integration/security_util.h"

namespace asyncd::testing {
namespace {

using client::Client;
using client::StreamClient;
using std::chrono::seconds;
using ::testing::HasSubstr;

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;
constexpr gid_t kUsers = 100;  // Debian's "users": the admin group by name below

uint64_t EnvU64(const char* name) {
  uint64_t v = 0;
  const char* s = std::getenv(name);
  if (s == nullptr || !absl::SimpleAtoi(s, &v)) ADD_FAILURE() << "child: no " << name;
  return v;
}

// ---------------------------------------------------------------------------
// The child's side: runs only when a parent test started this binary as
// another user (ASYNCD_AUTH_ROLE set); a normal run shows it skipped.

void ActAsOtherUser(const std::string& socket) {
  const uint64_t session = EnvU64("ASYNCD_AUTH_SESSION");
  const uint64_t op = EnvU64("ASYNCD_AUTH_OP");
  const uint64_t done_op = EnvU64("ASYNCD_AUTH_DONE_OP");
  Client c(client::Connect(socket), {.default_timeout = std::chrono::milliseconds(5000)});
  const auto denied = absl::StatusCode::kPermissionDenied;
  // Root's ops are not selected, and naming them is refused.
  auto listed = c.ListOperations(v1::OpSelector());
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->ops_size(), 0);
  EXPECT_EQ(listed->total_matched(), 0u);
  EXPECT_EQ(c.GetOperation(op).status().code(), denied);
  EXPECT_EQ(c.GetOperation(done_op).status().code(), denied);
  auto cancel = c.Cancel(op);
  EXPECT_EQ(cancel.status().code(), denied);
  EXPECT_THAT(std::string(cancel.status().message()), HasSubstr("belongs to another user"));
  v1::OpSelector all;
  all.set_all(true);
  auto bulk = c.Cancel(all);
  ASSERT_TRUE(bulk.ok()) << bulk.status();
  EXPECT_EQ(bulk->counts().cancelled(), 0u);
  v1::OpSelector by_session;
  by_session.set_session_id(session);
  auto by = c.Cancel(by_session);
  ASSERT_TRUE(by.ok()) << by.status();
  EXPECT_EQ(by->counts().cancelled(), 0u);
  auto history = c.ListHistory(v1::OpSelector());
  ASSERT_TRUE(history.ok());
  EXPECT_TRUE(history->empty());
  // Root's session: not listed, not usable.
  auto sessions = c.ListSessions();
  ASSERT_TRUE(sessions.ok());
  EXPECT_TRUE(sessions->empty());
  EXPECT_EQ(c.KeepAlive(session).status().code(), denied);
  EXPECT_EQ(c.CloseSession(session).status().code(), denied);
  EXPECT_EQ(c.Submit(session, NopOp()).status().code(), denied);
  auto attach = StreamClient::Create(client::Connect(socket), "intruder", session);
  EXPECT_EQ(attach.status().code(), denied);
  const RingSetupResult ring = OpenRing(socket + ".ring", RingSetup(session));
  ASSERT_EQ(ring.reply_bytes, sizeof ring.reply) << "no answer on the ring socket";
  EXPECT_EQ(ring.reply.status, static_cast<uint32_t>(denied)) << ring.reply.message;
  EXPECT_EQ(ring.ring, nullptr);
  auto drain = c.Drain(0);
  EXPECT_EQ(drain.status().code(), denied);
  EXPECT_THAT(std::string(drain.status().message()), HasSubstr("admin"));
  auto checkpoint = c.GetCheckpoint();
  EXPECT_EQ(checkpoint.status().code(), denied);
  EXPECT_THAT(std::string(checkpoint.status().message()), HasSubstr("admin"));
  // Its own session works, under its own uid.
  auto mine = c.OpenSession("nobody's");
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_TRUE(c.Submit(*mine, NopOp()).ok());
  const RingSetupResult own = OpenRing(socket + ".ring", RingSetup(*mine));
  EXPECT_EQ(own.reply.status, 0u) << own.reply.message;
  EXPECT_NE(own.ring, nullptr);
  sessions = c.ListSessions();
  ASSERT_TRUE(sessions.ok());
  ASSERT_EQ(sessions->size(), 1u);
  EXPECT_EQ(sessions->front().uid(), kNobody);
}

void ActAsAdmin(const std::string& socket) {
  const uint64_t session = EnvU64("ASYNCD_AUTH_SESSION");
  const uint64_t op = EnvU64("ASYNCD_AUTH_OP");
  Client c(client::Connect(socket), {.default_timeout = std::chrono::milliseconds(5000)});
  auto listed = c.ListAll(v1::OpSelector());
  ASSERT_TRUE(listed.ok()) << listed.status();
  bool seen = false;
  for (const auto& o : *listed) seen |= o.op_id() == op;
  EXPECT_TRUE(seen) << "an admin sees every session's operations";
  EXPECT_TRUE(c.GetOperation(op).ok());
  auto sessions = c.ListSessions();
  ASSERT_TRUE(sessions.ok());
  EXPECT_FALSE(sessions->empty());
  auto checkpoint = c.GetCheckpoint();
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  bool in_checkpoint = false;
  for (const auto& s : checkpoint->sessions()) {
    for (const auto& o : s.ops()) in_checkpoint |= s.session_id() == session && o.op_id() == op;
  }
  EXPECT_TRUE(in_checkpoint) << "an admin's checkpoint holds every session's operations";
  auto cancel = c.Cancel(op);
  ASSERT_TRUE(cancel.ok()) << cancel.status();
  ASSERT_EQ(cancel->outcomes_size(), 1);
  EXPECT_EQ(cancel->outcomes(0).result(), v1::CANCEL_RESULT_CANCELLED);
  EXPECT_TRUE(c.CloseSession(session).ok());
  auto drain = c.Drain(0);
  EXPECT_TRUE(drain.ok()) << drain.status();
}

TEST(AuthChildRole, ActsAsAnotherUser) {
  const char* role = std::getenv("ASYNCD_AUTH_ROLE");
  if (role == nullptr) GTEST_SKIP() << "runs only as the child process an AuthTest starts";
  const std::string socket = std::getenv("ASYNCD_AUTH_SOCKET");
  ASSERT_EQ(getuid(), kNobody);
  if (std::string(role) == "other") ActAsOtherUser(socket);
  if (std::string(role) == "admin") ActAsAdmin(socket);
}

// ---------------------------------------------------------------------------
// The parent's side.

// Runs this binary's AuthChildRole test as uid 65534 with primary group
// 65534 and `groups`; returns its exit status, its output in `log`.
int RunChildAs(const std::vector<gid_t>& groups, const std::string& role,
               const std::map<std::string, std::string>& env, const std::string& dir,
               std::string* log) {
  const std::string out = dir + "/child-" + role + ".log";
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe work until exec: this process has gRPC threads.
    const int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0666);
    dup2(fd, 1);
    dup2(fd, 2);
    if (setgroups(groups.size(), groups.data()) != 0 ||
        setresgid(kNogroup, kNogroup, kNogroup) != 0 || setresuid(kNobody, kNobody, kNobody) != 0) {
      _exit(120);
    }
    setenv("ASYNCD_AUTH_ROLE", role.c_str(), 1);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    const char* argv[] = {"auth_test", "--gtest_filter=AuthChildRole.*", nullptr};
    execv("/proc/self/exe", const_cast<char**>(argv));
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::ifstream in(out);
  log->assign(std::istreambuf_iterator<char>(in), {});
  // A child that skipped (or ran nothing) proves nothing.
  if (log->find("[       OK ] AuthChildRole.ActsAsAnotherUser") == std::string::npos) return -2;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid";
    if (getgrgid(kUsers) == nullptr || getgrgid(kNogroup) == nullptr) {
      GTEST_SKIP() << "needs groups 100 (users) and 65534 (nogroup)";
    }
    config_ = std::make_unique<ConfigFile>(
        "[server]\nsocket_group = \"nogroup\"\n[admin]\ngroups = [\"users\"]\n");
    DaemonOptions options{.extra_args = config_->Args()};
    if (DaemonRunsAsNobody()) {
      options.run_as = {{kNobody, kNogroup}};
      chmod(config_->dir().c_str(), 0755);  // mkdtemp made it root's only
    }
    daemon_ = std::make_unique<Daemon>(BackendMode::kIoUring, std::move(options));
    // The daemon's temp dir is 0700 (mkdtemp); the socket's own mode and
    // group are what this test is about.
    chmod(daemon_->dir().c_str(), 0711);
    client_ = std::make_unique<Client>(daemon_->channel());
    // Root's session with one blocked op and one finished op.
    auto s = client_->OpenSession("root's", 60000);
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = *s;
    ASSERT_EQ(mkfifo((daemon_->root() + "/fifo").c_str(), 0600), 0);
    if (DaemonRunsAsNobody()) {
      ASSERT_EQ(chown((daemon_->root() + "/fifo").c_str(), kNobody, kNogroup), 0);
    }
    auto fifo = client_->Open(session_, "fifo", v1::OPEN_MODE_READ_WRITE);
    ASSERT_TRUE(fifo.ok()) << fifo.status();
    auto nop = client_->Submit(session_, NopOp());
    ASSERT_TRUE(nop.ok());
    done_op_ = nop->op_id();
    stream_ = std::move(*StreamClient::Create(daemon_->channel(), "root's", session_));
    ASSERT_TRUE(stream_
                    ->Submit(
                        {ReadOp(*fifo, -1, 64, 1)}, [this](const v1::Completion& c) { last_ = c; },
                        [this](const StreamClient::AcceptedOp& a) { op_ = a.op_id; })
                    .ok());
    ASSERT_TRUE(WaitFor([&] { return op_ != 0; }));
  }
  void TearDown() override {
    stream_.reset();  // cancels the stream (and its blocked read) if still open
  }
  virtual bool DaemonRunsAsNobody() const { return false; }

  // A child as nobody with `groups` acts as an admin (ActAsAdmin passes),
  // and root's blocked op and the daemon show it.
  void ExpectAdminChild(const std::vector<gid_t>& groups) {
    std::string log;
    EXPECT_EQ(RunChildAs(groups, "admin", ChildEnv(), daemon_->dir(), &log), 0) << log;
    ASSERT_TRUE(WaitFor([&] { return last_.has_value(); }));
    EXPECT_EQ(last_->outcome(), v1::OUTCOME_CANCELLED);
    EXPECT_EQ(last_->end_reason(), v1::END_REASON_OPERATOR_REQUEST);
    // The child's drain ended the daemon.
    EXPECT_EQ(daemon_->WaitExit(std::chrono::seconds(20)), 0) << daemon_->Log();
  }
  std::map<std::string, std::string> ChildEnv() const {
    return {{"ASYNCD_AUTH_SOCKET", daemon_->socket()},
            {"ASYNCD_AUTH_SESSION", absl::StrCat(session_)},
            {"ASYNCD_AUTH_OP", absl::StrCat(op_.load())},
            {"ASYNCD_AUTH_DONE_OP", absl::StrCat(done_op_)}};
  }

  std::unique_ptr<ConfigFile> config_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<StreamClient> stream_;
  uint64_t session_ = 0;
  uint64_t done_op_ = 0;
  std::atomic<uint64_t> op_{0};
  std::optional<v1::Completion> last_;
};

TEST_F(AuthTest, SocketFileHasTheConfiguredGroupAndMode) {
  struct stat st;
  ASSERT_EQ(stat(daemon_->socket().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_gid, kNogroup);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // Someone outside the group cannot even connect.
  const pid_t pid = fork();
  if (pid == 0) {
    const gid_t g = 4242;
    if (setgroups(0, nullptr) != 0 || setresgid(g, g, g) != 0 ||
        setresuid(kNobody, kNobody, kNobody) != 0) {
      _exit(120);
    }
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, daemon_->socket().c_str(), sizeof(addr.sun_path) - 1);
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    const int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    _exit(rc != 0 && errno == EACCES ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "connect was not refused";
}

TEST_F(AuthTest, OtherUserCannotSeeCancelKeepAliveCloseOrDrainRootsWork) {
  std::string log;
  EXPECT_EQ(RunChildAs({}, "other", ChildEnv(), daemon_->dir(), &log), 0) << log;
  // Nothing of root's changed: the op is still in flight, the session alive.
  auto got = client_->GetOperation(op_);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->state() == v1::OP_STATE_RUNNING || got->state() == v1::OP_STATE_DISPATCHED)
      << got->state();
  EXPECT_TRUE(client_->KeepAlive(session_).ok());
  EXPECT_FALSE(last_.has_value());
  auto stats = client_->GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_FALSE(stats->draining());
  // Each refusal was logged with who was refused and what.
  const std::string daemon_log = daemon_->Log();
  EXPECT_THAT(daemon_log, HasSubstr("permission denied: uid 65534 gid 65534 (unix pid"));
  EXPECT_THAT(daemon_log, HasSubstr(absl::StrCat("cancel operation ", op_.load())));
  EXPECT_THAT(daemon_log, HasSubstr("drain needs an admin"));
}

TEST_F(AuthTest, MemberOfTheAdminGroupByNameMaySeeCancelAndDrainEverything) {
  ExpectAdminChild({kUsers});
}

// A daemon run by an ordinary user: that user (here nobody, with no admin
// group) administers it, as it could signal or trace it anyway.
class AuthOwnUserTest : public AuthTest {
  bool DaemonRunsAsNobody() const override { return true; }
};

TEST_F(AuthOwnUserTest, TheDaemonsOwnUserMaySeeCancelAndDrainEverything) {
  ExpectAdminChild({});
}

TEST(AuthConfigTest, AdminGidsMatchThePeersPrimaryGroup) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid";
  ConfigFile config("[server]\nsocket_mode = 0o666\n[admin]\ngids = [65534]\n");
  Daemon daemon(BackendMode::kThreadPoolOnly, config.Args());
  chmod(daemon.dir().c_str(), 0711);
  Client root(daemon.channel());
  auto s = root.OpenSession("root's", 60000);
  ASSERT_TRUE(s.ok());
  auto stream = StreamClient::Create(daemon.channel(), "root's", *s);
  ASSERT_TRUE(stream.ok());
  std::atomic<uint64_t> op{0};
  ASSERT_TRUE((*stream)
                  ->Submit(
                      {TimeoutOp(seconds(30), 1)}, [](const v1::Completion&) {},
                      [&](const StreamClient::AcceptedOp& a) { op = a.op_id; })
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return op != 0; }));
  std::string log;
  EXPECT_EQ(RunChildAs({}, "admin",
                       {{"ASYNCD_AUTH_SOCKET", daemon.socket()},
                        {"ASYNCD_AUTH_SESSION", absl::StrCat(*s)},
                        {"ASYNCD_AUTH_OP", absl::StrCat(op.load())}},
                       daemon.dir(), &log),
            0)
      << log;
  stream->reset();
}

}  // namespace
}  // namespace asyncd::testing
