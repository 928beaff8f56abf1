#include "daemon/ring_entry.h"

#include <poll.h>

#include <algorithm>
#include <cstring>

namespace asyncd::daemon {
namespace {

// asyncd.v1.PollEvents a POLL may ask for: READABLE and WRITABLE.
constexpr uint16_t kPollReadable = 1;
constexpr uint16_t kPollWritable = 2;

RingEntry Reject(asyncd_ring_reason reason) {
  RingEntry r;
  r.kind = RingEntry::Kind::kRejected;
  r.reason = reason;
  r.code = RingReasonCode(reason);
  return r;
}

// Which fields each kind reads; the others must be 0.
enum Field : uint32_t {
  kFlags = 1 << 0,
  kPollEvents = 1 << 1,
  kHandle = 1 << 2,
  kOffset = 1 << 3,
  kLength = 1 << 4,
  kDeadline = 1 << 5,
  kBuffer = 1 << 6,
  kArg = 1 << 7,
};

uint32_t FieldsOf(uint8_t kind) {
  switch (kind) {
    case ASYNCD_RING_OP_NOP:
      return kDeadline;
    case ASYNCD_RING_OP_READ:
    case ASYNCD_RING_OP_WRITE:
      return kHandle | kOffset | kLength | kBuffer | kDeadline;
    case ASYNCD_RING_OP_FSYNC:
      return kHandle | kFlags | kDeadline;
    case ASYNCD_RING_OP_POLL:
      return kHandle | kPollEvents | kDeadline;
    case ASYNCD_RING_OP_TIMEOUT:
      return kArg | kDeadline;
    case ASYNCD_RING_OP_CANCEL:
      return kArg;
    default:
      return 0;
  }
}

bool UnusedFieldSet(const asyncd_ring_sqe& e, uint32_t used) {
  return ((used & kFlags) == 0 && e.flags != 0) ||
         ((used & kPollEvents) == 0 && e.poll_events != 0) ||
         ((used & kHandle) == 0 && e.handle != 0) || ((used & kOffset) == 0 && e.offset != 0) ||
         ((used & kLength) == 0 && e.length != 0) ||
         ((used & kDeadline) == 0 && e.deadline_ms != 0) ||
         ((used & kBuffer) == 0 && e.buffer_offset != 0) || ((used & kArg) == 0 && e.arg != 0) ||
         e.reserved[0] != 0 || e.reserved[1] != 0;
}

}  // namespace

absl::StatusCode RingReasonCode(asyncd_ring_reason reason) {
  switch (reason) {
    case ASYNCD_RING_REASON_NONE:
      return absl::StatusCode::kOk;
    case ASYNCD_RING_REASON_BAD_KIND:
    case ASYNCD_RING_REASON_BAD_FIELD:
    case ASYNCD_RING_REASON_BAD_OFFSET:
    case ASYNCD_RING_REASON_BAD_LENGTH:
    case ASYNCD_RING_REASON_BAD_BUFFER:
    case ASYNCD_RING_REASON_BAD_POLL_EVENTS:
    case ASYNCD_RING_REASON_BAD_DURATION:
    case ASYNCD_RING_REASON_BROKEN_INDEX:
    case ASYNCD_RING_REASON_BAD_HANDLE:
      return absl::StatusCode::kInvalidArgument;
    case ASYNCD_RING_REASON_TOO_LONG:
    case ASYNCD_RING_REASON_OVER_LIMIT:
      return absl::StatusCode::kResourceExhausted;
    case ASYNCD_RING_REASON_UNKNOWN_HANDLE:
      return absl::StatusCode::kNotFound;
    case ASYNCD_RING_REASON_SESSION_ENDED:
      return absl::StatusCode::kFailedPrecondition;
    case ASYNCD_RING_REASON_DRAINING:
    case ASYNCD_RING_REASON_RESTART:
      return absl::StatusCode::kUnavailable;
    case ASYNCD_RING_REASON_CLIENT_GONE:
      return absl::StatusCode::kCancelled;
  }
  return absl::StatusCode::kInternal;
}

RingEntry CheckRingEntry(const asyncd_ring_sqe& e, const RingEntryLimits& limits) {
  const uint32_t used = FieldsOf(e.kind);
  if (used == 0) return Reject(ASYNCD_RING_REASON_BAD_KIND);
  if (UnusedFieldSet(e, used)) return Reject(ASYNCD_RING_REASON_BAD_FIELD);
  if ((e.flags & ~uint8_t{ASYNCD_RING_SQE_DATASYNC}) != 0) {
    return Reject(ASYNCD_RING_REASON_BAD_FIELD);
  }
  RingEntry out;
  if (e.kind == ASYNCD_RING_OP_CANCEL) {
    out.kind = RingEntry::Kind::kCancel;
    out.cancel_user_data = e.arg;
    return out;
  }
  // As the gRPC Operation's check: 0 is malformed, not merely unknown.
  if ((used & kHandle) != 0 && e.handle == 0) return Reject(ASYNCD_RING_REASON_BAD_HANDLE);
  core::OpRequest& r = out.request;
  core::OpParams& p = r.params;
  r.handle = e.handle;
  r.tag = e.user_data;
  switch (e.kind) {
    case ASYNCD_RING_OP_NOP:
      r.kind = core::OpKind::kNop;
      break;
    case ASYNCD_RING_OP_READ:
    case ASYNCD_RING_OP_WRITE: {
      const bool read = e.kind == ASYNCD_RING_OP_READ;
      r.kind = read ? core::OpKind::kRead : core::OpKind::kWrite;
      if (e.offset < -1) return Reject(ASYNCD_RING_REASON_BAD_OFFSET);
      if (read && e.length == 0) return Reject(ASYNCD_RING_REASON_BAD_LENGTH);
      if (e.length > limits.max_op_bytes) return Reject(ASYNCD_RING_REASON_TOO_LONG);
      // Written so that no sum can wrap.
      if (e.buffer_offset > limits.buffer_bytes ||
          e.length > limits.buffer_bytes - e.buffer_offset) {
        return Reject(ASYNCD_RING_REASON_BAD_BUFFER);
      }
      p.buf = limits.buffer + e.buffer_offset;
      p.area = limits.area;
      p.len = e.length;
      p.offset = e.offset;
      break;
    }
    case ASYNCD_RING_OP_FSYNC:
      r.kind = core::OpKind::kFsync;
      p.flags = (e.flags & ASYNCD_RING_SQE_DATASYNC) != 0 ? 1 : 0;
      break;
    case ASYNCD_RING_OP_POLL:
      r.kind = core::OpKind::kPoll;
      if (e.poll_events == 0 || (e.poll_events & ~(kPollReadable | kPollWritable)) != 0) {
        return Reject(ASYNCD_RING_REASON_BAD_POLL_EVENTS);
      }
      p.flags = ((e.poll_events & kPollReadable) != 0 ? POLLIN : 0) |
                ((e.poll_events & kPollWritable) != 0 ? POLLOUT : 0);
      break;
    case ASYNCD_RING_OP_TIMEOUT:
      r.kind = core::OpKind::kTimeout;
      if (e.arg > kRingMaxTimeoutUs) return Reject(ASYNCD_RING_REASON_BAD_DURATION);
      p.timeout_ns = static_cast<int64_t>(e.arg) * 1000;
      break;
  }
  if (e.deadline_ms != 0) p.deadline_ns = limits.now_ns + int64_t{e.deadline_ms} * 1'000'000;
  out.kind = RingEntry::Kind::kOp;
  return out;
}

int TakeRingEntries(const RingSq& sq, uint32_t max, asyncd_ring_sqe* out) {
  const uint32_t tail = __atomic_load_n(&sq.ctl->sq_tail, __ATOMIC_ACQUIRE);
  const uint32_t ready = tail - sq.head;  // free-running: wraps as the client's does
  if (ready > sq.size) return -1;
  const uint32_t n = ready < max ? ready : max;
  const uint32_t mask = sq.size - 1;
  for (uint32_t i = 0; i < n; ++i) {
    // A plain copy of shared memory the client may be writing: only the
    // copy is looked at.
    std::memcpy(&out[i], &sq.entries[(sq.head + i) & mask], sizeof(asyncd_ring_sqe));
  }
  return static_cast<int>(n);
}

void PublishSqHead(RingSq& sq, uint32_t n) {
  sq.head += n;
  __atomic_store_n(&sq.ctl->sq_head, sq.head, __ATOMIC_RELEASE);
}

int64_t RingCq::Room() const {
  const uint32_t head = __atomic_load_n(&ctl_->cq_head, __ATOMIC_ACQUIRE);
  const uint32_t used = tail_ - head;
  if (used > size_) return -1;
  return size_ - used;
}

bool RingCq::Post(const asyncd_ring_cqe& cqe) {
  if (overflow_count_ == 0) {
    if (room_ == 0) room_ = static_cast<uint32_t>(std::max<int64_t>(Room(), 0));
    if (room_ > 0) {
      std::memcpy(&entries_[tail_ & (size_ - 1)], &cqe, sizeof cqe);
      ++tail_;
      ++posted_;
      --room_;
      return true;
    }
  }
  if (overflow_count_ == size_) return false;
  overflow_[(overflow_first_ + overflow_count_) & (size_ - 1)] = cqe;
  ++overflow_count_;
  return true;
}

bool RingCq::Flush() {
  const int64_t room = Room();
  if (room < 0) return false;
  for (int64_t i = 0; i < room && overflow_count_ > 0; ++i) {
    std::memcpy(&entries_[tail_ & (size_ - 1)], &overflow_[overflow_first_ & (size_ - 1)],
                sizeof(asyncd_ring_cqe));
    ++tail_;
    ++posted_;
    ++overflow_first_;
    --overflow_count_;
  }
  room_ = 0;  // read again at the next Post
  return true;
}

bool RingCq::Publish() {
  __atomic_store_n(&ctl_->cq_tail, tail_, __ATOMIC_RELEASE);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  return (__atomic_load_n(&ctl_->client_flags, __ATOMIC_RELAXED) & ASYNCD_RING_CQ_WAITING) != 0;
}

}  // namespace asyncd::daemon
