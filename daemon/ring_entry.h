#pragma once

// The local ring's entries, read from memory the client can write at any
// moment: an entry is copied before it is looked at, and every index and
// buffer range is checked with overflow-safe arithmetic. Pure: no system
// call, no allocation, no lock, so the fuzzer can drive it directly.

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "asyncd/ring.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

/// The 24 hours a TIMEOUT may wait at most, as asyncd.v1.Timeout.
inline constexpr uint64_t kRingMaxTimeoutUs = 24ull * 3600 * 1'000'000;

/// What an entry is checked against.
struct RingEntryLimits {
  uint32_t max_op_bytes = 0;  // limits.max_op_bytes
  uint8_t* buffer = nullptr;  // the daemon's mapping of the buffer area
  uint64_t buffer_bytes = 0;
  uint8_t area = 0;    // the buffer area as Dispatcher::RegisterArea numbered it, or 0
  int64_t now_ns = 0;  // MonoNanos(): deadlines count from acceptance
};

/// A checked entry: an operation to submit, a cancel, or why it is refused.
struct RingEntry {
  enum class Kind { kOp, kCancel, kRejected };
  Kind kind = Kind::kRejected;
  core::OpRequest request;        // kOp: sink and cookie are the caller's to set
  uint64_t cancel_user_data = 0;  // kCancel
  asyncd_ring_reason reason = ASYNCD_RING_REASON_NONE;  // kRejected
  absl::StatusCode code = absl::StatusCode::kOk;        // kRejected
};

/// The gRPC status code ring.h gives `reason`.
absl::StatusCode RingReasonCode(asyncd_ring_reason reason);

/// Checks the copied entry `e` as the asyncd.v1 Operation of its kind is
/// checked (daemon/convert.cc), plus what only the ring has: the buffer
/// range, and every field the kind does not use being 0. The op's tag is
/// its user_data; READ and WRITE point into `limits.buffer` and name its
/// area. Pure.
RingEntry CheckRingEntry(const asyncd_ring_sqe& e, const RingEntryLimits& limits);

/// The submission side as the daemon sees it: the client's region, and the
/// head only the daemon writes (kept in daemon memory, never read back).
struct RingSq {
  asyncd_ring_ctl* ctl = nullptr;
  const asyncd_ring_sqe* entries = nullptr;
  uint32_t size = 0;  // a power of two
  uint32_t head = 0;
};

/// Reads sq_tail once (acquire) and copies up to `max` entries from the
/// head into `out`; the caller publishes the head (PublishSqHead) once it
/// is done with them. Returns how many were copied, or -1 when the tail is
/// more than `size` ahead of the head (the client broke its index).
int TakeRingEntries(const RingSq& sq, uint32_t max, asyncd_ring_sqe* out);

/// Advances the head past `n` taken entries and publishes it (release):
/// the client may reuse them from then on.
void PublishSqHead(RingSq& sq, uint32_t n);

/// The completion side: the CQ, and CQEs that found it full, kept in
/// daemon memory in completion order (at most `size`: the ring admits no
/// more than that many unposted operations). Not thread-safe: the caller
/// locks.
class RingCq {
 public:
  /// `overflow` holds `size` entries; all three are borrowed.
  RingCq(asyncd_ring_ctl* ctl, asyncd_ring_cqe* entries, uint32_t size, asyncd_ring_cqe* overflow)
      : ctl_(ctl), entries_(entries), size_(size), overflow_(overflow) {}

  /// Posts `cqe`, or keeps it in the overflow when the CQ is full (or
  /// older ones wait there). False when the overflow is full too, which the
  /// admission rule rules out, or when the client's cq_head cannot be.
  [[nodiscard]] bool Post(const asyncd_ring_cqe& cqe);
  /// Moves what the overflow holds into the CQ as far as the client made
  /// room. False when the client's cq_head cannot be (more than `size`
  /// behind the tail, or ahead of it).
  [[nodiscard]] bool Flush();
  /// Publishes the tail (release) after Post or Flush wrote entries; then
  /// a full fence, and whether the client waits (CQ_WAITING), so that the
  /// caller writes the completion eventfd.
  [[nodiscard]] bool Publish();
  uint32_t overflowed() const { return overflow_count_; }
  /// Whether overflowed CQEs wait and the client has made room for some.
  bool Flushable() const { return overflow_count_ > 0 && Room() > 0; }
  /// CQEs written into the CQ, total.
  uint64_t posted() const { return posted_; }

 private:
  // Room in the CQ by the client's head, or -1 for an impossible one.
  int64_t Room() const;

  asyncd_ring_ctl* const ctl_;
  asyncd_ring_cqe* const entries_;
  const uint32_t size_;
  asyncd_ring_cqe* const overflow_;
  uint32_t tail_ = 0;  // ours; published by Publish
  // Room seen at the last read of cq_head, less what was posted since: the
  // client only ever adds to it, so cq_head (a line the client writes) is
  // read again only when this runs out.
  uint32_t room_ = 0;
  uint32_t overflow_first_ = 0;
  uint32_t overflow_count_ = 0;
  uint64_t posted_ = 0;
};

}  // namespace asyncd::daemon
