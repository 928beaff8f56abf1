// The bench's log-linear histogram: buckets tile the value range without gaps
// or overlaps, a bucket is at most 1/64 of its values wide, and percentiles
// land within that error of the exact answer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "client/bench/bench_util.h"

namespace asyncd::client::bench {
namespace {

using H = LatencyHistogram;

TEST(LatencyHistogramTest, BucketsTileTheRange) {
  EXPECT_EQ(H::BucketOf(0), 0u);
  EXPECT_EQ(H::BucketOf(63), 63u);
  EXPECT_EQ(H::BucketOf(64), 64u);
  EXPECT_EQ(H::BucketOf(127), 127u);
  EXPECT_EQ(H::BucketOf(128), 128u);
  EXPECT_EQ(H::BucketOf(129), 128u);
  EXPECT_EQ(H::BucketOf(std::numeric_limits<uint64_t>::max()), H::kBuckets - 1);
  for (size_t i = 0; i + 1 < H::kBuckets; ++i) {
    ASSERT_EQ(H::BucketHigh(i) + 1, H::BucketLow(i + 1)) << i;
    ASSERT_EQ(H::BucketOf(H::BucketLow(i)), i) << i;
    ASSERT_EQ(H::BucketOf(H::BucketHigh(i)), i) << i;
  }
  EXPECT_EQ(H::BucketHigh(H::kBuckets - 1), std::numeric_limits<uint64_t>::max());
}

TEST(LatencyHistogramTest, RelativeBucketWidthIsBounded) {
  for (size_t i = H::kSubBuckets; i < H::kBuckets; ++i) {
    const double width = static_cast<double>(H::BucketHigh(i) - H::BucketLow(i) + 1);
    ASSERT_LE(width / static_cast<double>(H::BucketLow(i)), 1.0 / 64 + 1e-12) << i;
  }
}

TEST(LatencyHistogramTest, EmptyIsZero) {
  H h;
  EXPECT_EQ(h.count(), 0u);
  EXPECT_EQ(h.Percentile(50), 0u);
  EXPECT_EQ(h.min(), 0u);
  EXPECT_EQ(h.max(), 0u);
}

TEST(LatencyHistogramTest, SmallValuesAreExact) {
  H h;
  for (uint64_t v = 1; v <= 50; ++v) h.Record(v);
  EXPECT_EQ(h.Percentile(50), 25u);
  EXPECT_EQ(h.Percentile(100), 50u);
  EXPECT_EQ(h.Percentile(0), 1u);
  EXPECT_EQ(h.min(), 1u);
  EXPECT_DOUBLE_EQ(h.mean(), 25.5);
}

TEST(LatencyHistogramTest, PercentilesWithinBucketError) {
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> dist(11.0, 1.0);  // ~60 us median, in ns
  std::vector<uint64_t> values;
  H h;
  for (int i = 0; i < 200000; ++i) {
    const uint64_t v = static_cast<uint64_t>(dist(rng));
    values.push_back(v);
    h.Record(v);
  }
  std::sort(values.begin(), values.end());
  for (double p : {50.0, 90.0, 99.0, 99.9}) {
    const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * values.size()));
    const double exact = static_cast<double>(values[rank - 1]);
    const double got = static_cast<double>(h.Percentile(p));
    EXPECT_GE(got, exact) << p;  // the bucket's upper end
    EXPECT_LE(got, exact * (1.0 + 1.0 / 64) + 1) << p;
  }
  EXPECT_EQ(h.Percentile(100), values.back());
  EXPECT_EQ(h.max(), values.back());
  EXPECT_EQ(h.min(), values.front());
}

TEST(LatencyHistogramTest, MergeEqualsRecordingEverything) {
  H a, b, all;
  for (uint64_t v = 0; v < 10000; v += 7) {
    (v % 2 ? a : b).Record(v * 13);
    all.Record(v * 13);
  }
  a.Merge(b);
  EXPECT_EQ(a.count(), all.count());
  EXPECT_EQ(a.min(), all.min());
  EXPECT_EQ(a.max(), all.max());
  for (double p : {1.0, 50.0, 99.0, 99.9, 100.0}) EXPECT_EQ(a.Percentile(p), all.Percentile(p));
}

}  // namespace
}  // namespace asyncd::client::bench
