// asyncctl durations: every documented form parses, bad input is rejected
// with a message, and what FormatDuration prints parses back (never rounded
// up past what it was).

#include "client/ctl/duration.h"

#include <gtest/gtest.h>

namespace asyncd::ctl {
namespace {

using std::chrono::microseconds;

int64_t Us(std::string_view text) {
  absl::StatusOr<microseconds> d = ParseDuration(text);
  EXPECT_TRUE(d.ok()) << text << ": " << d.status();
  return d.ok() ? d->count() : -1;
}

TEST(ParseDurationTest, Units) {
  EXPECT_EQ(Us("0"), 0);
  EXPECT_EQ(Us("250us"), 250);
  EXPECT_EQ(Us("250\xC2\xB5s"), 250);
  EXPECT_EQ(Us("500ms"), 500000);
  EXPECT_EQ(Us("30s"), 30000000);
  EXPECT_EQ(Us("2m"), 120000000);
  EXPECT_EQ(Us("1h"), 3600000000);
  EXPECT_EQ(Us("2d"), 2 * 86400000000LL);
  EXPECT_EQ(Us("0s"), 0);
}

TEST(ParseDurationTest, CompoundAndFractions) {
  EXPECT_EQ(Us("1h30m"), 5400000000);
  EXPECT_EQ(Us("4m10s"), 250000000);
  EXPECT_EQ(Us("1m500ms"), 60500000);
  EXPECT_EQ(Us("1.5s"), 1500000);
  EXPECT_EQ(Us("12.3ms"), 12300);
  EXPECT_EQ(Us(".5s"), 500000);
  EXPECT_EQ(Us("0.25h"), 900000000);
  EXPECT_EQ(Us("1.0000001s"), 1000000);  // below a microsecond: truncated
}

TEST(ParseDurationTest, Rejects) {
  for (const char* bad : {"", "5", "10x", "s", "-5s", "1.s", "5 s", "5s ", "ms", "1e3s",
                          "99999999999999999999s", "9223372036854775807d"}) {
    absl::StatusOr<microseconds> d = ParseDuration(bad);
    EXPECT_FALSE(d.ok()) << "accepted \"" << bad << "\"";
    if (!d.ok()) {
      EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(d.status().message().find("invalid duration"), std::string_view::npos);
    }
  }
}

TEST(ParseDurationTest, BareNumberMessageSaysUnitIsMissing) {
  absl::StatusOr<microseconds> d = ParseDuration("30");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("missing unit"), std::string_view::npos);
}

TEST(FormatDurationTest, HumanAges) {
  EXPECT_EQ(FormatDuration(microseconds(0)), "0s");
  EXPECT_EQ(FormatDuration(microseconds(7)), "7us");
  EXPECT_EQ(FormatDuration(microseconds(999)), "999us");
  EXPECT_EQ(FormatDuration(microseconds(1000)), "1ms");
  EXPECT_EQ(FormatDuration(microseconds(12345)), "12.3ms");
  EXPECT_EQ(FormatDuration(microseconds(850000)), "850ms");
  EXPECT_EQ(FormatDuration(microseconds(12300000)), "12.3s");
  EXPECT_EQ(FormatDuration(microseconds(30000000)), "30s");
  EXPECT_EQ(FormatDuration(microseconds(59999999)), "59.9s");  // truncated, never "60.0s"
  EXPECT_EQ(FormatDuration(microseconds(60000000)), "1m");
  EXPECT_EQ(FormatDuration(microseconds(250000000)), "4m10s");
  EXPECT_EQ(FormatDuration(microseconds(3600000000)), "1h");
  EXPECT_EQ(FormatDuration(microseconds(5400000000)), "1h30m");
  EXPECT_EQ(FormatDuration(microseconds(86400000000 + 3 * 3600000000LL)), "1d3h");
  EXPECT_EQ(FormatDuration(microseconds(-1500000)), "-1.5s");
  EXPECT_EQ(FormatMicros(2500), "2.5ms");
}

TEST(FormatDurationTest, OutputParsesBackNoLarger) {
  for (int64_t us : {0LL, 1LL, 999LL, 1001LL, 12345LL, 999999LL, 1000001LL, 59999999LL, 61000000LL,
                     3599999999LL, 3600000001LL, 86399999999LL, 90061000000LL}) {
    std::string text = FormatDuration(microseconds(us));
    absl::StatusOr<microseconds> back = ParseDuration(text);
    ASSERT_TRUE(back.ok()) << text;
    EXPECT_LE(back->count(), us) << text;
    // Within the printed precision: 10% below at worst.
    EXPECT_GE(back->count(), us - us / 10 - 1) << text;
  }
}

}  // namespace
}  // namespace asyncd::ctl
