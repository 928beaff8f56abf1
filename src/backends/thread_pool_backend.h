#pragma once

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "src/backends/reactor.h"
#include "src/backends/resolve.h"
#include "src/core/backend.h"

namespace asyncd::backends {

struct ThreadPoolOptions {
  uint32_t threads = 0;  // 0 = max(4, 2 * hardware_concurrency)
  uint32_t queue_capacity = 4096;  // ops accepted but not yet picked by a worker, all sessions
  uint32_t session_queue = 0;    // of those, most from one session; 0 = queue_capacity
  uint32_t session_running = 0;  // most ops of one session on workers; 0 = max(1, threads - 1)
  PathResolver resolver = PathResolver::kOpenat2;  // how path ops confine their paths
};

/// The fallback that runs every op kind anywhere. Ops that may wait forever
/// (timeouts, polls, reads and writes of streams: see Reactor::Takes) wait
/// on a Reactor, holding no thread; bounded work (files, metadata, opens)
/// runs on worker threads, as the plain system calls of RunBlocking
/// (syscalls.h). A FIFO's blocking open cannot be polled: it runs on a
/// worker, interruptible as below.
///
/// Queue: fair across sessions. Each session with ops in the pool has a
/// lane, a FIFO of its queued ops; workers serve the lanes round-robin,
/// skipping a lane whose session already has session_running ops on
/// workers. So one session flooding the pool (thousands of fsyncs, statx
/// on a hung mount) delays another's op by at most one op per busy lane,
/// and, with session_running below threads, always leaves it a worker. A
/// session queues at most session_queue ops (inline runs under way count)
/// and all sessions queue_capacity; Submit refuses beyond, naming the
/// limit. Everything is mutex-protected and sized at construction:
/// queue_capacity + threads nodes (each naming an op and its generation), as
/// many lanes, a session-to-lane map (reserved; it cleans up in place), an
/// Op*-to-node hash index and the deadline heap, so the steady state
/// allocates nothing per op. The backend
/// keeps its bookkeeping in its own memory rather than in op.backend_data:
/// Interrupt() may run while the op completes and its slot is reused (the
/// submitter then rewrites backend_data), so it must be able to ask "is
/// (op, gen) mine?" without reading op memory it does not own.
///
/// Interrupts: every worker keeps InterruptSignal() blocked and waits for
/// peers only in ppoll() with the signal unblocked atomically (see
/// BlockingContext). Interrupting a running op sends the signal to its
/// worker with pthread_kill; sent a moment early it stays pending and ends
/// the next wait at once; arriving after the op is gone, it only makes the
/// next op's wait look again (each EINTR is checked against that op's own
/// end-requested bit). A queued op is unlinked in O(1) and completed with
/// -ECANCELED by the interrupting thread; it never runs.
///
/// Deadlines: a min-heap of nodes by params.deadline_ns, served by one
/// timer thread that also re-sends the signal, every 2 ms, to an interrupted
/// worker sitting in one of the few calls that cannot unblock the signal
/// atomically (the open of a FIFO; see BlockingContext::in_unmasked_call).
/// Boost.Asio's steady_timer was considered: it would need a timer object
/// per op (no room in the 256-byte op record, so an allocation or a second
/// preallocated table) and allocates a handler per async_wait; removing a
/// finished op's deadline from a heap we own is O(log n) and allocation-free.
///
/// Thread-safe: every public method may be called from any thread.
class ThreadPoolBackend final : public core::Backend {
 public:
  /// Starts the workers and the timer thread. `completer` must outlive this.
  ThreadPoolBackend(core::OpCompleter& completer, ThreadPoolOptions options);
  /// Calls Shutdown().
  ~ThreadPoolBackend() override;
  ThreadPoolBackend(const ThreadPoolBackend&) = delete;
  ThreadPoolBackend& operator=(const ThreadPoolBackend&) = delete;

  core::BackendKind kind() const override { return core::BackendKind::kThreadPool; }
  /// Every kind.
  bool Supports(core::OpKind kind) const override { return true; }

  /// Appends ops to their sessions' lanes until queue_capacity ops wait, or
  /// session_queue of one session (the rest are refused, naming the limit:
  /// back-pressure), or Shutdown() began (all refused). Ops the reactor
  /// takes do not queue and meet neither limit. An op whose
  /// end was already requested is accepted and completed with -ECANCELED on
  /// this thread before Submit returns. Takes the queue mutex briefly; never
  /// blocks on I/O; allocates nothing.
  core::Accepted Submit(std::span<core::Op* const> ops) noexcept override;
  /// A NOP, or a read that MayRunInline allows, run on the calling thread
  /// (the read with preadv2(RWF_NOWAIT)); one that must wait is queued,
  /// started. Holds a queue place, and one in its session's share, while it
  /// runs, so that queueing it never fails; refuses (false) when the queue
  /// or the session's share of it is full, or stopping.
  bool TryRunInline(core::Op& op) noexcept override;

  /// A queued op is unlinked and completed (-ECANCELED) on this thread
  /// before Interrupt returns; a running one gets its worker signalled and
  /// completes on that worker. An (op, gen) this backend no longer holds is
  /// ignored. Takes the queue mutex briefly; never blocks on I/O.
  void Interrupt(core::Op& op, uint32_t gen) noexcept override;

  /// Refuses new ops, completes every queued op with -ECANCELED (end reason
  /// kDrain, so they end cancelled; none runs), interrupts running
  /// cancel-safe ops, waits for running non-cancel-safe ones (a write
  /// blocked on a full pipe holds it until a reader drains the pipe), then
  /// joins all threads. Blocks. Idempotent; any thread but a worker's.
  void Shutdown() override;

  core::BackendStats Stats() const override;
  /// The most ops of one session on workers at once (the option resolved).
  uint32_t session_running() const { return session_running_; }

  /// The real-time signal that interrupts workers (SIGRTMIN + 3). Its
  /// process-wide disposition is set once to a no-op handler without
  /// SA_RESTART; nothing else in the process may use it.
  static int InterruptSignal();

 private:
  static constexpr uint32_t kNil = UINT32_MAX;

  struct Node {
    core::Op* op = nullptr;  // nullptr while free
    uint32_t gen = 0;
    uint32_t prev = kNil;  // its lane's FIFO links while queued
    uint32_t next = kNil;  // ...and the free-list link while free
    uint32_t heap_pos = kNil;  // position in deadlines_, or kNil
    uint32_t worker = kNil;    // the worker running it, or kNil while queued
    uint32_t lane = kNil;
    int64_t deadline_ns = 0;
  };

  // One session's share of the pool; exists while it has ops queued or running.
  struct Lane {
    const core::Session* session = nullptr;  // nullptr while free
    uint32_t head = kNil;  // its queued nodes, oldest first
    uint32_t tail = kNil;
    uint32_t queued = 0;
    uint32_t running = 0;
    uint32_t inline_held = 0;  // TryRunInline calls holding a place in its share
    uint32_t prev = kNil;  // links in the ready list (lanes a worker may serve)...
    uint32_t next = kNil;  // ...and the free-list link while free
    bool ready = false;
  };

  struct Worker {
    std::thread thread;
    pthread_t handle{};
    uint32_t node = kNil;            // guarded by mu_
    bool interrupt_sent = false;     // guarded by mu_: signalled for its current op
    bool rekick = false;             // guarded by mu_: re-send while in_unmasked_call
    std::atomic<bool> in_unmasked_call{false};
  };

  void WorkerLoop(uint32_t index);
  void TimerLoop();

  // All of the following require mu_.
  // Why `op` may not queue now (RESOURCE_EXHAUSTED naming the limit), or OK.
  absl::Status QueueRoomLocked(const core::Op& op) const;
  // Queues op; true when its deadline is now the earliest (wake the timer).
  bool EnqueueLocked(core::Op* op);
  // Takes the next queued node, round-robin over ready lanes; kNil if none.
  uint32_t TakeNextLocked();
  // Removes a queued node from its lane (not from the index or the heap).
  void Dequeue(uint32_t idx);
  uint32_t AllocNode(core::Op* op);
  void ReleaseNode(uint32_t idx);
  uint32_t LaneFor(const core::Session* session);
  // Puts the lane in (or back at the end of) the ready list if it has queued
  // ops and room to run one; frees it if it holds nothing.
  void Settle(uint32_t lane);
  void Unready(uint32_t lane);
  // Ends the op of node idx early: returns the op when it was queued (now
  // released; the caller completes it with -ECANCELED after unlocking), or
  // nullptr after signalling the worker running it.
  core::Op* InterruptLocked(uint32_t idx);
  uint32_t HashSlot(const core::Op* op) const;
  void IndexInsert(uint32_t idx);
  uint32_t IndexFind(const core::Op* op) const;
  void IndexErase(uint32_t idx);
  void HeapPush(uint32_t idx);
  void HeapErase(uint32_t idx);
  void HeapSwap(uint32_t a, uint32_t b);
  void SiftUp(uint32_t pos);
  void SiftDown(uint32_t pos);
  bool HeapLess(uint32_t a, uint32_t b) const;

  core::OpCompleter& completer_;
  Reactor reactor_{completer_};
  const uint32_t queue_capacity_;
  const uint32_t thread_count_;
  const uint32_t session_queue_;
  const uint32_t session_running_;
  const int signal_;
  const PathResolver resolver_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;   // workers: the queue has ops, or stopping
  std::condition_variable timer_cv_;  // timer: earlier deadline, re-kick, or stop
  std::vector<Node> nodes_;
  std::vector<uint32_t> index_;      // open addressing: node + 1, 0 = empty
  uint32_t index_shift_ = 0;         // 64 - log2(index_.size())
  std::vector<uint32_t> deadlines_;  // min-heap of node indices, capacity reserved
  uint32_t free_head_ = kNil;
  std::vector<Lane> lanes_;
  absl::flat_hash_map<const core::Session*, uint32_t> lane_of_;  // reserved for every lane
  uint32_t free_lane_ = kNil;
  uint32_t ready_head_ = kNil;  // lanes with queued ops and room to run, in serving order
  uint32_t ready_tail_ = kNil;
  uint32_t queued_ = 0;
  uint32_t running_ = 0;
  uint32_t inline_ = 0;  // TryRunInline calls under way, each holding a queue place
  std::condition_variable inline_cv_;  // Shutdown: inline_ reached 0
  bool stopping_ = false;
  bool timer_stop_ = false;
  std::unique_ptr<Worker[]> workers_;
  std::thread timer_;

  std::mutex shutdown_mu_;  // serializes Shutdown() callers
  bool joined_ = false;     // guarded by shutdown_mu_
};

}  // namespace asyncd::backends
