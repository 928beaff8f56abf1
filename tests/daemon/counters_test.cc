// The counters behind Stats and /metrics (daemon/counters.h): finished ops
// counted per kind, backend and outcome, with a log2-microsecond latency
// histogram and the duration sum; Stats shows only (kind, backend) pairs
// that finished something, with p50/p99; cancel answers and refused ops.
#include "daemon/counters.h"

#include <gtest/gtest.h>

namespace asyncd::daemon {
namespace {

core::OpSnapshot Finished(core::OpKind kind, core::BackendKind backend, core::OpState state,
                          int64_t duration_ns) {
  core::OpSnapshot s;
  s.kind = kind;
  s.backend = backend;
  s.state = state;
  s.submitted_ns = 1'000'000'000;
  s.finished_ns = s.submitted_ns + duration_ns;
  return s;
}

TEST(CountersTest, CountsOutcomesPerKindAndBackend) {
  Counters c;
  using K = core::OpKind;
  using B = core::BackendKind;
  using S = core::OpState;
  c.OnFinished(Finished(K::kRead, B::kIoUring, S::kCompleted, 1000));
  c.OnFinished(Finished(K::kRead, B::kIoUring, S::kCompleted, 1000));
  c.OnFinished(Finished(K::kRead, B::kIoUring, S::kCancelled, 1000));
  c.OnFinished(Finished(K::kRead, B::kIoUring, S::kTimedOut, 1000));
  c.OnFinished(Finished(K::kRead, B::kIoUring, S::kFailed, 1000));
  c.OnFinished(Finished(K::kRead, B::kThreadPool, S::kCompleted, 1000));
  const KindCounters uring = c.Get(K::kRead, B::kIoUring);
  EXPECT_EQ(uring.by_outcome[0], 2u);
  EXPECT_EQ(uring.by_outcome[1], 1u);
  EXPECT_EQ(uring.by_outcome[2], 1u);
  EXPECT_EQ(uring.by_outcome[3], 1u);
  EXPECT_EQ(c.Get(K::kRead, B::kThreadPool).by_outcome[0], 1u);
  EXPECT_EQ(c.Get(K::kWrite, B::kIoUring).by_outcome[0], 0u);
}

TEST(CountersTest, LatencyGoesToItsLog2MicrosecondBucket) {
  Counters c;
  using K = core::OpKind;
  c.OnFinished(Finished(K::kNop, core::BackendKind::kInline, core::OpState::kCompleted, 500));
  c.OnFinished(Finished(K::kNop, core::BackendKind::kInline, core::OpState::kCompleted, 3000));
  c.OnFinished(
      Finished(K::kNop, core::BackendKind::kInline, core::OpState::kCompleted, int64_t{1} << 50));
  const KindCounters k = c.Get(K::kNop, core::BackendKind::kInline);
  EXPECT_EQ(k.latency_buckets[0], 1u);   // under 1 us
  EXPECT_EQ(k.latency_buckets[2], 1u);   // 3 us: (2, 4]
  EXPECT_EQ(k.latency_buckets[31], 1u);  // the last bucket takes everything longer
  EXPECT_EQ(k.duration_ns_sum, 500u + 3000u + (uint64_t{1} << 50));
}

TEST(CountersTest, StatsShowOnlyPairsThatFinishedSomething) {
  Counters c;
  c.OnFinished(Finished(core::OpKind::kFsync, core::BackendKind::kThreadPool,
                        core::OpState::kCompleted, 1000));
  v1::Stats stats;
  c.FillStats(stats);
  ASSERT_EQ(stats.kinds_size(), 1);
  EXPECT_EQ(stats.kinds(0).kind(), v1::OP_KIND_FSYNC);
  EXPECT_EQ(stats.kinds(0).backend(), v1::BACKEND_THREAD_POOL);
  EXPECT_EQ(stats.kinds(0).completed(), 1u);
}

TEST(CountersTest, StatsPercentilesAreBucketUpperBounds) {
  Counters c;
  // 98 ops of 3 us (bucket 2, up to 4 us) and 2 of 1 ms (bucket 10, up to 1024 us).
  for (int i = 0; i < 98; ++i) {
    c.OnFinished(Finished(core::OpKind::kRead, core::BackendKind::kIoUring,
                          core::OpState::kCompleted, 3000));
  }
  for (int i = 0; i < 2; ++i) {
    c.OnFinished(Finished(core::OpKind::kRead, core::BackendKind::kIoUring,
                          core::OpState::kCompleted, 1'000'000));
  }
  v1::Stats stats;
  c.FillStats(stats);
  ASSERT_EQ(stats.kinds_size(), 1);
  EXPECT_EQ(stats.kinds(0).p50_us(), 4u);
  EXPECT_EQ(stats.kinds(0).p99_us(), 1024u);
}

TEST(CountersTest, CancelAnswersAndRejectionsAreCounted) {
  Counters c;
  c.OnCancelAnswered(core::CancelResult::kCancelled);
  c.OnCancelAnswered(core::CancelResult::kCancelled);
  c.OnCancelAnswered(core::CancelResult::kNotCancellable);
  c.OnCancelAnswered(core::CancelResult::kAlreadyDone);
  c.OnCancelAnswered(core::CancelResult::kNotFound);
  c.OnCancelAnswered(core::CancelResult::kNotFound);
  c.OnCancelAnswered(core::CancelResult::kNotFound);
  c.OnRejected();
  v1::Stats stats;
  c.FillStats(stats);
  EXPECT_EQ(stats.cancels_cancelled(), 2u);
  EXPECT_EQ(stats.cancels_not_cancellable(), 1u);
  EXPECT_EQ(stats.cancels_already_done(), 1u);
  EXPECT_EQ(stats.cancels_not_found(), 3u);
  EXPECT_EQ(stats.rejected(), 1u);
  EXPECT_EQ(stats.kinds_size(), 0);
}

}  // namespace
}  // namespace asyncd::daemon
