#include "src/backends/thread_pool_backend.h"

#include <signal.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "src/backends/syscalls.h"
#include "src/core/check.h"
#include "src/core/clock.h"

namespace asyncd::backends {

namespace {

using core::Op;

void NoopHandler(int) {}

// How often the timer thread re-sends the signal to a worker whose op was
// interrupted while it may sit in a call run with the signal unblocked (see
// BlockingContext::in_unmasked_call).
constexpr auto kRekickInterval = std::chrono::milliseconds(2);
constexpr std::chrono::nanoseconds kMaxTimerSleep = std::chrono::minutes(1);

}  // namespace

int ThreadPoolBackend::InterruptSignal() {
  static const int sig = [] {
    const int s = SIGRTMIN + 3;
    struct sigaction sa {};
    sa.sa_handler = NoopHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: the interrupted wait must return EINTR
    ASYNCD_CHECK(::sigaction(s, &sa, nullptr) == 0);
    return s;
  }();
  return sig;
}

ThreadPoolBackend::ThreadPoolBackend(core::OpCompleter& completer, ThreadPoolOptions options)
    : completer_(completer),
      queue_capacity_(std::max(1u, options.queue_capacity)),
      thread_count_(options.threads != 0
                        ? options.threads
                        : std::max(4u, 2 * std::thread::hardware_concurrency())),
      session_queue_(options.session_queue != 0 ? options.session_queue : queue_capacity_),
      session_running_(options.session_running != 0 ? options.session_running
                                                     : std::max(1u, thread_count_ - 1)),
      signal_(InterruptSignal()),
      resolver_(options.resolver) {
  // A node per queued op plus one per worker for the op it runs; a lane
  // holds at least one node.
  const uint32_t node_count = queue_capacity_ + thread_count_;
  nodes_.resize(node_count);
  for (uint32_t i = 0; i < node_count; ++i) nodes_[i].next = i + 1 < node_count ? i + 1 : kNil;
  free_head_ = 0;
  lanes_.resize(node_count);
  for (uint32_t i = 0; i < node_count; ++i) lanes_[i].next = i + 1 < node_count ? i + 1 : kNil;
  free_lane_ = 0;
  lane_of_.reserve(node_count);
  const uint64_t index_size = std::bit_ceil(uint64_t{node_count} * 2);
  index_.assign(index_size, 0);
  index_shift_ = 64 - std::countr_zero(index_size);
  deadlines_.reserve(node_count);

  workers_ = std::make_unique<Worker[]>(thread_count_);
  for (uint32_t i = 0; i < thread_count_; ++i) {
    workers_[i].thread = std::thread([this, i] { WorkerLoop(i); });
    workers_[i].handle = workers_[i].thread.native_handle();
  }
  timer_ = std::thread([this] { TimerLoop(); });
}

ThreadPoolBackend::~ThreadPoolBackend() { Shutdown(); }

core::Accepted ThreadPoolBackend::Submit(std::span<Op* const> ops) noexcept {
  // Ops cancelled between dispatch and this call (Interrupt found nothing to
  // act on then): finished here rather than parked behind busy workers.
  Op* early[16];
  size_t nearly = 0;
  size_t accepted = 0;
  size_t reactor_ops = 0;
  bool wake_timer = false;
  absl::Status refusal;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return {0, absl::UnavailableError("the thread pool is shutting down")};
    for (Op* op : ops) {
      if (EndRequested(*op) && nearly < std::size(early)) {
        early[nearly++] = op;
        ++accepted;
        continue;
      }
      if (Reactor::Takes(*op)) {
        if (!reactor_.Submit(*op)) {
          refusal = absl::UnavailableError("the thread pool's reactor is shutting down");
          break;
        }
        ++accepted;
        ++reactor_ops;
        continue;
      }
      refusal = QueueRoomLocked(*op);
      if (!refusal.ok()) break;
      wake_timer |= EnqueueLocked(op);
      ++accepted;
    }
  }
  const size_t queued = accepted - nearly - reactor_ops;
  if (queued == 1) {
    work_cv_.notify_one();
  } else if (queued > 1) {
    work_cv_.notify_all();
  }
  if (wake_timer) timer_cv_.notify_one();
  for (size_t i = 0; i < nearly; ++i) completer_.Complete(*early[i], -ECANCELED);
  return {accepted, std::move(refusal)};
}

absl::Status ThreadPoolBackend::QueueRoomLocked(const Op& op) const {
  if (queued_ + inline_ >= queue_capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the thread pool's queue is full: ", queue_capacity_,
        " operations wait for a worker, all sessions (limits.pool_queue_depth); retry later"));
  }
  const auto it = lane_of_.find(op.session);
  if (it != lane_of_.end() &&
      lanes_[it->second].queued + lanes_[it->second].inline_held >= session_queue_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "this session's share of the thread pool's queue is full: ", session_queue_,
        " of its operations wait for a worker (limits.max_pool_queued_per_session); retry later"));
  }
  return absl::OkStatus();
}

bool ThreadPoolBackend::EnqueueLocked(Op* op) {
  const uint32_t idx = AllocNode(op);
  const uint32_t l = LaneFor(op->session);
  Lane& lane = lanes_[l];
  Node& n = nodes_[idx];
  n.lane = l;
  n.prev = lane.tail;
  n.next = kNil;
  if (lane.tail != kNil) {
    nodes_[lane.tail].next = idx;
  } else {
    lane.head = idx;
  }
  lane.tail = idx;
  ++lane.queued;
  ++queued_;
  if (!lane.ready) Settle(l);
  if (n.deadline_ns == 0) return false;
  HeapPush(idx);
  return deadlines_.front() == idx;
}

uint32_t ThreadPoolBackend::TakeNextLocked() {
  const uint32_t l = ready_head_;
  if (l == kNil) return kNil;
  const uint32_t idx = lanes_[l].head;
  Dequeue(idx);
  ++lanes_[l].running;
  Unready(l);
  Settle(l);  // to the back of the list: round-robin
  return idx;
}

void ThreadPoolBackend::Dequeue(uint32_t idx) {
  Node& n = nodes_[idx];
  Lane& lane = lanes_[n.lane];
  if (n.prev != kNil) {
    nodes_[n.prev].next = n.next;
  } else {
    lane.head = n.next;
  }
  if (n.next != kNil) {
    nodes_[n.next].prev = n.prev;
  } else {
    lane.tail = n.prev;
  }
  n.prev = n.next = kNil;
  --lane.queued;
  --queued_;
}

uint32_t ThreadPoolBackend::LaneFor(const core::Session* session) {
  const auto [it, inserted] = lane_of_.try_emplace(session, free_lane_);
  if (!inserted) return it->second;
  const uint32_t l = free_lane_;
  ASYNCD_CHECK(session != nullptr);  // nullptr marks a free lane
  ASYNCD_CHECK(l != kNil);  // a lane per session with a node or an inline place, both bounded
  Lane& lane = lanes_[l];
  free_lane_ = lane.next;
  lane = Lane{};
  lane.session = session;
  return l;
}

void ThreadPoolBackend::Settle(uint32_t l) {
  Lane& lane = lanes_[l];
  if (lane.queued > 0 && lane.running < session_running_) {
    if (lane.ready) return;
    lane.ready = true;
    lane.prev = ready_tail_;
    lane.next = kNil;
    if (ready_tail_ != kNil) {
      lanes_[ready_tail_].next = l;
    } else {
      ready_head_ = l;
    }
    ready_tail_ = l;
    return;
  }
  Unready(l);
  if (lane.queued == 0 && lane.running == 0 && lane.inline_held == 0) {
    lane_of_.erase(lane.session);
    lane.session = nullptr;
    lane.next = free_lane_;
    free_lane_ = l;
  }
}

void ThreadPoolBackend::Unready(uint32_t l) {
  Lane& lane = lanes_[l];
  if (!lane.ready) return;
  if (lane.prev != kNil) {
    lanes_[lane.prev].next = lane.next;
  } else {
    ready_head_ = lane.next;
  }
  if (lane.next != kNil) {
    lanes_[lane.next].prev = lane.prev;
  } else {
    ready_tail_ = lane.prev;
  }
  lane.prev = lane.next = kNil;
  lane.ready = false;
}

bool ThreadPoolBackend::TryRunInline(Op& op) noexcept {
  const int64_t now = core::MonoNanos();
  if (!MayRunInline(op, now)) return false;
  uint32_t lane;
  {
    std::lock_guard lock(mu_);
    if (stopping_ || !QueueRoomLocked(op).ok()) return false;
    ++inline_;
    lane = LaneFor(op.session);
    ++lanes_[lane].inline_held;
  }
  int64_t result = -ECANCELED;
  bool must_wait = false;
  if (op.TryStart(now)) {
    result = RunNoWait(op);
    must_wait = InlineMustWait(op, result);
  }
  const bool to_reactor = must_wait && Reactor::Takes(op);
  bool wake_timer = false;
  {
    // The place held in the session's share becomes a queued op, or goes.
    std::lock_guard lock(mu_);
    --lanes_[lane].inline_held;
    if (must_wait && !to_reactor) {
      if (stopping_) {
        // Shutdown has emptied the queue already: end it as Shutdown would.
        op.RequestEnd(op.generation(), core::EndReason::kDrain, now);
        result = -ECANCELED;
        must_wait = false;
      } else {
        wake_timer = EnqueueLocked(&op);  // started: the worker does not start it again
      }
    }
    Settle(lane);
  }
  if (to_reactor) {
    // Started already: the reactor resumes it. It refuses only once stopping.
    if (!reactor_.Submit(op)) {
      op.RequestEnd(op.generation(), core::EndReason::kDrain, now);
      completer_.Complete(op, -ECANCELED);
    }
  } else if (must_wait) {
    work_cv_.notify_one();
    if (wake_timer) timer_cv_.notify_one();
  } else {
    completer_.Complete(op, result);
  }
  std::lock_guard lock(mu_);
  if (--inline_ == 0 && stopping_) inline_cv_.notify_all();
  return true;
}

void ThreadPoolBackend::Interrupt(Op& op, uint32_t gen) noexcept {
  if (Reactor::MayHold(op)) reactor_.Interrupt(op, gen);  // ignored there unless it holds (op, gen)
  Op* cancelled = nullptr;
  {
    std::lock_guard lock(mu_);
    const uint32_t idx = IndexFind(&op);
    if (idx == kNil || nodes_[idx].gen != gen) return;  // finished, maybe reused
    cancelled = InterruptLocked(idx);
  }
  if (cancelled != nullptr) completer_.Complete(*cancelled, -ECANCELED);
}

Op* ThreadPoolBackend::InterruptLocked(uint32_t idx) {
  Node& n = nodes_[idx];
  if (n.worker == kNil) {
    Op* op = n.op;
    const uint32_t lane = n.lane;
    Dequeue(idx);
    ReleaseNode(idx);
    Settle(lane);
    return op;
  }
  Worker& w = workers_[n.worker];
  if (!w.interrupt_sent) {
    w.interrupt_sent = true;
    ::pthread_kill(w.handle, signal_);
    // The op may be in (or about to enter) a call run with the signal
    // unblocked, where that one signal can be lost: the timer thread
    // re-sends it while the worker is in such a call, until the op ends.
    w.rekick = true;
    timer_cv_.notify_one();
  }
  return nullptr;
}

void ThreadPoolBackend::Shutdown() {
  std::lock_guard shutdown_lock(shutdown_mu_);
  if (joined_) return;
  std::vector<Op*> cancelled;  // off the data path: allocating here is fine
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    const int64_t now = core::MonoNanos();
    cancelled.reserve(queued_);
    for (uint32_t l = 0; l < lanes_.size(); ++l) {
      if (lanes_[l].session == nullptr) continue;
      while (lanes_[l].head != kNil) {
        const uint32_t idx = lanes_[l].head;
        Node& n = nodes_[idx];
        // Not yet started, so this answers kCancelled: the op ends cancelled
        // (or keeps the reason a cancel already gave it). A non-cancel-safe
        // op TryRunInline started and queued refuses, and ends all the same,
        // having run nothing.
        n.op->RequestEnd(n.gen, core::EndReason::kDrain, now);
        cancelled.push_back(n.op);
        Dequeue(idx);
        ReleaseNode(idx);
      }
      Settle(l);
    }
    for (uint32_t i = 0; i < thread_count_; ++i) {
      const uint32_t idx = workers_[i].node;
      if (idx == kNil) continue;
      Node& n = nodes_[idx];
      if (n.op->RequestEnd(n.gen, core::EndReason::kDrain, now) == core::CancelResult::kCancelled) {
        InterruptLocked(idx);  // running: signals, never returns an op
      }
    }
  }
  work_cv_.notify_all();
  for (Op* op : cancelled) completer_.Complete(*op, -ECANCELED);
  reactor_.Shutdown();  // ends every op waiting there (kDrain)
  {
    // Inline runs complete on their callers' threads: the completer must
    // not be used after this returns.
    std::unique_lock lock(mu_);
    inline_cv_.wait(lock, [&] { return inline_ == 0; });
  }
  for (uint32_t i = 0; i < thread_count_; ++i) workers_[i].thread.join();
  {
    std::lock_guard lock(mu_);
    timer_stop_ = true;
  }
  timer_cv_.notify_one();
  timer_.join();
  joined_ = true;
}

core::BackendStats ThreadPoolBackend::Stats() const {
  std::lock_guard lock(mu_);
  core::BackendStats s;
  s.queued = queued_;
  s.running = running_ + reactor_.waiting();
  s.capacity = uint64_t{queue_capacity_} + thread_count_;
  s.threads = thread_count_ + 1;  // and the reactor's
  return s;
}

void ThreadPoolBackend::WorkerLoop(uint32_t index) {
  Worker& self = workers_[index];
  sigset_t block, wait_mask;
  sigemptyset(&block);
  sigaddset(&block, signal_);
  ::pthread_sigmask(SIG_BLOCK, &block, &wait_mask);
  sigdelset(&wait_mask, signal_);
  const BlockingContext ctx{&wait_mask, &self.in_unmasked_call, resolver_};

  std::unique_lock lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return ready_head_ != kNil || stopping_; });
    const uint32_t idx = TakeNextLocked();
    if (idx == kNil) return;  // stopping, and Shutdown emptied the queue
    ++running_;
    nodes_[idx].worker = index;
    self.node = idx;
    self.interrupt_sent = false;
    self.rekick = false;
    Op* op = nodes_[idx].op;
    lock.unlock();

    // From here until ReleaseNode, an interrupt for this op signals us. An
    // op whose deadline passed before the timer thread reached it is
    // refused here, before it has any effect.
    const int64_t result =
        completer_.Start(*op, core::MonoNanos()) ? RunBlocking(*op, ctx) : -ECANCELED;

    lock.lock();
    self.node = kNil;
    self.interrupt_sent = false;
    self.rekick = false;
    --running_;
    const uint32_t lane = nodes_[idx].lane;
    // Gone from the index and the heap before Complete: once completed, the
    // slot may be reused, and nobody must reach it through us.
    ReleaseNode(idx);
    // Room to run another of its ops: back in the ready list (this worker
    // looks again before it sleeps).
    --lanes_[lane].running;
    Settle(lane);
    lock.unlock();
    completer_.Complete(*op, result);
    lock.lock();
  }
}

void ThreadPoolBackend::TimerLoop() {
  std::unique_lock lock(mu_);
  while (!timer_stop_) {
    const int64_t now = core::MonoNanos();
    if (!deadlines_.empty() && nodes_[deadlines_.front()].deadline_ns <= now) {
      const uint32_t idx = deadlines_.front();
      HeapErase(idx);
      Node& n = nodes_[idx];
      if (completer_.Expire(*n.op, n.gen, now) == core::CancelResult::kCancelled) {
        if (Op* op = InterruptLocked(idx)) {
          lock.unlock();
          completer_.Complete(*op, -ECANCELED);
          lock.lock();
        }
      }
      continue;
    }
    bool rekicking = false;
    for (uint32_t i = 0; i < thread_count_; ++i) {
      Worker& w = workers_[i];
      if (!w.rekick) continue;
      rekicking = true;
      if (w.in_unmasked_call.load(std::memory_order_seq_cst)) ::pthread_kill(w.handle, signal_);
    }
    if (deadlines_.empty() && !rekicking) {
      timer_cv_.wait(lock);
      continue;
    }
    // Capped so that a far deadline (say INT64_MAX) cannot overflow the
    // clock arithmetic inside wait_for; waking once a minute costs nothing.
    std::chrono::nanoseconds wait = kMaxTimerSleep;
    if (!deadlines_.empty()) {
      wait = std::min(wait, std::chrono::nanoseconds(nodes_[deadlines_.front()].deadline_ns - now));
    }
    if (rekicking) wait = std::min<std::chrono::nanoseconds>(wait, kRekickInterval);
    timer_cv_.wait_for(lock, wait);
  }
}

uint32_t ThreadPoolBackend::AllocNode(Op* op) {
  const uint32_t idx = free_head_;
  ASYNCD_CHECK(idx != kNil);  // queued <= capacity and running <= threads
  Node& n = nodes_[idx];
  free_head_ = n.next;
  n.op = op;
  n.gen = op->generation();
  n.prev = n.next = kNil;
  n.heap_pos = kNil;
  n.worker = kNil;
  n.lane = kNil;
  n.deadline_ns = op->params.deadline_ns;
  IndexInsert(idx);
  return idx;
}

void ThreadPoolBackend::ReleaseNode(uint32_t idx) {
  Node& n = nodes_[idx];
  if (n.heap_pos != kNil) HeapErase(idx);
  IndexErase(idx);
  n.op = nullptr;
  n.worker = kNil;
  n.next = free_head_;
  free_head_ = idx;
}

// Fibonacci hashing of the op address (slots are 8-byte aligned).
uint32_t ThreadPoolBackend::HashSlot(const Op* op) const {
  return static_cast<uint32_t>(((reinterpret_cast<uintptr_t>(op) >> 3) * 0x9E3779B97F4A7C15ull) >>
                               index_shift_);
}

void ThreadPoolBackend::IndexInsert(uint32_t idx) {
  const uint32_t mask = static_cast<uint32_t>(index_.size() - 1);
  uint32_t s = HashSlot(nodes_[idx].op);
  while (index_[s] != 0) s = (s + 1) & mask;
  index_[s] = idx + 1;
}

uint32_t ThreadPoolBackend::IndexFind(const Op* op) const {
  const uint32_t mask = static_cast<uint32_t>(index_.size() - 1);
  for (uint32_t s = HashSlot(op); index_[s] != 0; s = (s + 1) & mask) {
    if (nodes_[index_[s] - 1].op == op) return index_[s] - 1;
  }
  return kNil;
}

// Linear probing with backward-shift deletion: no tombstones, so lookups
// stay short however long the backend runs.
void ThreadPoolBackend::IndexErase(uint32_t idx) {
  const uint32_t mask = static_cast<uint32_t>(index_.size() - 1);
  uint32_t hole = HashSlot(nodes_[idx].op);
  while (index_[hole] != idx + 1) {
    ASYNCD_CHECK(index_[hole] != 0);
    hole = (hole + 1) & mask;
  }
  index_[hole] = 0;
  for (uint32_t j = (hole + 1) & mask; index_[j] != 0; j = (j + 1) & mask) {
    const uint32_t home = HashSlot(nodes_[index_[j] - 1].op);
    // Entry j may move into the hole unless its home lies cyclically in (hole, j].
    const bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (stays) continue;
    index_[hole] = index_[j];
    index_[j] = 0;
    hole = j;
  }
}

bool ThreadPoolBackend::HeapLess(uint32_t a, uint32_t b) const {
  return nodes_[deadlines_[a]].deadline_ns < nodes_[deadlines_[b]].deadline_ns;
}

void ThreadPoolBackend::HeapSwap(uint32_t a, uint32_t b) {
  std::swap(deadlines_[a], deadlines_[b]);
  nodes_[deadlines_[a]].heap_pos = a;
  nodes_[deadlines_[b]].heap_pos = b;
}

void ThreadPoolBackend::SiftUp(uint32_t pos) {
  while (pos > 0) {
    const uint32_t parent = (pos - 1) / 2;
    if (!HeapLess(pos, parent)) return;
    HeapSwap(pos, parent);
    pos = parent;
  }
}

void ThreadPoolBackend::SiftDown(uint32_t pos) {
  const uint32_t size = static_cast<uint32_t>(deadlines_.size());
  for (;;) {
    uint32_t least = pos;
    const uint32_t l = 2 * pos + 1, r = 2 * pos + 2;
    if (l < size && HeapLess(l, least)) least = l;
    if (r < size && HeapLess(r, least)) least = r;
    if (least == pos) return;
    HeapSwap(pos, least);
    pos = least;
  }
}

void ThreadPoolBackend::HeapPush(uint32_t idx) {
  deadlines_.push_back(idx);  // capacity reserved for every node: never allocates
  nodes_[idx].heap_pos = static_cast<uint32_t>(deadlines_.size() - 1);
  SiftUp(nodes_[idx].heap_pos);
}

void ThreadPoolBackend::HeapErase(uint32_t idx) {
  const uint32_t pos = nodes_[idx].heap_pos;
  const uint32_t last = static_cast<uint32_t>(deadlines_.size() - 1);
  if (pos != last) HeapSwap(pos, last);
  deadlines_.pop_back();
  nodes_[idx].heap_pos = kNil;
  if (pos < deadlines_.size()) {
    SiftDown(pos);
    SiftUp(pos);
  }
}

}  // namespace asyncd::backends
