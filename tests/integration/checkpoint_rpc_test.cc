// GetCheckpoint and `asyncctl checkpoint` against the real daemon: a busy
// daemon's checkpoint, taken while it runs on, holds every session, handle
// and outstanding op as the listings show them, the history and id counters
// covering them; the daemon's sealed bytes pass the loader a successor runs;
// and the operator's CLI prints it, as a table or JSON, or writes it to a
// file only its owner reads; one over limits.max_message_bytes is refused,
// naming the limit.
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <sstream>

#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>

#include "daemon/checkpoint.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/security_util.h"

namespace asyncd::testing {
namespace {

using std::chrono::milliseconds;

std::string RunCtl(const std::string& args, int* exit_code) {
  std::string out;
  FILE* p = popen((std::string(ASYNCCTL_BINARY) + " " + args).c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

class CheckpointRpcTest : public ::testing::TestWithParam<BackendMode> {
 protected:
  CheckpointRpcTest() : daemon_(GetParam()), client_(daemon_.channel()) {}

  // Two sessions: one with a file, a FIFO and `blocked` reads waiting on it;
  // the other idle.
  void Populate(int blocked) {
    busy_ = *client_.OpenSession("busy");
    idle_ = *client_.OpenSession("idle");
    ASSERT_EQ(mkfifo((daemon_.root() + "/fifo").c_str(), 0600), 0);
    file_ = *client_.Open(busy_, "data", v1::OPEN_MODE_READ_WRITE, {.create = true});
    fifo_ = *client_.Open(busy_, "fifo", v1::OPEN_MODE_READ_WRITE);
    for (int i = 0; i < blocked; ++i) {
      v1::Operation read = ReadOp(fifo_, -1, 8, /*tag=*/100 + i);
      read.set_deadline_ms(600'000);
      pending_.push_back(std::async(std::launch::async, [this, read] {
        return client_.Submit(busy_, read);
      }));
    }
    ASSERT_TRUE(WaitFor([&] {
      auto st = client_.GetStats();
      return st.ok() && st->inflight() == static_cast<uint64_t>(blocked);
    }));
  }
  ~CheckpointRpcTest() override {
    (void)client_.CloseSession(busy_);
    for (auto& p : pending_) p.wait();
  }

  Daemon daemon_;
  client::Client client_;
  uint64_t busy_ = 0, idle_ = 0;
  uint32_t file_ = 0, fifo_ = 0;
  std::vector<std::future<absl::StatusOr<v1::Completion>>> pending_;
};

TEST_P(CheckpointRpcTest, HoldsEverySessionHandleAndOutstandingOpAsListed) {
  Populate(3);
  auto listed = client_.ListAll(v1::OpSelector());
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 3u);
  auto cp = client_.GetCheckpoint();
  ASSERT_TRUE(cp.ok()) << cp.status();

  EXPECT_FALSE(cp->daemon_version().empty());
  ASSERT_EQ(cp->sessions_size(), 2);
  const auto& busy = cp->sessions(0).session_id() == busy_ ? cp->sessions(0) : cp->sessions(1);
  const auto& idle = &busy == &cp->sessions(0) ? cp->sessions(1) : cp->sessions(0);
  EXPECT_EQ(busy.session_id(), busy_);
  EXPECT_EQ(idle.session_id(), idle_);
  EXPECT_EQ(busy.client_name(), "busy");
  EXPECT_EQ(busy.uid(), getuid());
  EXPECT_GT(busy.lease_ms(), 0u);
  std::map<uint32_t, std::string> handles;
  for (const auto& h : busy.handles()) handles[h.handle()] = h.path();
  EXPECT_EQ(handles, (std::map<uint32_t, std::string>{{file_, "data"}, {fifo_, "fifo"}}));
  for (const auto& h : busy.handles()) EXPECT_EQ(h.stream(), h.handle() == fifo_);
  EXPECT_TRUE(idle.handles().empty());
  EXPECT_TRUE(idle.ops().empty());

  std::set<uint64_t> want, got;
  for (const auto& op : *listed) want.insert(op.op_id());
  for (const auto& op : busy.ops()) {
    got.insert(op.op_id());
    EXPECT_EQ(op.kind(), v1::OP_KIND_READ);
    EXPECT_EQ(op.handle(), fifo_);
    EXPECT_GE(op.tag(), 100u);
    EXPECT_TRUE(op.cancellable());
  }
  EXPECT_EQ(got, want);
  // The opens finished: the history has them.
  int opens = 0;
  for (const auto& op : cp->history()) opens += op.kind() == v1::OP_KIND_OPEN;
  EXPECT_EQ(opens, 2);
  // The counters cover both sessions.
  for (uint64_t id : {busy_, idle_}) {
    bool covered = false;
    for (const auto& c : cp->id_counters()) {
      covered |= c.index() == (id & 0xffff) && c.serial() >= (id >> 16);
    }
    EXPECT_TRUE(covered) << id;
  }
  // Taking it changed nothing: the reads still wait.
  auto stats = client_.GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->inflight(), 3u);
}

TEST_P(CheckpointRpcTest, TheDaemonsSealedBytesPassTheSuccessorsLoader) {
  Populate(2);
  v1::GetCheckpointResponse response;
  grpc::ClientContext ctx;
  ASSERT_TRUE(v1::Asyncd::NewStub(daemon_.channel())
                  ->GetCheckpoint(&ctx, v1::GetCheckpointRequest(), &response)
                  .ok());
  absl::StatusOr<state::v1::Checkpoint> loaded =
      daemon::LoadCheckpoint(response.checkpoint(), daemon::CheckpointLimits{});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  int ops = 0;
  for (const auto& s : loaded->sessions()) ops += s.ops_size();
  EXPECT_EQ(ops, 2);
}

TEST_P(CheckpointRpcTest, AsyncctlPrintsItAsATableOrJsonOrWritesItToAnOwnerOnlyFile) {
  Populate(1);
  const std::string sock = "--socket " + daemon_.socket();
  int code = -1;
  const std::string table = RunCtl(sock + " checkpoint", &code);
  ASSERT_EQ(code, 0) << table;
  EXPECT_NE(table.find("sessions:     2"), std::string::npos) << table;
  EXPECT_NE(table.find("outstanding:  1"), std::string::npos) << table;
  EXPECT_NE(table.find("fifo"), std::string::npos) << table;  // the handle's path
  EXPECT_NE(table.find("busy"), std::string::npos) << table;
  EXPECT_NE(table.find("read"), std::string::npos) << table;  // the blocked op

  const std::string json = RunCtl(sock + " checkpoint -o json", &code);
  ASSERT_EQ(code, 0) << json;
  state::v1::Checkpoint parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &parsed).ok()) << json;
  EXPECT_EQ(parsed.sessions_size(), 2);

  const std::string path = daemon_.dir() + "/checkpoint.json";
  const std::string written = RunCtl(sock + " checkpoint --write " + path, &code);
  ASSERT_EQ(code, 0) << written;
  EXPECT_NE(written.find("2 sessions, 2 handles, 1 outstanding operations"), std::string::npos)
      << written;
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  state::v1::Checkpoint from_file;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(text.str(), &from_file).ok());
  EXPECT_EQ(from_file.sessions_size(), 2);

  // A file it cannot write: exit 1, and nothing half-written.
  RunCtl(sock + " checkpoint --write " + daemon_.dir() + "/no/such/dir/cp.json", &code);
  EXPECT_EQ(code, 1);
}

// A checkpoint over limits.max_message_bytes is not sent: the RPC answers
// RESOURCE_EXHAUSTED naming the limit (not gRPC's own words for a message
// too large), and the daemon serves on.
TEST(CheckpointRpcLimitTest, OverMaxMessageBytesIsResourceExhaustedNamingTheLimit) {
  ConfigFile config("[limits]\nmax_message_bytes = 4096\n");
  Daemon daemon(BackendMode::kThreadPoolOnly, config.Args());
  client::Client client(daemon.channel());
  ASSERT_TRUE(client.OpenSession("small").ok());
  auto small = client.GetCheckpoint();
  ASSERT_TRUE(small.ok()) << small.status();  // under the limit it is sent
  // 40 sessions named 123 bytes each: well over 4096 bytes of checkpoint.
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(client.OpenSession(std::string(120, 'a') + std::to_string(100 + i)).ok());
  }
  auto big = client.GetCheckpoint();
  ASSERT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted) << big.status();
  EXPECT_THAT(
      std::string(big.status().message()),
      ::testing::AllOf(::testing::StartsWith("the checkpoint ("),
                       ::testing::EndsWith(" bytes) is over limits.max_message_bytes (4096)")));
  EXPECT_TRUE(client.OpenSession("still serving").ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, CheckpointRpcTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

}  // namespace
}  // namespace asyncd::testing
