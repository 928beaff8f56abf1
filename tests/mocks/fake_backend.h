#pragma once

// The one fake core::Backend every test uses: no system call is ever made.
// Tests choose which kinds it takes, when the ops it takes end (at once, when
// the test says, or on threads of its own in a shuffled order), what a
// started op returns, how many ops it holds, and what an interrupt does.

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <mutex>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "src/core/backend.h"
#include "src/core/clock.h"

namespace asyncd::mocks {

class FakeBackend final : public core::Backend {
 public:
  /// When the ops it takes end.
  enum class Completion {
    kAtOnce,     // inside Submit, on the submitting thread; allocates nothing
    kHeld,       // when the test calls CompleteAll/CompleteOne (or an interrupt does)
    kOnWorkers,  // on `workers` threads of its own, picked at random near the queue's head
  };
  /// What Interrupt does to a held op (every interrupt is recorded).
  enum class OnInterrupt {
    kRecord,             // nothing more: the test completes it
    kCompleteCancelled,  // completes it at once, on the interrupting thread, as a real
                         // backend ends an interrupted op
  };
  struct Options {
    core::BackendKind kind = core::BackendKind::kThreadPool;
    std::vector<core::OpKind> kinds;  // the kinds it runs; empty = every kind
    Completion completion = Completion::kAtOnce;
    int64_t result = 0;  // what a started op returns (kAtOnce, kOnWorkers, interrupts)
    size_t capacity = std::numeric_limits<size_t>::max();  // held or queued at most (not kAtOnce)
    OnInterrupt on_interrupt = OnInterrupt::kRecord;
    int workers = 2;             // kOnWorkers only
    size_t shuffle_window = 16;  // kOnWorkers: picks among the first this many queued
    uint8_t area = 0;            // what RegisterArea answers
  };

  /// `completer` (the Dispatcher) must outlive this backend.
  FakeBackend(core::OpCompleter& completer, Options options)
      : completer_(completer), options_(std::move(options)), capacity_(options_.capacity) {
    if (options_.completion == Completion::kOnWorkers) {
      for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this, i] { Work(i); });
    }
  }
  explicit FakeBackend(core::OpCompleter& completer) : FakeBackend(completer, Options{}) {}
  ~FakeBackend() override { Shutdown(); }

  core::BackendKind kind() const override { return options_.kind; }
  bool Supports(core::OpKind kind) const override {
    return options_.kinds.empty() ||
           std::find(options_.kinds.begin(), options_.kinds.end(), kind) != options_.kinds.end();
  }

  core::Accepted Submit(std::span<core::Op* const> ops) noexcept override {
    submitted_.fetch_add(ops.size(), std::memory_order_relaxed);
    if (options_.completion == Completion::kAtOnce) {
      for (core::Op* op : ops) End(*op, options_.result);
      return {ops.size()};
    }
    std::lock_guard lock(mu_);
    const size_t held = queue_.size();
    const size_t cap = capacity_;
    const size_t n = held >= cap ? 0 : std::min(ops.size(), cap - held);
    queue_.insert(queue_.end(), ops.begin(), ops.begin() + n);
    if (n == ops.size()) return {n};
    return {n, absl::ResourceExhaustedError(
                   absl::StrCat("the fake backend holds its capacity of ", cap, " ops"))};
  }

  void Interrupt(core::Op& op, uint32_t gen) noexcept override {
    interrupts_.fetch_add(1, std::memory_order_relaxed);
    if (options_.completion != Completion::kHeld) return;
    {
      std::lock_guard lock(mu_);
      interrupted_.push_back(&op);
      if (options_.on_interrupt != OnInterrupt::kCompleteCancelled) return;
      // The slot may hold a later op by now: only the generation interrupted ends.
      auto it = std::find(queue_.begin(), queue_.end(), &op);
      if (it == queue_.end() || op.generation() != gen) return;
      queue_.erase(it);
    }
    End(op, options_.result);
  }

  /// Stops the worker threads once they have ended every queued op; held ops
  /// stay held. Blocks. Idempotent.
  void Shutdown() override {
    stop_.store(true, std::memory_order_release);
    for (std::thread& t : workers_) {
      if (t.joinable()) t.join();
    }
  }

  uint8_t RegisterArea(void*, size_t) noexcept override {
    areas_registered_.fetch_add(1, std::memory_order_relaxed);
    return options_.area;
  }
  void UnregisterArea(uint8_t area) noexcept override {
    std::lock_guard lock(mu_);
    unregistered_.push_back(area);
  }

  core::BackendStats Stats() const override {
    std::lock_guard lock(mu_);
    return {.queued = queue_.size(),
            .capacity = capacity_,
            .threads = static_cast<uint32_t>(workers_.size())};
  }

  // --- for kHeld; any thread ---

  /// The ops it holds, oldest first.
  std::vector<core::Op*> held() const {
    std::lock_guard lock(mu_);
    return {queue_.begin(), queue_.end()};
  }
  size_t held_count() const {
    std::lock_guard lock(mu_);
    return queue_.size();
  }
  void set_capacity(size_t capacity) {
    std::lock_guard lock(mu_);
    capacity_ = capacity;
  }
  /// Ends every held op: a running one returns `result`; one that has not
  /// started starts and returns `result`, unless an end was requested first
  /// (then -ECANCELED).
  void CompleteAll(int64_t result) {
    for (core::Op* op : TakeHeld()) End(*op, result);
  }
  /// Ends `op` as CompleteAll would; false if it does not hold it.
  bool CompleteOne(core::Op* op, int64_t result) {
    {
      std::lock_guard lock(mu_);
      auto it = std::find(queue_.begin(), queue_.end(), op);
      if (it == queue_.end()) return false;
      queue_.erase(it);
    }
    End(*op, result);
    return true;
  }
  /// Gives up the held ops: the caller must pass each to the completer.
  std::vector<core::Op*> TakeHeld() {
    std::lock_guard lock(mu_);
    std::vector<core::Op*> ops(queue_.begin(), queue_.end());
    queue_.clear();
    return ops;
  }
  /// Every op Interrupt was called with, in order (held or not).
  std::vector<core::Op*> interrupted() const {
    std::lock_guard lock(mu_);
    return interrupted_;
  }

  // --- any mode ---
  uint64_t interrupts() const { return interrupts_.load(std::memory_order_relaxed); }
  uint64_t submitted() const { return submitted_.load(std::memory_order_relaxed); }
  uint64_t areas_registered() const { return areas_registered_.load(std::memory_order_relaxed); }
  /// Every area UnregisterArea was called with, in order.
  std::vector<uint8_t> unregistered() const {
    std::lock_guard lock(mu_);
    return unregistered_;
  }

 private:
  void End(core::Op& op, int64_t result) {
    const bool running = op.state() == core::OpState::kRunning;
    completer_.Complete(op, running || op.TryStart(core::MonoNanos()) ? result : -ECANCELED);
  }

  void Work(int seed) {
    std::minstd_rand rng(seed);
    for (;;) {
      core::Op* op = nullptr;
      {
        std::lock_guard lock(mu_);
        if (!queue_.empty()) {
          const size_t i = rng() % std::min(queue_.size(), options_.shuffle_window);
          op = queue_[i];
          queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(i));
        }
      }
      if (op == nullptr) {
        if (stop_.load(std::memory_order_acquire)) return;
        std::this_thread::yield();
        continue;
      }
      End(*op, options_.result);
    }
  }

  core::OpCompleter& completer_;
  const Options options_;
  mutable std::mutex mu_;
  std::deque<core::Op*> queue_;  // held (kHeld) or waiting for a worker (kOnWorkers)
  size_t capacity_;
  std::vector<core::Op*> interrupted_;
  std::atomic<uint64_t> interrupts_{0};
  std::atomic<uint64_t> submitted_{0};
  std::atomic<uint64_t> areas_registered_{0};
  std::vector<uint8_t> unregistered_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> workers_;
};

}  // namespace asyncd::mocks
