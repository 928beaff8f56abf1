#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/executor_work_guard.hpp>

#include "absl/container/flat_hash_map.h"
#include "src/core/backend.h"

namespace asyncd::backends {

/// Waits for the fallback's ops that may wait forever, with no thread per
/// op: reads, writes and polls of pipes, FIFOs, sockets and character
/// devices (the dispatcher marks them may_block) wait for readiness on one
/// Boost.Asio reactor thread (epoll), and timeouts are timers on it.
///
/// Each op is first attempted without waiting; only an attempt that would
/// block makes it wait, so an edge-triggered readiness is never missed (all
/// attempts and waits run on the reactor thread, one at a time). Attempts
/// never block: RWF_NOWAIT where the descriptor honours it (anonymous pipes,
/// sockets), else O_NONBLOCK set on the open file description around the
/// one call (named FIFOs, ttys, eventfd refuse RWF_NOWAIT); the flag is
/// never seen set by the client's other ops, which reach that description
/// only through this thread. A write returns once every byte is written,
/// as write(2) on a blocking descriptor does.
///
/// Cancelling an op closes its wait on the reactor thread: no signal, no
/// thread. An op cancelled after it moved bytes reports them (it ends
/// cancelled with them as bytes_done), else -ECANCELED.
///
/// Thread-safe: every public method may be called from any thread.
class Reactor {
 public:
  /// Starts the reactor thread. `completer` must outlive this.
  explicit Reactor(core::OpCompleter& completer);
  /// Calls Shutdown().
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  /// Whether `op` waits here rather than on a worker thread: a timeout, a
  /// poll, or a read or write that may block on a stream descriptor.
  static bool Takes(const core::Op& op);
  /// Whether (op, gen) may be one Takes() accepted, from the op's atomic
  /// fields alone: safe on an op this backend may no longer hold.
  static bool MayHold(const core::Op& op);

  /// Takes an op Takes() accepts. The op is started (Start) on the reactor
  /// thread and completes there. False once Shutdown began: the op stays
  /// with the caller. Never blocks.
  bool Submit(core::Op& op) noexcept;
  /// Ends the wait of (op, gen) if this reactor holds it; the op completes
  /// on the reactor thread. Ignored otherwise. Never blocks.
  void Interrupt(core::Op& op, uint32_t gen) noexcept;
  /// Ends every waiting op (end reason kDrain) and joins the thread.
  /// Blocks. Idempotent; not from the reactor thread.
  void Shutdown();

  /// Ops taken and not yet completed.
  uint64_t waiting() const { return waiting_.load(std::memory_order_relaxed); }

 private:
  struct Channel;
  struct Waiter;

  // Reactor thread only, from here on.
  void Begin(core::Op* op, uint32_t gen);
  // Attempts the waiter's I/O until it completes or would block. True when
  // it completed (the waiter is gone); false when it waits.
  bool Attempt(Waiter* w);
  // Queues the waiter on its descriptor and waits for readiness; as Attempt.
  bool Wait(Waiter* w);
  void Arm(Channel* ch, int direction);
  void OnReady(Channel* ch, int direction);
  void OnTimer(core::Op* op, uint32_t gen);
  // Ends the waiter with `result` and frees it; Flush completes it.
  void End(Waiter* w, int64_t result);
  // Completes the ops ended since the last Flush. Every handler ends with it.
  void Flush();
  // Ends it early (cancel, deadline, drain): the bytes it moved, or -ECANCELED.
  void EndEarly(Waiter* w);
  Channel* ChannelFor(int fd);
  // Drops a channel nobody waits on, unless OnReady walks it.
  void MaybeDropChannel(Channel* ch);

  core::OpCompleter& completer_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  absl::flat_hash_map<const core::Op*, Waiter*> waiters_;
  std::unordered_map<int, std::unique_ptr<Channel>> channels_;
  std::vector<std::pair<core::Op*, int64_t>> ended_;  // ended, to be completed by Flush
  uint64_t channel_serial_ = 0;
  std::atomic<uint64_t> waiting_{0};
  std::atomic<int> submitting_{0};  // Submit calls between their check and their post
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace asyncd::backends
