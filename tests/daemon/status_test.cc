// The status helpers (daemon/status.h): every over-limit message core gives
// gets the config key an operator would raise, once; other statuses pass
// unchanged; gRPC sees the same code and message; draining is UNAVAILABLE.
#include "daemon/status.h"

#include <gtest/gtest.h>

namespace asyncd::daemon {
namespace {

std::string Named(const std::string& message) {
  return std::string(NameLimit(absl::ResourceExhaustedError(message)).message());
}

TEST(StatusTest, OverLimitMessagesNameTheirConfigKey) {
  EXPECT_EQ(Named("session has 4096 operations in flight"),
            "session has 4096 operations in flight (limits.max_inflight_per_session)");
  EXPECT_EQ(Named("the daemon serves the maximum of 2 sessions"),
            "the daemon serves the maximum of 2 sessions (limits.max_sessions)");
  EXPECT_EQ(Named("too many handles"), "too many handles (limits.max_handles_per_session)");
  EXPECT_EQ(Named("the queue is full (limits.pool_queue_depth)"),
            "the queue is full (limits.pool_queue_depth) (backends.thread_pool_queue)");
}

TEST(StatusTest, AMessageThatNamesItsKeyAlreadyIsKept) {
  const std::string m = "at limits.max_sessions: 3 sessions";
  EXPECT_EQ(Named(m), m);
  // Even when it mentions what another key's message would (sessions).
  const std::string share = "1024 wait, all sessions (limits.max_pool_queued_per_session)";
  EXPECT_EQ(Named(share), share);
}

TEST(StatusTest, OtherStatusesPassUnchanged) {
  EXPECT_EQ(Named("the moon is full"), "the moon is full");
  const absl::Status not_found = absl::NotFoundError("no sessions here");
  EXPECT_EQ(NameLimit(not_found), not_found);
}

TEST(StatusTest, GrpcSeesTheSameCodeAndMessage) {
  const grpc::Status s = ToGrpcStatus(absl::PermissionDeniedError("not yours"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(s.error_message(), "not yours");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(StatusTest, DrainingIsUnavailable) {
  EXPECT_EQ(Draining().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace asyncd::daemon
