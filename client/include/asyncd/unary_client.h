#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asyncd/connection.h"
#include "asyncd/state/v1/state.pb.h"
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
  /// one only when none is given. Watch never uses it.
  std::chrono::microseconds default_timeout{0};
  /// Set: a call that failed only because the daemon is restarting is tried
  /// again, as the policy says (by default for up to 30 s, waiting 10 ms
  /// doubling to 1 s), within the call's deadline; see "Retries" in Client.
  /// Unset (the default): every failure is returned at once.
  std::optional<RetryPolicy> retry = std::nullopt;
};

/// Lets one thread end Client calls that block another, e.g. on Ctrl-C (as
/// cancelling a Go context ends the calls made with it). Give it to calls in
/// CallOptions::canceller. Thread-safe; must outlive the calls given it.
class CallCanceller {
 public:
  CallCanceller() = default;
  CallCanceller(const CallCanceller&) = delete;
  CallCanceller& operator=(const CallCanceller&) = delete;

  /// Ends every call running with this canceller: each returns CANCELLED
  /// (the daemon cancels a submitted operation, end_reason RPC_CANCELLED).
  /// Calls given it later fail CANCELLED without being sent. Never blocks on
  /// the calls; callable from any thread, any number of times.
  void Cancel();
  /// Whether Cancel has been called.
  [[nodiscard]] bool cancelled() const;

 private:
  friend class Client;
  // Registers a call's context until Unbind; false (nothing registered) if
  // Cancel has already run.
  [[nodiscard]] bool Bind(grpc::ClientContext* context);
  void Unbind(grpc::ClientContext* context);
  // Waits `wait` (a retry's backoff) or until Cancel; false if cancelled.
  [[nodiscard]] bool SleepFor(std::chrono::steady_clock::duration wait);

  mutable std::mutex mu_;
  std::condition_variable cancelled_cv_;
  bool cancelled_ = false;
  std::vector<grpc::ClientContext*> contexts_;  // calls running now
};

/// Per-call settings of the Client methods that take them (Submit, Drain,
/// Watch).
struct CallOptions {
  /// The call's gRPC deadline. Unset: now + ClientOptions::default_timeout +
  /// extra_time, or none if default_timeout is 0 (Watch: none).
  std::optional<Deadline> deadline = std::nullopt;
  /// How long the call takes by design, on top of the default timeout: a
  /// drain's grace, a submitted timeout's duration, an operation's own
  /// deadline. Ignored when `deadline` is set.
  std::chrono::microseconds extra_time{0};
  /// If set, canceller->Cancel() ends the call. Borrowed for the call.
  CallCanceller* canceller = nullptr;
};

/// What a Watch handler asks for after an event.
enum class WatchNext { kContinue, kStop };

/// grpc.health.v1 serving status (HealthCheckResponse.ServingStatus).
enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };

/// "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN".
[[nodiscard]] std::string_view HealthStatusName(HealthStatus status);

/// A synchronous client over the unary RPCs of asyncd.v1.Asyncd, Watch, and
/// the standard gRPC health check.
///
/// Thread-safe: any number of threads may call any method concurrently (each
/// call is an independent RPC on the shared channel). Every method blocks the
/// calling thread until the daemon answers or the deadline passes. Nothing
/// throws: errors are absl::Status values carrying the gRPC code and message
/// (see asyncd.proto for what each RPC returns); a syscall that ran and failed
/// is not an error at this level (Submit returns its Completion), but the
/// convenience helpers (Open, Read, Write, Close, Stat) turn it into a status
/// with CompletionToStatus().
///
/// Retries (ClientOptions::retry). A live restart of the daemon (systemctl
/// restart, a package upgrade) keeps its sessions and handles, but for a
/// moment calls fail: the stopping daemon refuses them UNAVAILABLE
/// ("draining"), then no daemon listens until the next one does. With a
/// retry policy such calls are made again, after a backoff, until they get
/// another answer, the policy's budget has passed, or the call's deadline
/// or canceller ends them; the caller sees a delay. Only what cannot have
/// run is repeated: an UNAVAILABLE that the daemon answered because it is
/// draining, or that gRPC reports as failing to connect (the call was never
/// sent). An UNAVAILABLE from a connection lost mid-call is repeated only
/// for calls that change nothing (KeepAlive, the listings, GetOperation,
/// GetStats, GetCheckpoint), since another call may have run.
/// Submit also repeats an operation whose Completion is CANCELLED with
/// end_reason RESTART and bytes_done 0: the restart cancelled it before it
/// did anything. One that had done something returns as it ended, and so
/// does a Close (it let go of its handle first). Drain,
/// Watch and CheckHealth are never repeated (a repeated drain would drain
/// the next daemon; a watch does not replay the events it missed; a health
/// check reports what it finds). The deadline
/// counts from the first attempt: a retry never extends it.
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
  /// Submit with a deadline computed from `options` (see CallOptions); a
  /// cancelled call cancels the operation (end_reason RPC_CANCELLED).
  [[nodiscard]] absl::StatusOr<v1::Completion> Submit(uint64_t session_id, const v1::Operation& op,
                                                      const CallOptions& options);

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
  /// Every page of ListOperations gathered into one response: the ops in the
  /// daemon's order, at most `max_ops` of them (0 = all); total_matched from
  /// the first page; next_page_token empty. Pages hold up to 1000 ops, and no
  /// more than `max_ops` needs; each page is one call with its own deadline.
  /// Not an atomic snapshot (see the proto). A page token that does not
  /// advance ends the listing.
  [[nodiscard]] absl::StatusOr<v1::ListOperationsResponse> ListAllPages(
      const v1::OpSelector& filter, size_t max_ops = 0, Timeline timeline = Timeline::kOmit);
  /// The ops of ListAllPages.
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
  /// Drain with a deadline computed from `options`: give the grace as
  /// extra_time so the call outlasts it. A cancelled call stops waiting; the
  /// drain goes on.
  [[nodiscard]] absl::StatusOr<v1::DrainResponse> Drain(uint32_t grace_ms,
                                                        const CallOptions& options);
  /// The checkpoint of the daemon's whole state (admin only), taken without
  /// stopping it, unsealed. FAILED_PRECONDITION when the daemon writes a
  /// format newer than this library reads; DATA_LOSS when it does not decode.
  [[nodiscard]] absl::StatusOr<::asyncd::state::v1::Checkpoint> GetCheckpoint();

  /// Streams the events of operations matching `filter` as they happen (no
  /// replay), only those of `types` (empty = all), calling `on_event` for
  /// each on the calling thread. Blocks until `on_event` returns kStop (then
  /// OK), the stream ends (its status: UNAVAILABLE when the daemon shuts
  /// down), `options.deadline` passes, or options.canceller is cancelled
  /// (CANCELLED). No deadline by default: default_timeout does not apply.
  /// A daemon that cannot be reached fails the call at once (UNAVAILABLE).
  /// While `on_event` runs no further event is read; an exception it throws
  /// ends the watch with INTERNAL.
  [[nodiscard]] absl::Status Watch(const v1::OpSelector& filter,
                                   const std::vector<v1::EventType>& types,
                                   const std::function<WatchNext(const v1::WatchEvent&)>& on_event,
                                   const CallOptions& options = {});

  /// grpc.health.v1.Health/Check of `service` ("" = the daemon as a whole,
  /// "asyncd.v1.Asyncd" = its API). The daemon turns NOT_SERVING while it
  /// drains. Blocks. Errors: the call's status (NOT_FOUND for a service the
  /// daemon does not know); INTERNAL for a malformed answer.
  [[nodiscard]] absl::StatusOr<HealthStatus> CheckHealth(std::string_view service = "");

  /// The underlying stub, for RPCs this class does not wrap.
  v1::Asyncd::Stub& stub() { return *stub_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  enum class CallKind {
    kUnary,   // default_timeout applies
    kStream,  // runs until stopped: only an explicit deadline applies
  };
  // Which UNAVAILABLE failures a call may be repeated after (see Retries).
  enum class Repeat {
    kIfNotRun,  // refused while draining, or never sent
    kAlways,    // changes nothing: any UNAVAILABLE
    kNever,
  };
  // The one place a call's deadline is chosen: once per call, whatever its
  // attempts.
  [[nodiscard]] std::optional<Deadline> DeadlineFor(const CallOptions& options,
                                                    CallKind kind = CallKind::kUnary) const;
  // Applies `deadline` to one attempt; also binds it to options.canceller
  // until Unbind. False: already cancelled, do not call.
  [[nodiscard]] static bool Prepare(grpc::ClientContext& context,
                                    const std::optional<Deadline>& deadline,
                                    const CallOptions& options);
  static void Unbind(grpc::ClientContext& context, const CallOptions& options);
  // Attempts of unary calls under ClientOptions::retry (unary_client.cc).
  class Retrier;
  // One unary RPC of the stub, attempted as `repeat` allows: what every
  // method shares (unary_client.cc). `retrier`: one shared with the caller's
  // own attempts (Submit's), else the call's own.
  template <typename Request, typename Response>
  absl::Status Call(grpc::Status (v1::Asyncd::Stub::*method)(grpc::ClientContext*, const Request&,
                                                             Response*),
                    const Request& request, Response* response, const CallOptions& options = {},
                    Repeat repeat = Repeat::kIfNotRun, Retrier* retrier = nullptr);

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Asyncd::Stub> stub_;
  ClientOptions options_;
};

}  // namespace asyncd::client
