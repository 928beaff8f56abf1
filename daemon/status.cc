#include "daemon/status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace asyncd::daemon {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status NameLimit(absl::Status status) {
  if (status.code() != absl::StatusCode::kResourceExhausted) return status;
  const std::string m(status.message());
  const char* key = nullptr;
  if (m.find("limits.pool_queue_depth") != std::string::npos) {
    key = "backends.thread_pool_queue";  // the Limits field's config key
  } else if (m.find("limits.") != std::string::npos) {
    return status;  // names its limit already
  } else if (m.find("operations in flight") != std::string::npos) {
    key = "limits.max_inflight_per_session";
  } else if (m.find("sessions") != std::string::npos) {
    key = "limits.max_sessions";
  } else if (m.find("handles") != std::string::npos) {
    key = "limits.max_handles_per_session";
  }
  if (key == nullptr || m.find(key) != std::string::npos) return status;
  return absl::ResourceExhaustedError(absl::StrCat(m, " (", key, ")"));
}

absl::Status Draining() {
  return absl::UnavailableError("asyncd is draining: it accepts no new work; retry elsewhere");
}

}  // namespace asyncd::daemon
