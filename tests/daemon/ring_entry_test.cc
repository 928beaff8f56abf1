// The ring's entry check (daemon/ring_entry.h) and setup check: every
// reason an entry is refused, with the gRPC code ring.h gives it; what an
// accepted entry becomes; the SQ's index checks and the CQ's overflow.
#include "daemon/ring_entry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>

#include <cstring>
#include <vector>

#include "daemon/ring_server.h"

namespace asyncd::daemon {
namespace {

class RingEntryTest : public ::testing::Test {
 protected:
  RingEntryTest() : buffer_(1 << 16) {
    limits_ = {.max_op_bytes = 4096,
               .buffer = buffer_.data(),
               .buffer_bytes = buffer_.size(),
               .now_ns = 1'000'000'000};
  }
  static asyncd_ring_sqe Entry(uint8_t kind) {
    asyncd_ring_sqe e{};
    e.kind = kind;
    e.user_data = 42;
    return e;
  }
  static asyncd_ring_sqe Read(uint32_t length, uint64_t buffer_offset = 0) {
    asyncd_ring_sqe e = Entry(ASYNCD_RING_OP_READ);
    e.handle = 3;
    e.length = length;
    e.buffer_offset = buffer_offset;
    return e;
  }
  void ExpectRejected(const asyncd_ring_sqe& e, asyncd_ring_reason reason, absl::StatusCode code) {
    const RingEntry r = CheckRingEntry(e, limits_);
    EXPECT_EQ(r.kind, RingEntry::Kind::kRejected);
    EXPECT_EQ(r.reason, reason);
    EXPECT_EQ(r.code, code);
    EXPECT_EQ(RingReasonCode(reason), code);
  }

  std::vector<uint8_t> buffer_;
  RingEntryLimits limits_;
};

TEST_F(RingEntryTest, RefusesEachReasonWithItsCode) {
  using C = absl::StatusCode;
  ExpectRejected(Entry(0), ASYNCD_RING_REASON_BAD_KIND, C::kInvalidArgument);
  ExpectRejected(Entry(8), ASYNCD_RING_REASON_BAD_KIND, C::kInvalidArgument);
  ExpectRejected(Entry(255), ASYNCD_RING_REASON_BAD_KIND, C::kInvalidArgument);

  asyncd_ring_sqe e = Entry(ASYNCD_RING_OP_NOP);
  e.reserved[1] = 1;
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_FIELD, C::kInvalidArgument);
  e = Entry(ASYNCD_RING_OP_NOP);
  e.handle = 1;
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_FIELD, C::kInvalidArgument);
  e = Read(1);
  e.arg = 1;
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_FIELD, C::kInvalidArgument);
  e = Read(1);
  e.flags = ASYNCD_RING_SQE_DATASYNC;  // FSYNC's alone
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_FIELD, C::kInvalidArgument);
  e = Entry(ASYNCD_RING_OP_FSYNC);
  e.handle = 3;
  e.flags = 2;
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_FIELD, C::kInvalidArgument);
  e = Entry(ASYNCD_RING_OP_CANCEL);
  e.deadline_ms = 5;
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_FIELD, C::kInvalidArgument);
  e = Entry(ASYNCD_RING_OP_TIMEOUT);
  e.poll_events = 1;
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_FIELD, C::kInvalidArgument);

  e = Read(1);
  e.offset = -2;
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_OFFSET, C::kInvalidArgument);
  ExpectRejected(Read(0), ASYNCD_RING_REASON_BAD_LENGTH, C::kInvalidArgument);
  ExpectRejected(Read(4097), ASYNCD_RING_REASON_TOO_LONG, C::kResourceExhausted);
  e = Read(4097);
  e.kind = ASYNCD_RING_OP_WRITE;
  ExpectRejected(e, ASYNCD_RING_REASON_TOO_LONG, C::kResourceExhausted);

  ExpectRejected(Read(16, buffer_.size() - 15), ASYNCD_RING_REASON_BAD_BUFFER, C::kInvalidArgument);
  ExpectRejected(Read(1, buffer_.size()), ASYNCD_RING_REASON_BAD_BUFFER, C::kInvalidArgument);
  // Sums that would wrap around 2^64.
  ExpectRejected(Read(16, ~uint64_t{0} - 8), ASYNCD_RING_REASON_BAD_BUFFER, C::kInvalidArgument);
  ExpectRejected(Read(1, ~uint64_t{0}), ASYNCD_RING_REASON_BAD_BUFFER, C::kInvalidArgument);

  e = Entry(ASYNCD_RING_OP_POLL);
  e.handle = 3;
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_POLL_EVENTS, C::kInvalidArgument);
  e.poll_events = 4;  // ERROR: only ever in revents
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_POLL_EVENTS, C::kInvalidArgument);
  e.poll_events = 1 | 16;
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_POLL_EVENTS, C::kInvalidArgument);

  e = Entry(ASYNCD_RING_OP_TIMEOUT);
  e.arg = kRingMaxTimeoutUs + 1;
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_DURATION, C::kInvalidArgument);

  e = Read(1);
  e.handle = 0;  // malformed, as Operation's handle 0 is over gRPC
  ExpectRejected(e, ASYNCD_RING_REASON_BAD_HANDLE, C::kInvalidArgument);

  // Reasons the daemon gives from outside the entry.
  EXPECT_EQ(RingReasonCode(ASYNCD_RING_REASON_SESSION_ENDED), C::kFailedPrecondition);
  EXPECT_EQ(RingReasonCode(ASYNCD_RING_REASON_DRAINING), C::kUnavailable);
  EXPECT_EQ(RingReasonCode(ASYNCD_RING_REASON_OVER_LIMIT), C::kResourceExhausted);
  EXPECT_EQ(RingReasonCode(ASYNCD_RING_REASON_BROKEN_INDEX), C::kInvalidArgument);
  EXPECT_EQ(RingReasonCode(ASYNCD_RING_REASON_RESTART), C::kUnavailable);
  EXPECT_EQ(RingReasonCode(ASYNCD_RING_REASON_CLIENT_GONE), C::kCancelled);
}

TEST_F(RingEntryTest, AcceptedEntriesBecomeTheOpOfTheirKind) {
  asyncd_ring_sqe e = Read(4096, buffer_.size() - 4096);
  e.offset = -1;
  e.deadline_ms = 250;
  limits_.area = 3;
  RingEntry r = CheckRingEntry(e, limits_);
  ASSERT_EQ(r.kind, RingEntry::Kind::kOp);
  EXPECT_EQ(r.request.kind, core::OpKind::kRead);
  EXPECT_EQ(r.request.handle, 3u);
  EXPECT_EQ(r.request.tag, 42u);
  EXPECT_EQ(r.request.params.buf, buffer_.data() + buffer_.size() - 4096);  // zero copy
  EXPECT_EQ(r.request.params.len, 4096u);
  EXPECT_EQ(r.request.params.area, 3);  // io_uring's fixed buffer, when registered
  EXPECT_EQ(r.request.params.offset, -1);
  EXPECT_EQ(r.request.params.deadline_ns, limits_.now_ns + 250'000'000);

  e = Read(0);
  e.kind = ASYNCD_RING_OP_WRITE;  // a write of nothing is fine
  e.offset = 7;
  r = CheckRingEntry(e, limits_);
  ASSERT_EQ(r.kind, RingEntry::Kind::kOp);
  EXPECT_EQ(r.request.kind, core::OpKind::kWrite);
  EXPECT_EQ(r.request.params.deadline_ns, 0);

  e = Entry(ASYNCD_RING_OP_FSYNC);
  e.handle = 3;
  e.flags = ASYNCD_RING_SQE_DATASYNC;
  r = CheckRingEntry(e, limits_);
  ASSERT_EQ(r.kind, RingEntry::Kind::kOp);
  EXPECT_EQ(r.request.params.flags, 1u);

  e = Entry(ASYNCD_RING_OP_POLL);
  e.handle = 3;
  e.poll_events = 3;
  r = CheckRingEntry(e, limits_);
  ASSERT_EQ(r.kind, RingEntry::Kind::kOp);
  EXPECT_EQ(r.request.params.flags, uint32_t{POLLIN | POLLOUT});

  e = Entry(ASYNCD_RING_OP_TIMEOUT);
  e.arg = kRingMaxTimeoutUs;
  r = CheckRingEntry(e, limits_);
  ASSERT_EQ(r.kind, RingEntry::Kind::kOp);
  EXPECT_EQ(r.request.params.timeout_ns, int64_t(kRingMaxTimeoutUs) * 1000);

  e = Entry(ASYNCD_RING_OP_CANCEL);
  e.arg = 99;
  r = CheckRingEntry(e, limits_);
  ASSERT_EQ(r.kind, RingEntry::Kind::kCancel);
  EXPECT_EQ(r.cancel_user_data, 99u);

  r = CheckRingEntry(Entry(ASYNCD_RING_OP_NOP), limits_);
  ASSERT_EQ(r.kind, RingEntry::Kind::kOp);
  EXPECT_EQ(r.request.kind, core::OpKind::kNop);
  EXPECT_EQ(r.request.params.area, 0);
}

TEST(RingSqTest, TakesWhatIsReadyUpToMaxAndRefusesImpossibleTails) {
  std::vector<uint8_t> region(sizeof(asyncd_ring_ctl) + 8 * sizeof(asyncd_ring_sqe));
  auto* ctl = reinterpret_cast<asyncd_ring_ctl*>(region.data());
  auto* sq = reinterpret_cast<asyncd_ring_sqe*>(region.data() + sizeof(asyncd_ring_ctl));
  for (int i = 0; i < 8; ++i) sq[i].user_data = i;
  RingSq view{ctl, sq, 8, 0xfffffffe};  // the free-running indices wrap
  asyncd_ring_sqe out[8];
  ctl->sq_tail = 0xfffffffe + 5;
  ASSERT_EQ(TakeRingEntries(view, 3, out), 3);
  EXPECT_EQ(out[0].user_data, 6u);
  EXPECT_EQ(out[2].user_data, 0u);
  PublishSqHead(view, 3);
  EXPECT_EQ(ctl->sq_head, 1u);
  ASSERT_EQ(TakeRingEntries(view, 8, out), 2);
  PublishSqHead(view, 2);
  EXPECT_EQ(TakeRingEntries(view, 8, out), 0);
  ctl->sq_tail = view.head + 9;
  EXPECT_EQ(TakeRingEntries(view, 8, out), -1);
  ctl->sq_tail = view.head - 1;  // behind the head
  EXPECT_EQ(TakeRingEntries(view, 8, out), -1);
}

TEST(RingCqTest, KeepsWhatFindsTheRingFullInOrderUntilTheClientMakesRoom) {
  std::vector<uint8_t> region(sizeof(asyncd_ring_ctl) + 4 * sizeof(asyncd_ring_cqe));
  auto* ctl = reinterpret_cast<asyncd_ring_ctl*>(region.data());
  auto* cq = reinterpret_cast<asyncd_ring_cqe*>(region.data() + sizeof(asyncd_ring_ctl));
  std::vector<asyncd_ring_cqe> overflow(4);
  RingCq ring(ctl, cq, 4, overflow.data());
  for (uint64_t i = 0; i < 8; ++i) {
    asyncd_ring_cqe c{};
    c.user_data = i;
    ASSERT_TRUE(ring.Post(c));
  }
  asyncd_ring_cqe extra{};
  EXPECT_FALSE(ring.Post(extra));  // the admission rule never lets this happen
  EXPECT_EQ(ring.overflowed(), 4u);
  EXPECT_FALSE(ring.Flushable());
  EXPECT_FALSE(ring.Publish());
  EXPECT_EQ(ctl->cq_tail, 4u);
  ctl->cq_head = 3;
  EXPECT_TRUE(ring.Flushable());
  ASSERT_TRUE(ring.Flush());
  EXPECT_EQ(ring.overflowed(), 1u);
  ctl->client_flags = ASYNCD_RING_CQ_WAITING;
  EXPECT_TRUE(ring.Publish());
  EXPECT_EQ(cq[4 & 3].user_data, 4u);
  EXPECT_EQ(cq[6 & 3].user_data, 6u);
  EXPECT_EQ(ring.posted(), 7u);
  ctl->cq_head = 100;  // ahead of the tail: cannot be
  EXPECT_FALSE(ring.Flush());
}

TEST(RingSetupTest, FillsDefaultsAndNamesTheBadField) {
  asyncd_ring_setup s{};
  s.magic = ASYNCD_RING_MAGIC;
  s.version = ASYNCD_RING_VERSION;
  s.session_id = 7;
  ASSERT_TRUE(CheckRingSetup(s, 1 << 30).ok());
  EXPECT_EQ(s.sq_entries, ASYNCD_RING_DEFAULT_SQ_ENTRIES);
  EXPECT_EQ(s.cq_entries, 2 * ASYNCD_RING_DEFAULT_SQ_ENTRIES);
  EXPECT_EQ(s.buffer_bytes, ASYNCD_RING_DEFAULT_BUFFER_BYTES);
  auto bad = [&](auto change) {
    asyncd_ring_setup c = s;
    change(c);
    return CheckRingSetup(c, 1 << 30);
  };
  EXPECT_EQ(bad([](auto& c) {
              c.sq_entries = 1;
              c.cq_entries = 1;
            }).code(),
            absl::StatusCode::kOk);
  EXPECT_EQ(bad([](auto& c) {
              c.sq_entries = 4096;
              c.cq_entries = 16384;
            }).code(),
            absl::StatusCode::kOk);
  EXPECT_THAT(std::string(bad([](auto& c) { c.cq_entries = 32768; }).message()),
              ::testing::HasSubstr("cq_entries"));
  EXPECT_THAT(std::string(bad([](auto& c) { c.sq_entries = 6; }).message()),
              ::testing::HasSubstr("sq_entries"));
  EXPECT_EQ(bad([](auto& c) { c.buffer_bytes = uint64_t{2} << 30; }).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(bad([](auto& c) { c.buffer_bytes = 4097; }).code(), absl::StatusCode::kInvalidArgument);
}

TEST(RingLayoutTest, PutsEachPartInItsOwnPlaceAndTheBufferOnAPage) {
  const RingRegion r = RingLayout(256, 512, 1 << 20);
  EXPECT_EQ(r.sq_offset, sizeof(asyncd_ring_ctl));
  EXPECT_EQ(r.cq_offset, r.sq_offset + 256 * sizeof(asyncd_ring_sqe));
  EXPECT_GE(r.buffer_offset, r.cq_offset + 512 * sizeof(asyncd_ring_cqe));
  EXPECT_EQ(r.buffer_offset % ASYNCD_RING_BUFFER_ALIGN, 0u);
  EXPECT_EQ(r.bytes, r.buffer_offset + (1 << 20));
}

}  // namespace
}  // namespace asyncd::daemon
