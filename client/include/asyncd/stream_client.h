#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
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

/// What StreamClient::Submit does when the window of outstanding operations
/// (StreamOptions::max_outstanding) has no room for the call's operations.
enum class WhenFull {
  /// Block the calling thread until there is room (the default). Never used
  /// on a thread that is running a StreamClient callback: there Submit
  /// behaves as kFailFast, because blocking the thread that delivers
  /// completions would deadlock.
  kBlock,
  /// Return RESOURCE_EXHAUSTED at once; nothing is submitted.
  kFailFast,
};

struct StreamOptions {
  /// Upper bound on operations submitted on this stream whose completion has
  /// not been delivered yet (the flow-control window). 0 = the daemon's
  /// max_inflight_per_session; larger values are lowered to it, so a stream
  /// that owns its session never sees RESOURCE_EXHAUSTED rejections from the
  /// in-flight limit.
  size_t max_outstanding = 0;
  WhenFull when_full = WhenFull::kBlock;
  /// Only when attaching to an existing session: replaces its lease length
  /// (StreamOpen.lease_ms); 0 = keep it.
  uint32_t lease_ms = 0;
  /// Merge ops of several Submit calls queued behind an in-flight write into
  /// one SubmitBatch (up to max_batch_ops). Off: each Submit call is sent as
  /// its own SubmitBatch(es), e.g. to measure a given batch size.
  bool coalesce = true;
  /// How long Create waits for StreamOpened; also the most a resume
  /// attempt waits for it.
  std::chrono::milliseconds open_timeout{10000};
  /// Set: the stream survives a live restart of the daemon
  /// (StreamOpen.resumable). When it ends UNAVAILABLE (or CANCELLED by a
  /// daemon shutting down, not by this client), the library opens it
  /// again on the same session, as the policy says (by default for up to
  /// 30 s, waiting 10 ms doubling to 1 s between attempts), and the
  /// application sees a delay, not an error: see "Resuming" in StreamClient.
  /// Unset (the default): the stream ends with its first error.
  std::optional<RetryPolicy> resume = std::nullopt;
};

/// Asynchronous, batched submission over the bidirectional Stream RPC.
///
/// Threading. All methods are thread-safe. The stream runs on gRPC's callback
/// API (one grpc::ClientBidiReactor per RPC, no thread of its own; a resuming
/// stream waits between its attempts on a grpc::Alarm). Callbacks
/// (CompletionCallback, AcceptedCallback) run on a gRPC callback thread -- "the
/// reader thread" -- one at a time per StreamClient, in the order messages
/// arrive, with no library lock held. They must be quick and must not block:
/// while one runs, no further completions of this stream are read. They may
/// call Submit / SubmitOne / Cancel on any StreamClient (Submit then never
/// blocks: see WhenFull). Finish called there returns FAILED_PRECONDITION,
/// and destroying a StreamClient there does not wait (see ~StreamClient).
/// Exceptions thrown by callbacks are caught and logged. While a stream
/// resumes, its callbacks stop until the next daemon answers; they then run
/// on that RPC's callback thread, in the same order guarantees.
///
/// Tags. The library owns Operation.tag on the wire: Submit overwrites each
/// op's tag with its own (to match Accepted and Completion messages to
/// callbacks) and restores the caller's tag in the Completion handed to the
/// callback, and in AcceptedOp. Caller tags need not be unique. Likewise the
/// library owns CancelRequest.request_tag and restores the caller's. So an
/// operator listing the stream's ops (OperationInfo.tag) sees the library's
/// tag, not the caller's; correlate by op id (AcceptedOp::op_id) instead.
///
/// Flow control. At most max_outstanding operations are outstanding (sent or
/// queued, completion not yet delivered). Submit blocks or fails (WhenFull)
/// rather than buffer more, so memory is bounded by the window and the
/// daemon's stream buffer is never overrun. Operations queued while a write is
/// in flight are coalesced into one SubmitBatch (up to the daemon's
/// max_batch_ops; see StreamOptions::coalesce); a Submit larger than
/// max_batch_ops is split.
///
/// Delivery guarantee. When Submit returns OK, on_completion is called exactly
/// once for every op of the call, and on_accepted (if set) once for every op
/// before its completion; nothing is called for a Submit that returned an
/// error. If the stream ends before an op's completion arrives, the library
/// synthesizes it: outcome REJECTED if the op was never written (nothing
/// happened), else OUTCOME_UNSPECIFIED (this client cannot know the real
/// outcome; the daemon cancels such ops with end_reason RPC_CANCELLED unless
/// they are past their cancel point -- ask GetOperation/ListHistory by op_id);
/// status_code and message then carry the stream's final status. Such
/// synthesized completions are delivered from whichever thread saw the end
/// (a gRPC thread, or the submitting thread when a blocked Submit is cut
/// short). A resuming stream has not ended: see below.
///
/// Resuming (StreamOptions::resume). The stream is opened resumable: the
/// daemon numbers its `accepted` and `completions` messages (seq) and keeps
/// each until the library acknowledges it. The library acknowledges what it
/// has received and delivered whenever it has nothing else to write, and at
/// the latest after max_inflight_per_session / 4 completions (the daemon
/// asks for every half of it). When the stream ends UNAVAILABLE (a live
/// restart ends it so, with its operations carried over to the next
/// daemon), or CANCELLED without this client asking (the stopping daemon's
/// gRPC server cut it short), the library waits its backoff and opens a new
/// Stream RPC with
/// {session_id, resumable, resume_after = the last seq received}, again
/// until the policy's budget has passed. Meanwhile Submit and Cancel queue
/// as usual (Submit blocks only for room in the window, which the pending
/// completions still hold) and nothing is synthesized: outstanding ops get
/// their real completions from the next daemon, late. A message the client
/// already had (seq not above the last received) is dropped, so each
/// completion and each accepted op reaches its callback exactly once.
/// Batches written whose `accepted` was not received before the replay
/// ended were never read by the daemon: the library sends them again, same
/// ops, same library tags (it marks the replay's end by an empty batch,
/// whose `accepted` follows every replayed message); likewise cancels that
/// got no answer. Only when resuming gives up (the budget has passed, or the
/// daemon answers the resume with an error other than UNAVAILABLE, e.g.
/// FAILED_PRECONDITION / NOT_FOUND / PERMISSION_DENIED) does the stream
/// end, with that status, synthesizing as above. A stream that breaks for
/// any other reason than a restart (the daemon still running) cannot resume:
/// the daemon keeps nothing for it, and the resume is refused.
/// Only the first daemon's limits() count: the window is not resized.
class StreamClient {
 public:
  /// Called once per op with its Completion (tag restored to the caller's).
  /// The Completion is only valid during the call.
  using CompletionCallback = std::function<void(const v1::Completion&)>;
  struct AcceptedOp {
    /// Position of the op in the vector given to Submit.
    size_t index;
    /// The caller's Operation.tag.
    uint64_t tag;
    /// The daemon's id for the op, usable in Cancel at once; 0 if the op was
    /// rejected (its REJECTED completion follows).
    uint64_t op_id;
  };
  using AcceptedCallback = std::function<void(const AcceptedOp&)>;

  /// Opens the stream: sends StreamOpen{session_id, client_name} and blocks
  /// until StreamOpened arrives (or options.open_timeout passes:
  /// DEADLINE_EXCEEDED). session_id 0 creates a session bound to the stream
  /// (it ends with the stream); otherwise attaches to that session.
  /// Errors: the stream's gRPC status (UNAVAILABLE if no daemon listens,
  /// NOT_FOUND / PERMISSION_DENIED / FAILED_PRECONDITION for the session,...).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<StreamClient>> Create(
      std::shared_ptr<grpc::Channel> channel, std::string_view client_name,
      uint64_t session_id = 0, StreamOptions options = {});

  /// Cancels the RPC if Finish has not completed (the daemon then cancels the
  /// stream's ops, RPC_CANCELLED), delivers synthesized completions for what
  /// is still outstanding, and waits for the stream to end. Blocks. After it
  /// returns no callback of this client runs.
  ///
  /// On a thread running a StreamClient callback (this client's or another's)
  /// it cannot wait, since the end may need that very thread: there it
  /// cancels the RPC and returns at once. The delivery guarantee still holds,
  /// so callbacks for what was outstanding run after it has returned (from a
  /// gRPC thread): whatever they use must outlive the stream. The library
  /// frees the stream's state once it has ended, on a thread of its own.
  ~StreamClient();

  StreamClient(const StreamClient&) = delete;
  StreamClient& operator=(const StreamClient&) = delete;

  /// From StreamOpened; fixed for the stream's life.
  uint64_t session_id() const;
  /// 0 for a session bound to this stream.
  uint32_t lease_ms() const;
  const v1::Limits& limits() const;
  /// The flow-control window in effect (see StreamOptions::max_outstanding).
  size_t max_outstanding() const;
  /// Ops submitted whose completion has not been delivered yet.
  size_t outstanding() const;
  /// How many times the stream has resumed (StreamOptions::resume): RPCs
  /// the daemon opened after the first.
  size_t resumes() const;

  /// Submits `ops` (moved from) and calls `on_completion` once per op as its
  /// completion arrives; `on_accepted`, if set, once per op when the daemon
  /// has accepted (op_id != 0) or rejected (op_id 0) it.
  /// Blocks while the window is full (WhenFull::kBlock, not on a callback
  /// thread), waiting for room for the whole call (or for max_outstanding ops
  /// at a time when the call is larger than the window); does not wait for
  /// the network. Errors (nothing submitted, no callback): INVALID_ARGUMENT
  /// (no on_completion); RESOURCE_EXHAUSTED (window full and not blocking, or
  /// kFailFast and ops.size() > max_outstanding()); FAILED_PRECONDITION
  /// (Finish called); the stream's final status if it has ended.
  [[nodiscard]] absl::Status Submit(std::vector<v1::Operation> ops,
                                    CompletionCallback on_completion,
                                    AcceptedCallback on_accepted = nullptr);

  /// Submit of one op; the future always becomes ready with a Completion
  /// (if Submit fails, at once, with a synthesized REJECTED one carrying the
  /// error's code and message). Never throws.
  [[nodiscard]] std::future<v1::Completion> SubmitOne(v1::Operation op);

  /// Sends a cancel over the stream; the future becomes ready with the
  /// daemon's CancelResponse (caller's request_tag restored), or with an
  /// error if the stream ended first. (StatusOr rather than a bare
  /// CancelResponse so that failure needs no exception.) Cancels queue behind
  /// unsent submits (see the proto); to cancel from elsewhere use
  /// Client::Cancel.
  [[nodiscard]] std::future<absl::StatusOr<v1::CancelResponse>> Cancel(v1::CancelRequest request);

  /// Half-closes the stream once everything queued has been written, waits
  /// until every outstanding completion has been delivered and the stream has
  /// ended, and returns its final status (OK after a clean end; a session the
  /// stream created ends). Blocks. Idempotent: later calls return the same
  /// status. Returns FAILED_PRECONDITION without waiting when called from a
  /// callback.
  [[nodiscard]] absl::Status Finish();

  class Reactor;  // internal

 private:
  explicit StreamClient(std::shared_ptr<Reactor> reactor);
  std::shared_ptr<Reactor> reactor_;
};

}  // namespace asyncd::client
