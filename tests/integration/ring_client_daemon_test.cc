// RingClient against the real daemon, on both backends: ring operations run
// with the session's handles and buffers in the ring's buffer area; each
// gets exactly one completion, also when more are submitted than the
// completion ring holds; a blocked ring read is listed and cancellable by a
// ring cancel, the Cancel RPC and `asyncctl ops cancel` alike; refused
// entries say why; the session's end ends the ring; and asyncd-bench's ring
// modes run.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <sys/stat.h>

#include <cstring>
#include <set>

#include "tests/integration/daemon_fixture.h"

namespace asyncd::testing {
namespace {

using client::RingClient;
using namespace std::chrono_literals;

class RingClientIT : public ::testing::TestWithParam<BackendMode> {
 protected:
  RingClientIT() : daemon_(GetParam()), client_(daemon_.channel()) {}

  void SetUp() override {
    auto session = client_.OpenSession("ring-test");
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = *session;
  }

  // Opens ring_ on the session; call with ASSERT_NO_FATAL_FAILURE.
  void OpenRing(client::RingOptions options = {}) {
    auto ring = RingClient::Open(daemon_.socket(), session_, options);
    ASSERT_TRUE(ring.ok()) << ring.status() << "\n" << daemon_.Log();
    ring_.emplace(*std::move(ring));
  }

  // A FIFO in the root with a writer that never writes: reads on it block.
  uint32_t OpenBlockingFifo() {
    const std::string path = daemon_.root() + "/fifo";
    EXPECT_EQ(mkfifo(path.c_str(), 0600), 0);
    writer_ = open(path.c_str(), O_RDWR | O_CLOEXEC);
    auto h = client_.Open(session_, "fifo", v1::OPEN_MODE_READ_ONLY);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *h : 0;
  }

  ~RingClientIT() override {
    if (writer_ >= 0) close(writer_);
  }

  // Reaps until `n` completions came (or 10 s passed).
  static std::vector<asyncd_ring_cqe> Reap(RingClient& ring, size_t n) {
    std::vector<asyncd_ring_cqe> got;
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (got.size() < n && std::chrono::steady_clock::now() < until) {
      if (absl::Status s = ring.Wait(1, 100ms); !s.ok() && !absl::IsDeadlineExceeded(s)) {
        ADD_FAILURE() << s;
        break;
      }
      ring.Advance(ring.ForEachCompletion([&](const asyncd_ring_cqe& c) { got.push_back(c); }));
    }
    EXPECT_EQ(got.size(), n);
    return got;
  }

  Daemon daemon_;
  client::Client client_;
  uint64_t session_ = 0;
  int writer_ = -1;
  std::optional<RingClient> ring_;
};

TEST_P(RingClientIT, NopWriteFsyncReadRoundTrip) {
  auto h = client_.Open(session_, "ring.dat", v1::OPEN_MODE_READ_WRITE, {.create = true});
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_NO_FATAL_FAILURE(OpenRing({.buffer_bytes = 2 * ASYNCD_RING_BUFFER_ALIGN}));
  RingClient& ring = *ring_;
  ASSERT_EQ(ring.buffer().size(), 2 * ASYNCD_RING_BUFFER_ALIGN);
  const std::string text = "hello, ring";
  std::memcpy(ring.buffer().data(), text.data(), text.size());

  RingClient::PrepNop(ring.GetSqe(), 1);
  RingClient::PrepWrite(ring.GetSqe(), *h, 0, text.size(), 0, 2);
  ASSERT_EQ(ring.Submit(), 2u);
  std::vector<asyncd_ring_cqe> done = Reap(ring, 2);
  RingClient::PrepFsync(ring.GetSqe(), *h, RingClient::Sync::kDataOnly, 3);
  RingClient::PrepRead(ring.GetSqe(), *h, 0, 4096, ASYNCD_RING_BUFFER_ALIGN, 4);
  ASSERT_EQ(ring.Submit(), 2u);
  for (const asyncd_ring_cqe& c : Reap(ring, 2)) done.push_back(c);

  std::map<uint64_t, asyncd_ring_cqe> by_data;
  for (const asyncd_ring_cqe& c : done) {
    EXPECT_TRUE(RingClient::ToStatus(c).ok()) << c.user_data << ": " << RingClient::ToStatus(c);
    EXPECT_NE(c.op_id, 0u);
    EXPECT_TRUE(by_data.emplace(c.user_data, c).second) << "twice: " << c.user_data;
    if (GetParam() == BackendMode::kThreadPoolOnly) {
      EXPECT_NE(c.backend, v1::BACKEND_IO_URING);
    }
  }
  ASSERT_EQ(by_data.size(), 4u);
  EXPECT_EQ(by_data[2].result, static_cast<int32_t>(text.size()));
  EXPECT_EQ(by_data[4].result, static_cast<int32_t>(text.size()));
  EXPECT_EQ(by_data[4].bytes, text.size());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(ring.buffer().data()) +
                            ASYNCD_RING_BUFFER_ALIGN,
                        text.size()),
            text);
  auto read = client_.Read(session_, *h, 0, 64);  // the same file through gRPC
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, text);
}

TEST_P(RingClientIT, RefusedEntriesSayWhy) {
  auto h = client_.Open(session_, "refused.dat", v1::OPEN_MODE_READ_WRITE, {.create = true});
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_NO_FATAL_FAILURE(OpenRing());
  RingClient& ring = *ring_;
  RingClient::PrepRead(ring.GetSqe(), *h + 1000, 0, 16, 0, 1);  // no such handle
  asyncd_ring_sqe* sqe = ring.GetSqe();
  RingClient::PrepNop(sqe, 2);
  sqe->reserved[0] = 1;  // a field a NOP does not use
  RingClient::PrepRead(ring.GetSqe(), *h, 0, 16, ring.buffer().size(), 3);  // past the buffer
  ASSERT_EQ(ring.Submit(), 3u);
  std::map<uint64_t, asyncd_ring_cqe> by_data;
  for (const asyncd_ring_cqe& c : Reap(ring, 3)) by_data[c.user_data] = c;
  const struct {
    uint64_t user_data;
    absl::StatusCode code;
    uint16_t reason;
  } want[] = {{1, absl::StatusCode::kNotFound, ASYNCD_RING_REASON_UNKNOWN_HANDLE},
              {2, absl::StatusCode::kInvalidArgument, ASYNCD_RING_REASON_BAD_FIELD},
              {3, absl::StatusCode::kInvalidArgument, ASYNCD_RING_REASON_BAD_BUFFER}};
  for (const auto& w : want) {
    const asyncd_ring_cqe& c = by_data[w.user_data];
    EXPECT_EQ(c.outcome, v1::OUTCOME_REJECTED) << w.user_data;
    EXPECT_EQ(c.op_id, 0u) << w.user_data;
    EXPECT_EQ(c.reason, w.reason) << w.user_data;
    EXPECT_EQ(RingClient::ToStatus(c).code(), w.code) << w.user_data;
  }
}

TEST_P(RingClientIT, MoreThanTheCompletionRingHoldsAllComplete) {
  ASSERT_NO_FATAL_FAILURE(OpenRing({.sq_entries = 8, .cq_entries = 8}));
  RingClient& ring = *ring_;
  ASSERT_EQ(ring.cq_entries(), 8u);
  // Without reaping, submit until the daemon takes no more: it keeps taking
  // entries while fewer than cq_entries completions wait to be posted, so
  // beyond a full completion ring it holds some of its own.
  uint64_t submitted = 0;
  for (int idle = 0; idle < 10;) {
    asyncd_ring_sqe* sqe = ring.GetSqe();
    if (sqe != nullptr) {
      RingClient::PrepNop(sqe, submitted++);
      idle = 0;
      continue;
    }
    ring.Submit();
    std::this_thread::sleep_for(10ms);
    ++idle;
  }
  EXPECT_EQ(ring.Ready(), ring.cq_entries());
  EXPECT_GT(submitted, uint64_t{ring.cq_entries()} + ring.sq_entries());
  // Reaping makes room, wakes the daemon, and everything completes once.
  std::set<uint64_t> seen;
  for (const asyncd_ring_cqe& c : Reap(ring, submitted)) {
    EXPECT_EQ(c.outcome, v1::OUTCOME_COMPLETED);
    EXPECT_TRUE(seen.insert(c.user_data).second) << "twice: " << c.user_data;
  }
  EXPECT_EQ(seen.size(), submitted);
}

TEST_P(RingClientIT, BlockedReadIsListedWaitTimesOutAndARingCancelEndsIt) {
  const uint32_t fifo = OpenBlockingFifo();
  ASSERT_NO_FATAL_FAILURE(OpenRing());
  RingClient& ring = *ring_;
  RingClient::PrepRead(ring.GetSqe(), fifo, -1, 1, 0, 77);
  ring.Submit();
  EXPECT_EQ(ring.Wait(1, 50ms).code(), absl::StatusCode::kDeadlineExceeded);
  v1::OpSelector mine;
  mine.set_session_id(session_);
  std::vector<v1::OperationInfo> listed;
  ASSERT_TRUE(WaitFor([&] {
    listed = client_.ListAll(mine).value_or(std::vector<v1::OperationInfo>{});
    return listed.size() == 1;
  }));
  EXPECT_EQ(listed[0].tag(), 77u);
  EXPECT_EQ(listed[0].kind(), v1::OP_KIND_READ);

  RingClient::PrepCancel(ring.GetSqe(), 77, 78);
  ring.Submit();
  std::map<uint64_t, asyncd_ring_cqe> by_data;
  for (const asyncd_ring_cqe& c : Reap(ring, 2)) by_data[c.user_data] = c;
  EXPECT_TRUE(by_data[78].flags & ASYNCD_RING_CQE_CANCEL_ANSWER);
  EXPECT_EQ(by_data[78].result, v1::CANCEL_RESULT_CANCELLED);
  EXPECT_EQ(by_data[78].op_id, listed[0].op_id());
  EXPECT_EQ(by_data[77].outcome, v1::OUTCOME_CANCELLED);
  EXPECT_EQ(by_data[77].end_reason, v1::END_REASON_CLIENT_REQUEST);
  EXPECT_EQ(by_data[77].result, -ECANCELED);
}

TEST_P(RingClientIT, BlockedReadsCancelledByTheCancelRpcAndAsyncctl) {
  const uint32_t fifo = OpenBlockingFifo();
  ASSERT_NO_FATAL_FAILURE(OpenRing());
  RingClient& ring = *ring_;
  RingClient::PrepRead(ring.GetSqe(), fifo, -1, 1, 0, 1);
  RingClient::PrepRead(ring.GetSqe(), fifo, -1, 1, 1, 2);
  ring.Submit();
  v1::OpSelector mine;
  mine.set_session_id(session_);
  std::map<uint64_t, uint64_t> op_by_tag;
  ASSERT_TRUE(WaitFor([&] {
    op_by_tag.clear();
    for (const auto& op : client_.ListAll(mine).value_or(std::vector<v1::OperationInfo>{})) {
      op_by_tag[op.tag()] = op.op_id();
    }
    return op_by_tag.size() == 2;
  }));
  auto answer = client_.Cancel(op_by_tag[1]);
  ASSERT_TRUE(answer.ok()) << answer.status();
  std::vector<asyncd_ring_cqe> got = Reap(ring, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].user_data, 1u);
  EXPECT_EQ(got[0].outcome, v1::OUTCOME_CANCELLED);

  const std::string command = std::string(ASYNCCTL_BINARY) + " --socket " + daemon_.socket() +
                              " ops cancel " + std::to_string(op_by_tag[2]) + " >/dev/null";
  EXPECT_EQ(std::system(command.c_str()), 0);
  got = Reap(ring, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].user_data, 2u);
  EXPECT_EQ(got[0].outcome, v1::OUTCOME_CANCELLED);
}

TEST_P(RingClientIT, SessionEndEndsTheRing) {
  const uint32_t fifo = OpenBlockingFifo();
  ASSERT_NO_FATAL_FAILURE(OpenRing());
  RingClient& ring = *ring_;
  RingClient::PrepRead(ring.GetSqe(), fifo, -1, 1, 0, 5);
  ring.Submit();
  EXPECT_EQ(ring.Wait(1, 20ms).code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(client_.CloseSession(session_).ok());
  // The read in flight still gets its completion, then the ring is closed.
  std::vector<asyncd_ring_cqe> got = Reap(ring, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].outcome, v1::OUTCOME_CANCELLED);
  EXPECT_EQ(got[0].end_reason, v1::END_REASON_SESSION_CLOSED);
  ASSERT_TRUE(WaitFor([&] { return !ring.Closed().ok(); }));
  EXPECT_EQ(ring.Closed().code(), absl::StatusCode::kFailedPrecondition) << ring.Closed();
  EXPECT_EQ(ring.Wait(1, 1s), ring.Closed());
}

TEST_P(RingClientIT, OpenRefusals) {
  // An id this daemon never issued (as daemon_test makes one).
  auto unknown = RingClient::Open(daemon_.socket(), session_ + (uint64_t{1} << 40));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound) << unknown.status();
  auto bad = RingClient::Open(daemon_.socket(), session_, {.sq_entries = 3});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("sq_entries"));
  ASSERT_NO_FATAL_FAILURE(OpenRing());  // the session's one ring
  auto second = RingClient::Open(daemon_.socket(), session_);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
}

// asyncd-bench's ring modes run against the real daemon and report.
TEST_P(RingClientIT, BenchRingModesRun) {
  ASSERT_EQ(mkfifo((daemon_.root() + "/fifo").c_str(), 0600), 0);
  writer_ = open((daemon_.root() + "/fifo").c_str(), O_RDWR | O_CLOEXEC);
  const std::string bench = std::string(ASYNCD_BENCH_BINARY) + " --target " + daemon_.socket();
  for (const std::string args :
       {" --mode ring --mix nop=1 --queue-depth 64 --batch 16 --warmup 0 --duration 300ms",
        " --mode ring --mix read=1,write=1 --file bench.dat --file-size 1048576 --queue-depth 16"
        " --batch 4 --warmup 0 --duration 300ms --list-every 50ms",
        " --mode ring-cancel --file fifo --block-size 1 --queue-depth 4 --duration 100ms"}) {
    FILE* p = popen((bench + args + " -o json").c_str(), "r");
    ASSERT_NE(p, nullptr);
    std::string out;
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    const int status = pclose(p);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << args << "\n" << out;
    EXPECT_THAT(out, ::testing::HasSubstr("\"latency_us\"")) << args;
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, RingClientIT,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

}  // namespace
}  // namespace asyncd::testing
