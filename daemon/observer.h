#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "asyncd/v1/asyncd.pb.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// A finished op as the history keeps it: its last snapshot plus who owned it.
struct FinishedOp {
  core::OpSnapshot snap;
  uint32_t uid = 0;
  uint32_t pid = 0;
  char client[32] = {};
  int64_t duration_ns() const { return snap.finished_ns - snap.submitted_ns; }
};

/// Selects ops for listing, cancelling and watching (v1.OpSelector, resolved).
struct Filter {
  uint64_t session_id = 0;
  std::string client;
  uint32_t handle = 0;
  uint32_t kinds = 0;   // bit per core::OpKind; 0 = any
  uint32_t states = 0;  // bit per core::OpState; 0 = any
  core::BackendKind backend = core::BackendKind::kNone;
  int64_t older_than_ns = 0;
  std::optional<uint32_t> uid;  // set for non-admin callers: only their own ops
  bool Matches(const core::OpSnapshot& s, uint32_t uid, std::string_view client,
               int64_t now_ns) const;
};

/// One subscriber of Watch: a bounded queue; a full queue drops and counts.
class Watcher {
 public:
  Watcher(Filter filter, uint32_t types, size_t capacity, std::function<void()> wake)
      : filter_(std::move(filter)), types_(types), capacity_(capacity), wake_(std::move(wake)) {}
  /// Called by the hub on any thread.
  void Push(const v1::WatchEvent& event);
  /// Takes the next event (with `dropped` set), or nullopt when empty.
  std::optional<v1::WatchEvent> Pop();
  const Filter& filter() const { return filter_; }
  bool Wants(v1::EventType type) const { return types_ == 0 || (types_ & (1u << type)) != 0; }

 private:
  const Filter filter_;
  const uint32_t types_;
  const size_t capacity_;
  const std::function<void()> wake_;
  std::mutex mu_;
  std::deque<v1::WatchEvent> queue_;
  uint64_t dropped_ = 0;
};

/// Sees every op's life: keeps the history (recent and slowest finished
/// ops), the counters behind Stats, and feeds watchers. Everything here is
/// off the registry's hot path: sharded rings, relaxed counters, and a
/// watcher fan-out that costs one atomic load when nobody watches.
class Observer final : public core::CompletionObserver {
 public:
  Observer(size_t history_capacity, size_t slow_capacity);

  void OnFinished(const core::Op& op) noexcept override;
  void OnSubmitted(const core::Op& op) noexcept override;
  /// The service reports these; they have no core hook.
  void OnCancelRequested(const core::OpSnapshot& snap, const core::ClientInfo& client) noexcept;
  void OnRejected() noexcept { rejected_.fetch_add(1, std::memory_order_relaxed); }
  void OnCancelAnswered(core::CancelResult r) noexcept;
  /// Ops of this session (the daemon's own watchdog probe) are not counted,
  /// kept in history or watched. Set before its first op.
  void IgnoreSession(uint64_t session_id) {
    ignored_session_.store(session_id, std::memory_order_relaxed);
  }

  /// Most recent first; at most `limit`.
  std::vector<FinishedOp> Recent(const Filter& filter, size_t limit) const;
  /// Slowest first.
  std::vector<FinishedOp> Slowest(const Filter& filter, size_t limit) const;
  std::optional<FinishedOp> FindFinished(uint64_t op_id) const;

  bool AddWatcher(std::shared_ptr<Watcher> w, size_t max_watchers);
  void RemoveWatcher(const Watcher* w);

  void FillStats(v1::Stats& stats) const;
  /// Copies of the counters for metrics exposition.
  struct KindCounters {
    uint64_t by_outcome[4] = {};  // completed, cancelled, timed out, failed
    uint64_t latency_buckets[32] = {};  // log2 microseconds
    uint64_t duration_ns_sum = 0;       // of every finished op
  };
  KindCounters Counters(core::OpKind kind, core::BackendKind backend) const;

 private:
  static constexpr int kShards = 8;
  static constexpr int kBuckets = 32;
  struct alignas(64) Shard {
    mutable std::mutex mu;
    std::vector<FinishedOp> ring;
    size_t next = 0;
    uint64_t count = 0;
  };
  struct Counter {
    std::atomic<uint64_t> outcome[4] = {};
    std::atomic<uint64_t> buckets[kBuckets] = {};
    std::atomic<uint64_t> duration_ns_sum{0};
  };
  void Publish(const v1::WatchEvent& event, const core::OpSnapshot& snap, uint32_t uid,
               std::string_view client);
  Counter& CounterFor(core::OpKind kind, core::BackendKind backend);

  const size_t shard_capacity_;
  std::array<Shard, kShards> shards_;

  mutable std::mutex slow_mu_;
  std::vector<FinishedOp> slow_;  // min-heap on duration
  const size_t slow_capacity_;
  std::atomic<int64_t> slow_floor_ns_{0};

  // [kind][backend]
  Counter counters_[core::kOpKindCount + 1][4];
  std::atomic<uint64_t> cancels_[4] = {};
  std::atomic<uint64_t> rejected_{0};
  std::atomic<uint64_t> ignored_session_{0};

  mutable std::mutex watch_mu_;
  std::vector<std::shared_ptr<Watcher>> watchers_;
  std::atomic<int> watcher_count_{0};
};

/// The snapshot of a live or finished op as the API shows it.
void ToOperationInfo(const core::OpSnapshot& s, uint32_t uid, uint32_t pid,
                     std::string_view client, bool include_timeline, int64_t now_mono_ns,
                     v1::OperationInfo& out);
/// MonoNanos() to Unix nanoseconds.
int64_t ToUnixNanos(int64_t mono_ns);

}  // namespace asyncd::daemon
