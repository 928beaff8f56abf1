// asyncctl value formats: op ids print as 0x-hex and parse from hex or
// decimal; enum names print short and parse from short, full or alias
// forms; unknown enum values (a newer daemon) print as numbers.

#include "client/ctl/format.h"

#include <errno.h>
#include <gtest/gtest.h>

namespace asyncd::ctl {
namespace {

TEST(OpIdTest, PrintsHexParsesBoth) {
  EXPECT_EQ(FormatOpId(0x1000050000003ULL), "0x1000050000003");
  EXPECT_EQ(*ParseId("0x1000050000003", "op id"), 0x1000050000003ULL);
  EXPECT_EQ(*ParseId("0X1f", "op id"), 31u);
  EXPECT_EQ(*ParseId("281474976710679", "op id"), 281474976710679ULL);
  EXPECT_EQ(*ParseId("0xffffffffffffffff", "op id"), UINT64_MAX);
  uint64_t id = 0xdeadbeef12345ULL;
  EXPECT_EQ(*ParseId(FormatOpId(id), "op id"), id);
}

TEST(OpIdTest, Rejects) {
  for (const char* bad : {"", "0", "0x0", "0x", "abc", "12z", "-1", "0x1g", "1 ",
                          "0x10000000000000000", "18446744073709551616"}) {
    absl::StatusOr<uint64_t> id = ParseId(bad, "op id");
    EXPECT_FALSE(id.ok()) << "accepted \"" << bad << "\"";
  }
}

TEST(HandleTest, PlainOrPrefixed) {
  EXPECT_EQ(*ParseHandle("3"), 3u);
  EXPECT_EQ(*ParseHandle("h:65537"), 65537u);
  EXPECT_FALSE(ParseHandle("0").ok());
  EXPECT_FALSE(ParseHandle("h:").ok());
  EXPECT_FALSE(ParseHandle("x3").ok());
  EXPECT_FALSE(ParseHandle("4294967296").ok());
}

TEST(EnumTest, ShortNames) {
  EXPECT_EQ(ShortName(v1::OP_KIND_READ), "read");
  EXPECT_EQ(ShortName(v1::OP_KIND_FTRUNCATE), "ftruncate");
  EXPECT_EQ(ShortName(v1::BACKEND_IO_URING), "io_uring");
  EXPECT_EQ(ShortName(v1::BACKEND_THREAD_POOL), "thread_pool");
  EXPECT_EQ(ShortName(v1::OP_STATE_TIMED_OUT), "timed_out");
  EXPECT_EQ(ShortName(v1::CANCEL_RESULT_NOT_CANCELLABLE), "not_cancellable");
  EXPECT_EQ(ShortName(v1::EVENT_TYPE_CANCEL_REQUESTED), "cancel_requested");
  EXPECT_EQ(ShortName(v1::END_REASON_CLIENT_REQUEST), "client_request");
  // A value from a newer daemon.
  EXPECT_EQ(ShortName(static_cast<v1::OpKind>(99)), "99");
}

TEST(EnumTest, ParsesShortFullAliasAnyCase) {
  EXPECT_EQ(*ParseEnum<v1::OpKind>("read", "kind"), v1::OP_KIND_READ);
  EXPECT_EQ(*ParseEnum<v1::OpKind>("READ", "kind"), v1::OP_KIND_READ);
  EXPECT_EQ(*ParseEnum<v1::OpKind>("OP_KIND_READ", "kind"), v1::OP_KIND_READ);
  EXPECT_EQ(*ParseEnum<v1::OpKind>("stat", "kind"), v1::OP_KIND_STATX);
  EXPECT_EQ(*ParseEnum<v1::Backend>("uring", "backend"), v1::BACKEND_IO_URING);
  EXPECT_EQ(*ParseEnum<v1::Backend>("thread-pool", "backend"), v1::BACKEND_THREAD_POOL);
  EXPECT_EQ(*ParseEnum<v1::Backend>("pool", "backend"), v1::BACKEND_THREAD_POOL);
  EXPECT_EQ(*ParseEnum<v1::OpState>("Running", "state"), v1::OP_STATE_RUNNING);
  EXPECT_EQ(*ParseEnum<v1::OpenMode>("rw", "access"), v1::OPEN_MODE_READ_WRITE);
  EXPECT_EQ(*ParseEnum<v1::PollEvents>("in", "events"), v1::POLL_EVENTS_READABLE);
  EXPECT_EQ(*ParseEnum<v1::EventType>("cancel", "type"), v1::EVENT_TYPE_CANCEL_REQUESTED);
}

TEST(EnumTest, RejectsUnspecifiedAndUnknownListingChoices) {
  EXPECT_FALSE(ParseEnum<v1::OpKind>("unspecified", "kind").ok());
  EXPECT_FALSE(ParseEnum<v1::OpKind>("OP_KIND_UNSPECIFIED", "kind").ok());
  absl::StatusOr<v1::OpKind> bad = ParseEnum<v1::OpKind>("bogus", "kind");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("nop, open, close, read"), std::string_view::npos)
      << bad.status();
  EXPECT_NE(bad.status().message().find("invalid kind \"bogus\""), std::string_view::npos);
}

TEST(FormatTest, ResultsAndErrnos) {
  EXPECT_EQ(FormatResult(5, 0), "5");
  EXPECT_EQ(FormatResult(-ENOENT, ENOENT), "-ENOENT");
  EXPECT_EQ(ErrnoName(ECANCELED), "ECANCELED");
  EXPECT_EQ(ErrnoName(0), "0");
}

TEST(FormatTest, PollEvents) {
  EXPECT_EQ(FormatPollEvents(0), "-");
  EXPECT_EQ(FormatPollEvents(v1::POLL_EVENTS_READABLE | v1::POLL_EVENTS_HANGUP), "in|hup");
  EXPECT_EQ(FormatPollEvents(v1::POLL_EVENTS_WRITABLE | 64), "out|64");
}

TEST(FormatTest, TruncateAndEscape) {
  EXPECT_EQ(TruncateFront("short", 10), "short");
  EXPECT_EQ(TruncateFront("/very/long/path/to/file", 10), "...to/file");
  EXPECT_EQ(TruncateFront("/very/long/path/to/file", 10).size(), 10u);
  EXPECT_EQ(EscapeBytes(std::string("a\nb\0c\"", 6), 100), "a\\nb\\x00c\\\"");
  EXPECT_EQ(EscapeBytes("hello world", 5), "hello...(11 bytes)");
}

TEST(FormatTest, Timestamps) {
  EXPECT_EQ(FormatTimestamp(0), "-");
  EXPECT_EQ(FormatTimestamp(1700000000123456789LL), "2023-11-14T22:13:20.123456Z");
  EXPECT_EQ(FormatClock(0), "-");
  EXPECT_EQ(FormatClock(1700000000123456789LL).size(), 12u);  // HH:MM:SS.mmm, local time
}

}  // namespace
}  // namespace asyncd::ctl
