// asyncd-bench's --mix and duration parsers accept what the help text promises
// and reject the rest with a message; the mix picker honours the weights.
#include <gtest/gtest.h>

#include <array>

#include "client/bench/bench_util.h"

namespace asyncd::client::bench {
namespace {

TEST(ParseMixTest, Accepts) {
  auto mix = ParseMix("nop=1");
  ASSERT_TRUE(mix.ok()) << mix.status();
  EXPECT_EQ(*mix, (std::vector<MixEntry>{{BenchOp::kNop, 1}}));
  mix = ParseMix("read=3,nop=1");
  ASSERT_TRUE(mix.ok());
  EXPECT_EQ(*mix, (std::vector<MixEntry>{{BenchOp::kRead, 3}, {BenchOp::kNop, 1}}));
  mix = ParseMix(" write = 2 , timeout ");
  ASSERT_TRUE(mix.ok()) << mix.status();
  EXPECT_EQ(*mix, (std::vector<MixEntry>{{BenchOp::kWrite, 2}, {BenchOp::kTimeout, 1}}));
  EXPECT_TRUE(ParseMix("read=0,nop=1").ok());
}

TEST(ParseMixTest, Rejects) {
  for (const char* bad : {"", "nop=", "nop=x", "nop=-1", "fsync=1", "nop=1,,read=1", "nop,nop",
                          "nop=0", "read=1,", "nop=99999999999"}) {
    EXPECT_FALSE(ParseMix(bad).ok()) << bad;
  }
}

TEST(MixPickerTest, FollowsWeights) {
  MixPicker picker(*ParseMix("read=3,nop=1,write=0"));
  EXPECT_TRUE(picker.Has(BenchOp::kRead));
  EXPECT_FALSE(picker.Has(BenchOp::kWrite));
  std::array<int, 4> seen{};
  FastRandom random(1);
  for (int i = 0; i < 40000; ++i) ++seen[static_cast<int>(picker.Pick(random.Next()))];
  EXPECT_EQ(seen[static_cast<int>(BenchOp::kWrite)], 0);
  EXPECT_NEAR(seen[static_cast<int>(BenchOp::kRead)] / 40000.0, 0.75, 0.02);
  EXPECT_NEAR(seen[static_cast<int>(BenchOp::kNop)] / 40000.0, 0.25, 0.02);
}

TEST(ParseDurationTest, Units) {
  using std::chrono::nanoseconds;
  EXPECT_EQ(*ParseDuration("10s"), nanoseconds(10'000'000'000));
  EXPECT_EQ(*ParseDuration("10"), nanoseconds(10'000'000'000));
  EXPECT_EQ(*ParseDuration("500ms"), nanoseconds(500'000'000));
  EXPECT_EQ(*ParseDuration("1.5s"), nanoseconds(1'500'000'000));
  EXPECT_EQ(*ParseDuration("250us"), nanoseconds(250'000));
  EXPECT_EQ(*ParseDuration("7ns"), nanoseconds(7));
  EXPECT_EQ(*ParseDuration("2m"), nanoseconds(120'000'000'000));
  EXPECT_EQ(*ParseDuration("1h"), nanoseconds(3'600'000'000'000));
  EXPECT_EQ(*ParseDuration("0"), nanoseconds(0));
}

TEST(ParseDurationTest, Rejects) {
  for (const char* bad : {"", "s", "10x", "-1s", "1..2s", ".", "1e3s", "99999999999h"}) {
    EXPECT_FALSE(ParseDuration(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace asyncd::client::bench
