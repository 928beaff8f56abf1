#include "daemon/counters.h"

#include <algorithm>

#include "daemon/convert.h"

namespace asyncd::daemon {
namespace {

int OutcomeIndex(core::OpState s) {
  switch (s) {
    case core::OpState::kCompleted:
      return 0;
    case core::OpState::kCancelled:
      return 1;
    case core::OpState::kTimedOut:
      return 2;
    default:
      return 3;
  }
}

int BackendIndex(core::BackendKind b) { return static_cast<int>(b) & 3; }

int Log2Bucket(int64_t ns) {
  const uint64_t us = ns > 0 ? static_cast<uint64_t>(ns) / 1000 : 0;
  return us == 0 ? 0 : std::min(31, 64 - __builtin_clzll(us));
}

// Upper bound, in microseconds, of log2 bucket b.
uint64_t BucketUpperUs(int b) { return b == 0 ? 1 : (uint64_t{1} << b); }

}  // namespace

void Counters::OnFinished(const core::OpSnapshot& snap) noexcept {
  const int64_t duration = snap.finished_ns - snap.submitted_ns;
  Counter& c = counters_[static_cast<int>(snap.kind)][BackendIndex(snap.backend)];
  c.outcome[OutcomeIndex(snap.state)].fetch_add(1, std::memory_order_relaxed);
  c.buckets[Log2Bucket(duration)].fetch_add(1, std::memory_order_relaxed);
  c.duration_ns_sum.fetch_add(static_cast<uint64_t>(std::max<int64_t>(duration, 0)),
                              std::memory_order_relaxed);
}

void Counters::OnCancelAnswered(core::CancelResult r) noexcept {
  cancels_[static_cast<int>(r)].fetch_add(1, std::memory_order_relaxed);
}

KindCounters Counters::Get(core::OpKind kind, core::BackendKind backend) const {
  KindCounters out;
  const Counter& c = counters_[static_cast<int>(kind)][BackendIndex(backend)];
  for (int i = 0; i < 4; ++i) out.by_outcome[i] = c.outcome[i].load(std::memory_order_relaxed);
  for (int i = 0; i < kBuckets; ++i) {
    out.latency_buckets[i] = c.buckets[i].load(std::memory_order_relaxed);
  }
  out.duration_ns_sum = c.duration_ns_sum.load(std::memory_order_relaxed);
  return out;
}

void Counters::FillStats(v1::Stats& stats) const {
  for (int k = 1; k <= core::kOpKindCount; ++k) {
    for (core::BackendKind b : {core::BackendKind::kIoUring, core::BackendKind::kThreadPool,
                                core::BackendKind::kInline}) {
      const KindCounters c = Get(static_cast<core::OpKind>(k), b);
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

}  // namespace asyncd::daemon
