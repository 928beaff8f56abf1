// The local ring (asyncd/ring.h) against the real daemon, on both backends,
// spoken raw from the header: every handshake refusal, each op kind with its
// data in the buffer area, ring ops listed and cancelled like any other (by
// RPC, by asyncctl, by a CANCEL entry), deadlines, the ring's end with its
// session, its socket, a drain and a stop, the lease and the limits, and a
// hostile client's broken indices, bad entries and unreaped completions.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/ioctl.h>
#include <gmock/gmock.h>
#include <sys/stat.h>

#include <fstream>
#include <future>
#include <map>
#include <random>
#include <set>

#include "tests/integration/daemon_fixture.h"
#include "tests/integration/ring_raw.h"
#include "tests/integration/security_util.h"

namespace asyncd::testing {
namespace {

using client::Client;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;

constexpr uint32_t kInvalidArgument = 3;
constexpr uint32_t kNotFound = 5;
constexpr uint32_t kResourceExhausted = 8;
constexpr uint32_t kFailedPrecondition = 9;
constexpr uint32_t kUnavailable = 14;

void ExpectClosed(RawRing& ring, uint32_t status, uint32_t reason) {
  EXPECT_TRUE(WaitFor([&] { return (ring.flags() & ASYNCD_RING_CLOSED) != 0; }));
  EXPECT_EQ(ring.ctl()->closed_status, status);
  EXPECT_EQ(ring.ctl()->closed_reason, reason);
  EXPECT_TRUE(ring.WaitSocketClosed()) << "the daemon keeps the ring socket open";
}

// Fills a ring of 8 completion entries with NOP completions, then 8 more
// that wait in the daemon (CQ_OVERFLOW), without reaping.
void FillWithOverflow(RawRing& ring) {
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 8; ++i) {
      asyncd_ring_sqe* e = ring.Next();
      ASSERT_NE(e, nullptr);
      e->kind = ASYNCD_RING_OP_NOP;
      e->user_data = round * 8 + i;
    }
    ring.Submit();
    ASSERT_TRUE(WaitFor([&] { return ring.ctl()->sq_head == 8u * (round + 1); }));
  }
  ASSERT_TRUE(WaitFor([&] { return (ring.flags() & ASYNCD_RING_CQ_OVERFLOW) != 0; }));
  ASSERT_EQ(ring.ctl()->cq_tail, 8u);
}

class RingTest : public ::testing::TestWithParam<BackendMode> {
 protected:
  explicit RingTest(std::vector<std::string> args = {})
      : daemon_(GetParam(), std::move(args)), client_(daemon_.channel()) {}

  std::string RingPath() const { return daemon_.socket() + ".ring"; }
  uint64_t NewSession(const char* name = "ring") {
    auto s = client_.OpenSession(name);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : 0;
  }
  std::unique_ptr<RawRing> NewRing(uint64_t session, uint32_t sq = 0, uint32_t cq = 0,
                                   uint64_t buffer_bytes = 0) {
    RingSetupResult r = OpenRing(RingPath(), RingSetup(session, sq, cq, buffer_bytes));
    EXPECT_EQ(r.reply.status, 0u) << r.reply.message;
    EXPECT_TRUE(r.ring != nullptr && r.ring->mapped());
    return std::move(r.ring);
  }
  // A FIFO in the root, opened read-write so that the open does not block.
  uint32_t OpenFifo(uint64_t session, const std::string& name = "fifo") {
    EXPECT_EQ(mkfifo((daemon_.root() + "/" + name).c_str(), 0600), 0);
    auto h = client_.Open(session, name, v1::OPEN_MODE_READ_WRITE);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *h : 0;
  }
  // A session with a FIFO open and a ring.
  struct FifoRing {
    uint64_t session = 0;
    uint32_t fifo = 0;
    std::unique_ptr<RawRing> ring;
  };
  FifoRing NewFifoRing() {
    FifoRing f;
    f.session = NewSession();
    f.fifo = OpenFifo(f.session);
    f.ring = NewRing(f.session);
    return f;
  }
  // A read of the FIFO `h` through `ring`: it blocks.
  static void SubmitRead(RawRing& ring, uint32_t h, uint64_t user_data, uint32_t deadline_ms = 0) {
    asyncd_ring_sqe* e = ring.Next();
    e->kind = ASYNCD_RING_OP_READ;
    e->handle = h;
    e->offset = -1;
    e->length = 8;
    e->user_data = user_data;
    e->deadline_ms = deadline_ms;
    ring.Submit();
  }
  // A blocked read of the FIFO `h` through `ring`, listed by the daemon.
  v1::OperationInfo BlockedRead(RawRing& ring, uint32_t h, uint64_t user_data) {
    SubmitRead(ring, h, user_data);
    v1::OperationInfo found;
    EXPECT_TRUE(WaitFor([&] {
      auto ops = client_.ListAll(v1::OpSelector());
      if (!ops.ok()) return false;
      for (const auto& op : *ops) {
        if (op.tag() == user_data) found = op;
      }
      return found.op_id() != 0;
    })) << "the ring's read is not listed";
    return found;
  }
  // A NOP through `ring` completes: the ring still serves.
  static void ExpectNopCompletes(RawRing& ring) {
    asyncd_ring_sqe* e = ring.Next();
    ASSERT_NE(e, nullptr);
    e->kind = ASYNCD_RING_OP_NOP;
    e->user_data = 1;
    ring.Submit();
    auto cqes = ring.Wait(1);
    ASSERT_EQ(cqes.size(), 1u);
    EXPECT_EQ(cqes[0].outcome, v1::OUTCOME_COMPLETED);
  }
  Daemon daemon_;
  Client client_;
};

TEST_P(RingTest, RefusesEachBadSetupWithItsStatusNamingTheField) {
  const uint64_t s = NewSession();
  auto refused = [&](asyncd_ring_setup setup) {
    RingSetupResult r = OpenRing(RingPath(), setup);
    EXPECT_EQ(r.reply_bytes, sizeof(asyncd_ring_setup_reply));
    EXPECT_EQ(r.reply.magic, ASYNCD_RING_MAGIC);
    EXPECT_EQ(r.reply.version, ASYNCD_RING_VERSION);
    EXPECT_EQ(r.ring, nullptr);
    return std::make_pair(r.reply.status, std::string(r.reply.message));
  };
  auto setup = RingSetup(s);
  setup.magic = 1;
  EXPECT_THAT(refused(setup), ::testing::FieldsAre(kInvalidArgument, HasSubstr("magic")));
  setup = RingSetup(s);
  setup.version = 2;
  EXPECT_THAT(refused(setup), ::testing::FieldsAre(kInvalidArgument, HasSubstr("version: 2")));
  EXPECT_THAT(refused(RingSetup(s, 3)),
              ::testing::FieldsAre(kInvalidArgument, HasSubstr("sq_entries")));
  EXPECT_THAT(refused(RingSetup(s, 8192)),
              ::testing::FieldsAre(kInvalidArgument, HasSubstr("sq_entries")));
  EXPECT_THAT(refused(RingSetup(s, 8, 4)),
              ::testing::FieldsAre(kInvalidArgument, HasSubstr("cq_entries")));
  EXPECT_THAT(refused(RingSetup(s, 8, 12)),
              ::testing::FieldsAre(kInvalidArgument, HasSubstr("cq_entries")));
  EXPECT_THAT(refused(RingSetup(s, 0, 0, 1000)),
              ::testing::FieldsAre(kInvalidArgument, HasSubstr("buffer_bytes")));
  setup = RingSetup(s);
  setup.reserved[2] = 1;
  EXPECT_THAT(refused(setup), ::testing::FieldsAre(kInvalidArgument, HasSubstr("reserved[2]")));
  EXPECT_THAT(refused(RingSetup(0)),
              ::testing::FieldsAre(kInvalidArgument, HasSubstr("session_id")));
  EXPECT_THAT(refused(RingSetup(s + (uint64_t{1} << 40))),
              ::testing::FieldsAre(kNotFound, HasSubstr("session")));
  // Over limits.max_buffered_bytes (256 MiB by default) by itself.
  EXPECT_THAT(refused(RingSetup(s, 0, 0, uint64_t{512} << 20)),
              ::testing::FieldsAre(kResourceExhausted, HasSubstr("max_buffered_bytes")));
  // A message that is not a setup.
  for (size_t size : {size_t{10}, sizeof(asyncd_ring_setup) + 8}) {
    std::vector<char> bytes(size, 0);
    RingSetupResult r = OpenRingRaw(RingPath(), bytes.data(), bytes.size());
    EXPECT_EQ(r.reply.status, kInvalidArgument);
    EXPECT_THAT(r.reply.message, HasSubstr("asyncd_ring_setup"));
  }
  // None of that made a ring: the session takes one now.
  auto ring = NewRing(s);
  EXPECT_NE(ring, nullptr);
  // One ring per session.
  EXPECT_THAT(refused(RingSetup(s)),
              ::testing::FieldsAre(kFailedPrecondition, HasSubstr("ring already")));
  // An ended session.
  const uint64_t ended = NewSession();
  ASSERT_TRUE(client_.CloseSession(ended).ok());
  EXPECT_EQ(refused(RingSetup(ended)).first, kFailedPrecondition);
}

TEST_P(RingTest, BufferAreasAreChargedToMaxBufferedBytesForTheRingsLife) {
  const uint64_t a = NewSession("a");
  const uint64_t b = NewSession("b");
  auto big = NewRing(a, 0, 0, uint64_t{160} << 20);
  ASSERT_NE(big, nullptr);
  RingSetupResult second = OpenRing(RingPath(), RingSetup(b, 0, 0, uint64_t{160} << 20));
  EXPECT_EQ(second.reply.status, kResourceExhausted);
  EXPECT_THAT(second.reply.message, HasSubstr("limits.max_buffered_bytes"));
  // The first ring's end gives its bytes back.
  big->Hangup();
  EXPECT_TRUE(WaitFor([&] {
    return OpenRing(RingPath(), RingSetup(b, 0, 0, uint64_t{160} << 20)).reply.status == 0;
  }));
}

TEST_P(RingTest, RunsEachKindWithItsDataInTheBufferArea) {
  const uint64_t s = NewSession();
  std::ofstream(daemon_.root() + "/data") << "";
  auto h = client_.Open(s, "data", v1::OPEN_MODE_READ_WRITE);
  ASSERT_TRUE(h.ok()) << h.status();
  auto ring = NewRing(s);
  ASSERT_NE(ring, nullptr);
  EXPECT_EQ(ring->reply().max_op_bytes, 1u << 20);
  EXPECT_EQ(ring->reply().buffer_offset % ASYNCD_RING_BUFFER_ALIGN, 0u);
  std::memcpy(ring->buffer(), "hello ring", 10);
  auto submit = [&](uint8_t kind, uint64_t user_data) {
    asyncd_ring_sqe* e = ring->Next();
    e->kind = kind;
    e->user_data = user_data;
    return e;
  };
  submit(ASYNCD_RING_OP_NOP, 1);
  asyncd_ring_sqe* w = submit(ASYNCD_RING_OP_WRITE, 2);
  w->handle = *h;
  w->offset = 0;
  w->length = 10;
  ring->Submit();
  std::map<uint64_t, asyncd_ring_cqe> by_user;
  for (const auto& c : ring->Wait(2)) by_user[c.user_data] = c;
  ASSERT_EQ(by_user.size(), 2u);
  EXPECT_EQ(by_user[1].outcome, v1::OUTCOME_COMPLETED);
  EXPECT_NE(by_user[1].op_id, 0u);
  // The poller answers a NOP itself; it is an op like any other all the same.
  EXPECT_EQ(by_user[1].backend, v1::BACKEND_INLINE);
  auto nop = client_.GetOperation(by_user[1].op_id);
  ASSERT_TRUE(nop.ok()) << nop.status();
  EXPECT_EQ(nop->kind(), v1::OP_KIND_NOP);
  EXPECT_EQ(nop->state(), v1::OP_STATE_COMPLETED);
  EXPECT_EQ(nop->backend(), v1::BACKEND_INLINE);
  EXPECT_EQ(nop->tag(), 1u);
  EXPECT_EQ(by_user[2].outcome, v1::OUTCOME_COMPLETED);
  EXPECT_EQ(by_user[2].result, 10);
  EXPECT_EQ(by_user[2].bytes, 10u);
  EXPECT_NE(by_user[2].backend, v1::BACKEND_UNSPECIFIED);
  std::ifstream in(daemon_.root() + "/data");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "hello ring");

  asyncd_ring_sqe* r = submit(ASYNCD_RING_OP_READ, 3);
  r->handle = *h;
  r->offset = 6;
  r->length = 100;  // short at the end of the file
  r->buffer_offset = 8192;
  asyncd_ring_sqe* f = submit(ASYNCD_RING_OP_FSYNC, 4);
  f->handle = *h;
  f->flags = ASYNCD_RING_SQE_DATASYNC;
  asyncd_ring_sqe* p = submit(ASYNCD_RING_OP_POLL, 5);
  p->handle = *h;
  p->poll_events = v1::POLL_EVENTS_READABLE;
  asyncd_ring_sqe* t = submit(ASYNCD_RING_OP_TIMEOUT, 6);
  t->arg = 2000;
  ring->Submit();
  by_user.clear();
  for (const auto& c : ring->Wait(4)) by_user[c.user_data] = c;
  ASSERT_EQ(by_user.size(), 4u);
  for (const auto& [ud, c] : by_user) EXPECT_EQ(c.outcome, v1::OUTCOME_COMPLETED) << ud;
  EXPECT_EQ(by_user[3].result, 4);
  EXPECT_EQ(by_user[3].bytes, 4u);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(ring->buffer()) + 8192, 4), "ring");
  EXPECT_EQ(by_user[4].result, 0);
  EXPECT_EQ(by_user[5].result & v1::POLL_EVENTS_READABLE, v1::POLL_EVENTS_READABLE);
  EXPECT_EQ(by_user[6].result, 0);
  // History records ring ops like any other, tagged with their user_data.
  auto history = client_.ListHistory(v1::OpSelector());
  ASSERT_TRUE(history.ok()) << history.status();
  std::set<uint64_t> tags;
  for (const auto& op : *history) tags.insert(op.tag());
  for (uint64_t ud = 1; ud <= 6; ++ud) EXPECT_TRUE(tags.contains(ud)) << ud;
}

TEST_P(RingTest, RejectsBadEntriesWithStatusAndReasonAndRunsNothing) {
  const uint64_t s = NewSession();
  auto ring = NewRing(s, 8, 16, 1 << 16);
  ASSERT_NE(ring, nullptr);
  std::ofstream(daemon_.root() + "/data") << "0123456789";
  auto h = client_.Open(s, "data", v1::OPEN_MODE_READ_WRITE);
  ASSERT_TRUE(h.ok());
  struct Case {
    uint32_t status;
    uint32_t reason;
    std::function<void(asyncd_ring_sqe&)> make;
  };
  const std::vector<Case> cases = {
      {kInvalidArgument, ASYNCD_RING_REASON_BAD_KIND, [](auto& e) { e.kind = 99; }},
      {kInvalidArgument, ASYNCD_RING_REASON_BAD_FIELD,
       [](auto& e) { e.kind = ASYNCD_RING_OP_NOP, e.length = 1; }},
      {kInvalidArgument, ASYNCD_RING_REASON_BAD_BUFFER,
       [&](auto& e) {
         e.kind = ASYNCD_RING_OP_READ, e.handle = *h, e.length = 100,
         e.buffer_offset = (1 << 16) - 10;
       }},
      {kInvalidArgument, ASYNCD_RING_REASON_BAD_BUFFER,
       [&](auto& e) {
         e.kind = ASYNCD_RING_OP_WRITE, e.handle = *h, e.length = 1, e.buffer_offset = ~uint64_t{0};
       }},
      {kResourceExhausted, ASYNCD_RING_REASON_TOO_LONG,
       [&](auto& e) { e.kind = ASYNCD_RING_OP_READ, e.handle = *h, e.length = (1 << 20) + 1; }},
      {kNotFound, ASYNCD_RING_REASON_UNKNOWN_HANDLE,
       [](auto& e) { e.kind = ASYNCD_RING_OP_READ, e.handle = 4242, e.length = 1; }},
      {kInvalidArgument, ASYNCD_RING_REASON_BAD_HANDLE,
       [](auto& e) { e.kind = ASYNCD_RING_OP_WRITE, e.handle = 0, e.length = 1; }},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    asyncd_ring_sqe* e = ring->Next();
    cases[i].make(*e);
    e->user_data = 100 + i;
  }
  ring->Submit();
  auto cqes = ring->Wait(cases.size());
  ASSERT_EQ(cqes.size(), cases.size());
  for (const auto& c : cqes) {
    const Case& want = cases[c.user_data - 100];
    EXPECT_EQ(c.outcome, v1::OUTCOME_REJECTED) << c.user_data;
    EXPECT_EQ(c.status, want.status) << c.user_data;
    EXPECT_EQ(c.reason, want.reason) << c.user_data;
    EXPECT_EQ(c.op_id, 0u);
  }
  std::ifstream in(daemon_.root() + "/data");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), "0123456789");
  EXPECT_EQ(ring->flags() & ASYNCD_RING_CLOSED, 0u);
  // Validated as the Operation of the same kind: gRPC refuses handle 0 alike.
  EXPECT_EQ(client_.Submit(s, ReadOp(0, 0, 1, 7)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(RingTest, ABlockedReadIsListedAndCancelledByRpcAndByAsyncctl) {
  auto [s, fifo, ring] = NewFifoRing();
  ASSERT_NE(ring, nullptr);
  const v1::OperationInfo op = BlockedRead(*ring, fifo, 77);
  EXPECT_EQ(op.kind(), v1::OP_KIND_READ);
  EXPECT_EQ(op.session_id(), s);
  auto got = client_.GetOperation(op.op_id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->tag(), 77u);
  auto cancelled = client_.Cancel(op.op_id());
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->outcomes(0).result(), v1::CANCEL_RESULT_CANCELLED);
  auto cqes = ring->Wait(1);
  ASSERT_EQ(cqes.size(), 1u);
  EXPECT_EQ(cqes[0].user_data, 77u);
  EXPECT_EQ(cqes[0].op_id, op.op_id());
  EXPECT_EQ(cqes[0].outcome, v1::OUTCOME_CANCELLED);
  EXPECT_EQ(cqes[0].result, -ECANCELED);
  EXPECT_EQ(cqes[0].end_reason, v1::END_REASON_CLIENT_REQUEST);

  // asyncctl sees and cancels them too.
  const v1::OperationInfo second = BlockedRead(*ring, fifo, 78);
  FILE* p = popen((std::string(ASYNCCTL_BINARY) + " --socket " + daemon_.socket() + " ops cancel " +
                   std::to_string(second.op_id()))
                      .c_str(),
                  "r");
  ASSERT_NE(p, nullptr);
  char sink[4096];
  while (fread(sink, 1, sizeof sink, p) > 0) {
  }
  EXPECT_EQ(pclose(p), 0);
  cqes = ring->Wait(1);
  ASSERT_EQ(cqes.size(), 1u);
  EXPECT_EQ(cqes[0].user_data, 78u);
  EXPECT_EQ(cqes[0].outcome, v1::OUTCOME_CANCELLED);
}

TEST_P(RingTest, ACancelEntryCancelsTheOldestWithItsUserDataAndAnswers) {
  auto [s, fifo, ring] = NewFifoRing();
  ASSERT_NE(ring, nullptr);
  const v1::OperationInfo first = BlockedRead(*ring, fifo, 5);
  BlockedRead(*ring, fifo, 6);
  asyncd_ring_sqe* c = ring->Next();
  c->kind = ASYNCD_RING_OP_CANCEL;
  c->arg = 5;
  c->user_data = 500;
  ring->Submit();
  std::map<uint64_t, asyncd_ring_cqe> by_user;
  for (const auto& cqe : ring->Wait(2)) by_user[cqe.user_data] = cqe;
  ASSERT_EQ(by_user.size(), 2u);
  EXPECT_EQ(by_user[500].flags, ASYNCD_RING_CQE_CANCEL_ANSWER);
  EXPECT_EQ(by_user[500].result, v1::CANCEL_RESULT_CANCELLED);
  EXPECT_EQ(by_user[500].op_id, first.op_id());
  EXPECT_EQ(by_user[5].outcome, v1::OUTCOME_CANCELLED);
  EXPECT_EQ(by_user[5].end_reason, v1::END_REASON_CLIENT_REQUEST);
  EXPECT_EQ(by_user[5].flags, 0u);
  // Nothing in flight has user_data 5 now.
  c = ring->Next();
  c->kind = ASYNCD_RING_OP_CANCEL;
  c->arg = 5;
  c->user_data = 501;
  ring->Submit();
  auto answer = ring->Wait(1);
  ASSERT_EQ(answer.size(), 1u);
  EXPECT_EQ(answer[0].user_data, 501u);
  EXPECT_EQ(answer[0].result, v1::CANCEL_RESULT_NOT_FOUND);
  EXPECT_EQ(answer[0].op_id, 0u);
  // The other read still waits.
  auto ops = client_.ListAll(v1::OpSelector());
  ASSERT_TRUE(ops.ok());
  ASSERT_EQ(ops->size(), 1u);
  EXPECT_EQ((*ops)[0].tag(), 6u);
}

TEST_P(RingTest, WatchSeesRingOpsBeginAndEnd) {
  const uint64_t s = NewSession();
  auto ring = NewRing(s);
  ASSERT_NE(ring, nullptr);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(20));
  auto reader = client_.stub().Watch(&ctx, v1::WatchRequest());
  std::atomic<bool> submitted{false};
  std::atomic<bool> completed{false};
  std::thread watcher([&] {
    v1::WatchEvent e;
    while ((!submitted || !completed) && reader->Read(&e)) {
      if (e.session_id() != s || e.kind() != v1::OP_KIND_NOP) continue;
      submitted = submitted || e.type() == v1::EVENT_TYPE_SUBMITTED;
      completed = completed || (e.type() == v1::EVENT_TYPE_COMPLETED &&
                                e.outcome() == v1::OUTCOME_COMPLETED);
    }
  });
  // The watcher registers asynchronously: submit until it has seen one.
  const auto until = std::chrono::steady_clock::now() + seconds(10);
  while ((!submitted || !completed) && std::chrono::steady_clock::now() < until) {
    asyncd_ring_sqe* e = ring->Next();
    e->kind = ASYNCD_RING_OP_NOP;
    e->user_data = 5;
    ring->Submit();
    EXPECT_EQ(ring->Wait(1).size(), 1u);
    std::this_thread::sleep_for(milliseconds(20));
  }
  ctx.TryCancel();
  watcher.join();
  EXPECT_TRUE(submitted);
  EXPECT_TRUE(completed);
}

TEST_P(RingTest, ADeadlineEndsARingOpTimedOut) {
  auto [s, fifo, ring] = NewFifoRing();
  ASSERT_NE(ring, nullptr);
  SubmitRead(*ring, fifo, 9, /*deadline_ms=*/50);
  auto cqes = ring->Wait(1);
  ASSERT_EQ(cqes.size(), 1u);
  EXPECT_EQ(cqes[0].outcome, v1::OUTCOME_TIMED_OUT);
  EXPECT_EQ(cqes[0].result, -ETIMEDOUT);
  EXPECT_EQ(cqes[0].end_reason, v1::END_REASON_DEADLINE);
}

TEST_P(RingTest, ClosingTheSessionEndsTheRingAfterItsCompletions) {
  auto [s, fifo, ring] = NewFifoRing();
  ASSERT_NE(ring, nullptr);
  BlockedRead(*ring, fifo, 1);
  ASSERT_TRUE(client_.CloseSession(s).ok());
  auto cqes = ring->Wait(1);
  ASSERT_EQ(cqes.size(), 1u);
  EXPECT_EQ(cqes[0].outcome, v1::OUTCOME_CANCELLED);
  EXPECT_EQ(cqes[0].end_reason, v1::END_REASON_SESSION_CLOSED);
  ExpectClosed(*ring, kFailedPrecondition, ASYNCD_RING_REASON_SESSION_ENDED);
}

// A ring whose session ended lives on while completions wait for room, and
// takes no entry meanwhile: one written then is never run.
TEST_P(RingTest, EntriesWrittenAfterTheSessionEndedAreNeverTaken) {
  const uint64_t s = NewSession();
  auto ring = NewRing(s, 8, 8);
  ASSERT_NE(ring, nullptr);
  FillWithOverflow(*ring);
  ASSERT_TRUE(client_.CloseSession(s).ok());
  ASSERT_TRUE(WaitFor([&] { return (ring->flags() & ASYNCD_RING_CLOSED) != 0; }));
  asyncd_ring_sqe* e = ring->Next();
  ASSERT_NE(e, nullptr);
  e->kind = ASYNCD_RING_OP_NOP;
  e->user_data = 99;
  ring->Submit();
  ring->Kick();
  std::this_thread::sleep_for(milliseconds(100));  // a pass would have taken it by now
  EXPECT_EQ(ring->ctl()->sq_head, 16u);
  auto cqes = ring->Wait(16);
  ASSERT_EQ(cqes.size(), 16u);
  for (const auto& c : cqes) EXPECT_NE(c.user_data, 99u);
  EXPECT_TRUE(ring->WaitSocketClosed());
  EXPECT_EQ(ring->ctl()->sq_head, 16u);
}

// A write into a FIFO nobody reads fills the pipe and waits; cancelled,
// its completion counts the bytes that went before the cancel.
TEST_P(RingTest, ACancelledWriteReportsTheBytesItMovedMidway) {
  auto [s, fifo, ring] = NewFifoRing();
  ASSERT_NE(ring, nullptr);
  const uint32_t length = 1 << 19;  // more than a pipe holds
  std::memset(ring->buffer(), 'w', length);
  asyncd_ring_sqe* e = ring->Next();
  e->kind = ASYNCD_RING_OP_WRITE;
  e->handle = fifo;
  e->offset = -1;
  e->length = length;
  e->user_data = 5;
  ring->Submit();
  uint64_t id = 0;
  ASSERT_TRUE(WaitFor([&] {
    auto ops = client_.ListAll(v1::OpSelector());
    if (!ops.ok()) return false;
    for (const auto& op : *ops) {
      if (op.tag() == 5) id = op.op_id();
    }
    return id != 0;
  }));
  // The pipe holds some of it: the write has begun.
  const int reader = open((daemon_.root() + "/fifo").c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0);
  int queued = 0;
  EXPECT_TRUE(WaitFor([&] { return ioctl(reader, FIONREAD, &queued) == 0 && queued > 0; }));
  ASSERT_TRUE(client_.Cancel(id).ok());
  auto cqes = ring->Wait(1);
  ASSERT_EQ(cqes.size(), 1u);
  EXPECT_EQ(cqes[0].outcome, v1::OUTCOME_CANCELLED);
  EXPECT_GT(cqes[0].bytes, 0u);
  EXPECT_LT(cqes[0].bytes, length);
  close(reader);
}

TEST_P(RingTest, ClosingTheRingSocketCancelsItsOpsAndKeepsTheSession) {
  auto [s, fifo, ring] = NewFifoRing();
  ASSERT_NE(ring, nullptr);
  const v1::OperationInfo op = BlockedRead(*ring, fifo, 1);
  ring->Hangup();
  EXPECT_TRUE(WaitFor([&] {
    auto history = client_.ListHistory(v1::OpSelector());
    if (!history.ok()) return false;
    for (const auto& h : *history) {
      if (h.op_id() == op.op_id()) {
        EXPECT_EQ(h.outcome(), v1::OUTCOME_CANCELLED);
        EXPECT_EQ(h.end_reason(), v1::END_REASON_RPC_CANCELLED);
        return true;
      }
    }
    return false;
  }));
  EXPECT_TRUE(client_.KeepAlive(s).ok());
  // Its place is free again.
  EXPECT_TRUE(WaitFor([&] { return OpenRing(RingPath(), RingSetup(s)).reply.status == 0; }));
}

TEST_P(RingTest, BrokenIndicesEndOnlyThatRing) {
  const uint64_t a = NewSession("a");
  const uint64_t b = NewSession("b");
  auto bad = NewRing(a, 8);
  auto good = NewRing(b, 8);
  ASSERT_TRUE(bad != nullptr && good != nullptr);
  bad->ForceSqTail(9);  // nine entries ahead of a head at 0, in a ring of 8
  ExpectClosed(*bad, kInvalidArgument, ASYNCD_RING_REASON_BROKEN_INDEX);
  ExpectNopCompletes(*good);
  EXPECT_TRUE(client_.KeepAlive(a).ok());
}

// A cq_head that cannot be, while completions wait for room and a read
// blocks: the ring ends (nothing could reach that client again), the read
// is cancelled, the socket closes, the session stays.
TEST_P(RingTest, ABrokenCqHeadWithCompletionsWaitingEndsTheRing) {
  const uint64_t s = NewSession();
  const uint32_t fifo = OpenFifo(s);
  auto ring = NewRing(s, 8, 8);
  ASSERT_NE(ring, nullptr);
  const v1::OperationInfo read = BlockedRead(*ring, fifo, 1000);
  auto nops = [&](int n, uint32_t head) {
    for (int i = 0; i < n; ++i) {
      asyncd_ring_sqe* e = ring->Next();
      ASSERT_NE(e, nullptr);
      e->kind = ASYNCD_RING_OP_NOP;
    }
    ring->Submit();
    ASSERT_TRUE(WaitFor([&] { return ring->ctl()->sq_head == head; }));
  };
  nops(8, 9);  // the CQ holds their completions
  nops(7, 16);  // theirs wait in the daemon
  ASSERT_TRUE(WaitFor([&] { return (ring->flags() & ASYNCD_RING_CQ_OVERFLOW) != 0; }));
  __atomic_store_n(&ring->ctl()->cq_head, 100u, __ATOMIC_RELEASE);  // past the tail
  ring->Kick();
  ExpectClosed(*ring, kInvalidArgument, ASYNCD_RING_REASON_BROKEN_INDEX);
  EXPECT_NE(ring->flags() & ASYNCD_RING_CQ_OVERFLOW, 0u);
  EXPECT_EQ(ring->ctl()->cq_tail, 8u);
  auto history = client_.ListHistory(v1::OpSelector());
  ASSERT_TRUE(history.ok());
  bool seen = false;
  for (const auto& h : *history) {
    if (h.op_id() != read.op_id()) continue;
    seen = true;
    EXPECT_EQ(h.outcome(), v1::OUTCOME_CANCELLED);
    EXPECT_EQ(h.end_reason(), v1::END_REASON_RPC_CANCELLED);
  }
  EXPECT_TRUE(seen) << "the blocked read did not end";
  EXPECT_TRUE(client_.KeepAlive(s).ok());
  // Its place and its buffer charge are free again.
  EXPECT_TRUE(WaitFor([&] { return OpenRing(RingPath(), RingSetup(s)).reply.status == 0; }));
}

// The daemon stops while completions wait for room: the ring ends without
// them and says so, CQ_OVERFLOW kept beside CLOSED.
TEST_P(RingTest, AStopWithCompletionsWaitingLeavesOverflowBesideClosed) {
  const uint64_t s = NewSession();
  auto ring = NewRing(s, 8, 8);
  ASSERT_NE(ring, nullptr);
  FillWithOverflow(*ring);
  EXPECT_EQ(daemon_.Stop(), 0) << daemon_.Log();
  EXPECT_EQ(ring->flags() & (ASYNCD_RING_CLOSED | ASYNCD_RING_CQ_OVERFLOW),
            ASYNCD_RING_CLOSED | ASYNCD_RING_CQ_OVERFLOW);
  EXPECT_EQ(ring->ctl()->closed_status, kUnavailable);
  EXPECT_EQ(ring->ctl()->cq_tail, 8u);
}

// The region is sealed: neither side can shrink it under the other.
TEST_P(RingTest, TheRegionIsSealedAgainstResizing) {
  auto ring = NewRing(NewSession());
  ASSERT_NE(ring, nullptr);
  const int seals = fcntl(ring->memfd(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_NE(ftruncate(ring->memfd(), 4096), 0);
  EXPECT_EQ(errno, EPERM);
  ExpectNopCompletes(*ring);
}

TEST_P(RingTest, CompletionsThatFindTheRingFullWaitUntilTheClientReaps) {
  const uint64_t s = NewSession();
  auto ring = NewRing(s, 8, 8);
  ASSERT_NE(ring, nullptr);
  uint64_t next = 0;
  auto nops = [&](int n) {
    for (int i = 0; i < n; ++i) {
      asyncd_ring_sqe* e = ring->Next();
      ASSERT_NE(e, nullptr);
      e->kind = ASYNCD_RING_OP_NOP;
      e->user_data = next++;
    }
    ring->Submit();
  };
  nops(8);
  ASSERT_TRUE(WaitFor([&] { return ring->ctl()->cq_tail == 8; }));
  nops(8);  // taken: their completions overflow
  ASSERT_TRUE(WaitFor([&] { return (ring->flags() & ASYNCD_RING_CQ_OVERFLOW) != 0; }));
  EXPECT_TRUE(WaitFor([&] { return ring->ctl()->sq_head == 16; }));
  nops(8);  // not taken: 8 completions are owed already
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(ring->ctl()->sq_head, 16u);
  auto cqes = ring->Wait(24);
  ASSERT_EQ(cqes.size(), 24u);
  std::set<uint64_t> seen;
  for (const auto& c : cqes) {
    EXPECT_EQ(c.outcome, v1::OUTCOME_COMPLETED);
    seen.insert(c.user_data);
  }
  EXPECT_EQ(seen.size(), 24u);
  EXPECT_EQ(ring->flags() & ASYNCD_RING_CQ_OVERFLOW, 0u);
}

// The daemon's wake-ups go to a pipe whose write end is its own: a client
// that waits (CQ_WAITING) but never reads the pipe, and shrank it to a page,
// fills it, and then the daemon's writes find it full and go on.
TEST_P(RingTest, AClientThatNeverReadsTheCompletionPipeStallsNothing) {
  const uint64_t s = NewSession("sleeper");
  auto ring = NewRing(s, 8, 8);
  ASSERT_NE(ring, nullptr);
  const int page = static_cast<int>(sysconf(_SC_PAGESIZE));
  ASSERT_EQ(fcntl(ring->complete_fd(), F_SETPIPE_SZ, page), page);
  __atomic_or_fetch(&ring->ctl()->client_flags, ASYNCD_RING_CQ_WAITING, __ATOMIC_SEQ_CST);
  std::vector<asyncd_ring_cqe> cqes;
  const int rounds = 2 * page;  // at least one wake-up each: twice what the pipe holds
  for (int i = 0; i < rounds; ++i) {
    asyncd_ring_sqe* e = ring->Next();
    ASSERT_NE(e, nullptr);
    e->kind = ASYNCD_RING_OP_NOP;
    e->user_data = i;
    ring->Submit();
    const auto until = std::chrono::steady_clock::now() + seconds(10);
    while (ring->Reap(cqes) == 0) {  // spins: WaitFor's naps would make this take minutes
      ASSERT_LT(std::chrono::steady_clock::now(), until) << "round " << i;
      std::this_thread::yield();
    }
  }
  EXPECT_EQ(cqes.size(), static_cast<size_t>(rounds));
  int queued = 0;
  ASSERT_EQ(ioctl(ring->complete_fd(), FIONREAD, &queued), 0);
  EXPECT_EQ(queued, page) << "the daemon did not wake the client through the pipe";

  auto other = NewRing(NewSession("other"), 8);
  ASSERT_NE(other, nullptr);
  ExpectNopCompletes(*other);
}

TEST_P(RingTest, ADrainEndsTheRingUnavailable) {
  auto [s, fifo, ring] = NewFifoRing();
  ASSERT_NE(ring, nullptr);
  BlockedRead(*ring, fifo, 1);
  auto drained = std::async(std::launch::async, [&] { return client_.Drain(0); });
  auto cqes = ring->Wait(1);
  ASSERT_EQ(cqes.size(), 1u);
  EXPECT_EQ(cqes[0].outcome, v1::OUTCOME_CANCELLED);
  EXPECT_EQ(cqes[0].end_reason, v1::END_REASON_DRAIN);
  ExpectClosed(*ring, kUnavailable, ASYNCD_RING_REASON_DRAINING);
  EXPECT_TRUE(drained.get().ok());
}

// Thousands of ring ops (writes, NOPs, timeouts), cancelled at random by
// CANCEL entries and by the Cancel RPC from another thread, some with
// deadlines: every entry gets exactly one completion, every cancel answer
// agrees with the outcome, and no listing shows an op whose completion had
// been reaped before it began.
TEST_P(RingTest, StormOfOpsAndCancelsKeepsEveryPromise) {
  const uint64_t s = NewSession();
  std::ofstream(daemon_.root() + "/data") << std::string(4096, 'x');
  auto h = client_.Open(s, "data", v1::OPEN_MODE_READ_WRITE);
  ASSERT_TRUE(h.ok());
  auto ring = NewRing(s, 64, 128);
  ASSERT_NE(ring, nullptr);
  constexpr uint64_t kOps = 3000;
  constexpr uint64_t kCancelBit = uint64_t{1} << 62;
  std::mt19937_64 rng(GetParam() == BackendMode::kIoUring ? 1 : 2);
  std::map<uint64_t, asyncd_ring_cqe> ends;     // op user_data -> its completion
  std::map<uint64_t, asyncd_ring_cqe> answers;  // cancel user_data -> its answer
  std::map<uint64_t, uint64_t> cancel_target;   // cancel user_data -> op user_data
  std::set<uint64_t> reaped_ids;
  std::mutex mu;
  std::atomic<bool> done{false};
  std::atomic<int> listing_violations{0};
  std::atomic<int> rpc_cancels{0};
  // Lists and cancels from another connection while the ring runs.
  std::thread rpc([&] {
    Client other(daemon_.NewChannel());
    std::mt19937_64 r(7);
    while (!done.load()) {
      std::set<uint64_t> before;
      {
        std::lock_guard lock(mu);
        before = reaped_ids;
      }
      auto ops = other.ListAll(v1::OpSelector());
      if (!ops.ok()) continue;
      for (const auto& op : *ops) {
        if (before.contains(op.op_id())) ++listing_violations;
      }
      if (!ops->empty() && r() % 2 == 0) {
        const auto& victim = (*ops)[r() % ops->size()];
        if (other.Cancel(victim.op_id()).ok()) ++rpc_cancels;
      }
    }
  });
  uint64_t submitted = 0;
  uint64_t cancels = 0;
  size_t expected = 0;
  std::vector<asyncd_ring_cqe> batch;
  const auto until = std::chrono::steady_clock::now() + seconds(60);
  // At least kOps, and on until the other thread's Cancel RPCs have met the
  // storm: on a loaded machine it may not have listed before kOps ended.
  auto more = [&] { return submitted < kOps || rpc_cancels.load() == 0; };
  while ((more() || ends.size() + answers.size() < expected) &&
         std::chrono::steady_clock::now() < until) {
    for (int i = 0; i < 16 && more(); ++i) {
      asyncd_ring_sqe* e = ring->Next();
      if (e == nullptr) break;
      const uint64_t pick = rng() % 10;
      ++expected;
      if (pick < 2 && submitted > 0) {
        e->kind = ASYNCD_RING_OP_CANCEL;
        e->user_data = kCancelBit | cancels++;
        e->arg = submitted - 1 - rng() % std::min<uint64_t>(submitted, 8);
        cancel_target[e->user_data] = e->arg;
        continue;
      }
      e->user_data = submitted++;
      if (pick < 4) {
        e->kind = ASYNCD_RING_OP_WRITE;  // cancellable only before it starts
        e->handle = *h;
        e->offset = static_cast<int64_t>(rng() % 4096);
        e->length = 1;
      } else if (pick == 4) {
        e->kind = ASYNCD_RING_OP_NOP;  // ends inside the poller's pass
      } else {
        e->kind = ASYNCD_RING_OP_TIMEOUT;
        e->arg = rng() % 3000;
        if (pick == 9) e->deadline_ms = 1;
      }
    }
    ring->Submit();
    batch.clear();
    ring->Reap(batch);
    if (batch.empty()) {
      if ((ring->flags() & ASYNCD_RING_CQ_OVERFLOW) != 0) ring->Kick();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    std::lock_guard lock(mu);
    for (const auto& c : batch) {
      if ((c.flags & ASYNCD_RING_CQE_CANCEL_ANSWER) != 0) {
        EXPECT_TRUE(answers.emplace(c.user_data, c).second) << "two answers for " << c.user_data;
      } else {
        EXPECT_TRUE(ends.emplace(c.user_data, c).second) << "two completions for " << c.user_data;
        reaped_ids.insert(c.op_id);
      }
    }
  }
  done = true;
  rpc.join();
  ASSERT_EQ(ends.size(), submitted) << "an op never completed";
  ASSERT_EQ(answers.size(), cancel_target.size()) << "a cancel never answered";
  EXPECT_EQ(listing_violations.load(), 0);
  int cancelled = 0;
  for (const auto& [cancel, answer] : answers) {
    const asyncd_ring_cqe& end = ends.at(cancel_target.at(cancel));
    switch (answer.result) {
      case v1::CANCEL_RESULT_CANCELLED:
        EXPECT_EQ(end.outcome, v1::OUTCOME_CANCELLED) << end.user_data;
        EXPECT_EQ(end.op_id, answer.op_id);
        ++cancelled;
        break;
      case v1::CANCEL_RESULT_NOT_CANCELLABLE:
        EXPECT_EQ(end.outcome, v1::OUTCOME_COMPLETED) << end.user_data;
        EXPECT_EQ(end.op_id, answer.op_id);
        break;
      case v1::CANCEL_RESULT_ALREADY_DONE:
        EXPECT_EQ(end.op_id, answer.op_id);
        break;
      case v1::CANCEL_RESULT_NOT_FOUND:
        EXPECT_EQ(answer.op_id, 0u);
        break;
      default:
        ADD_FAILURE() << "cancel answer " << answer.result;
    }
  }
  for (const auto& [ud, end] : ends) {
    EXPECT_TRUE(end.outcome == v1::OUTCOME_COMPLETED || end.outcome == v1::OUTCOME_CANCELLED ||
                end.outcome == v1::OUTCOME_TIMED_OUT)
        << ud << " outcome " << int(end.outcome);
  }
  EXPECT_GT(cancelled, 0);
  EXPECT_GT(rpc_cancels.load(), 0);
  auto left = client_.ListAll(v1::OpSelector());
  ASSERT_TRUE(left.ok());
  EXPECT_TRUE(left->empty());
}

// A ring kept full (256 in flight, reaped as they come) for a second
// (ASYNCD_RING_NOP_SECONDS) answers every NOP, each COMPLETED. The rate it
// prints is a rough figure; asyncd-bench --mode ring is the benchmark.
TEST_P(RingTest, AFullRingKeptFlowingAnswersEveryNop) {
  const uint64_t s = NewSession();
  auto ring = NewRing(s, 256, 512);
  ASSERT_NE(ring, nullptr);
  const char* env = std::getenv("ASYNCD_RING_NOP_SECONDS");
  const double seconds_to_run = env != nullptr ? std::atof(env) : 1.0;
  uint64_t submitted = 0;
  uint64_t done = 0;
  std::vector<asyncd_ring_cqe> batch;
  const auto start = std::chrono::steady_clock::now();
  const auto until = start + std::chrono::duration<double>(seconds_to_run);
  while (std::chrono::steady_clock::now() < until) {
    for (int i = 0; i < 256 && submitted - done < 256; ++i) {
      asyncd_ring_sqe* e = ring->Next();
      if (e == nullptr) break;
      e->kind = ASYNCD_RING_OP_NOP;
      e->user_data = submitted++;
    }
    ring->Submit();
    batch.clear();
    done += ring->Reap(batch);
    for (const auto& c : batch) ASSERT_EQ(c.outcome, v1::OUTCOME_COMPLETED);
  }
  done += ring->Wait(submitted - done).size();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(done, submitted);
  std::printf("%s: %.0f NOPs/s through one ring (%lu in %.2f s)\n", Name(GetParam()).c_str(),
              done / secs, static_cast<unsigned long>(done), secs);
  RecordProperty("nops_per_second", static_cast<int>(done / secs));
}

// A client may ask for a ring the moment the daemon first answers on its
// gRPC socket: the ring socket is there before anything is served. The
// socket is bound early and connections wait in its backlog: one waits
// there from the moment its file appears, and the ring socket is looked at
// as soon as the daemon's first bytes (its HTTP/2 settings) arrive on it.
TEST(RingStartTest, TheRingSocketIsThereOnceTheDaemonAnswers) {
  char tmpl[] = "/tmp/asyncd-ring-start.XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string sock = dir + "/asyncd.sock";
  std::filesystem::create_directories(dir + "/root");
  const std::string log = dir + "/daemon.log";
  const pid_t pid = fork();
  if (pid == 0) {
    const int out = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    dup2(out, 1);
    dup2(out, 2);
    execl(ASYNCD_BINARY, ASYNCD_BINARY, "--socket", sock.c_str(), "--root",
          (dir + "/root").c_str(), "--log-level", "warn", static_cast<char*>(nullptr));
    _exit(127);
  }
  ASSERT_GT(pid, 0);
  struct stat st;
  const auto until = std::chrono::steady_clock::now() + seconds(20);
  while (lstat(sock.c_str(), &st) != 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  const int raw = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock.c_str());
  while (connect(raw, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  pollfd p{raw, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 20'000), 1) << "the daemon never answered";
  const bool ring_there = lstat((sock + ".ring").c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
  close(raw);
  EXPECT_TRUE(ring_there) << "the daemon answered before its ring socket was bound";
  Client client(client::Connect(sock));
  auto s = client.OpenSession("early");
  EXPECT_TRUE(s.ok()) << s.status();
  if (s.ok()) {
    RingSetupResult r = OpenRing(sock + ".ring", RingSetup(*s, 8, 8));
    EXPECT_NE(r.ring, nullptr) << r.reply.message;
  }
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// A daemon with one [limits] line, a session and its ring (8 entries, 16
// completions; null if refused).
struct LimitedRing {
  LimitedRing(const std::string& limit, BackendMode mode)
      : config("[limits]\n" + limit + "\n"), daemon(mode, config.Args()), client(daemon.channel()) {
    auto s = client.OpenSession("limits");
    EXPECT_TRUE(s.ok()) << s.status();
    session = s.ok() ? *s : 0;
    RingSetupResult r = OpenRing(daemon.socket() + ".ring", RingSetup(session, 8, 16));
    EXPECT_EQ(r.reply.status, 0u) << r.reply.message;
    ring = std::move(r.ring);
  }
  ConfigFile config;
  Daemon daemon;
  Client client;
  uint64_t session = 0;
  std::unique_ptr<RawRing> ring;
};

// Submits `n` minute-long TIMEOUTs; the `over` of them past a limit come
// back at once, REJECTED, RESOURCE_EXHAUSTED, OVER_LIMIT.
void ExpectMinuteTimeoutsOverLimit(RawRing& ring, uint64_t n, size_t over) {
  for (uint64_t i = 0; i < n; ++i) {
    asyncd_ring_sqe* e = ring.Next();
    e->kind = ASYNCD_RING_OP_TIMEOUT;
    e->arg = 60'000'000;
    e->user_data = i;
  }
  ring.Submit();
  auto rejected = ring.Wait(over);
  ASSERT_EQ(rejected.size(), over);
  for (const auto& c : rejected) {
    EXPECT_EQ(c.outcome, v1::OUTCOME_REJECTED);
    EXPECT_EQ(c.status, kResourceExhausted);
    EXPECT_EQ(c.reason, ASYNCD_RING_REASON_OVER_LIMIT);
  }
}

// The session's and the daemon's limits apply to ring ops as to any other:
// beyond them an entry is REJECTED, RESOURCE_EXHAUSTED, OVER_LIMIT.
TEST(RingLimitsTest, EntriesOverALimitAreRejectedOverLimit) {
  LimitedRing t("max_inflight_per_session = 4", BackendMode::kThreadPoolOnly);
  ASSERT_NE(t.ring, nullptr);
  ExpectMinuteTimeoutsOverLimit(*t.ring, 6, 2);
  auto stats = t.client.GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->inflight(), 4u);
  ASSERT_TRUE(t.client.CloseSession(t.session).ok());
  EXPECT_EQ(t.ring->Wait(4).size(), 4u);
}

// max_inflight_total bounds ring ops as it bounds every other op.
TEST(RingLimitsTest, EntriesOverTheDaemonsTotalAreRejectedOverLimit) {
  LimitedRing t("max_inflight_total = 3", BackendMode::kIoUring);
  ASSERT_NE(t.ring, nullptr);
  ExpectMinuteTimeoutsOverLimit(*t.ring, 5, 2);
  // The gRPC path meets the same bound meanwhile.
  auto other = t.client.OpenSession("other");
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(t.client.Submit(*other, NopOp()).status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(t.client.CloseSession(t.session).ok());
  EXPECT_EQ(t.ring->Wait(3).size(), 3u);
}

// From a drain's start a ring refuses new ops (DRAINING) and new rings are
// refused, but CANCEL entries are still answered, as the Cancel RPC is; the
// ring closes once its last op ended. The pool's one thread is held by a
// FIFO's open, which the drain grants its grace (an open is not known to
// block), so the ring's file read waits, queued, through the drain's start.
TEST(RingDrainTest, ADrainRefusesNewOpsAndRingsButAnswersCancelEntries) {
  ConfigFile config("[backends]\nthread_pool_threads = 1\n");
  Daemon daemon(BackendMode::kThreadPoolOnly, config.Args());
  Client client(daemon.channel());
  const std::string ring_path = daemon.socket() + ".ring";
  std::ofstream(daemon.root() + "/data") << "0123456789";
  const std::string fifo = daemon.root() + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto s = client.OpenSession("ring");
  auto holder = client.OpenSession("holder");
  ASSERT_TRUE(s.ok() && holder.ok());
  auto data = client.Open(*s, "data", v1::OPEN_MODE_READ_ONLY);
  ASSERT_TRUE(data.ok()) << data.status();
  RingSetupResult r = OpenRing(ring_path, RingSetup(*s, 8, 16));
  ASSERT_NE(r.ring, nullptr) << r.reply.message;
  RawRing& ring = *r.ring;
  auto held = std::async(std::launch::async,
                         [&] { return client.Open(*holder, "fifo", v1::OPEN_MODE_READ_ONLY); });
  auto listed = [&](uint64_t tag) {
    auto ops = client.ListAll(v1::OpSelector());
    if (!ops.ok()) return false;
    for (const auto& op : *ops) {
      if (op.session_id() == *s && op.tag() == tag) return true;
      if (tag == 0 && op.session_id() == *holder && op.state() == v1::OP_STATE_RUNNING) return true;
    }
    return false;
  };
  ASSERT_TRUE(WaitFor([&] { return listed(0); })) << "the FIFO's open does not run";
  asyncd_ring_sqe* e = ring.Next();
  e->kind = ASYNCD_RING_OP_READ;
  e->handle = *data;
  e->length = 4;
  e->user_data = 1;
  ring.Submit();
  ASSERT_TRUE(WaitFor([&] { return listed(1); }));

  auto drained = std::async(std::launch::async, [&] { return client.Drain(60'000); });
  ASSERT_TRUE(WaitFor([&] {
    auto stats = client.GetStats();
    return stats.ok() && stats->draining();
  }));
  // The ring hears of the drain just after GetStats does: NOPs until one
  // is refused.
  asyncd_ring_cqe probe{};
  for (uint64_t tag = 100; probe.outcome != v1::OUTCOME_REJECTED && tag < 1100; ++tag) {
    e = ring.Next();
    e->kind = ASYNCD_RING_OP_NOP;
    e->user_data = tag;
    ring.Submit();
    auto cqes = ring.Wait(1);
    ASSERT_EQ(cqes.size(), 1u);
    probe = cqes[0];
  }
  EXPECT_EQ(probe.outcome, v1::OUTCOME_REJECTED);
  EXPECT_EQ(probe.status, kUnavailable);
  EXPECT_EQ(probe.reason, ASYNCD_RING_REASON_DRAINING);
  e = ring.Next();
  e->kind = ASYNCD_RING_OP_WRITE;  // refused before it is looked at, as over gRPC
  e->handle = 0;
  e->user_data = 2;
  e = ring.Next();
  e->kind = ASYNCD_RING_OP_CANCEL;
  e->arg = 1;
  e->user_data = 3;
  ring.Submit();
  std::map<uint64_t, asyncd_ring_cqe> got;
  for (const auto& c : ring.Wait(3)) got[c.user_data] = c;
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2].outcome, v1::OUTCOME_REJECTED);
  EXPECT_EQ(got[2].status, kUnavailable);
  EXPECT_EQ(got[2].reason, ASYNCD_RING_REASON_DRAINING);
  EXPECT_EQ(got[3].flags, ASYNCD_RING_CQE_CANCEL_ANSWER);
  EXPECT_EQ(got[3].result, v1::CANCEL_RESULT_CANCELLED);
  EXPECT_EQ(got[1].outcome, v1::OUTCOME_CANCELLED);
  EXPECT_EQ(got[1].end_reason, v1::END_REASON_CLIENT_REQUEST);
  ExpectClosed(ring, kUnavailable, ASYNCD_RING_REASON_DRAINING);
  RingSetupResult late = OpenRing(ring_path, RingSetup(*holder));
  EXPECT_EQ(late.reply.status, kUnavailable);
  EXPECT_THAT(late.reply.message, HasSubstr("draining"));

  // A writer arrives: the open, granted its grace, completes.
  const int w = open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
  ASSERT_GE(w, 0) << strerror(errno);
  EXPECT_TRUE(held.get().ok());
  close(w);
  auto result = drained.get();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->cancelled(), 0u);  // the ring's read was the client's to cancel
}

// While a ring is attached its session's lease does not run; once the
// ring is gone it runs again.
TEST(RingLeaseTest, AnAttachedRingPausesTheSessionsLease) {
  LimitedRing t("default_lease_ms = 500", BackendMode::kIoUring);
  ASSERT_NE(t.ring, nullptr);
  auto open = [&] {  // ListSessions, unlike KeepAlive, does not renew the lease
    auto sessions = t.client.ListSessions();
    if (!sessions.ok()) return true;
    for (const auto& info : *sessions) {
      if (info.session_id() == t.session) return true;
    }
    return false;
  };
  std::this_thread::sleep_for(milliseconds(1500));  // three leases
  EXPECT_TRUE(open()) << "the lease ran while the ring was attached";
  t.ring->Hangup();
  EXPECT_TRUE(WaitFor([&] { return !open(); })) << "the lease did not run once the ring went";
}

INSTANTIATE_TEST_SUITE_P(Backends, RingTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

}  // namespace
}  // namespace asyncd::testing
