#pragma once

#include <array>
#include <atomic>
#include <bitset>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "src/backends/probe.h"
#include "src/core/backend.h"

struct io_uring;  // liburing; only uring_backend.cc sees its definition
struct io_uring_params;
struct open_how;
struct __kernel_timespec;

namespace asyncd::backends {

struct UringOptions {
  /// Submission queue entries (rounded up to a power of two by the kernel).
  /// The completion queue gets more (IORING_SETUP_CQSIZE), up to the
  /// kernel's 65536.
  uint32_t entries = 4096;
  /// How many ops the backend holds at once (queued + on the ring); Submit
  /// refuses beyond it. 0 = 4 * entries.
  uint32_t max_ops = 0;
  /// Ops on one ring before further ones go to another ring (a shard);
  /// 0 = one ring whatever the load. The kernel's cancel hash has at most
  /// 256 buckets per ring, so a cancel costs O(ops on its ring / 256).
  uint32_t shard_ops = 8192;
};

/// The io_uring fast path.
///
/// Threading: one ring thread owns the rings (IORING_SETUP_SINGLE_ISSUER |
/// DEFER_TASKRUN when the kernel accepts them) and is the only thread that
/// touches them, prepares SQEs, reaps CQEs and calls OpCompleter::Complete.
/// Other threads hand it ops through a lock-free intrusive stack (linked
/// through Op::backend_data[0], so Submit allocates nothing) and cancel
/// requests through a small mutex-protected vector, and wake it through an
/// eventfd only when it is about to sleep. The ring thread waits on that
/// eventfd with a multishot POLL_ADD on the ring itself, so one
/// io_uring_enter both submits a batch and waits for completions or work.
///
/// Shards: an ASYNC_CANCEL by user_data walks one bucket of the ring's
/// cancel hash, which has at most 256 buckets, so with 100,000 ops on one
/// ring each cancel walks hundreds of entries. Ops therefore go to the
/// first ring (shard 0) until it holds shard_ops, then to further rings,
/// created lazily by the ring thread and owned by it like the first. Up to
/// shard_ops in flight everything runs on one ring exactly as without
/// shards. Every shard has its own SQE side storage and free entries; the
/// entries themselves are one table cut into shard_ops-sized ranges and
/// never change shard, so an entry index names its ring, (index, sequence)
/// stays unique on each ring, and a cancel or resend goes to the op's ring
/// from the entry index alone. The further rings signal one eventfd
/// (registered with each) that the first ring polls, so the thread still
/// sleeps in one io_uring_enter; woken, it enters each busy shard to run
/// its deferred completions, again while the kernel flags some left
/// (IORING_SETUP_TASKRUN_FLAG: one entry runs a bounded batch). A ring once
/// made stays until shutdown. Without IORING_FEAT_NODROP there is one ring.
///
/// Inline fast path (TryRunInline, for unary callers): what MayRunInline
/// allows (a NOP, a read of a stream, a positional read of a file) runs on
/// a two-entry ring owned by the calling thread (thread_local), reads with
/// RWF_NOWAIT, so it completes during submission: no hand-off, no wake-up.
/// A read that must wait (InlineMustWait) has taken nothing that cannot be
/// taken again; it goes to the ring thread already started.
///
/// Op::backend_data while the backend holds an op: [0] is the queue link
/// (queued) or its ring entry (on the ring); [1] is ring-thread state
/// (flags, lookup attempts, and the O_PATH descriptor of a path statx).
///
/// Every SQE's user_data names a ring entry and the entry's sequence
/// number, never an Op address: the kernel cancels by user_data (our
/// ASYNC_CANCEL, and a link timeout that fires as its op completes), and
/// such a cancel must never reach the op that reuses the slot. Opens that
/// may wait for a FIFO's peer run in io_uring's workers (IOSQE_ASYNC); a
/// write to a blocking pipe, FIFO or socket is resubmitted until all of it
/// is written, as on the thread pool.
///
/// Kinds on the ring: nop, open (openat2 RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS
/// beneath params.dirfd), close, read, write, fsync, fallocate, poll, timeout
/// and statx (a path statx is two ring ops: an O_PATH openat2 confined like
/// open, then statx(AT_EMPTY_PATH) on it). Not on the ring, so the thread
/// pool serves them: ftruncate (no opcode in liburing 2.3), and unlink,
/// rename and mkdir, whose *AT opcodes take no RESOLVE_* flags: confining
/// them needs the parent directory opened beneath the root first, which is
/// a blocking lookup that must not run on the ring thread (one slow
/// filesystem would stall every op), and they are rare, non-cancel-safe
/// metadata ops for which a thread-pool hop costs nothing that matters.
///
/// Registered areas: every ring gets a sparse table of kMaxAreas fixed
/// buffers when it is made; RegisterArea fills one slot in each ring (made
/// ones now, further shards as they are made), UnregisterArea empties it.
/// SINGLE_ISSUER rings refuse io_uring_register from any other thread
/// (EEXIST), so both hand the work to the ring thread and wait for it. A
/// read or write naming an area whose slot its ring holds, with its buffer
/// wholly inside the area, goes as READ_FIXED / WRITE_FIXED (buffer index
/// area - 1); anything else as a plain READ / WRITE, so a wrong area number
/// costs the pinning it would have saved, never a transfer outside the area.
/// Each ring pins the area and charges it to the daemon's RLIMIT_MEMLOCK
/// (unless it has CAP_IPC_LOCK): the first ring always, each further one
/// once made (beyond shard_ops ops in flight) again. Reads run inline
/// (TryRunInline, on the caller's own ring) stay plain.
class UringBackend final : public core::Backend {
 public:
  /// Probes io_uring and starts the ring thread. UNAVAILABLE (with the
  /// probe's reason) when io_uring cannot be used here; INTERNAL if the
  /// ring or its eventfd cannot be set up. Logs the outcome once. Blocks
  /// briefly. `completer` must outlive the backend.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<UringBackend>> Create(
      core::OpCompleter& completer, UringOptions options = {});

  /// Shuts down (see Shutdown).
  ~UringBackend() override;
  UringBackend(const UringBackend&) = delete;
  UringBackend& operator=(const UringBackend&) = delete;

  core::BackendKind kind() const override { return core::BackendKind::kIoUring; }
  /// Constant after Create; any thread.
  bool Supports(core::OpKind kind) const override;
  /// Any thread; lock-free, allocation-free; never blocks. Accepts a prefix
  /// of `ops` up to the max_ops bound (none after Shutdown began). Writes
  /// at most one eventfd for the batch, only when the ring thread sleeps.
  core::Accepted Submit(std::span<core::Op* const> ops) noexcept override;
  /// Any thread; allocation-free after the thread's first call. See the
  /// class comment for what runs inline.
  bool TryRunInline(core::Op& op) noexcept override;
  /// Any thread; never blocks (a short mutex section; allocates only when
  /// more cancels are pending than ever before). The ring thread checks
  /// `gen`, then completes a not-yet-submitted op with -ECANCELED or
  /// submits IORING_OP_ASYNC_CANCEL for one on the ring.
  void Interrupt(core::Op& op, uint32_t gen) noexcept override;
  /// Stops accepting ops, completes queued ones as cancelled (EndReason
  /// kDrain), cancels every op on the ring (including started
  /// non-cancel-safe ones: otherwise a blocked pipe write would hold
  /// shutdown forever; they are reported with the result the kernel gave),
  /// waits for every completion and joins the ring thread. Blocks.
  /// Idempotent; any thread but the ring thread.
  void Shutdown() override;
  /// Any thread; approximate while ops move.
  core::BackendStats Stats() const override;

  /// See the class comment. Blocks until the ring thread has registered it
  /// in every ring made (the kernel pins its pages then). 0 also for an
  /// area over 1 GiB (the kernel's limit per buffer). Logs the first
  /// failure.
  uint8_t RegisterArea(void* base, size_t bytes) noexcept override;
  /// Empties the area's slot in every ring, then frees its number. Blocks
  /// until the ring thread has done it. Should an op on the area still be in
  /// flight, nothing breaks: one on the ring keeps its pages pinned until it
  /// completes (the kernel holds a reference per request), and one not yet
  /// on the ring goes as a plain read or write.
  void UnregisterArea(uint8_t area) noexcept override;

  /// Reads and writes sent as READ_FIXED / WRITE_FIXED so far. Any thread.
  uint64_t fixed_ops() const { return fixed_ops_.load(std::memory_order_relaxed); }

  const UringProbe& probe() const { return probe_; }
  /// The IORING_SETUP_* flags the ring was created with.
  uint32_t setup_flags() const { return setup_flags_; }

 private:
  static constexpr int kMaxAreas = 255;
  static constexpr size_t kMaxAreaBytes = size_t{1} << 30;

  // One RegisterArea or UnregisterArea handed to the ring thread; lives on
  // the caller's stack until `done`.
  struct AreaRequest {
    uint8_t area;
    void* base;  // nullptr: unregister
    size_t bytes;
    bool done = false;  // guarded by area_mu_
    bool ok = false;
  };

  struct CancelRequest {
    core::Op* op;
    uint32_t gen;
    // Keeps op's slot memory: the op may finish and its session go before
    // the ring thread looks at the request.
    std::shared_ptr<core::Session> session;
  };

  UringBackend(core::OpCompleter& completer, UringOptions options, UringProbe probe);
  absl::Status Init();

  // Producer side (any thread).
  // Reserves room for up to `n` ops; how many it got (0: full or stopping).
  size_t Reserve(size_t n) noexcept;
  // Hands reserved ops to the ring thread.
  void Push(std::span<core::Op* const> ops) noexcept;
  void Wake();

  // One ring and its own state (ring thread only). Shard s holds the ring
  // entries [s * shard_ops_, (s + 1) * shard_ops_).
  struct Shard {
    std::unique_ptr<io_uring> ring;
    // Per-SQE side storage: an SQE's slot is not reused before the kernel
    // consumed it (and copied these), so indexing by SQE slot keeps each
    // open_how / timespec alive exactly as long as needed.
    std::unique_ptr<open_how[]> hows;
    std::unique_ptr<__kernel_timespec[]> timespecs;
    std::vector<uint32_t> free;  // indices of its free ring entries
    size_t on_ring = 0;
    bool failed = false;  // its ring could not be created: never used
    bool has_table = false;            // its sparse table of kMaxAreas buffers is registered
    std::bitset<kMaxAreas + 1> fixed;  // areas registered in its table (by number)
    bool poked = false;   // may have completions to run (further shards)
  };

  // Ring thread.
  void Run();
  // Creates `shard`'s ring on this thread with p.cq_entries and the
  // IORING_SETUP_* `flags` beyond the usual ones; 0 or -errno.
  int InitRing(Shard& shard, uint32_t entries, uint32_t flags, io_uring_params& p);
  // The shard to put the next op on, or nullptr when every usable one is full.
  Shard* PickShard();
  Shard& ShardOf(uint32_t index) { return shards_[index / shard_ops_]; }
  // Registers `shard`'s empty buffer table and every live area in it.
  void SetUpAreas(Shard& shard);
  // Puts area `area` ([base, base + bytes); nullptr, 0 empties it) in
  // `shard`'s table; 0 or -errno.
  int UpdateArea(Shard& shard, uint8_t area, void* base, size_t bytes);
  // Runs the waiting RegisterArea / UnregisterArea requests.
  void TakeAreas();
  void ApplyArea(AreaRequest& req);
  // Info the first time, debug after: one cause tends to repeat.
  void LogAreaFailure(const char* what, const char* why);
  // The buffer index for `p`'s read or write on `shard`, or -1: plain I/O.
  int FixedIndex(const Shard& shard, const core::OpParams& p) const;
  // Asks the ring thread to run `req` and waits until it has (or runs it
  // here, on the ring thread). A ring thread gone answers req.ok false.
  void RunAreaRequest(AreaRequest& req);
  // Submits the further shards' SQEs and runs their deferred completions.
  void EnterShards();
  void TakeSubmissions();
  void TakeCancels();
  void StartPending(int64_t now);
  bool StartOne(Shard& shard, core::Op& op, int64_t now);
  bool ProcessCancels();
  void SendCancel(core::Op& op);
  // A cancel that missed its op (our ASYNC_CANCEL's or a fired link
  // timeout's): `data` is the missed CQE's user_data.
  void OnCancelMissed(uint64_t data);
  bool ResendCancels(int64_t now);
  void SweepPending(int64_t now);
  void DrainForShutdown();
  unsigned Reap();
  void OnOpCqe(core::Op& op, int32_t res);
  void Finish(core::Op& op, int64_t result);
  // Puts `op` in a free ring entry; returns its user_data (tag 0).
  uint64_t AddOnRing(Shard& shard, core::Op& op);
  void RemoveOnRing(core::Op& op);
  void PendingPushBack(core::Op& op);
  void PendingPushFront(core::Op& op);
  // A multishot POLL_ADD of eventfd `fd` on the first ring; sets `armed`.
  void ArmPoll(int fd, uint64_t tag, bool& armed);
  bool EnsureSqes(Shard& shard, unsigned n);
  void SubmitAndWait(bool wait, int64_t timeout_ns);
  unsigned ReapRing(io_uring& ring);

  core::OpCompleter& completer_;
  const UringProbe probe_;
  std::array<bool, core::kOpKindCount + 1> on_ring_kinds_{};
  uint32_t entries_;
  uint32_t capacity_;
  uint32_t setup_flags_ = 0;
  bool skip_cancel_cqe_ = false;  // IORING_FEAT_CQE_SKIP
  uint32_t ring_limit_ = 0;       // ops on the ring at once (CQ room without NODROP)

  uint32_t shard_ops_ = 0;         // ring entries per shard (ring_limit_ when unsharded)

  // Ring-thread state.
  std::vector<Shard> shards_;  // [0] is the first ring; the rest are made when needed
  io_uring* ring_ = nullptr;   // shards_[0]'s
  int wake_fd_ = -1;
  bool wake_armed_ = false;
  int shard_fd_ = -1;  // eventfd the further shards signal; polled on the first ring
  bool shard_armed_ = false;
  bool shards_poked_ = false;  // some further shard may have completions to run
  size_t shards_made_ = 1;  // shards_[0, shards_made_) have tried to make their ring
  core::Op* pending_head_ = nullptr;  // taken from the stack, not yet on the ring
  core::Op* pending_tail_ = nullptr;
  size_t pending_count_ = 0;
  // The ops on the ring. An entry's sequence number is part of its SQEs'
  // user_data and changes on every reuse (see UserData in the .cc).
  struct RingEntry {
    core::Op* op = nullptr;
    uint32_t seq = 0;
  };
  std::vector<RingEntry> ring_entries_;  // ring_limit_ of them; op's index in backend_data[0]
  size_t on_ring_ = 0;                   // over every shard
  std::vector<CancelRequest> cancel_work_;
  size_t cancel_done_ = 0;  // prefix of cancel_work_ already handled
  bool sweep_pending_ = false;
  // Ring entries (index, seq) whose cancel missed while the op stayed on
  // the ring; cancelled again at recancel_at_.
  std::vector<std::pair<uint32_t, uint32_t>> recancel_;
  int64_t recancel_at_ = 0;
  bool drained_ = false;
  struct Area {
    const char* base = nullptr;
    size_t bytes = 0;  // 0: not registered
  };
  std::array<Area, kMaxAreas + 1> areas_{};  // by number; [0] unused

  // Shared with producers.
  alignas(64) std::atomic<core::Op*> submit_head_{nullptr};
  alignas(64) std::atomic<uint64_t> outstanding_{0};  // accepted, not yet completed
  alignas(64) std::atomic<bool> sleeping_{false};
  std::atomic<bool> cancels_waiting_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> on_ring_count_{0};  // for Stats
  std::mutex cancel_mu_;
  std::vector<CancelRequest> cancel_in_;  // guarded by cancel_mu_

  std::atomic<bool> areas_waiting_{false};
  std::atomic<uint64_t> fixed_ops_{0};
  std::atomic<bool> area_failure_logged_{false};
  std::mutex area_mu_;
  std::condition_variable area_cv_;
  std::vector<AreaRequest*> area_in_;      // guarded by area_mu_
  std::bitset<kMaxAreas + 1> area_taken_;  // numbers handed out; guarded by area_mu_
  bool areas_closed_ = false;              // the ring thread is gone; guarded by area_mu_
  std::thread::id ring_thread_id_;         // set before Create returns

  std::mutex shutdown_mu_;
  std::thread thread_;
  bool joined_ = false;  // guarded by shutdown_mu_
};

}  // namespace asyncd::backends
