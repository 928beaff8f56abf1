#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asyncd/ring.h"

namespace asyncd::client {

/// What RingClient::Open asks for. Zeros take the daemon's defaults; the
/// daemon validates the rest (INVALID_ARGUMENT naming the field).
struct RingOptions {
  /// The ring socket's path (the daemon's server.ring_socket). Empty: the
  /// target's unix socket path with ".ring" appended.
  std::string ring_socket;
  /// A power of two up to ASYNCD_RING_MAX_SQ_ENTRIES; 0 = 256.
  uint32_t sq_entries = 0;
  /// A power of two, sq_entries..ASYNCD_RING_MAX_CQ_ENTRIES; 0 = 2 x
  /// sq_entries. Also the most operations the ring holds in flight.
  uint32_t cq_entries = 0;
  /// A multiple of ASYNCD_RING_BUFFER_ALIGN; 0 = 1 MiB. Charged against the
  /// daemon's limits.max_buffered_bytes for the ring's life.
  uint64_t buffer_bytes = 0;
  /// How long Open waits for the daemon's answer.
  std::chrono::milliseconds setup_timeout{10000};
};

/// The ring socket next to a gRPC target (as NormalizeTarget accepts; empty
/// = the default socket): "unix:/run/asyncd/asyncd.sock" ->
/// "/run/asyncd/asyncd.sock.ring". INVALID_ARGUMENT for a target that is
/// not a unix socket path: the ring is for clients on the daemon's host.
[[nodiscard]] absl::StatusOr<std::string> RingSocketPath(std::string_view target);

/// The client side of the local ring (asyncd/ring.h): operations written to
/// shared memory and completions read from it, without a system call per
/// operation. Batch submit and reap in the spirit of liburing:
///
///   absl::StatusOr<RingClient> ring = RingClient::Open(target, session_id);
///   asyncd_ring_sqe* sqe = ring->GetSqe();
///   RingClient::PrepRead(sqe, handle, 0, 4096, /*buffer_offset=*/0, /*user_data=*/7);
///   ring->Submit();
///   ring->Wait(1);
///   ring->ForEachCompletion([](const asyncd_ring_cqe& cqe) { ... });  // then Advance
///
/// Owns the ring socket (the ring's lifeline: destroying or moving from the
/// RingClient closes it, and the daemon cancels the ring's operations in
/// flight), the shared mapping, the submit eventfd and the completion pipe.
/// Move-only; a moved-from RingClient may only be destroyed or assigned to.
///
/// Threading. Not thread-safe as a whole, but the two sides are separate:
/// one thread at a time may submit (GetSqe, the Prep helpers, Submit) while
/// one thread at a time reaps (Ready, PeekBatch, ForEachCompletion, Advance,
/// Wait). Closed and the accessors may be called from either.
///
/// Every submitted entry gets exactly one completion, a refused one too
/// (outcome REJECTED, with a status code and a reason: see ToStatus), except
/// that entries the daemon had not taken when the ring ended are never run
/// and get none (Wait then returns Closed()). The daemon takes at most
/// cq_entries() operations in flight; completions that find the completion
/// ring full wait in the daemon until Advance makes room, and Advance tells
/// it so.
class RingClient {
 public:
  /// Wait's "no timeout".
  static constexpr std::chrono::nanoseconds kForever = std::chrono::nanoseconds::max();

  /// Connects to the ring socket of `target` (see RingSocketPath; or
  /// options.ring_socket) and asks for a ring on `session_id`, a session of
  /// the caller's uid. Blocks for the handshake, up to options.setup_timeout
  /// (then DEADLINE_EXCEEDED). Errors: the daemon's refusal with its gRPC
  /// status code and message (see asyncd/ring.h: NOT_FOUND,
  /// PERMISSION_DENIED, FAILED_PRECONDITION, RESOURCE_EXHAUSTED,
  /// UNAVAILABLE, INVALID_ARGUMENT); UNAVAILABLE when nothing listens on the
  /// socket or the daemon hangs up without answering; INTERNAL when the
  /// answer does not follow the protocol.
  [[nodiscard]] static absl::StatusOr<RingClient> Open(std::string_view target,
                                                       uint64_t session_id,
                                                       const RingOptions& options = {});

  RingClient(RingClient&& other) noexcept;
  RingClient& operator=(RingClient&& other) noexcept;
  RingClient(const RingClient&) = delete;
  RingClient& operator=(const RingClient&) = delete;
  ~RingClient();

  uint32_t sq_entries() const { return sq_mask_ + 1; }
  uint32_t cq_entries() const { return cq_mask_ + 1; }
  /// The longest READ or WRITE the daemon takes (limits.max_op_bytes).
  uint32_t max_op_bytes() const { return max_op_bytes_; }
  /// The buffer area: READs land here and WRITEs leave from here, at each
  /// entry's buffer_offset. Shared with the daemon: a range belongs to the
  /// daemon from Submit until its operation's completion is reaped.
  std::span<uint8_t> buffer() const { return buffer_; }

  // --- submitting ---

  /// The next free submission entry, or null when the submission ring is
  /// full (the daemon has not taken the earlier ones yet). The entry is the
  /// caller's to fill (a Prep helper) until Submit. Never blocks.
  asyncd_ring_sqe* GetSqe() {
    if (sqe_tail_ - sq_head_ > sq_mask_) {
      sq_head_ = std::atomic_ref<uint32_t>(ctl_->sq_head).load(std::memory_order_acquire);
      if (sqe_tail_ - sq_head_ > sq_mask_) return nullptr;
    }
    return &sqes_[sqe_tail_++ & sq_mask_];
  }

  /// Hands the entries got since the last Submit to the daemon, and wakes it
  /// (one write to the submit eventfd) only if it sleeps. Returns how many.
  uint32_t Submit();

  // Each Prep helper zeroes the entry, then fills the fields its kind uses.
  static void PrepNop(asyncd_ring_sqe* sqe, uint64_t user_data) {
    Prep(sqe, ASYNCD_RING_OP_NOP, user_data);
  }
  /// Reads up to `length` bytes at `offset` (-1: the handle's position) into
  /// the buffer area at `buffer_offset`.
  static void PrepRead(asyncd_ring_sqe* sqe, uint32_t handle, int64_t offset, uint32_t length,
                       uint64_t buffer_offset, uint64_t user_data) {
    PrepRw(sqe, ASYNCD_RING_OP_READ, handle, offset, length, buffer_offset, user_data);
  }
  /// Writes `length` bytes from the buffer area at `buffer_offset`.
  static void PrepWrite(asyncd_ring_sqe* sqe, uint32_t handle, int64_t offset, uint32_t length,
                        uint64_t buffer_offset, uint64_t user_data) {
    PrepRw(sqe, ASYNCD_RING_OP_WRITE, handle, offset, length, buffer_offset, user_data);
  }
  enum class Sync { kFull, kDataOnly };
  static void PrepFsync(asyncd_ring_sqe* sqe, uint32_t handle, Sync sync, uint64_t user_data) {
    Prep(sqe, ASYNCD_RING_OP_FSYNC, user_data);
    sqe->handle = handle;
    if (sync == Sync::kDataOnly) sqe->flags = ASYNCD_RING_SQE_DATASYNC;
  }
  /// `events`: asyncd.v1.PollEvents bits.
  static void PrepPoll(asyncd_ring_sqe* sqe, uint32_t handle, uint16_t events,
                       uint64_t user_data) {
    Prep(sqe, ASYNCD_RING_OP_POLL, user_data);
    sqe->handle = handle;
    sqe->poll_events = events;
  }
  static void PrepTimeout(asyncd_ring_sqe* sqe, std::chrono::microseconds duration,
                          uint64_t user_data) {
    Prep(sqe, ASYNCD_RING_OP_TIMEOUT, user_data);
    sqe->arg = static_cast<uint64_t>(duration.count());
  }
  /// Cancels this ring's oldest operation in flight submitted with
  /// `target_user_data`. Its answer is a completion of its own, flagged
  /// ASYNCD_RING_CQE_CANCEL_ANSWER; the cancelled operation still completes.
  static void PrepCancel(asyncd_ring_sqe* sqe, uint64_t target_user_data, uint64_t user_data) {
    Prep(sqe, ASYNCD_RING_OP_CANCEL, user_data);
    sqe->arg = target_user_data;
  }
  /// A deadline after acceptance (0 = none), for any kind.
  static void SetDeadline(asyncd_ring_sqe* sqe, std::chrono::milliseconds deadline) {
    sqe->deadline_ms = static_cast<uint32_t>(deadline.count());
  }

  // --- reaping ---

  /// Completions posted and not yet consumed (Advance). Never blocks.
  uint32_t Ready() const;

  /// Copies up to out.size() completions, oldest first, without consuming
  /// them; Advance(n) consumes. Returns how many.
  uint32_t PeekBatch(std::span<asyncd_ring_cqe> out) const;

  /// Calls fn(const asyncd_ring_cqe&) on each completion ready, oldest
  /// first, in place in the shared ring (valid until Advance), without
  /// consuming them; returns how many it visited. Then Advance that many.
  template <typename Fn>
  uint32_t ForEachCompletion(Fn&& fn) const {
    const uint32_t n = Ready();
    for (uint32_t i = 0; i < n; ++i) fn(cqes_[(cq_head_ + i) & cq_mask_]);
    return n;
  }

  /// Consumes the n oldest completions (n <= Ready()), making room for the
  /// daemon's next ones; wakes the daemon if completions wait for that room.
  void Advance(uint32_t n);

  /// Blocks until at least `min_completions` (1..cq_entries()) are ready,
  /// sleeping on the completion pipe as asyncd/ring.h prescribes. OK when
  /// they are; DEADLINE_EXCEEDED when `timeout` passes first; Closed() when
  /// the ring has ended (the daemon has posted its last completions and
  /// closed the ring socket) with fewer ready (those may still be reaped);
  /// INVALID_ARGUMENT for a `min_completions` out of range.
  [[nodiscard]] absl::Status Wait(uint32_t min_completions = 1,
                                  std::chrono::nanoseconds timeout = kForever);

  /// OK while the ring runs. Once the daemon has ended it: its
  /// closed_status with the reason's text (ReasonText); when the ring
  /// socket reached end of file without that (the daemon died),
  /// UNAVAILABLE. The ring takes no more entries then, but completions of
  /// operations in flight may still arrive until Wait returns this status.
  /// Checks the socket without blocking (one poll(2)).
  [[nodiscard]] absl::Status Closed() const;

  /// The documented meaning of an asyncd_ring_reason.
  static std::string_view ReasonText(uint16_t reason);

  /// The status a completion stands for: OK for COMPLETED with result >= 0;
  /// the errno's status for COMPLETED or FAILED with -errno; CANCELLED;
  /// DEADLINE_EXCEEDED for TIMED_OUT; REJECTED: its status code with
  /// ReasonText(reason). A cancel answer (ASYNCD_RING_CQE_CANCEL_ANSWER) is
  /// OK: its result is an asyncd.v1.CancelResult.
  static absl::Status ToStatus(const asyncd_ring_cqe& cqe);

 private:
  RingClient() = default;
  void Reset() noexcept;
  void Kick() const;

  static void Prep(asyncd_ring_sqe* sqe, asyncd_ring_op kind, uint64_t user_data) {
    std::memset(sqe, 0, sizeof(*sqe));
    sqe->kind = static_cast<uint8_t>(kind);
    sqe->user_data = user_data;
  }
  static void PrepRw(asyncd_ring_sqe* sqe, asyncd_ring_op kind, uint32_t handle, int64_t offset,
                     uint32_t length, uint64_t buffer_offset, uint64_t user_data) {
    Prep(sqe, kind, user_data);
    sqe->handle = handle;
    sqe->offset = offset;
    sqe->length = length;
    sqe->buffer_offset = buffer_offset;
  }

  int socket_fd_ = -1;
  int submit_fd_ = -1;
  int completion_fd_ = -1;
  void* region_ = nullptr;
  size_t region_bytes_ = 0;
  asyncd_ring_ctl* ctl_ = nullptr;
  asyncd_ring_sqe* sqes_ = nullptr;
  const asyncd_ring_cqe* cqes_ = nullptr;
  std::span<uint8_t> buffer_;
  uint32_t sq_mask_ = 0;
  uint32_t cq_mask_ = 0;
  uint32_t max_op_bytes_ = 0;
  // Submit side: entries handed out, the tail last published, the daemon's
  // head as last read (re-read only when the ring looks full).
  uint32_t sqe_tail_ = 0;
  uint32_t sq_tail_ = 0;
  uint32_t sq_head_ = 0;
  // Reap side: our head (the shared copy is written, never read back).
  uint32_t cq_head_ = 0;
  // The ring socket reached end of file.
  mutable std::atomic<bool> socket_closed_{false};
};

}  // namespace asyncd::client
