// asyncctl exit codes: 0 ok, 1 the daemon answered with an error, 2 usage,
// 3 the daemon was not reached. An UNAVAILABLE over a live connection is the
// daemon speaking (draining), not a transport failure.

#include "client/ctl/exit_code.h"

#include <gtest/gtest.h>

namespace asyncd::ctl {
namespace {

TEST(ExitCodeTest, FixedValues) {
  EXPECT_EQ(ToInt(ExitCode::kOk), 0);
  EXPECT_EQ(ToInt(ExitCode::kOpError), 1);
  EXPECT_EQ(ToInt(ExitCode::kUsage), 2);
  EXPECT_EQ(ToInt(ExitCode::kUnreachable), 3);
}

TEST(ExitCodeTest, TransportFailuresAreUnreachable) {
  EXPECT_EQ(ExitCodeForRpc(grpc::StatusCode::UNAVAILABLE, Transport::kNotConnected),
            ExitCode::kUnreachable);
  EXPECT_EQ(ExitCodeForRpc(grpc::StatusCode::DEADLINE_EXCEEDED, Transport::kNotConnected),
            ExitCode::kUnreachable);
}

TEST(ExitCodeTest, DaemonAnswersAreOperationErrors) {
  // Draining: UNAVAILABLE answered over a connected channel.
  EXPECT_EQ(ExitCodeForRpc(grpc::StatusCode::UNAVAILABLE, Transport::kConnected),
            ExitCode::kOpError);
  EXPECT_EQ(ExitCodeForRpc(grpc::StatusCode::DEADLINE_EXCEEDED, Transport::kConnected),
            ExitCode::kOpError);
  for (grpc::StatusCode code :
       {grpc::StatusCode::NOT_FOUND, grpc::StatusCode::PERMISSION_DENIED,
        grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::FAILED_PRECONDITION,
        grpc::StatusCode::RESOURCE_EXHAUSTED, grpc::StatusCode::INTERNAL,
        grpc::StatusCode::UNIMPLEMENTED, grpc::StatusCode::CANCELLED}) {
    for (Transport t : {Transport::kConnected, Transport::kNotConnected}) {
      EXPECT_EQ(ExitCodeForRpc(code, t), ExitCode::kOpError) << StatusCodeName(code);
    }
  }
  EXPECT_EQ(ExitCodeForRpc(grpc::StatusCode::OK, Transport::kNotConnected), ExitCode::kOk);
}

TEST(ExitCodeTest, WorseOrdersBySeverity) {
  EXPECT_EQ(Worse(ExitCode::kOk, ExitCode::kOpError), ExitCode::kOpError);
  EXPECT_EQ(Worse(ExitCode::kUnreachable, ExitCode::kOpError), ExitCode::kUnreachable);
  EXPECT_EQ(Worse(ExitCode::kOpError, ExitCode::kOk), ExitCode::kOpError);
  EXPECT_EQ(Worse(ExitCode::kOk, ExitCode::kOk), ExitCode::kOk);
}

TEST(ExitCodeTest, StatusCodeNames) {
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::NOT_FOUND), "NOT_FOUND");
  EXPECT_EQ(StatusCodeName(grpc::StatusCode::UNAVAILABLE), "UNAVAILABLE");
}

TEST(ExitCodeTest, ReportIsOneLineOnStderr) {
  testing::internal::CaptureStderr();
  int code = Report({ExitCode::kUnreachable, "cannot reach asyncd\nat /x"});
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(code, 3);
  EXPECT_EQ(err, "asyncctl: cannot reach asyncd at /x\n");
}

}  // namespace
}  // namespace asyncd::ctl
