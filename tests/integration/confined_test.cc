// The real daemon under a seccomp filter, as systemd's hardening and
// container runtimes' default profiles run it: openat2 refused (ENOSYS is
// what RestrictSUIDSGID= answers; older runtime profiles say EPERM), and in
// the stricter policies io_uring refused too. Every op kind must still
// complete, paths must stay confined beneath the root, and the daemon must
// say which resolver it uses.
#include <sys/stat.h>

#include <gmock/gmock.h>

#include "tests/integration/daemon_fixture.h"

namespace asyncd::testing {
namespace {

using client::Client;

constexpr SyscallRefusal kIoUringRefused[] = {
    {SYS_io_uring_setup, EPERM}, {SYS_io_uring_enter, EPERM}, {SYS_io_uring_register, EPERM}};

struct Policy {
  const char* name;
  int openat2_error;
  bool io_uring_refused;

  std::vector<SyscallRefusal> Refusals() const {
    std::vector<SyscallRefusal> r = {{SYS_openat2, openat2_error}};
    if (io_uring_refused) r.insert(r.end(), std::begin(kIoUringRefused), std::end(kIoUringRefused));
    return r;
  }
};

const Policy kPolicies[] = {
    // The shipped unit: RestrictSUIDSGID= makes openat2 ENOSYS; io_uring works.
    {"ShippedUnit", ENOSYS, false},
    // The unit with the no-io_uring drop-in.
    {"NoIoUringDropIn", ENOSYS, true},
    // A container runtime's default profile that predates openat2.
    {"ContainerProfile", EPERM, true},
};

class ConfinedTest : public ::testing::TestWithParam<Policy> {
 protected:
  ConfinedTest()
      : daemon_(BackendMode::kIoUring, DaemonOptions{.extra_args = {"--log-level", "info"},
                                                     .refuse = GetParam().Refusals()}),
        client_(daemon_.channel()) {}

  uint64_t NewSession() {
    auto s = client_.OpenSession("confined");
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : 0;
  }

  Daemon daemon_;
  Client client_;
};

INSTANTIATE_TEST_SUITE_P(Policies, ConfinedTest, ::testing::ValuesIn(kPolicies),
                         [](const auto& info) { return std::string(info.param.name); });

// GetStats, the log and the io_uring state say what the filter left.
TEST_P(ConfinedTest, ReportsTheUserspaceResolver) {
  auto stats = client_.GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->path_resolver(), "userspace");
  EXPECT_THAT(daemon_.Log(), ::testing::HasSubstr(GetParam().openat2_error == ENOSYS
                                                      ? "openat2: ENOSYS"
                                                      : "openat2: EPERM"));
  if (GetParam().io_uring_refused) {
    EXPECT_FALSE(stats->io_uring_enabled());
    EXPECT_THAT(stats->io_uring_unavailable_reason(), ::testing::HasSubstr("EPERM"));
  }
}

// Every kind completes with its effect on disk. Under the shipped unit's
// policy, open and statx still run on io_uring (its openat2 is not a system
// call the filter sees) and the path ops the ring leaves to the pool walk
// in user space.
TEST_P(ConfinedTest, EveryOpKindCompletes) {
  const uint64_t s = NewSession();
  const std::map<v1::OpKind, v1::Backend> ran_on =
      ExpectEveryOpKindWorks(client_, s, daemon_.root());
  auto stats = client_.GetStats();
  ASSERT_TRUE(stats.ok());
  for (v1::OpKind kind : {v1::OP_KIND_MKDIR, v1::OP_KIND_RENAME, v1::OP_KIND_UNLINK}) {
    EXPECT_EQ(ran_on.at(kind), v1::BACKEND_THREAD_POOL) << v1::OpKind_Name(kind);
  }
  if (stats->io_uring_enabled()) {
    EXPECT_EQ(ran_on.at(v1::OP_KIND_OPEN), v1::BACKEND_IO_URING);
  } else {
    EXPECT_EQ(ran_on.at(v1::OP_KIND_OPEN), v1::BACKEND_THREAD_POOL);
  }
}

// Symlinks and ".." stay beneath the root: the daemon's own directory
// (which holds the root) is never reached.
TEST_P(ConfinedTest, PathsStayBeneathTheRoot) {
  ASSERT_EQ(symlink(daemon_.dir().c_str(), (daemon_.root() + "/abs").c_str()), 0);
  ASSERT_EQ(symlink("../..", (daemon_.root() + "/up").c_str()), 0);
  const uint64_t s = NewSession();
  for (const std::string& p : {daemon_.dir() + "/daemon.log", std::string("abs/daemon.log"),
                               std::string("up/daemon.log"), std::string("up/up/daemon.log")}) {
    v1::Operation op;
    op.mutable_open()->set_path(p);
    op.mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
    auto c = client_.Submit(s, op);
    ASSERT_TRUE(c.ok()) << p << ": " << c.status();
    EXPECT_EQ(c->error_number(), ENOENT) << p;
    op.Clear();
    op.mutable_mkdir()->set_path(p + ".d");  // made inside the root, if anywhere
    ASSERT_TRUE(client_.Submit(s, op).ok());
  }
  EXPECT_FALSE(std::filesystem::exists(daemon_.dir() + "/daemon.log.d"));
  EXPECT_TRUE(std::filesystem::exists(daemon_.root() + "/daemon.log.d"));  // "up" is the root
}

// Asking for openat2 where it is refused stops the start with the reason,
// rather than failing every path op later.
TEST(ConfinedStartTest, ForcedOpenat2WhereRefusedDoesNotStart) {
  char tmpl[] = "/tmp/asyncd-confined.XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string log = dir + "/daemon.log";
  std::vector<sock_filter> filter = RefusalFilter({{SYS_openat2, ENOSYS}});
  std::vector<std::string> args = {ASYNCD_BINARY,   "--socket", dir + "/s", "--root",
                                   dir + "/root",   "--path-resolver", "openat2"};
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (!InstallFilter(filter)) _exit(123);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_THAT(text, ::testing::HasSubstr("backends.path_resolver = \"openat2\", but openat2: ENOSYS"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace asyncd::testing
