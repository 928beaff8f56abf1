#include "daemon/observer.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "daemon/convert.h"
#include "src/core/clock.h"

namespace asyncd::daemon {
namespace {

int OutcomeIndex(core::OpState s) {
  switch (s) {
    case core::OpState::kCompleted: return 0;
    case core::OpState::kCancelled: return 1;
    case core::OpState::kTimedOut: return 2;
    default: return 3;
  }
}

int BackendIndex(core::BackendKind b) { return static_cast<int>(b) & 3; }

int Log2Bucket(int64_t ns) {
  const uint64_t us = ns > 0 ? static_cast<uint64_t>(ns) / 1000 : 0;
  return us == 0 ? 0 : std::min(31, 64 - __builtin_clzll(us));
}

// Upper bound, in microseconds, of log2 bucket b.
uint64_t BucketUpperUs(int b) { return b == 0 ? 1 : (uint64_t{1} << b); }

v1::EventType TerminalEvent(core::OpState s) {
  switch (s) {
    case core::OpState::kCompleted: return v1::EVENT_TYPE_COMPLETED;
    case core::OpState::kCancelled: return v1::EVENT_TYPE_CANCELLED;
    case core::OpState::kTimedOut: return v1::EVENT_TYPE_TIMED_OUT;
    default: return v1::EVENT_TYPE_FAILED;
  }
}

const int64_t kMonoToUnix = core::UnixNanos() - core::MonoNanos();

}  // namespace

int64_t ToUnixNanos(int64_t mono_ns) { return mono_ns == 0 ? 0 : mono_ns + kMonoToUnix; }

bool Filter::Matches(const core::OpSnapshot& s, uint32_t op_uid, std::string_view op_client,
                     int64_t now_ns) const {
  if (uid && *uid != op_uid) return false;
  if (session_id != 0 && s.session_id != session_id) return false;
  if (!client.empty() && client != op_client) return false;
  if (handle != 0 && s.handle != handle) return false;
  if (kinds != 0 && (kinds & (1u << static_cast<int>(s.kind))) == 0) return false;
  if (states != 0 && (states & (1u << static_cast<int>(s.state))) == 0) return false;
  if (backend != core::BackendKind::kNone && s.backend != backend) return false;
  if (older_than_ns > 0 && now_ns - s.submitted_ns < older_than_ns) return false;
  return true;
}

void Watcher::Push(const v1::WatchEvent& event) {
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= capacity_) {
      ++dropped_;
      return;
    }
    queue_.push_back(event);
    queue_.back().set_dropped(dropped_);
    dropped_ = 0;
  }
  wake_();
}

std::optional<v1::WatchEvent> Watcher::Pop() {
  std::lock_guard lock(mu_);
  if (queue_.empty()) return std::nullopt;
  v1::WatchEvent e = std::move(queue_.front());
  queue_.pop_front();
  return e;
}

Observer::Observer(size_t history_capacity, size_t slow_capacity)
    : shard_capacity_((history_capacity + kShards - 1) / kShards), slow_capacity_(slow_capacity) {
  for (Shard& s : shards_) s.ring.resize(shard_capacity_);
}

Observer::Counter& Observer::CounterFor(core::OpKind kind, core::BackendKind backend) {
  return counters_[static_cast<int>(kind)][BackendIndex(backend)];
}

void Observer::OnFinished(const core::Op& op) noexcept {
  const core::Session& session = *op.session;
  if (session.id() == ignored_session_.load(std::memory_order_relaxed)) return;
  std::optional<core::OpSnapshot> snap = core::Registry::Snapshot(op, session.id());
  if (!snap) return;
  const int64_t duration = snap->finished_ns - snap->submitted_ns;
  Counter& c = CounterFor(snap->kind, snap->backend);
  c.outcome[OutcomeIndex(snap->state)].fetch_add(1, std::memory_order_relaxed);
  c.buckets[Log2Bucket(duration)].fetch_add(1, std::memory_order_relaxed);
  c.duration_ns_sum.fetch_add(static_cast<uint64_t>(std::max<int64_t>(duration, 0)),
                              std::memory_order_relaxed);

  FinishedOp f;
  f.snap = *snap;
  f.uid = session.client().uid;
  f.pid = session.client().pid;
  std::strncpy(f.client, session.client().name.c_str(), sizeof(f.client) - 1);
  if (shard_capacity_ > 0) {
    // Shards keep completing threads off each other's lock.
    Shard& shard = shards_[std::hash<std::thread::id>{}(std::this_thread::get_id()) % kShards];
    std::lock_guard lock(shard.mu);
    shard.ring[shard.next] = f;
    shard.next = (shard.next + 1) % shard_capacity_;
    ++shard.count;
  }
  if (slow_capacity_ > 0 && duration > slow_floor_ns_.load(std::memory_order_relaxed)) {
    std::lock_guard lock(slow_mu_);
    auto longer = [](const FinishedOp& a, const FinishedOp& b) {
      return a.duration_ns() > b.duration_ns();
    };
    if (slow_.size() < slow_capacity_) {
      slow_.push_back(f);
      std::push_heap(slow_.begin(), slow_.end(), longer);
    } else if (duration > slow_.front().duration_ns()) {
      std::pop_heap(slow_.begin(), slow_.end(), longer);
      slow_.back() = f;
      std::push_heap(slow_.begin(), slow_.end(), longer);
    }
    if (slow_.size() == slow_capacity_) {
      slow_floor_ns_.store(slow_.front().duration_ns(), std::memory_order_relaxed);
    }
  }
  if (watcher_count_.load(std::memory_order_acquire) > 0) {
    v1::WatchEvent e;
    e.set_type(TerminalEvent(snap->state));
    e.set_outcome(OutcomeOf(snap->state));
    e.set_end_reason(ToProto(snap->end_reason));
    e.set_unix_nanos(ToUnixNanos(snap->finished_ns));
    Publish(e, *snap, f.uid, session.client().name);
  }
}

void Observer::OnSubmitted(const core::Op& op) noexcept {
  if (watcher_count_.load(std::memory_order_acquire) == 0) return;
  std::optional<core::OpSnapshot> snap = core::Registry::Snapshot(op, op.session->id());
  if (!snap) return;
  v1::WatchEvent e;
  e.set_type(v1::EVENT_TYPE_SUBMITTED);
  e.set_unix_nanos(ToUnixNanos(snap->submitted_ns));
  Publish(e, *snap, op.session->client().uid, op.session->client().name);
}

void Observer::OnCancelRequested(const core::OpSnapshot& snap,
                                 const core::ClientInfo& client) noexcept {
  if (watcher_count_.load(std::memory_order_acquire) == 0) return;
  v1::WatchEvent e;
  e.set_type(snap.end_reason == core::EndReason::kDeadline ? v1::EVENT_TYPE_DEADLINE_EXPIRED
                                                           : v1::EVENT_TYPE_CANCEL_REQUESTED);
  e.set_end_reason(ToProto(snap.end_reason));
  e.set_unix_nanos(core::UnixNanos());
  Publish(e, snap, client.uid, client.name);
}

void Observer::OnCancelAnswered(core::CancelResult r) noexcept {
  cancels_[static_cast<int>(r)].fetch_add(1, std::memory_order_relaxed);
}

void Observer::Publish(const v1::WatchEvent& base, const core::OpSnapshot& snap, uint32_t uid,
                       std::string_view client) {
  v1::WatchEvent e = base;
  e.set_op_id(snap.id.value);
  e.set_session_id(snap.session_id);
  e.set_kind(ToProto(snap.kind));
  e.set_target(snap.target);
  const int64_t now = core::MonoNanos();
  std::lock_guard lock(watch_mu_);
  for (const auto& w : watchers_) {
    if (w->Wants(e.type()) && w->filter().Matches(snap, uid, client, now)) w->Push(e);
  }
}

bool Observer::AddWatcher(std::shared_ptr<Watcher> w, size_t max_watchers) {
  std::lock_guard lock(watch_mu_);
  if (watchers_.size() >= max_watchers) return false;
  watchers_.push_back(std::move(w));
  watcher_count_.store(static_cast<int>(watchers_.size()), std::memory_order_release);
  return true;
}

void Observer::RemoveWatcher(const Watcher* w) {
  std::lock_guard lock(watch_mu_);
  std::erase_if(watchers_, [w](const auto& p) { return p.get() == w; });
  watcher_count_.store(static_cast<int>(watchers_.size()), std::memory_order_release);
}

std::vector<FinishedOp> Observer::Recent(const Filter& filter, size_t limit) const {
  std::vector<FinishedOp> all;
  const int64_t now = core::MonoNanos();
  for (const Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    const size_t n = std::min<uint64_t>(shard.count, shard_capacity_);
    for (size_t i = 0; i < n; ++i) {
      const FinishedOp& f = shard.ring[(shard.next + shard_capacity_ - 1 - i) % shard_capacity_];
      if (filter.Matches(f.snap, f.uid, f.client, now)) all.push_back(f);
    }
  }
  std::sort(all.begin(), all.end(), [](const FinishedOp& a, const FinishedOp& b) {
    return a.snap.finished_ns > b.snap.finished_ns;
  });
  if (all.size() > limit) all.resize(limit);
  return all;
}

std::vector<FinishedOp> Observer::Slowest(const Filter& filter, size_t limit) const {
  std::vector<FinishedOp> all;
  const int64_t now = core::MonoNanos();
  {
    std::lock_guard lock(slow_mu_);
    for (const FinishedOp& f : slow_) {
      if (filter.Matches(f.snap, f.uid, f.client, now)) all.push_back(f);
    }
  }
  std::sort(all.begin(), all.end(), [](const FinishedOp& a, const FinishedOp& b) {
    return a.duration_ns() > b.duration_ns();
  });
  if (all.size() > limit) all.resize(limit);
  return all;
}

std::optional<FinishedOp> Observer::FindFinished(uint64_t op_id) const {
  std::optional<FinishedOp> best;
  for (const Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    const size_t n = std::min<uint64_t>(shard.count, shard_capacity_);
    for (size_t i = 0; i < n; ++i) {
      const FinishedOp& f = shard.ring[i];
      if (f.snap.id.value == op_id && (!best || f.snap.finished_ns > best->snap.finished_ns)) {
        best = f;
      }
    }
  }
  if (!best) {
    std::lock_guard lock(slow_mu_);
    for (const FinishedOp& f : slow_) {
      if (f.snap.id.value == op_id) best = f;
    }
  }
  return best;
}

Observer::KindCounters Observer::Counters(core::OpKind kind, core::BackendKind backend) const {
  KindCounters out;
  const Counter& c = counters_[static_cast<int>(kind)][BackendIndex(backend)];
  for (int i = 0; i < 4; ++i) out.by_outcome[i] = c.outcome[i].load(std::memory_order_relaxed);
  for (int i = 0; i < kBuckets; ++i) {
    out.latency_buckets[i] = c.buckets[i].load(std::memory_order_relaxed);
  }
  out.duration_ns_sum = c.duration_ns_sum.load(std::memory_order_relaxed);
  return out;
}

void Observer::FillStats(v1::Stats& stats) const {
  for (int k = 1; k <= core::kOpKindCount; ++k) {
    for (core::BackendKind b : {core::BackendKind::kIoUring, core::BackendKind::kThreadPool,
                                core::BackendKind::kInline}) {
      const KindCounters c = Counters(static_cast<core::OpKind>(k), b);
      uint64_t total = 0;
      for (uint64_t n : c.by_outcome) total += n;
      if (total == 0) continue;
      v1::KindStats* ks = stats.add_kinds();
      ks->set_kind(static_cast<v1::OpKind>(k));
      ks->set_backend(ToProto(b));
      ks->set_completed(c.by_outcome[0]);
      ks->set_cancelled(c.by_outcome[1]);
      ks->set_timed_out(c.by_outcome[2]);
      ks->set_failed(c.by_outcome[3]);
      auto percentile = [&](double q) {
        const uint64_t rank = static_cast<uint64_t>(q * double(total));
        uint64_t seen = 0;
        for (int i = 0; i < kBuckets; ++i) {
          seen += c.latency_buckets[i];
          if (seen > rank) return BucketUpperUs(i);
        }
        return BucketUpperUs(kBuckets - 1);
      };
      ks->set_p50_us(percentile(0.50));
      ks->set_p99_us(percentile(0.99));
    }
  }
  stats.set_cancels_cancelled(cancels_[0].load(std::memory_order_relaxed));
  stats.set_cancels_not_cancellable(cancels_[1].load(std::memory_order_relaxed));
  stats.set_cancels_already_done(cancels_[2].load(std::memory_order_relaxed));
  stats.set_cancels_not_found(cancels_[3].load(std::memory_order_relaxed));
  stats.set_rejected(rejected_.load(std::memory_order_relaxed));
}

void ToOperationInfo(const core::OpSnapshot& s, uint32_t uid, uint32_t pid,
                     std::string_view client, bool include_timeline, int64_t now_mono_ns,
                     v1::OperationInfo& out) {
  out.set_op_id(s.id.value);
  out.set_session_id(s.session_id);
  out.set_client(std::string(client));
  out.set_uid(uid);
  out.set_pid(pid);
  out.set_kind(ToProto(s.kind));
  out.set_target(s.target);
  out.set_handle(s.handle);
  out.set_backend(ToProto(s.backend));
  out.set_state(ToProto(s.state));
  out.set_cancel_requested(s.end_requested);
  out.set_cancellable(s.cancellable());
  out.set_cancel_safety(s.safety == core::CancelSafety::kAlways
                            ? v1::CANCEL_SAFETY_ALWAYS
                            : v1::CANCEL_SAFETY_ONLY_BEFORE_START);
  const int64_t end = core::IsTerminal(s.state) && s.finished_ns != 0 ? s.finished_ns : now_mono_ns;
  out.set_age_us(end > s.submitted_ns ? (end - s.submitted_ns) / 1000 : 0);
  out.set_submitted_unix_nanos(ToUnixNanos(s.submitted_ns));
  out.set_finished_unix_nanos(core::IsTerminal(s.state) ? ToUnixNanos(s.finished_ns) : 0);
  out.set_bytes_done(s.bytes_done);
  out.set_result(static_cast<int32_t>(s.result));
  if (core::IsTerminal(s.state)) {
    out.set_outcome(OutcomeOf(s.state));
    if (s.result < 0) out.set_error_number(static_cast<int32_t>(-s.result));
  }
  out.set_end_reason(ToProto(s.end_reason));
  out.set_tag(s.tag);
  out.set_deadline_ms(s.deadline_ms);
  if (!include_timeline) return;
  auto add = [&](v1::EventType type, int64_t mono, std::string detail = {}) {
    if (mono == 0) return;
    v1::Event* e = out.add_timeline();
    e->set_type(type);
    e->set_unix_nanos(ToUnixNanos(mono));
    e->set_detail(std::move(detail));
  };
  add(v1::EVENT_TYPE_SUBMITTED, s.submitted_ns);
  add(v1::EVENT_TYPE_DISPATCHED, s.dispatched_ns, std::string(core::Name(s.backend)));
  add(v1::EVENT_TYPE_STARTED, s.started_ns);
  if (s.end_requested) {
    add(s.end_reason == core::EndReason::kDeadline ? v1::EVENT_TYPE_DEADLINE_EXPIRED
                                                   : v1::EVENT_TYPE_CANCEL_REQUESTED,
        s.cancel_requested_ns, std::string(core::Name(s.end_reason)));
  }
  if (core::IsTerminal(s.state)) {
    add(TerminalEvent(s.state), s.finished_ns,
        s.result < 0 ? ErrnoName(static_cast<int>(-s.result)) : std::string());
  }
}

}  // namespace asyncd::daemon
