// NormalizeTarget maps every accepted target spelling to one gRPC target, and
// the status conversions keep code and message.
#include <gtest/gtest.h>

#include <cstdlib>

#include "asyncd/connection.h"
#include "src/common/runtime_paths.h"

namespace asyncd::client {
namespace {

TEST(NormalizeTargetTest, EmptyIsDefaultSocket) {
  ::setenv("ASYNCD_SOCKET", "/tmp/x/asyncd.sock", 1);
  EXPECT_EQ(NormalizeTarget(""), "unix:/tmp/x/asyncd.sock");
  ::unsetenv("ASYNCD_SOCKET");
  EXPECT_EQ(NormalizeTarget(""), "unix:" + asyncd::common::DefaultSocketPath());
  EXPECT_EQ(DefaultSocketPath(), asyncd::common::DefaultSocketPath());
}

TEST(NormalizeTargetTest, GrpcSchemesPassThrough) {
  EXPECT_EQ(NormalizeTarget("unix:/run/asyncd/asyncd.sock"), "unix:/run/asyncd/asyncd.sock");
  EXPECT_EQ(NormalizeTarget("unix:rel.sock"), "unix:rel.sock");
  EXPECT_EQ(NormalizeTarget("unix-abstract:asyncd"), "unix-abstract:asyncd");
  EXPECT_EQ(NormalizeTarget("dns:///example.com:443"), "dns:///example.com:443");
  EXPECT_EQ(NormalizeTarget("ipv4:127.0.0.1:5000"), "ipv4:127.0.0.1:5000");
  EXPECT_EQ(NormalizeTarget("ipv6:[::1]:5000"), "ipv6:[::1]:5000");
}

TEST(NormalizeTargetTest, BarePathsBecomeUnix) {
  EXPECT_EQ(NormalizeTarget("/run/asyncd/asyncd.sock"), "unix:/run/asyncd/asyncd.sock");
  EXPECT_EQ(NormalizeTarget("./a.sock"), "unix:./a.sock");
  EXPECT_EQ(NormalizeTarget("../a.sock"), "unix:../a.sock");
  EXPECT_EQ(NormalizeTarget("dir/a.sock"), "unix:dir/a.sock");
  EXPECT_EQ(NormalizeTarget("asyncd.sock"), "unix:asyncd.sock");
  // A path that happens to contain a colon is still a path.
  EXPECT_EQ(NormalizeTarget("/tmp/a:b.sock"), "unix:/tmp/a:b.sock");
}

TEST(NormalizeTargetTest, TildeExpandsHome) {
  ::setenv("HOME", "/home/someone", 1);
  EXPECT_EQ(NormalizeTarget("~/asyncd.sock"), "unix:/home/someone/asyncd.sock");
}

TEST(NormalizeTargetTest, HostPortIsTcp) {
  EXPECT_EQ(NormalizeTarget("localhost:50051"), "localhost:50051");
  EXPECT_EQ(NormalizeTarget("10.0.0.1:7"), "10.0.0.1:7");
  EXPECT_EQ(NormalizeTarget("[::1]:50051"), "[::1]:50051");
  EXPECT_FALSE(IsUnixTarget(NormalizeTarget("localhost:50051")));
  EXPECT_TRUE(IsUnixTarget(NormalizeTarget("/x.sock")));
  EXPECT_TRUE(IsUnixTarget("unix-abstract:x"));
}

TEST(ConnectTest, NeverNullAndDoesNotBlock) {
  EXPECT_NE(Connect("/nonexistent/dir/asyncd.sock"), nullptr);
  EXPECT_NE(Connect("localhost:1"), nullptr);
}

TEST(ToAbslStatusTest, KeepsCodeAndMessage) {
  EXPECT_TRUE(ToAbslStatus(grpc::Status::OK).ok());
  absl::Status s = ToAbslStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "max_sessions"));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "max_sessions");
  for (int code = 1; code <= 16; ++code) {
    EXPECT_EQ(static_cast<int>(
                  ToAbslStatus(grpc::Status(static_cast<grpc::StatusCode>(code), "m")).code()),
              code);
  }
}

TEST(CompletionToStatusTest, MapsOutcomes) {
  v1::Completion c;
  c.set_outcome(v1::OUTCOME_COMPLETED);
  EXPECT_TRUE(CompletionToStatus(c).ok());

  c.set_error_number(2);
  c.set_error_name("ENOENT");
  absl::Status s = CompletionToStatus(c, "open a");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("open a"), absl::string_view::npos);

  c.Clear();
  c.set_outcome(v1::OUTCOME_CANCELLED);
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kCancelled);
  c.set_outcome(v1::OUTCOME_TIMED_OUT);
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kDeadlineExceeded);
  c.set_outcome(v1::OUTCOME_FAILED);
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kInternal);
  c.set_error_number(12);  // ENOMEM
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kResourceExhausted);

  c.Clear();
  c.set_outcome(v1::OUTCOME_REJECTED);
  c.set_status_code(3);
  c.set_message("read.offset: must be >= -1");
  s = CompletionToStatus(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "read.offset: must be >= -1");

  c.Clear();  // outcome unknown to the client (e.g. a synthesized one)
  c.set_status_code(14);
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kUnavailable);
  c.set_status_code(0);
  EXPECT_EQ(CompletionToStatus(c).code(), absl::StatusCode::kUnknown);
}

}  // namespace
}  // namespace asyncd::client
