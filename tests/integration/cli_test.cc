// The operator's path: asyncctl (the real binary) against the real daemon:
// a blocked FIFO read is listed with its age, state, backend and
// cancellability, cancelled from the CLI, and its client sees "cancelled".
// Exit codes are the CLI's contract: 0 ok, 1 operation error, 2 usage, 3
// unreachable.
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <future>

#include <google/protobuf/util/json_util.h>

#include "tests/integration/daemon_fixture.h"

namespace asyncd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

struct CliRun {
  int exit_code = -1;
  std::string out;
};

// Runs asyncctl with `args`; stdout captured, stderr passed through.
CliRun Asyncctl(const std::string& args) {
  CliRun r;
  FILE* p = popen((std::string(ASYNCCTL_BINARY) + " " + args).c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

class CliTest : public ::testing::TestWithParam<BackendMode> {
 protected:
  CliTest() : daemon_(GetParam()), client_(daemon_.channel()) {}
  std::string Sock() { return "--socket " + daemon_.socket(); }
  Daemon daemon_;
  client::Client client_;
};

TEST_P(CliTest, ListsAndCancelsABlockedReadThatItsClientSeesCancelled) {
  const uint64_t s = *client_.OpenSession("victim");
  ASSERT_EQ(mkfifo((daemon_.root() + "/fifo").c_str(), 0600), 0);
  const uint32_t h = *client_.Open(s, "fifo", v1::OPEN_MODE_READ_WRITE);
  // The victim blocks in a unary Submit on its own thread.
  v1::Operation read = ReadOp(h, -1, 8, /*tag=*/4242);
  read.set_deadline_ms(600'000);
  auto pending = std::async(std::launch::async, [&] { return client_.Submit(s, read); });
  ASSERT_TRUE(WaitFor([&] {
    auto st = client_.GetStats();
    return st.ok() && st->inflight() == 1;
  }));
  std::this_thread::sleep_for(milliseconds(20));

  const CliRun list = Asyncctl(Sock() + " ops list -o json");
  ASSERT_EQ(list.exit_code, 0) << list.out;
  v1::ListOperationsResponse listed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(list.out, &listed).ok()) << list.out;
  ASSERT_EQ(listed.ops_size(), 1);
  const v1::OperationInfo& op = listed.ops(0);
  EXPECT_EQ(op.kind(), v1::OP_KIND_READ);
  EXPECT_EQ(op.client(), "victim");
  EXPECT_GT(op.age_us(), 0u);
  EXPECT_TRUE(op.cancellable());
  EXPECT_NE(op.backend(), v1::BACKEND_UNSPECIFIED);
  EXPECT_TRUE(op.state() == v1::OP_STATE_RUNNING || op.state() == v1::OP_STATE_DISPATCHED);
  EXPECT_EQ(op.tag(), 4242u);
  EXPECT_GT(op.deadline_ms(), 599'000u);  // in ms after submission, as sent
  EXPECT_LE(op.deadline_ms(), 600'000u);
  const CliRun inspect = Asyncctl(Sock() + " ops get " + std::to_string(op.op_id()));
  EXPECT_EQ(inspect.exit_code, 0);
  EXPECT_NE(inspect.out.find("4242"), std::string::npos) << inspect.out;

  const CliRun table = Asyncctl(Sock() + " ops list");
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_NE(table.out.find("victim"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("read"), std::string::npos) << table.out;

  const CliRun cancel = Asyncctl(Sock() + " ops cancel " + std::to_string(op.op_id()));
  EXPECT_EQ(cancel.exit_code, 0) << cancel.out;
  ASSERT_EQ(pending.wait_for(seconds(10)), std::future_status::ready);
  auto done = pending.get();
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->outcome(), v1::OUTCOME_CANCELLED);

  // The same id again: already done (exit 0) while the history has it.
  const CliRun again = Asyncctl(Sock() + " ops cancel " + std::to_string(op.op_id()));
  EXPECT_EQ(again.exit_code, 0) << again.out;
  EXPECT_NE(again.out.find("already_done"), std::string::npos) << again.out;
  const CliRun get = Asyncctl(Sock() + " ops get " + std::to_string(op.op_id()) + " -o json");
  EXPECT_EQ(get.exit_code, 0);
  EXPECT_NE(get.out.find("OUTCOME_CANCELLED"), std::string::npos) << get.out;
}

TEST_P(CliTest, BulkCancelByAgeFromTheCli) {
  auto stream = client::StreamClient::Create(daemon_.channel(), "bulk");
  ASSERT_TRUE(stream.ok());
  std::atomic<int> cancelled{0};
  std::vector<v1::Operation> ops;
  for (int i = 0; i < 25; ++i) ops.push_back(TimeoutOp(seconds(600), i));
  ASSERT_TRUE((*stream)
                  ->Submit(ops, [&](const v1::Completion& c) {
                    cancelled += c.outcome() == v1::OUTCOME_CANCELLED;
                  })
                  .ok());
  ASSERT_TRUE(WaitFor([&] {
    auto st = client_.GetStats();
    return st.ok() && st->inflight() == 25;
  }));
  std::this_thread::sleep_for(milliseconds(300));
  const CliRun r = Asyncctl(Sock() + " ops cancel --older-than 200ms -o json");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(WaitFor([&] { return cancelled == 25; }));
  EXPECT_TRUE((*stream)->Finish().ok());
}

TEST_P(CliTest, ExitCodesFollowTheContract) {
  EXPECT_EQ(Asyncctl(Sock() + " health").exit_code, 0);
  EXPECT_EQ(Asyncctl(Sock() + " stats").exit_code, 0);
  EXPECT_EQ(Asyncctl(Sock() + " submit nop").exit_code, 0);
  EXPECT_EQ(Asyncctl(Sock() + " ops get 0x1234").exit_code, 1);  // not found
  EXPECT_EQ(Asyncctl(Sock() + " ops list --older-than soon").exit_code, 2);  // bad duration
  EXPECT_EQ(Asyncctl(Sock() + " no-such-command").exit_code, 2);
  EXPECT_EQ(Asyncctl("--socket " + daemon_.dir() + "/nobody-here.sock stats").exit_code, 3);
  // Two daemons listed as one fleet.
  Daemon other(GetParam());
  const CliRun fleet =
      Asyncctl(Sock() + " --socket " + other.socket() + " stats -o json");
  EXPECT_EQ(fleet.exit_code, 0);
  EXPECT_NE(fleet.out.find(other.socket()), std::string::npos) << fleet.out;
}

// Health answers SERVING until a drain; the drain (NOT_SERVING while it
// runs: tests/daemon/drain_test.cc) ends the daemon, so health then finds
// none (exit 3).
TEST_P(CliTest, HealthServesUntilADrainEndsTheDaemon) {
  const std::string by_name = Sock() + " health --service asyncd.v1.Asyncd";
  EXPECT_EQ(Asyncctl(Sock() + " health").exit_code, 0);
  const CliRun named = Asyncctl(by_name);
  EXPECT_EQ(named.exit_code, 0) << named.out;
  EXPECT_NE(named.out.find("SERVING"), std::string::npos) << named.out;
  const CliRun drain = Asyncctl(Sock() + " drain --grace 100ms");
  ASSERT_EQ(drain.exit_code, 0);
  EXPECT_NE(drain.out.find("none (nothing was in flight)"), std::string::npos) << drain.out;
  EXPECT_EQ(daemon_.WaitExit(seconds(10)), 0) << daemon_.Log();
  EXPECT_EQ(Asyncctl(Sock() + " health").exit_code, 3);
}

INSTANTIATE_TEST_SUITE_P(Backends, CliTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

}  // namespace
}  // namespace asyncd::testing
