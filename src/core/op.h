#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include "src/core/op_id.h"
#include "src/core/op_types.h"

namespace asyncd::core {

class Session;
struct Op;

/// Receives an operation's terminal outcome. Called exactly once per op, on
/// the thread that finished it (a backend thread, or a canceller for an op
/// that never started). Must not block. The op is retired as soon as it
/// returns: copy out what is needed; borrowed buffers are free again then.
class CompletionSink {
 public:
  virtual ~CompletionSink() = default;
  virtual void OnComplete(const Op& op) noexcept = 0;
  /// At the end of a CompletionBatch in which OnComplete called
  /// CompletionBatch::Defer(this, cookie): those cookies, in completion
  /// order, on the same thread.
  virtual void OnDeferred(std::span<const uint64_t> /*cookies*/) noexcept {}
};

/// Opened by a backend thread that delivers many completions in one go (a
/// reap of CQEs): a sink may then Defer the part of OnComplete that takes
/// its lock, and do it once per batch instead of once per op. Batches on one
/// thread nest (the outermost delivers).
class CompletionBatch {
 public:
  CompletionBatch() noexcept;
  ~CompletionBatch();
  CompletionBatch(const CompletionBatch&) = delete;
  CompletionBatch& operator=(const CompletionBatch&) = delete;
  /// Queues `cookie` for sink->OnDeferred when this thread's batch ends;
  /// false (nothing queued) when no batch is open on this thread.
  static bool Defer(CompletionSink* sink, uint64_t cookie) noexcept;
};

/// What a backend needs to run the system call. Written by the submitter
/// before the op is handed to a backend; read only by the backend holding it.
/// Pointers are borrowed from the submitter until the completion arrives.
struct OpParams {
  int fd = -1;      // resolved from the session handle, or -1
  int dirfd = -1;   // the confinement root for path operations
  uint32_t len = 0;
  uint32_t flags = 0;  // open(2) flags, RENAME_*, POLL* events, AT_* for statx, datasync bit
  uint32_t mode = 0;   // open/mkdir mode, fallocate mode
  bool stream = false;  // fd is a pipe, FIFO, socket or character device (no file position)
  // The area `buf` lies in, as Dispatcher::RegisterArea numbered it, or 0.
  // Only a hint to the backend that registered it (it checks the range);
  // every other backend ignores it. Fills stream's padding.
  uint8_t area = 0;
  // The client named `path - shown_prefix`: what precedes `path` there was
  // taken off (the daemon's shares). A handle opened shows the whole name.
  uint16_t shown_prefix = 0;
  int64_t offset = -1;  // -1 = current position (pipes, sockets)
  int64_t length = 0;   // fallocate/ftruncate length
  void* buf = nullptr;  // read destination, write source, struct statx for statx
  const char* path = nullptr;
  const char* path2 = nullptr;  // rename target
  int64_t timeout_ns = 0;       // kTimeout duration
  int64_t deadline_ns = 0;      // MonoNanos() deadline; 0 = none
};

/// The state word, changed only by compare-and-swap so that exactly one
/// terminal transition can ever happen to one generation of a slot:
///
///   63         36 35   10     9          8         7     5  4            3      0
///   | generation |  -  | deadline | cancel-asked | reason | end-requested | state |
///
/// cancel-asked and deadline record that a cancel was requested or the
/// deadline passed, even when the op was past its cancel point and went on:
/// the timeline shows them.
struct OpWord {
  static constexpr uint64_t kStateMask = 0xf;
  static constexpr uint64_t kEndRequested = 1u << 4;
  static constexpr int kReasonShift = 5;
  static constexpr uint64_t kReasonMask = uint64_t{0x7} << kReasonShift;
  static constexpr uint64_t kCancelAsked = 1u << 8;
  static constexpr uint64_t kDeadlinePassed = 1u << 9;
  static constexpr int kGenShift = 36;

  static constexpr uint64_t Make(uint32_t gen, OpState state) {
    return (uint64_t{gen & OpId::kGenMask} << kGenShift) | static_cast<uint64_t>(state);
  }
  static constexpr OpState State(uint64_t w) { return static_cast<OpState>(w & kStateMask); }
  static constexpr uint32_t Gen(uint64_t w) { return static_cast<uint32_t>(w >> kGenShift); }
  static constexpr bool EndRequested(uint64_t w) { return (w & kEndRequested) != 0; }
  static constexpr bool CancelAsked(uint64_t w) { return (w & kCancelAsked) != 0; }
  static constexpr bool DeadlineWasPassed(uint64_t w) { return (w & kDeadlinePassed) != 0; }
  static constexpr EndReason Reason(uint64_t w) {
    return static_cast<EndReason>((w & kReasonMask) >> kReasonShift);
  }
  static constexpr uint64_t WithState(uint64_t w, OpState s) {
    return (w & ~kStateMask) | static_cast<uint64_t>(s);
  }
};

/// What a walk reads of an op: its state word and the fields a filter
/// matches on. Kept apart from the op, in a dense per-slab array, so a walk
/// over a million ops reads 24 MB and not the ops' 232 MB.
struct OpHead {
  std::atomic<uint64_t> word{0};
  std::atomic<OpKind> kind{OpKind::kNop};
  std::atomic<BackendKind> backend{BackendKind::kNone};
  std::atomic<CancelSafety> safety{CancelSafety::kAlways};
  std::atomic<bool> may_block{false};  // may wait forever (pipe, socket, poll, timeout)
  std::atomic<uint32_t> handle{0};
  std::atomic<int64_t> submitted_ns{0};
};
static_assert(sizeof(OpHead) == 24);

/// One registry slot: the record of one in-flight operation. Slots live in a
/// session's arena and never move or get freed while the session lives, so a
/// pointer stays valid for the op's whole life (the kernel may write into
/// its buffers until the completion arrives).
///
/// Fields that listing reads concurrently are relaxed atomics, validated by
/// re-reading the generation (see Registry::Snapshot); execution fields are
/// plain and belong to whoever holds the op.
struct Op {
  static constexpr size_t kTargetBytes = 40;

  // --- control ---
  OpHead* head = nullptr;  // set once, with the slot; never changes
  std::atomic<uint32_t> next_free{0};  // free-list link + 1 (0 = end), valid while free
  uint32_t slot_index = 0;
  Session* session = nullptr;

  // --- the rest of the description, read by listing ---
  std::atomic<int64_t> dispatched_ns{0};
  std::atomic<int64_t> started_ns{0};
  std::atomic<int64_t> cancel_requested_ns{0};  // the first cancel, granted or refused
  std::atomic<int64_t> finished_ns{0};
  // 32 bits suffice: a read or write moves at most max_op_bytes (64 MiB),
  // handles fit in 31 bits (HandleTable), and Completion.result is int32.
  std::atomic<int32_t> result{0};  // return value, or -errno
  std::atomic<uint32_t> bytes_done{0};
  std::atomic<uint64_t> tag{0};                    // the client's Operation.tag
  std::atomic<uint64_t> target[kTargetBytes / 8];  // path or empty, NUL padded, maybe truncated

  // --- execution, owned by the holder ---
  OpParams params;
  CompletionSink* sink = nullptr;
  uint64_t cookie = 0;                 // the submitter's, e.g. its request tag
  uintptr_t backend_data[2] = {0, 0};  // private to the backend holding the op
  bool holds_handle = false;           // the op holds a reference on `handle`
  bool noted_finished = false;         // counted by Session::NoteFinished until Retire
  bool restored = false;               // by Session::Restore, until Retire
  // Listed, but placed here to fill holds_handle's padding: the deadline in
  // force, in ms after submitted_ns (rounded up); 0 = none.
  std::atomic<uint32_t> deadline_ms{0};

  uint32_t generation() const { return OpWord::Gen(head->word.load(std::memory_order_relaxed)); }
  OpState state() const { return OpWord::State(head->word.load(std::memory_order_acquire)); }
  OpId id() const;

  /// Moves a queued op to dispatched (the backend now holds it). Called by the
  /// dispatcher once. An end request may already be set: the backend checks.
  void MarkDispatched(BackendKind b, int64_t now_ns);

  /// The holder is about to start the system call. Fails (returns false) when
  /// an end was requested first; the holder must then Finish() without
  /// running it. After a true return, a cancel of a non-cancel-safe op is
  /// refused: the CAS orders TryStart and RequestEnd totally.
  [[nodiscard]] bool TryStart(int64_t now_ns);

  /// TryStart for a backend taking an op from its queue, which may be one
  /// already running (TryRunInline started it and found it must wait, or a
  /// backend runs it again): such an op only checks that no end was
  /// requested meanwhile. Backends call OpCompleter::Start, which expires a
  /// passed deadline first.
  [[nodiscard]] bool TryStartOrResume(int64_t now_ns);

  /// Whether the op has a deadline and it has passed at `now_ns`.
  bool DeadlinePassed(int64_t now_ns) const {
    return params.deadline_ns != 0 && now_ns >= params.deadline_ns;
  }

  /// Requests the op end early (cancel, or kDeadline when its deadline
  /// passed). Any thread. Returns what will happen, in the spirit of
  /// aio_cancel:
  ///  - kCancelled: it ends CANCELLED (TIMED_OUT for kDeadline) with what it
  ///    did so far; the caller must nudge the backend holding it. Also the
  ///    answer to a cancel of an op already ending cancelled.
  ///  - kNotCancellable: it started a call that is not cancel-safe and will
  ///    complete normally.
  ///  - kAlreadyDone: it had finished, or its deadline had already ended
  ///    it (it ends TIMED_OUT, not CANCELLED).
  ///  - kNotFound: `gen` is not this slot's generation (a stale id).
  /// Every request is recorded, granted or not (cancel-asked / deadline).
  CancelResult RequestEnd(uint32_t gen, EndReason reason, int64_t now_ns);

  /// Records that the deadline passed while the op went on past its cancel
  /// point (or finished before anyone ended it), without ending it: the
  /// timeline shows it. The holder, before Finish.
  void NoteDeadlinePassed() { head->word.fetch_or(OpWord::kDeadlinePassed, std::memory_order_relaxed); }

  /// The single terminal transition. Called exactly once, by the holder.
  /// `result` is the syscall's return value or -errno. When an end was
  /// requested on a cancel-safe op the outcome is cancelled (or timed out),
  /// with whatever bytes it moved reported as bytes done.
  OpState Finish(int64_t result, int64_t now_ns);

  /// Ends an op as failed: the daemon could not run it (e.g. backend full).
  OpState Fail(int error, int64_t now_ns);

  void SetTarget(std::string_view t);
  /// Copies the target into `out` (size >= kTargetBytes + 1), NUL-terminated;
  /// false when the op has none.
  bool ReadTarget(char* out) const;
};

static_assert(sizeof(Op) + sizeof(OpHead) <= 256, "registry memory per op is a budget: 256 bytes");

}  // namespace asyncd::core
