#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "asyncd/ring.h"
#include "daemon/ring_entry.h"
#include "daemon/session_table.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

class Service;

/// What a handshake made for one ring: the shared region (mapped here),
/// its layout, and the descriptors. The Ring owns all of it.
struct RingRegion {
  void* base = nullptr;
  size_t bytes = 0;
  uint32_t sq_entries = 0;
  uint32_t cq_entries = 0;
  uint64_t sq_offset = 0;
  uint64_t cq_offset = 0;
  uint64_t buffer_offset = 0;
  uint64_t buffer_bytes = 0;  // charged to the Budget's bytes for the ring's life
  int memfd = -1;
  int submit_fd = -1;    // eventfd: the client wakes the poller
  int complete_fd = -1;        // the completion pipe's read end, the client's
  int complete_write_fd = -1;  // its write end (non-blocking): wakes a waiting client
};

/// One client's ring (asyncd/ring.h): it takes entries from the client's
/// submission ring, submits them to the Dispatcher as ops of its session,
/// and posts each op's end as a completion entry. The poller thread
/// (RingServer) drives it; backend threads complete its ops into it
/// (core::CompletionSink); the session tells it when it ends or the daemon
/// drains (SessionListener).
///
/// Every entry taken gets exactly one completion entry. The ring takes an
/// entry only while fewer than cq_entries of those it took have no
/// completion in the CQ, so the completions that find the CQ full (the
/// client does not reap) wait in a daemon-side overflow of that size, and
/// an op in flight always has a context in a fixed array: no allocation
/// per op. mu_ guards the CQ, the contexts and the state; cancels are
/// issued without it (a backend may complete a cancelled op on the
/// cancelling thread). Lock order: the session's listener lock, then mu_.
class Ring final : public core::CompletionSink, public SessionListener {
 public:
  /// Takes `region`. The session is `meta`'s; attach with Attach().
  /// `wake_fd` is the poller's eventfd, written when the ring needs it (it
  /// outlives the ring).
  Ring(Service& service, std::shared_ptr<SessionMeta> meta, RingRegion region, int wake_fd);
  /// Unmaps, closes the descriptors, releases the buffer area's bytes.
  /// Only once Finishable() (no op in flight) and Detach()ed.
  ~Ring() override;
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  /// Attaches to the session (its lease pauses) and hears of its end and of
  /// a drain. FAILED_PRECONDITION when the session ended meanwhile; then
  /// nothing is attached. Poller thread.
  [[nodiscard]] absl::Status Attach(const Caller& caller);
  /// Detaches from the session and gives up its ring place. Poller thread.
  void Detach();

  // --- the poller's ---

  /// One pass: moves overflowed completions into the CQ as room allows,
  /// issues cancels a close asked for, and takes up to `max` entries (fewer
  /// when the admission rule says so) and submits them. Returns how many
  /// entries it took. Never blocks.
  uint32_t Pass(uint32_t max);
  /// Sets or clears NEED_WAKEUP (before the poller sleeps, after it wakes).
  void SetNeedWakeup(bool on);
  /// After NEED_WAKEUP and a full fence: whether entries wait, or
  /// overflowed completions now fit (the poller must not sleep then).
  bool HasWork();
  /// The ring socket hung up: the ring ends (CANCELLED, CLIENT_GONE), its
  /// ops in flight are cancelled (RPC_CANCELLED).
  void ClientGone();
  /// The daemon stops: the ring ends (UNAVAILABLE) and its ops in flight
  /// are cancelled (the drain cancelled them already, as a rule).
  void Shutdown(bool restart);
  /// Closed, no op in flight, and its completions posted (or the client
  /// gone, its cq_head broken, or the daemon stopping): the poller may end
  /// it (Close, Detach, then delete).
  bool Finishable();
  /// Publishes the last completions, wakes the client, closes the socket.
  void Close();

  /// The ring socket's connection, its lifeline, once the client has its
  /// descriptors: the ring closes it.
  void TakeConn(int conn) { conn_ = conn; }
  int conn() const { return conn_; }
  int submit_fd() const { return region_.submit_fd; }
  const RingRegion& region() const { return region_; }
  uint64_t session_id() const;

  // --- core::CompletionSink (backend threads) ---
  void OnComplete(const core::Op& op) noexcept override;
  void OnDeferred(std::span<const uint64_t> cookies) noexcept override;

  // --- SessionListener (closing and draining threads) ---
  void OnSessionEnded() noexcept override;
  void OnDraining(bool restart) noexcept override;

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  // An op the ring has in flight (or is submitting): the CQE its end makes,
  // linked in submission order so that a CANCEL entry finds the oldest.
  struct OpCtx {
    uint64_t user_data = 0;
    uint64_t op_id = 0;  // set once SubmitBatch answered; 0 before
    asyncd_ring_cqe cqe{};
    uint32_t prev = kNone;
    uint32_t next = kNone;  // also the free list's link
    bool live = false;
  };
  struct Rejected {
    uint64_t user_data;
    asyncd_ring_reason reason;
    absl::StatusCode code;
  };

  // Submits the ops gathered in requests_ and answers the rejects_.
  void SubmitGathered();
  // Answers a CANCEL entry: the oldest op in flight with `user_data`.
  void AnswerCancel(uint64_t entry_user_data, uint64_t target);
  void PostLocked(const asyncd_ring_cqe& cqe);
  void PostRejectedLocked(const Rejected& r);
  // Publishes the CQ tail and the flags, and wakes a waiting client.
  void PublishLocked();
  void PublishFlagsLocked();
  // Ends the ring with `status` and `reason`: CLOSED, no more entries;
  // `cancel` the ops in flight with that end reason (the next Pass does).
  void CloseLocked(absl::StatusCode status, asyncd_ring_reason reason,
                   core::EndReason cancel = core::EndReason::kNone);
  uint32_t AllocCtxLocked();
  void FreeCtxLocked(uint32_t i);
  void WakePoller();

  Service& service_;
  core::Dispatcher& dispatcher_;
  const std::shared_ptr<SessionMeta> meta_;
  const RingRegion region_;
  const int wake_fd_;
  int conn_ = -1;
  asyncd_ring_ctl* const ctl_;
  // The buffer area registered with the backend of reads and writes (io_uring
  // fixed buffers), or 0: unregistered once its last op has ended.
  const uint8_t area_;
  RingSq sq_;  // the poller's alone
  // Entries taken, the poller's alone too; less cq_.posted() (under mu_):
  // those without a CQE in the CQ.
  uint64_t taken_total_ = 0;
  bool attached_ = false;

  // The poller's scratch, kept between passes.
  std::vector<asyncd_ring_sqe> taken_;
  std::vector<core::OpRequest> requests_;
  std::vector<uint32_t> request_ctx_;
  std::vector<absl::StatusOr<core::OpId>> ids_;
  std::vector<Rejected> rejects_;
  std::vector<uint64_t> to_cancel_;

  std::atomic<bool> draining_{false};  // read by the poller without mu_
  std::mutex mu_;
  std::vector<asyncd_ring_cqe> overflow_;
  RingCq cq_;
  std::vector<OpCtx> ctxs_;
  uint32_t free_ = kNone;
  uint32_t oldest_ = kNone;  // live ops in submission order
  uint32_t newest_ = kNone;
  uint32_t inflight_ = 0;     // ops submitted (or being submitted) and not ended
  uint32_t flags_ = 0;        // ctl.flags as the daemon last wrote it
  bool closed_ = false;
  bool restart_ = false;
  bool client_gone_ = false;
  bool stopping_ = false;
  bool cq_broken_ = false;  // the client's cq_head cannot be: nothing more is posted
  core::EndReason cancel_reason_ = core::EndReason::kNone;  // set: cancel what is in flight
};

}  // namespace asyncd::daemon
