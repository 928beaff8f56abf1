#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "src/core/op.h"

namespace asyncd::core {

/// Receives the end of every op a backend was given. Implemented by the
/// Dispatcher.
class OpCompleter {
 public:
  virtual ~OpCompleter() = default;
  /// Called exactly once per op handed to a backend, on a backend thread (or
  /// the caller's, for an op that never started), with the system call's
  /// return value or -errno; -ECANCELED for an op ended before it started.
  /// The backend must not touch the op afterwards: it may be reused at once.
  /// Does not block.
  virtual void Complete(Op& op, int64_t result) noexcept = 0;

  /// The deadline of `op` (generation `gen`) passed: requests its end with
  /// EndReason::kDeadline (Op::RequestEnd) and tells whoever watches. On
  /// kCancelled the backend ends it as for a cancel (it ends TIMED_OUT); a
  /// started non-cancel-safe op runs on. Any thread; never blocks.
  virtual CancelResult Expire(Op& op, uint32_t gen, int64_t now_ns) noexcept = 0;

  /// A backend takes `op` to run it now (Op::TryStartOrResume), expiring a
  /// passed deadline first. False: it must not run (an end was requested);
  /// the backend completes it with -ECANCELED. The one place where a
  /// deadline is checked before a start, for every backend.
  [[nodiscard]] bool Start(Op& op, int64_t now_ns) noexcept {
    if (op.DeadlinePassed(now_ns)) (void)Expire(op, op.generation(), now_ns);
    return op.TryStartOrResume(now_ns);
  }
};

struct BackendStats {
  uint64_t queued = 0;     // accepted, not yet started
  uint64_t running = 0;    // started, not yet completed
  uint64_t capacity = 0;   // how many ops it can hold; Submit refuses beyond it
  uint32_t threads = 0;
};

/// What Backend::Submit took: a prefix of the ops, and why the rest were not.
struct Accepted {
  size_t count = 0;
  /// OK when every op was taken; otherwise RESOURCE_EXHAUSTED naming the
  /// limit reached (its Limits field), or UNAVAILABLE once stopping. Built
  /// only on refusal: the accepting path allocates nothing.
  absl::Status refusal;
};

/// One way of running system calls. Implementations: the io_uring fast path
/// and the thread-pool fallback (src/backends/). Seastar's reactor backend is
/// the model: one interface, chosen per op kind at start by probing, with a
/// fallback that always works at the end of the list.
class Backend {
 public:
  virtual ~Backend() = default;

  virtual BackendKind kind() const = 0;

  /// Whether this backend runs `kind` (what the start-up probe found).
  /// Constant after construction; any thread.
  virtual bool Supports(OpKind kind) const = 0;

  /// Deadlines: an accepted op whose params.deadline_ns (MonoNanos) passes
  /// before it finishes is ended by the backend itself: it calls
  /// OpCompleter::Expire and, when that answers kCancelled, interrupts it as
  /// for a cancel (the op then ends kTimedOut). A started non-cancel-safe op
  /// runs to completion. Backends take ops to run through OpCompleter::Start.
  ///
  /// Takes the ops (each already kDispatched, with params filled) and starts
  /// them. Accepts a prefix of `ops`; the rest stay with the caller, with
  /// the reason (a limit reached: back-pressure). Accepted ops
  /// belong to the backend until it passes them to OpCompleter::Complete;
  /// their buffers and paths are borrowed until then. Never blocks; any
  /// thread. Submitting a batch lets a backend amortize its system calls.
  virtual Accepted Submit(std::span<Op* const> ops) noexcept = 0;
  /// Runs `op` (kDispatched, params filled) on the calling thread if it can
  /// finish without blocking there, sparing it the hand-off to a backend
  /// thread. True: the backend took the op, as Submit would have, and has
  /// passed it to OpCompleter::Complete on this thread unless it would have
  /// had to wait (then it runs as if submitted). False: the op is untouched
  /// (this backend cannot run it so, or is full); Submit it. The default
  /// never runs anything inline. Never blocks; any thread.
  virtual bool TryRunInline(Op& op) noexcept { return false; }

  /// An end (cancel or deadline) was requested on `op` of generation `gen`
  /// (Op::RequestEnd answered kCancelled). Makes it end soon: a queued op
  /// never starts; a blocked cancel-safe op is interrupted. The op may have
  /// finished, and its slot even been reused, by then: the backend checks
  /// `gen` on the thread that completes ops. The caller holds a reference
  /// to op's session; a backend that looks at `op` later takes its own (the
  /// session's memory, slots included, goes with the last reference). Never
  /// blocks; any thread.
  virtual void Interrupt(Op& op, uint32_t gen) noexcept = 0;

  /// Registers the memory [base, base + bytes) with the kernel so that reads
  /// and writes whose buffer lies inside it skip pinning it per op (io_uring
  /// fixed buffers). Returns its area number, 1..255, unique among this
  /// backend's registered areas, for OpParams.area; or 0 when it is not
  /// registered, for whatever reason: unsupported here, over
  /// RLIMIT_MEMLOCK, table full, stopping. An op with area 0 runs exactly as
  /// before, and so does one whose buffer is not wholly inside its area:
  /// registering is an optimization, never needed for correctness. The
  /// memory must stay mapped until UnregisterArea. Any thread; may block
  /// briefly (the backend's own thread registers it). The default registers
  /// nothing.
  virtual uint8_t RegisterArea(void* base, size_t bytes) noexcept { return 0; }
  /// Forgets area `area` (from RegisterArea; 0 or an unknown number: no-op);
  /// its number may be handed out again as soon as this returns. The caller
  /// ensures no op naming it is in flight (every such op has completed).
  /// Any thread; may block briefly.
  virtual void UnregisterArea(uint8_t area) noexcept {}

  /// Stops accepting ops, ends every op it holds (those that never started
  /// as cancelled, via Complete) and joins its threads. Blocks. Idempotent.
  virtual void Shutdown() = 0;

  virtual BackendStats Stats() const = 0;
};

}  // namespace asyncd::core
