// The real daemon on a real socket, over gRPC, on both backends: every op
// kind, blocked ops listed and cancelled from another connection, bulk
// cancel by age, session end, drain, deadlines, watch, and bad requests.
#include <sys/stat.h>

#include "absl/strings/str_cat.h"

#include <condition_variable>
#include <fstream>
#include <future>
#include <map>
#include <mutex>

#include <gmock/gmock.h>

#include "tests/integration/daemon_fixture.h"

namespace asyncd::testing {
namespace {

using client::Client;
using client::StreamClient;
using std::chrono::milliseconds;
using std::chrono::seconds;


class DaemonTest : public ::testing::TestWithParam<BackendMode> {
 protected:
  DaemonTest() : daemon_(GetParam()), client_(daemon_.channel()) {}

  uint64_t NewSession(const char* name = "it") {
    auto s = client_.OpenSession(name);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : 0;
  }
  // A FIFO in the root, opened read-write so the open itself does not block.
  uint32_t OpenFifo(uint64_t session, const std::string& name = "fifo") {
    EXPECT_EQ(mkfifo((daemon_.root() + "/" + name).c_str(), 0600), 0);
    auto h = client_.Open(session, name, v1::OPEN_MODE_READ_WRITE);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *h : 0;
  }
  v1::OperationInfo FindOp(uint64_t op_id) {
    auto ops = client_.ListAll(v1::OpSelector());
    EXPECT_TRUE(ops.ok()) << ops.status();
    for (const auto& op : *ops) {
      if (op.op_id() == op_id) return op;
    }
    return {};
  }
  v1::Backend ExpectedBackend(bool ring_capable) {
    return GetParam() == BackendMode::kIoUring && ring_capable ? v1::BACKEND_IO_URING
                                                               : v1::BACKEND_THREAD_POOL;
  }

  Daemon daemon_;
  Client client_;
};

TEST_P(DaemonTest, ReportsItsBackends) {
  auto stats = client_.GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  if (GetParam() == BackendMode::kThreadPoolOnly) {
    EXPECT_FALSE(stats->io_uring_enabled());
    EXPECT_NE(stats->io_uring_unavailable_reason(), "");
  } else if (!stats->io_uring_enabled()) {
    GTEST_SKIP() << "io_uring unavailable here: " << stats->io_uring_unavailable_reason();
  }
  EXPECT_GT(stats->thread_pool_size(), 0u);
  EXPECT_THAT(stats->path_resolver(), ::testing::AnyOf("openat2", "userspace"));
}

// --path-resolver userspace walks paths in user space even where openat2
// works, and says so in GetStats; every op kind works with it.
TEST_P(DaemonTest, UserspaceResolverCanBeChosen) {
  Daemon forced(GetParam(), {"--path-resolver", "userspace"});
  Client client(forced.channel());
  auto stats = client.GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->path_resolver(), "userspace");
  auto s = client.OpenSession("forced");
  ASSERT_TRUE(s.ok()) << s.status();
  ExpectEveryOpKindWorks(client, *s, forced.root());
}

TEST_P(DaemonTest, EveryOpKindRunsThroughUnarySubmit) {
  const uint64_t s = NewSession();
  const std::map<v1::OpKind, v1::Backend> ran_on =
      ExpectEveryOpKindWorks(client_, s, daemon_.root());
  auto stats = client_.GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  for (const auto& [kind, backend] : ran_on) {
    if (kind == v1::OP_KIND_NOP) continue;  // may run inline on either backend
    const bool on_ring = std::find(stats->supported_uring_ops().begin(),
                                   stats->supported_uring_ops().end(),
                                   kind) != stats->supported_uring_ops().end();
    EXPECT_EQ(backend, ExpectedBackend(on_ring)) << v1::OpKind_Name(kind);
  }
  // A syscall that fails is a completed op with an errno, not an RPC error.
  v1::Operation missing;
  missing.mutable_open()->set_path("nope");
  missing.mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
  auto m = client_.Submit(s, missing);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_EQ(m->error_number(), ENOENT);
  EXPECT_EQ(m->error_name(), "ENOENT");
  EXPECT_EQ(m->result(), -ENOENT);
}

TEST_P(DaemonTest, BlockedFifoReadIsListedElsewhereAndCancelled) {
  const uint64_t s = NewSession("reader");
  const uint32_t fifo = OpenFifo(s);
  auto stream = StreamClient::Create(daemon_.channel(), "reader", s);
  ASSERT_TRUE(stream.ok()) << stream.status();
  Completions done;
  std::atomic<uint64_t> op_id{0};
  ASSERT_TRUE((*stream)
                  ->Submit({ReadOp(fifo, -1, 64, 1)}, done.Callback(),
                           [&](const StreamClient::AcceptedOp& a) { op_id = a.op_id; })
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return op_id != 0; }));
  // An operator on another connection sees it, stuck.
  Client op(daemon_.NewChannel());
  std::this_thread::sleep_for(milliseconds(50));
  auto listed = op.ListAll(v1::OpSelector());
  ASSERT_TRUE(listed.ok());
  const v1::OperationInfo* info = nullptr;
  for (const auto& o : *listed) {
    if (o.op_id() == op_id) info = &o;
  }
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->kind(), v1::OP_KIND_READ);
  EXPECT_EQ(info->client(), "reader");
  EXPECT_EQ(info->backend(), ExpectedBackend(true));
  EXPECT_TRUE(info->state() == v1::OP_STATE_RUNNING || info->state() == v1::OP_STATE_DISPATCHED)
      << info->state();
  EXPECT_TRUE(info->cancellable());
  EXPECT_EQ(info->cancel_safety(), v1::CANCEL_SAFETY_ALWAYS);
  EXPECT_GT(info->age_us(), 0u);
  EXPECT_EQ(info->target(), "fifo");  // the path its handle was opened with
  EXPECT_EQ(info->handle(), fifo);
  auto one = op.GetOperation(op_id);
  ASSERT_TRUE(one.ok());
  EXPECT_GE(one->timeline_size(), 2);  // submitted, dispatched (started on the thread pool)
  EXPECT_FALSE(done.Has(1));
  auto cancel = op.Cancel(op_id);
  ASSERT_TRUE(cancel.ok()) << cancel.status();
  ASSERT_EQ(cancel->outcomes_size(), 1);
  EXPECT_EQ(cancel->outcomes(0).result(), v1::CANCEL_RESULT_CANCELLED);
  auto c = done.Wait(1);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_EQ(c->end_reason(), v1::END_REASON_CLIENT_REQUEST);  // same uid as the submitter
  EXPECT_EQ(c->error_number(), ECANCELED);
  // A second cancel finds it done; the history has its whole timeline.
  auto again = op.Cancel(op_id);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(again->outcomes(0).result(), v1::CANCEL_RESULT_CANCELLED);
  auto hist = op.GetOperation(op_id);
  ASSERT_TRUE(hist.ok()) << hist.status();
  EXPECT_EQ(hist->outcome(), v1::OUTCOME_CANCELLED);
  bool saw_cancel_requested = false;
  for (const auto& e : hist->timeline()) {
    saw_cancel_requested |= e.type() == v1::EVENT_TYPE_CANCEL_REQUESTED;
  }
  EXPECT_TRUE(saw_cancel_requested);
  EXPECT_TRUE((*stream)->Finish().ok());
}

TEST_P(DaemonTest, BulkCancelByAgeTakesOnlyTheOldOnes) {
  auto stream = StreamClient::Create(daemon_.channel(), "bulk");
  ASSERT_TRUE(stream.ok());
  Completions done;
  std::vector<v1::Operation> old_ops, new_ops;
  for (int i = 0; i < 50; ++i) old_ops.push_back(TimeoutOp(seconds(600), 100 + i));
  ASSERT_TRUE((*stream)->Submit(old_ops, done.Callback()).ok());
  ASSERT_TRUE(WaitFor([&] {
    auto st = client_.GetStats();
    return st.ok() && st->inflight() >= 50;
  }));
  std::this_thread::sleep_for(milliseconds(400));
  for (int i = 0; i < 30; ++i) new_ops.push_back(TimeoutOp(seconds(600), 200 + i));
  ASSERT_TRUE((*stream)->Submit(new_ops, done.Callback()).ok());
  ASSERT_TRUE(WaitFor([&] {
    auto st = client_.GetStats();
    return st.ok() && st->inflight() >= 80;
  }));
  v1::OpSelector sel;
  sel.set_older_than_ms(300);
  auto r = client_.Cancel(sel);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->counts().cancelled(), 50u);
  for (int i = 0; i < 50; ++i) {
    auto c = done.Wait(100 + i);
    ASSERT_TRUE(c) << i;
    EXPECT_EQ(c->outcome(), v1::OUTCOME_CANCELLED);
  }
  EXPECT_FALSE(done.Has(200));
  // Everything else, with the explicit all=true guard.
  v1::OpSelector empty;
  EXPECT_EQ(client_.Cancel(empty).status().code(), absl::StatusCode::kInvalidArgument);
  empty.set_all(true);
  auto rest = client_.Cancel(empty);
  ASSERT_TRUE(rest.ok());
  EXPECT_EQ(rest->counts().cancelled(), 30u);
  EXPECT_TRUE((*stream)->Finish().ok());
  EXPECT_EQ(done.size(), 80u);
}

TEST_P(DaemonTest, EndingASessionCancelsEverythingAndClosesHandles) {
  const uint64_t s = NewSession("doomed");
  const uint32_t fifo = OpenFifo(s);
  auto stream = StreamClient::Create(daemon_.channel(), "doomed", s);
  ASSERT_TRUE(stream.ok());
  Completions done;
  std::vector<v1::Operation> ops;
  for (int i = 0; i < 20; ++i) ops.push_back(ReadOp(fifo, -1, 16, i + 1));
  for (int i = 0; i < 20; ++i) ops.push_back(TimeoutOp(seconds(600), 100 + i));
  ASSERT_TRUE((*stream)->Submit(ops, done.Callback()).ok());
  ASSERT_TRUE(WaitFor([&] {
    auto st = client_.GetStats();
    return st.ok() && st->inflight() >= 40;
  }));
  auto counts = client_.CloseSession(s);
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(counts->cancelled(), 40u);
  ASSERT_TRUE(WaitFor([&] { return done.size() == 40; }));
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(done.Wait(i + 1)->outcome(), v1::OUTCOME_CANCELLED);
    EXPECT_EQ(done.Wait(i + 1)->end_reason(), v1::END_REASON_SESSION_CLOSED);
  }
  // The session and its handles are gone; its id answers FAILED_PRECONDITION.
  EXPECT_EQ(client_.Read(s, fifo, -1, 1).status().code(), absl::StatusCode::kFailedPrecondition);
  auto sessions = client_.ListSessions();
  ASSERT_TRUE(sessions.ok());
  for (const auto& info : *sessions) EXPECT_NE(info.session_id(), s);
  auto hist = client_.ListHistory(v1::OpSelector(), 100);
  ASSERT_TRUE(hist.ok());
  int closed = 0;
  for (const auto& h : *hist) closed += h.end_reason() == v1::END_REASON_SESSION_CLOSED;
  EXPECT_EQ(closed, 40);
  (void)(*stream)->Finish();
}

TEST_P(DaemonTest, DeadlinesEndOpsTimedOut) {
  const uint64_t s = NewSession();
  const uint32_t fifo = OpenFifo(s);
  // The gRPC deadline of a unary call is the op's deadline.
  // The op's timer and the call's race to the same instant: the call ends
  // DEADLINE_EXCEEDED, or OK carrying the TIMED_OUT completion.
  auto c = client_.Submit(s, ReadOp(fifo, -1, 8),
                          std::chrono::system_clock::now() + milliseconds(200));
  if (c.ok()) {
    EXPECT_EQ(c->outcome(), v1::OUTCOME_TIMED_OUT);
  } else {
    EXPECT_EQ(c.status().code(), absl::StatusCode::kDeadlineExceeded);
  }
  ASSERT_TRUE(WaitFor([&] {
    auto st = client_.GetStats();
    return st.ok() && st->inflight() == 0;
  }));
  auto hist = client_.ListHistory(v1::OpSelector(), 10);
  ASSERT_TRUE(hist.ok());
  ASSERT_FALSE(hist->empty());
  EXPECT_EQ(hist->front().kind(), v1::OP_KIND_READ);
  EXPECT_EQ(hist->front().outcome(), v1::OUTCOME_TIMED_OUT);
  // A per-op deadline in a stream.
  auto stream = StreamClient::Create(daemon_.channel(), "deadline", s);
  ASSERT_TRUE(stream.ok());
  v1::Operation op = ReadOp(fifo, -1, 8, 9);
  op.set_deadline_ms(100);
  auto f = (*stream)->SubmitOne(op);
  ASSERT_EQ(f.wait_for(seconds(10)), std::future_status::ready);
  const v1::Completion done = f.get();
  EXPECT_EQ(done.outcome(), v1::OUTCOME_TIMED_OUT);
  EXPECT_EQ(done.end_reason(), v1::END_REASON_DEADLINE);
  EXPECT_TRUE((*stream)->Finish().ok());
}

TEST_P(DaemonTest, ListingShowsTheTagAndTheDeadlineInForce) {
  const uint64_t s = NewSession("tagged");
  const uint32_t fifo = OpenFifo(s);
  // The op's own deadline, sooner than the call's; and the call's alone.
  v1::Operation own = ReadOp(fifo, -1, 8, 7);
  own.set_deadline_ms(20'000);
  const v1::Operation by_call = ReadOp(fifo, -1, 8, 8);
  auto submit = [&](const v1::Operation& op) {
    return std::async(std::launch::async, [&, op] {
      Client c(daemon_.NewChannel());
      return c.Submit(s, op, std::chrono::system_clock::now() + seconds(30));
    });
  };
  auto a = submit(own);
  auto b = submit(by_call);
  std::map<uint64_t, v1::OperationInfo> by_tag;
  ASSERT_TRUE(WaitFor([&] {
    auto listed = client_.ListAll(v1::OpSelector());
    if (!listed.ok()) return false;
    by_tag.clear();
    for (const auto& o : *listed) by_tag[o.tag()] = o;
    return by_tag.size() == 2;
  }));
  ASSERT_TRUE(by_tag.count(7) && by_tag.count(8));
  EXPECT_GT(by_tag[7].deadline_ms(), 19'000u);
  EXPECT_LE(by_tag[7].deadline_ms(), 20'000u);
  EXPECT_GT(by_tag[8].deadline_ms(), 25'000u);
  EXPECT_LE(by_tag[8].deadline_ms(), 31'000u);  // gRPC rounds the timeout it sends up
  auto one = client_.GetOperation(by_tag[7].op_id());
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->tag(), 7u);
  EXPECT_EQ(one->deadline_ms(), by_tag[7].deadline_ms());
  for (auto& [tag, info] : by_tag) ASSERT_TRUE(client_.Cancel(info.op_id()).ok());
  ASSERT_EQ(a.wait_for(seconds(10)), std::future_status::ready);
  ASSERT_EQ(b.wait_for(seconds(10)), std::future_status::ready);
  // The history keeps them.
  auto hist = client_.GetOperation(by_tag[8].op_id());
  ASSERT_TRUE(hist.ok());
  EXPECT_EQ(hist->tag(), 8u);
  EXPECT_EQ(hist->outcome(), v1::OUTCOME_CANCELLED);
}

TEST_P(DaemonTest, WatchSeesSubmittedAndCompleted) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(20));
  v1::WatchRequest req;
  auto reader = client_.stub().Watch(&ctx, req);
  // The watcher registers asynchronously: keep submitting until it sees one.
  const uint64_t s = NewSession("watched");
  std::atomic<bool> stop{false};
  std::thread submitter([&] {
    Client c(daemon_.NewChannel());
    while (!stop) {
      (void)c.Submit(s, NopOp(5));
      std::this_thread::sleep_for(milliseconds(20));
    }
  });
  v1::WatchEvent e;
  bool submitted = false, completed = false;
  while ((!submitted || !completed) && reader->Read(&e)) {
    if (e.kind() != v1::OP_KIND_NOP || e.session_id() != s) continue;
    submitted |= e.type() == v1::EVENT_TYPE_SUBMITTED;
    completed |= e.type() == v1::EVENT_TYPE_COMPLETED && e.outcome() == v1::OUTCOME_COMPLETED;
  }
  stop = true;
  submitter.join();
  ctx.TryCancel();
  EXPECT_TRUE(submitted);
  EXPECT_TRUE(completed);
}

TEST_P(DaemonTest, BadRequestsGetPreciseStatusAndChangeNothing) {
  const uint64_t s = NewSession();
  auto code = [&](const v1::Operation& op) { return client_.Submit(s, op).status().code(); };
  EXPECT_EQ(code(ReadOp(4242, 0, 10)), absl::StatusCode::kNotFound);  // unknown handle
  EXPECT_EQ(code(ReadOp(0, 0, 10)), absl::StatusCode::kInvalidArgument);
  v1::Operation open;
  open.mutable_open()->set_path("x");  // no access mode
  EXPECT_EQ(code(open), absl::StatusCode::kInvalidArgument);
  open.mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
  open.mutable_open()->set_exclusive(true);  // exclusive without create
  EXPECT_EQ(code(open), absl::StatusCode::kInvalidArgument);
  open.mutable_open()->set_exclusive(false);
  open.mutable_open()->set_path("../escape");
  EXPECT_EQ(code(open), absl::StatusCode::kInvalidArgument);
  open.mutable_open()->set_path("a/../../escape");
  EXPECT_EQ(code(open), absl::StatusCode::kInvalidArgument);
  // Set-id and sticky bits are never created.
  open.mutable_open()->set_path("setid");
  open.mutable_open()->set_access(v1::OPEN_MODE_WRITE_ONLY);
  open.mutable_open()->set_create(true);
  v1::Operation dir;
  dir.mutable_mkdir()->set_path("setid-dir");
  for (uint32_t mode : {04755u, 02755u, 01777u, 010000u}) {
    open.mutable_open()->set_mode(mode);
    auto refused = client_.Submit(s, open);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << std::oct << mode;
    EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("open.mode"));
    dir.mutable_mkdir()->set_mode(mode);
    EXPECT_EQ(code(dir), absl::StatusCode::kInvalidArgument) << std::oct << mode;
  }
  EXPECT_FALSE(std::filesystem::exists(daemon_.root() + "/setid"));
  EXPECT_FALSE(std::filesystem::exists(daemon_.root() + "/setid-dir"));
  open.mutable_open()->clear_mode();
  open.mutable_open()->set_create(false);
  open.mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
  EXPECT_EQ(code(v1::Operation()), absl::StatusCode::kInvalidArgument);  // no kind
  const uint32_t h = *client_.Open(s, "f", v1::OPEN_MODE_READ_WRITE, {.create = true});
  EXPECT_EQ(code(ReadOp(h, 0, 64 << 20)), absl::StatusCode::kResourceExhausted);
  v1::Operation big;
  big.mutable_write()->set_handle(h);
  big.mutable_write()->set_data(std::string(2 << 20, 'x'));
  EXPECT_EQ(code(big), absl::StatusCode::kResourceExhausted);
  v1::Operation poll;
  poll.mutable_poll()->set_handle(h);
  poll.mutable_poll()->set_events(64);
  EXPECT_EQ(code(poll), absl::StatusCode::kInvalidArgument);
  // An id this daemon never issued; one with a serial below its first
  // (999999: serial 15) counts as an earlier daemon's.
  EXPECT_EQ(client_.Submit(s + (uint64_t{1} << 40), NopOp()).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(client_.Submit(999999, NopOp()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client_.Submit(0, NopOp()).status().code(), absl::StatusCode::kInvalidArgument);
  auto stale = client_.Cancel(uint64_t{0xdead0000beef});
  ASSERT_TRUE(stale.ok());
  EXPECT_EQ(stale->outcomes(0).result(), v1::CANCEL_RESULT_NOT_FOUND);
  EXPECT_EQ(client_.GetOperation(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_.GetOperation(0xdead0000beef).status().code(), absl::StatusCode::kNotFound);
  // Nothing changed: no file appeared outside the root, no op is in flight,
  // the file we made is untouched.
  EXPECT_FALSE(std::filesystem::exists(daemon_.dir() + "/escape"));
  EXPECT_EQ(std::filesystem::file_size(daemon_.root() + "/f"), 0u);
  auto st = client_.GetStats();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->inflight(), 0u);
  EXPECT_GE(st->rejected(), 17u);
}

TEST_P(DaemonTest, StreamRejectsBadOpsInBandAndRunsTheRest) {
  auto stream = StreamClient::Create(daemon_.channel(), "mixed");
  ASSERT_TRUE(stream.ok());
  Completions done;
  std::vector<v1::Operation> ops = {NopOp(1), ReadOp(77, 0, 1, 2), NopOp(3)};
  ASSERT_TRUE((*stream)->Submit(ops, done.Callback()).ok());
  ASSERT_TRUE(WaitFor([&] { return done.size() == 3; }));
  EXPECT_EQ(done.Wait(1)->outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_EQ(done.Wait(2)->outcome(), v1::OUTCOME_REJECTED);
  EXPECT_EQ(done.Wait(2)->status_code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(done.Wait(3)->outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_TRUE((*stream)->Finish().ok());
}

TEST_P(DaemonTest, DrainDeliversAnOutcomeForEveryAcceptedOp) {
  const uint64_t s = NewSession("drained");
  const uint32_t fifo = OpenFifo(s);
  auto stream = StreamClient::Create(daemon_.channel(), "drained", s);
  ASSERT_TRUE(stream.ok());
  Completions done;
  std::vector<v1::Operation> ops;
  for (int i = 0; i < 10; ++i) ops.push_back(ReadOp(fifo, -1, 8, i + 1));
  for (int i = 0; i < 10; ++i) ops.push_back(TimeoutOp(seconds(600), 100 + i));
  ASSERT_TRUE((*stream)->Submit(ops, done.Callback()).ok());
  ASSERT_TRUE(WaitFor([&] {
    auto st = client_.GetStats();
    return st.ok() && st->inflight() >= 20;
  }));
  auto drained = client_.Drain(2000);
  ASSERT_TRUE(drained.ok()) << drained.status();
  EXPECT_EQ(drained->inflight_at_start(), 20u);
  EXPECT_EQ(drained->cancelled(), 20u);  // all of them may block forever
  ASSERT_TRUE(WaitFor([&] { return done.size() == 20; }));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(done.Wait(i + 1)->end_reason(), v1::END_REASON_DRAIN);
  EXPECT_TRUE(std::filesystem::exists(drained->manifest_path())) << drained->manifest_path();
  std::ifstream manifest(drained->manifest_path());
  std::string text((std::istreambuf_iterator<char>(manifest)), {});
  EXPECT_NE(text.find("OP_KIND_TIMEOUT"), std::string::npos);
  (void)(*stream)->Finish();
  // The drain over, the daemon stops: new work finds none.
  EXPECT_EQ(daemon_.WaitExit(std::chrono::seconds(10)), 0) << daemon_.Log();
  EXPECT_EQ(client_.OpenSession("late").status().code(), absl::StatusCode::kUnavailable);
}

// Ten thousand reads blocked on FIFOs, over three sessions, are all
// accepted and listed on every backend, and meanwhile another session's
// statx completes; closing the sessions ends every read.
TEST_P(DaemonTest, TenThousandBlockedReadsAreAcceptedAndListed) {
  constexpr int kSessions = 3;
  constexpr int kPerSession = 3400;
  constexpr int kBatch = 1000;
  std::vector<uint64_t> sessions;
  std::vector<std::unique_ptr<StreamClient>> streams;
  Completions done;
  for (int k = 0; k < kSessions; ++k) {
    sessions.push_back(NewSession("flood"));
    const uint32_t fifo = OpenFifo(sessions.back(), "fifo" + std::to_string(k));
    auto stream = StreamClient::Create(daemon_.channel(), "flood", sessions.back());
    ASSERT_TRUE(stream.ok()) << stream.status();
    for (int first = 0; first < kPerSession; first += kBatch) {
      std::vector<v1::Operation> ops;
      for (int i = first; i < std::min(first + kBatch, kPerSession); ++i) {
        ops.push_back(ReadOp(fifo, -1, 1, uint64_t(k) * kPerSession + i + 1));
      }
      ASSERT_TRUE((*stream)->Submit(ops, done.Callback()).ok());
    }
    streams.push_back(std::move(*stream));
  }
  const size_t total = size_t{kSessions} * kPerSession;
  ASSERT_TRUE(WaitFor([&] {
    auto st = client_.GetStats();
    return st.ok() && st->inflight() >= total;
  })) << "not all reads were accepted";
  auto listed = client_.ListAll(v1::OpSelector());
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->size(), total);
  EXPECT_EQ(done.size(), 0u) << "a read ended early";

  const uint64_t other = NewSession("other");
  v1::Operation statx;
  statx.mutable_statx()->set_path("fifo0");
  auto st = client_.Submit(other, statx);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->outcome(), v1::OUTCOME_COMPLETED);

  for (uint64_t s : sessions) ASSERT_TRUE(client_.CloseSession(s).ok());
  ASSERT_TRUE(WaitFor([&] { return done.size() == total; }, std::chrono::seconds(60)));
  EXPECT_EQ(done.Wait(1)->outcome(), v1::OUTCOME_CANCELLED);
  for (auto& stream : streams) (void)stream->Finish();
}

INSTANTIATE_TEST_SUITE_P(Backends, DaemonTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

}  // namespace
}  // namespace asyncd::testing
