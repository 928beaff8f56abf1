#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asyncd/connection.h"
#include "asyncd/v1/asyncd.grpc.pb.h"

namespace asyncd::client {

/// A point in time for a call's gRPC deadline.
using Deadline = std::chrono::system_clock::time_point;

/// Whether listings fill OperationInfo.timeline.
enum class Timeline { kOmit, kInclude };

/// ListHistory order.
enum class HistoryOrder { kMostRecentFirst, kSlowestFirst };

/// Flags of Client::Open (v1::Open's booleans, named at the call site:
/// `client.Open(s, "f", v1::OPEN_MODE_READ_WRITE, {.create = true})`).
struct OpenOptions {
  bool create = false;
  bool exclusive = false;
  bool truncate = false;
  bool append = false;
  bool directory = false;
  bool nonblock = false;
  bool no_follow = false;
  /// Permission bits for a created file; unset = the daemon's default (0644).
  std::optional<uint32_t> mode = std::nullopt;
};

struct ClientOptions {
  /// Deadline applied to every call that is not given one explicitly
  /// (0 = none). Submit and Drain take their own optional deadline and use this
  /// one only when none is given.
  std::chrono::milliseconds default_timeout{0};
};

/// A synchronous client over the unary RPCs of asyncd.v1.Asyncd.
///
/// Thread-safe: any number of threads may call any method concurrently (each
/// call is an independent RPC on the shared channel). Every method blocks the
/// calling thread until the daemon answers or the deadline passes. Nothing
/// throws: errors are absl::Status values carrying the gRPC code and message
/// (see asyncd.proto for what each RPC returns); a syscall that ran and failed
/// is not an error at this level (Submit returns its Completion), but the
/// convenience helpers (Open, Read, Write, Close, Stat) turn it into a status
/// with CompletionToStatus().
class Client {
 public:
  /// `channel` from Connect(); must not be null.
  explicit Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});

  /// Opens a session and returns its id. lease_ms 0 = the daemon's default.
  /// If `response` is not null it receives the full answer (lease, limits).
  [[nodiscard]] absl::StatusOr<uint64_t> OpenSession(std::string_view client_name,
                                                     uint32_t lease_ms = 0,
                                                     v1::OpenSessionResponse* response = nullptr);
  /// Renews the lease; returns the lease length (0 if a stream holds it).
  [[nodiscard]] absl::StatusOr<uint32_t> KeepAlive(uint64_t session_id);
  /// Ends the session; returns what happened to its in-flight operations.
  [[nodiscard]] absl::StatusOr<v1::CancelCounts> CloseSession(uint64_t session_id);

  /// Runs one operation and returns its terminal Completion (any outcome
  /// except REJECTED; refusals are errors). `deadline` becomes the call's
  /// gRPC deadline (the daemon then times the operation out).
  [[nodiscard]] absl::StatusOr<v1::Completion> Submit(uint64_t session_id,
                                                      const v1::Operation& op,
                                                      std::optional<Deadline> deadline = {});

  // Convenience helpers: one Submit each; a non-OK outcome or an errno becomes
  // the returned status (CompletionToStatus).

  /// Opens `path` (beneath the daemon root) and returns the new handle.
  [[nodiscard]] absl::StatusOr<uint32_t> Open(uint64_t session_id, std::string_view path,
                                              v1::OpenMode access, const OpenOptions& options = {});
  /// pread (offset -1 = current position); returns the bytes read (possibly
  /// fewer than `length`; empty at end of file).
  [[nodiscard]] absl::StatusOr<std::string> Read(uint64_t session_id, uint32_t handle,
                                                 int64_t offset, uint32_t length);
  /// pwrite (offset -1 = current position); returns the bytes written.
  [[nodiscard]] absl::StatusOr<uint64_t> Write(uint64_t session_id, uint32_t handle,
                                               int64_t offset, std::string_view data);
  [[nodiscard]] absl::Status Close(uint64_t session_id, uint32_t handle);
  [[nodiscard]] absl::StatusOr<v1::Stat> Stat(uint64_t session_id, uint32_t handle);
  [[nodiscard]] absl::StatusOr<v1::Stat> StatPath(uint64_t session_id, std::string_view path);

  /// Cancels one operation. An unknown id is not an error (result NOT_FOUND).
  [[nodiscard]] absl::StatusOr<v1::CancelResponse> Cancel(uint64_t op_id);
  /// Cancels every in-flight operation the selector matches (an empty
  /// selector needs all=true).
  [[nodiscard]] absl::StatusOr<v1::CancelResponse> Cancel(const v1::OpSelector& selector);

  /// One page of in-flight operations (page_size 0 = 100, max 1000).
  [[nodiscard]] absl::StatusOr<v1::ListOperationsResponse> ListOperations(
      const v1::OpSelector& filter, uint32_t page_size = 0, std::string_view page_token = "",
      Timeline timeline = Timeline::kOmit);
  /// All pages of ListOperations, concatenated (pages of 1000). Not an atomic
  /// snapshot (see the proto). Stops with the ops gathered so far at
  /// `max_ops` (0 = no limit).
  [[nodiscard]] absl::StatusOr<std::vector<v1::OperationInfo>> ListAll(
      const v1::OpSelector& filter, Timeline timeline = Timeline::kOmit, size_t max_ops = 0);
  [[nodiscard]] absl::StatusOr<v1::OperationInfo> GetOperation(uint64_t op_id);
  /// limit 0 = 100, max 1000.
  [[nodiscard]] absl::StatusOr<std::vector<v1::OperationInfo>> ListHistory(
      const v1::OpSelector& filter, uint32_t limit = 0,
      HistoryOrder order = HistoryOrder::kMostRecentFirst, Timeline timeline = Timeline::kOmit);
  [[nodiscard]] absl::StatusOr<std::vector<v1::SessionInfo>> ListSessions();
  [[nodiscard]] absl::StatusOr<v1::Stats> GetStats();
  /// Drains the daemon (admin only); blocks until every accepted operation
  /// has ended, or until `deadline` (the drain goes on).
  [[nodiscard]] absl::StatusOr<v1::DrainResponse> Drain(uint32_t grace_ms = 0,
                                                        std::optional<Deadline> deadline = {});

  /// The underlying stub, for RPCs this class does not wrap (e.g. Watch).
  v1::Asyncd::Stub& stub() { return *stub_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  // The one place a call's deadline is applied.
  void Prepare(grpc::ClientContext& context, std::optional<Deadline> deadline) const;
  // One unary RPC with the deadline applied in one place: what every method shares.
  template <typename Request, typename Response>
  absl::Status Call(grpc::Status (v1::Asyncd::Stub::*method)(grpc::ClientContext*, const Request&,
                                                             Response*),
                    const Request& request, Response* response,
                    std::optional<Deadline> deadline = {}) {
    grpc::ClientContext context;
    Prepare(context, deadline);
    return ToAbslStatus((stub_.get()->*method)(&context, request, response));
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Asyncd::Stub> stub_;
  ClientOptions options_;
};

}  // namespace asyncd::client
