// Storm: thousands of ops with random cancels, deadlines and listings against
// the real daemon binary over gRPC on a unix socket, with io_uring and with
// the thread pool alone. Afterwards the contract's invariants are checked over
// what the client saw (storm_journal.h has the checks):
//   1 exactly one terminal completion per accepted op, none for unknown ids;
//   2 outcomes tell the truth: no CANCELLED without a cancel, no TIMED_OUT
//     without a deadline, no COMPLETED with the daemon's own ECANCELED;
//   3 a cancel's answer agrees with the op's outcome;
//   4 ListOperations never lists a finished op;
//   5 a unary Submit whose call deadline passes ends DEADLINE_EXCEEDED;
//   6 cancelling a stale id never touches the op that reuses its slot;
//   and every byte written into the FIFO is read exactly once.
// Each scenario runs for ASYNCD_STORM_SECONDS (default 5) or kMaxOps ops,
// whichever ends first. ASYNCD_STORM_SEED replays the client's random
// choices (not the daemon's timing); failures print the seed.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <iostream>
#include <mutex>
#include <queue>
#include <random>
#include <thread>

#include "tests/integration/daemon_fixture.h"
#include "tests/integration/security_util.h"
#include "tests/stress/storm_journal.h"

namespace asyncd::testing {
namespace {

using client::Client;
using storm::Journal;
using storm::Via;
using Clock = std::chrono::steady_clock;
using std::chrono::microseconds;
using std::chrono::milliseconds;

constexpr size_t kBatchOps = 25;
constexpr size_t kMaxOps = 60'000;
constexpr size_t kWindow = 500;  // stream ops whose completion has not been read
constexpr auto kStreamEndTimeout = std::chrono::seconds(60);

double StormSeconds() {
  const char* v = getenv("ASYNCD_STORM_SECONDS");
  return v != nullptr && *v != '\0' ? atof(v) : 5.0;
}

uint64_t StormSeed() {
  const char* v = getenv("ASYNCD_STORM_SEED");
  if (v != nullptr && *v != '\0') return strtoull(v, nullptr, 0);
  return (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
}

/// The Stream RPC driven by hand, not through StreamClient: the library
/// matches completions to its outstanding slots and drops what it cannot
/// match (a second completion, an unknown tag), which would hide exactly
/// what invariant 1 looks for. One reader thread records every message in
/// the journal as it is read; writers record theirs just before writing.
class WireStream {
 public:
  /// Called on the reader thread for each accepted op.
  using AcceptedHook = std::function<void(uint64_t tag, uint64_t op_id)>;

  WireStream(const std::shared_ptr<grpc::Channel>& channel, Journal& journal,
             AcceptedHook hook = {})
      : stub_(v1::Asyncd::NewStub(channel)), journal_(journal), on_accepted_(std::move(hook)) {}

  ~WireStream() {
    if (!reader_.joinable()) return;
    context_.TryCancel();
    reader_.join();
  }

  /// Attaches to `session_id` and waits for StreamOpened.
  absl::Status Open(uint64_t session_id) {
    stream_ = stub_->Stream(&context_);
    v1::StreamRequest open;
    open.mutable_open()->set_session_id(session_id);
    v1::StreamResponse first;
    if (!stream_->Write(open) || !stream_->Read(&first)) {
      context_.TryCancel();
      return client::ToAbslStatus(stream_->Finish());
    }
    if (!first.has_opened()) {
      context_.TryCancel();
      (void)stream_->Finish();
      return absl::InternalError("first stream response: " + first.ShortDebugString());
    }
    reader_ = std::thread([this] { ReadLoop(); });
    return absl::OkStatus();
  }

  /// Sends `ops` as one SubmitBatch once the window has room. False if the
  /// stream has ended.
  bool Submit(std::vector<v1::Operation> ops) {
    {
      std::unique_lock lock(mu_);
      room_.wait(lock, [&] { return outstanding_ + ops.size() <= kWindow || ended_; });
      if (ended_) return false;
      outstanding_ += ops.size();
    }
    v1::StreamRequest req;
    v1::SubmitBatch* batch = req.mutable_submit();
    std::vector<uint64_t> tags;
    for (v1::Operation& op : ops) {
      tags.push_back(journal_.AddOp(Via::kStream, op));
      *batch->add_ops() = std::move(op);
    }
    std::lock_guard write(write_mu_);
    batch->set_batch_tag(++batches_);
    journal_.Sent(tags);
    return stream_->Write(req);
  }

  /// Sends a cancel of `op_id` on the stream; its answer is read later.
  void Cancel(uint64_t op_id, bool never_issued) {
    std::lock_guard write(write_mu_);
    if (writes_done_) return;
    const size_t index = journal_.CancelSending(op_id, Via::kStream, never_issued);
    v1::StreamRequest req;
    req.mutable_cancel()->set_op_id(op_id);
    req.mutable_cancel()->set_request_tag(index + 1);
    if (stream_->Write(req)) journal_.CancelWritten(index);
  }

  /// Half-closes, reads until the daemon ends the stream (cancelling it
  /// after kStreamEndTimeout) and records how it ended.
  /// `describe_stuck`, when set, reports what is still in flight before a
  /// stuck stream is cancelled (cancelling ends it).
  absl::Status Finish(const std::function<std::string()>& describe_stuck = {}) {
    {
      std::lock_guard write(write_mu_);
      writes_done_ = true;
      (void)stream_->WritesDone();
    }
    bool timed_out = false;
    {
      std::unique_lock lock(mu_);
      timed_out = !room_.wait_for(lock, kStreamEndTimeout, [&] { return reader_done_; });
    }
    std::string stuck;
    if (timed_out && describe_stuck) stuck = describe_stuck();
    if (timed_out) context_.TryCancel();
    reader_.join();
    absl::Status status = client::ToAbslStatus(stream_->Finish());
    if (timed_out) {
      status = absl::DeadlineExceededError(
          absl::StrCat("the stream did not end within ", kStreamEndTimeout.count(),
                       " s of the half-close; cancelled (", status.ToString(), ")", stuck));
    }
    journal_.StreamEnded(status);
    return status;
  }

 private:
  void ReadLoop() {
    v1::StreamResponse resp;
    while (stream_->Read(&resp)) {
      switch (resp.msg_case()) {
        case v1::StreamResponse::kAccepted:
          for (const auto& [tag, op_id] : journal_.Accepted(resp.accepted())) {
            if (on_accepted_) on_accepted_(tag, op_id);
          }
          break;
        case v1::StreamResponse::kCompletions: {
          size_t firsts = 0;
          for (const v1::Completion& c : resp.completions().completions()) {
            firsts += journal_.Completed(c) ? 1 : 0;
          }
          std::lock_guard lock(mu_);
          outstanding_ -= firsts;
          room_.notify_all();
          break;
        }
        case v1::StreamResponse::kCancelResult:
          journal_.CancelAnswered(resp.cancel_result().request_tag() - 1, Via::kStream,
                                  resp.cancel_result());
          break;
        default:
          journal_.RecordAnomaly("an unexpected stream message", resp.ShortDebugString());
      }
    }
    std::lock_guard lock(mu_);
    reader_done_ = ended_ = true;
    room_.notify_all();
  }

  std::unique_ptr<v1::Asyncd::Stub> stub_;
  Journal& journal_;
  const AcceptedHook on_accepted_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>> stream_;
  std::thread reader_;

  std::mutex write_mu_;  // one writer at a time (gRPC's rule), in journal order
  uint64_t batches_ = 0;
  bool writes_done_ = false;

  std::mutex mu_;
  std::condition_variable room_;  // outstanding_ fell, or the stream ended
  size_t outstanding_ = 0;
  bool ended_ = false;
  bool reader_done_ = false;
};

v1::Operation FifoRead(uint32_t handle, uint32_t deadline_ms) {
  v1::Operation op = ReadOp(handle, -1, 1);
  op.set_deadline_ms(deadline_ms);
  return op;
}

/// Runs `body(i)` on `n` threads until stopped; joins them when destroyed.
class Workers {
 public:
  Workers(int n, const std::function<void(int, const std::atomic<bool>&)>& body) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this, i, body] { body(i, stop_); });
  }
  ~Workers() { Stop(); }
  void Stop() {
    stop_ = true;
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

class StormTest : public ::testing::TestWithParam<BackendMode> {
 protected:
  void SetUp() override {
    seed_ = StormSeed();
    RecordProperty("seed", std::to_string(seed_));
    // A finished op answers ALREADY_DONE while it is in the history: keep
    // every op of a scenario there, so that a NOT_FOUND for an op whose
    // completion is still on its way is the daemon's fault, not the
    // history's bound.
    config_ = std::make_unique<ConfigFile>("[limits]\nhistory_capacity = 200000\n");
    daemon_ = std::make_unique<Daemon>(GetParam(), config_->Args());
    client_ = std::make_unique<Client>(daemon_->channel());
    absl::StatusOr<v1::Stats> stats = client_->GetStats();
    ASSERT_TRUE(stats.ok()) << stats.status() << "\n" << daemon_->Log();
    if (GetParam() == BackendMode::kIoUring && !stats->io_uring_enabled()) {
      GTEST_SKIP() << "io_uring unavailable: " << stats->io_uring_unavailable_reason();
    }
    const std::string fifo = daemon_->root() + "/fifo";
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    // A long lease: the unary scenario holds it only by its Submits.
    absl::StatusOr<uint64_t> session = client_->OpenSession("storm", 600'000);
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = *session;
    // Opened READ_WRITE by the daemon, so its reads block (never end of
    // file) and the test can open the write end without a peer.
    absl::StatusOr<uint32_t> handle = client_->Open(session_, "fifo", v1::OPEN_MODE_READ_WRITE);
    ASSERT_TRUE(handle.ok()) << handle.status();
    fifo_ = *handle;
    fifo_writer_ = open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    ASSERT_GE(fifo_writer_, 0) << strerror(errno);
    until_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(StormSeconds()));
  }

  void TearDown() override {
    if (fifo_writer_ >= 0) close(fifo_writer_);
  }

  ::testing::AssertionResult Opened(WireStream& stream) {
    const absl::Status s = stream.Open(session_);
    if (s.ok()) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "stream open: " << s << "\n" << daemon_->Log();
  }
  ::testing::AssertionResult Ended(WireStream& stream) {
    const absl::Status s = stream.Finish([&] { return DescribeInFlight(); });
    if (s.ok()) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "the stream ended " << s;
  }

  /// The session's ops still in flight, each with its timeline.
  std::string DescribeInFlight() {
    v1::OpSelector mine;
    mine.set_session_id(session_);
    absl::StatusOr<v1::ListOperationsResponse> l = client_->ListOperations(mine, 10);
    if (!l.ok()) return absl::StrCat("; listing failed: ", l.status().ToString());
    std::string out = absl::StrCat("; in flight: ", l->total_matched());
    for (const v1::OperationInfo& op : l->ops()) {
      absl::StrAppend(&out, "\n  ", op.ShortDebugString());
      absl::StatusOr<v1::OperationInfo> full = client_->GetOperation(op.op_id());
      if (full.ok()) absl::StrAppend(&out, "\n    ", full->ShortDebugString());
    }
    return out;
  }

  bool KeepGoing() const { return Clock::now() < until_ && journal_.op_count() < kMaxOps; }

  void WriteFifo(size_t n) {
    if (n == 0) return;
    std::string bytes(n, 'x');
    const ssize_t w = write(fifo_writer_, bytes.data(), n);
    if (w > 0) journal_.FifoWritten(static_cast<uint64_t>(w));
  }

  /// Scenario A's load: batches of kBatchOps, each op a 1-byte read of the
  /// FIFO with a 1-10 ms deadline or (timeout_share of them) a 0-3 ms
  /// timeout with no deadline, and 0-30 bytes written between batches.
  void RunFifoLoad(WireStream& stream, std::mt19937_64& rng, double timeout_share) {
    std::uniform_real_distribution<double> share(0, 1);
    while (KeepGoing()) {
      std::vector<v1::Operation> batch;
      for (size_t i = 0; i < kBatchOps; ++i) {
        batch.push_back(share(rng) < timeout_share
                            ? TimeoutOp(microseconds(rng() % 3001))
                            : FifoRead(fifo_, 1 + static_cast<uint32_t>(rng() % 10)));
      }
      if (!stream.Submit(std::move(batch))) return;
      WriteFifo(rng() % 31);
    }
  }

  /// After the storm: waits until the session has nothing in flight, then
  /// empties the FIFO and records what was left in it.
  void SettleAndDrainFifo() {
    v1::OpSelector mine;
    mine.set_session_id(session_);
    const bool idle = WaitFor(
        [&] {
          absl::StatusOr<v1::ListOperationsResponse> l = client_->ListOperations(mine, 1);
          return l.ok() && l->total_matched() == 0;
        },
        std::chrono::seconds(30));
    EXPECT_TRUE(idle) << "ops of the storm's session still in flight 30 s after the storm";
    const int fd = open((daemon_->root() + "/fifo").c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    ASSERT_GE(fd, 0) << strerror(errno);
    uint64_t left = 0;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) left += static_cast<uint64_t>(n);
    close(fd);
    journal_.FifoLeftover(left);
  }

  /// Runs every check; each failing one fails the test with its report.
  void CheckInvariants() {
    const std::string where = absl::StrCat(
        ::testing::UnitTest::GetInstance()->current_test_info()->name(), " seed=", seed_);
    std::map<std::string, uint64_t> outcomes;
    for (const storm::OpRecord& r : journal_.ops()) {
      if (!r.completions.empty()) {
        ++outcomes[v1::Outcome_Name(r.completions.front().second.outcome())];
      } else if (!r.call_status.ok()) {
        ++outcomes[absl::StatusCodeToString(r.call_status.code())];
      }
    }
    std::map<std::string, uint64_t> answers;
    for (const storm::CancelRecord& c : journal_.cancels()) {
      ++answers[c.status.ok() ? v1::CancelResult_Name(c.result()) : c.status.ToString()];
    }
    std::string summary = absl::StrCat("[storm ", where, "] ", journal_.ops().size(), " ops (");
    for (const auto& [what, n] : outcomes) absl::StrAppend(&summary, " ", what, " ", n);
    absl::StrAppend(&summary, " ), ", journal_.cancels().size(), " cancels (");
    for (const auto& [what, n] : answers) absl::StrAppend(&summary, " ", what, " ", n);
    absl::StrAppend(&summary, " ), ", journal_.listings().size(), " listing pages");
    std::cout << summary << "\n";
    for (const storm::CheckResult& r : storm::CheckAll(journal_)) {
      std::cout << "  " << r.Summary() << "\n";
      EXPECT_TRUE(r.ok()) << "[storm " << where << "] (ASYNCD_STORM_SEED=" << seed_
                          << " replays the client's choices)\n"
                          << r.Report();
    }
  }

  uint64_t seed_ = 0;
  std::unique_ptr<ConfigFile> config_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<Client> client_;
  uint64_t session_ = 0;
  uint32_t fifo_ = 0;  // the FIFO's handle in session_
  int fifo_writer_ = -1;
  Clock::time_point until_;
  Journal journal_;
};

// A: one stream, batches of 1-byte FIFO reads with 1-10 ms deadlines while
// bytes trickle in: deadlines and data race for each read.
TEST_P(StormTest, FifoReadsRaceDataAndDeadlines) {
  WireStream stream(daemon_->NewChannel(), journal_);
  ASSERT_TRUE(Opened(stream));
  std::mt19937_64 rng(seed_);
  RunFifoLoad(stream, rng, /*timeout_share=*/0.0);
  EXPECT_TRUE(Ended(stream));
  SettleAndDrainFifo();
  CheckInvariants();
}

// A, variant: half the ops are 0-3 ms timeouts without a deadline, which
// nothing may cancel or time out.
TEST_P(StormTest, FifoReadsAndTimeoutsWithoutDeadline) {
  WireStream stream(daemon_->NewChannel(), journal_);
  ASSERT_TRUE(Opened(stream));
  std::mt19937_64 rng(seed_);
  RunFifoLoad(stream, rng, /*timeout_share=*/0.5);
  EXPECT_TRUE(Ended(stream));
  SettleAndDrainFifo();
  CheckInvariants();
}

// B: reads of the empty FIFO with a 33 ms deadline, each cancelled by a unary
// Cancel 25-40 ms after it was accepted: cancels and deadlines race.
TEST_P(StormTest, CancelsRaceDeadlines) {
  struct Due {
    Clock::time_point at;
    uint64_t op_id;
    bool operator>(const Due& o) const { return at > o.at; }
  };
  std::mutex mu;
  std::condition_variable cv;
  std::priority_queue<Due, std::vector<Due>, std::greater<>> due;
  size_t cancelling = 0;
  std::mt19937_64 delay_rng(seed_ ^ 0xb);  // the reader thread's only
  WireStream stream(daemon_->NewChannel(), journal_, [&](uint64_t, uint64_t op_id) {
    const auto delay = microseconds(25'000 + delay_rng() % 15'001);
    std::lock_guard lock(mu);
    due.push({Clock::now() + delay, op_id});
    cv.notify_all();
  });
  ASSERT_TRUE(Opened(stream));
  {
    Workers cancellers(4, [&](int, const std::atomic<bool>& stop) {
      std::unique_lock lock(mu);
      while (!stop) {
        if (due.empty()) {
          cv.wait_for(lock, milliseconds(10));
          continue;
        }
        // A copy: the heap may grow while the wait has the lock released.
        if (const Clock::time_point at = due.top().at; at > Clock::now()) {
          cv.wait_until(lock, at);
          continue;
        }
        const uint64_t op_id = due.top().op_id;
        due.pop();
        ++cancelling;
        lock.unlock();
        const size_t index = journal_.CancelSending(op_id, Via::kUnary);
        journal_.CancelAnswered(index, Via::kUnary, client_->Cancel(op_id));
        lock.lock();
        --cancelling;
        cv.notify_all();
      }
    });
    std::mt19937_64 rng(seed_);
    while (KeepGoing()) {
      std::vector<v1::Operation> batch;
      for (size_t i = 0; i < kBatchOps; ++i) batch.push_back(FifoRead(fifo_, 33));
      if (!stream.Submit(std::move(batch))) break;
      std::this_thread::sleep_for(milliseconds(6 + rng() % 5));
    }
    // Once the stream has ended every Accepted has been read, so every
    // cancel is scheduled: wait for the last ones to go out.
    EXPECT_TRUE(Ended(stream));
    WaitFor(
        [&] {
          std::lock_guard lock(mu);
          return due.empty() && cancelling == 0;
        },
        std::chrono::seconds(30));
  }
  SettleAndDrainFifo();
  CheckInvariants();
}

// C: unary Submits of blocking FIFO reads whose only deadline is the call's:
// 1 us (passed before the daemon sees the call) or 300 ms.
TEST_P(StormTest, UnaryCallDeadlines) {
  Workers callers(16, [&](int i, const std::atomic<bool>& stop) {
    std::mt19937_64 rng(seed_ + i);
    while (!stop && KeepGoing()) {
      v1::Operation op = ReadOp(fifo_, -1, 1);
      const int64_t call_us = rng() % 2 == 0 ? 1 : 300'000;
      const uint64_t tag = journal_.AddOp(Via::kUnary, op, call_us);
      const uint64_t tags[] = {tag};
      journal_.Sent(tags);
      journal_.Returned(
          tag,
          client_->Submit(session_, op, std::chrono::system_clock::now() + microseconds(call_us)));
    }
  });
  while (KeepGoing()) std::this_thread::sleep_for(milliseconds(10));
  callers.Stop();
  SettleAndDrainFifo();
  CheckInvariants();
}

// D: A's load with timeouts, while two clients page through ListOperations
// of the session in a loop.
TEST_P(StormTest, ListingsDuringStorm) {
  WireStream stream(daemon_->NewChannel(), journal_);
  ASSERT_TRUE(Opened(stream));
  {
    Workers listers(2, [&](int i, const std::atomic<bool>& stop) {
      std::mt19937_64 rng(seed_ + 100 + i);
      v1::OpSelector mine;
      mine.set_session_id(session_);
      while (!stop) {
        std::string token;
        do {
          const size_t index = journal_.ListingSending(session_);
          absl::StatusOr<v1::ListOperationsResponse> page =
              client_->ListOperations(mine, 1 + static_cast<uint32_t>(rng() % 100), token);
          journal_.ListingAnswered(index, page);
          token = page.ok() ? page->next_page_token() : "";
        } while (!token.empty() && !stop);
      }
    });
    std::mt19937_64 rng(seed_);
    RunFifoLoad(stream, rng, /*timeout_share=*/0.5);
  }
  EXPECT_TRUE(Ended(stream));
  SettleAndDrainFifo();
  CheckInvariants();
}

// E: A's load with timeouts, while two clients cancel random ids from the
// last 512 accepted (live, finished, slots reused), on the stream and by
// unary Cancel, and now and then an id the daemon never issued.
TEST_P(StormTest, CancelsOfLiveAndStaleIds) {
  WireStream stream(daemon_->NewChannel(), journal_);
  ASSERT_TRUE(Opened(stream));
  {
    Workers cancellers(2, [&](int i, const std::atomic<bool>& stop) {
      std::mt19937_64 rng(seed_ + 200 + i);
      while (!stop) {
        std::this_thread::sleep_for(microseconds(rng() % 300));
        uint64_t op_id = journal_.RecentId(rng);
        if (op_id == 0) continue;
        const bool never_issued = rng() % 20 == 0;
        if (never_issued) {
          // Same session and slot, a generation the run never reaches.
          const core::OpId id{op_id};
          op_id = core::OpId::Make(id.session_index(), id.slot(),
                                   id.generation() + (1u << (core::OpId::kGenBits - 1)))
                      .value;
        }
        if (rng() % 2 == 0) {
          stream.Cancel(op_id, never_issued);
        } else {
          const size_t index = journal_.CancelSending(op_id, Via::kUnary, never_issued);
          journal_.CancelAnswered(index, Via::kUnary, client_->Cancel(op_id));
        }
      }
    });
    std::mt19937_64 rng(seed_);
    RunFifoLoad(stream, rng, /*timeout_share=*/0.5);
  }
  EXPECT_TRUE(Ended(stream));
  SettleAndDrainFifo();
  CheckInvariants();
}

INSTANTIATE_TEST_SUITE_P(Backends, StormTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const ::testing::TestParamInfo<BackendMode>& info) {
                           return Name(info.param);
                         });

}  // namespace
}  // namespace asyncd::testing
