#include "src/core/op_types.h"

namespace asyncd::core {

std::string_view Name(OpKind kind) {
  switch (kind) {
    case OpKind::kNop: return "nop";
    case OpKind::kOpen: return "open";
    case OpKind::kClose: return "close";
    case OpKind::kRead: return "read";
    case OpKind::kWrite: return "write";
    case OpKind::kFsync: return "fsync";
    case OpKind::kFallocate: return "fallocate";
    case OpKind::kFtruncate: return "ftruncate";
    case OpKind::kStatx: return "statx";
    case OpKind::kUnlink: return "unlink";
    case OpKind::kRename: return "rename";
    case OpKind::kMkdir: return "mkdir";
    case OpKind::kPoll: return "poll";
    case OpKind::kTimeout: return "timeout";
  }
  return "unknown";
}

std::string_view Name(OpState state) {
  switch (state) {
    case OpState::kFree: return "free";
    case OpState::kQueued: return "queued";
    case OpState::kDispatched: return "dispatched";
    case OpState::kRunning: return "running";
    case OpState::kCompleted: return "completed";
    case OpState::kCancelled: return "cancelled";
    case OpState::kTimedOut: return "timed_out";
    case OpState::kFailed: return "failed";
  }
  return "unknown";
}

std::string_view Name(BackendKind backend) {
  switch (backend) {
    case BackendKind::kNone: return "none";
    case BackendKind::kIoUring: return "io_uring";
    case BackendKind::kThreadPool: return "thread_pool";
    case BackendKind::kInline: return "inline";
  }
  return "unknown";
}

std::string_view Name(EndReason reason) {
  switch (reason) {
    case EndReason::kNone: return "none";
    case EndReason::kClientRequest: return "client_request";
    case EndReason::kOperatorRequest: return "operator_request";
    case EndReason::kSessionClosed: return "session_closed";
    case EndReason::kRpcCancelled: return "rpc_cancelled";
    case EndReason::kDrain: return "drain";
    case EndReason::kDeadline: return "deadline";
    case EndReason::kRestart: return "restart";
  }
  return "unknown";
}

std::string_view Name(CancelResult result) {
  switch (result) {
    case CancelResult::kCancelled: return "cancelled";
    case CancelResult::kNotCancellable: return "not_cancellable";
    case CancelResult::kAlreadyDone: return "already_done";
    case CancelResult::kNotFound: return "not_found";
  }
  return "unknown";
}

}  // namespace asyncd::core
