#include "asyncd/unary_client.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <thread>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/lib/string_compat.h"

namespace asyncd::client {
namespace {

using internal::ToAbsl;

constexpr uint32_t kMaxPageSize = 1000;

std::string HandleName(uint32_t handle) { return absl::StrCat("h:", handle); }

// The daemon refused the call because it is draining (daemon/status.cc's
// Draining()): nothing ran.
bool RefusedWhileDraining(const absl::Status& status) {
  return absl::StrContains(status.message(), "draining");
}

// gRPC had no connection to send the call on (the daemon's socket refused or
// was missing): nothing was sent. A connection lost mid-call says otherwise
// ("Socket closed", ...).
bool NeverSent(const absl::Status& status) {
  return absl::StartsWith(status.message(), "failed to connect to all addresses");
}

// The op as it runs again after a restart cancelled it, `completion` saying
// how long it had been accepted: its deadline and a Timeout's duration are
// lowered by that, as the daemon does for what it runs again itself.
v1::Operation AfterRestart(const v1::Operation& op, const v1::Completion& completion) {
  v1::Operation again = op;
  const uint64_t ran_us = completion.duration_us();
  if (again.deadline_ms() != 0) {
    const uint64_t ran_ms = (ran_us + 999) / 1000;
    // One that has passed gets 1 ms: it times out, it does not lose its deadline.
    again.set_deadline_ms(
        static_cast<uint32_t>(again.deadline_ms() > ran_ms ? again.deadline_ms() - ran_ms : 1));
  }
  if (again.has_timeout()) {
    const uint64_t duration = again.timeout().duration_us();
    again.mutable_timeout()->set_duration_us(duration > ran_us ? duration - ran_us : 0);
  }
  return again;
}

}  // namespace

// Decides, for one call, whether another attempt follows a failure, and
// waits its backoff (ClientOptions::retry; see "Retries" in the header).
class Client::Retrier {
 public:
  Retrier(const std::optional<RetryPolicy>& policy, const std::optional<Deadline>& deadline,
          CallCanceller* canceller, grpc::Channel* channel)
      : policy_(policy), deadline_(deadline), canceller_(canceller), channel_(channel) {}

  // After a failed attempt: whether to make another (after waiting). A
  // canceller cancelled while waiting also says yes: the next attempt then
  // fails CANCELLED before it is sent.
  [[nodiscard]] bool Again(const absl::Status& status, Repeat repeat) {
    if (status.code() != absl::StatusCode::kUnavailable) return false;
    switch (repeat) {
      case Repeat::kNever:
        return false;
      case Repeat::kIfNotRun:
        if (!RefusedWhileDraining(status) && !NeverSent(status)) return false;
        break;
      case Repeat::kAlways:
        break;
    }
    return Wait();
  }

  // After a Submit answered: whether to submit the op again, since a
  // restart cancelled it before it did anything (a Close let go of its
  // handle first: not it).
  [[nodiscard]] bool Again(const v1::Completion& completion) {
    if (completion.outcome() != v1::OUTCOME_CANCELLED ||
        completion.end_reason() != v1::END_REASON_RESTART || completion.bytes_done() != 0 ||
        completion.kind() == v1::OP_KIND_CLOSE) {
      return false;
    }
    return Wait();
  }

 private:
  bool Wait() {
    if (!policy_.has_value()) return false;
    const auto now = std::chrono::steady_clock::now();
    if (!give_up_at_.has_value()) {
      give_up_at_ = now + policy_->budget;
      backoff_ = policy_->initial_backoff;
    }
    if (now >= *give_up_at_) return false;
    const std::chrono::steady_clock::duration wait =
        std::min<std::chrono::steady_clock::duration>(backoff_, *give_up_at_ - now);
    // An attempt that would start past the call's deadline is not made.
    if (deadline_.has_value() && std::chrono::system_clock::now() + wait >= *deadline_) {
      return false;
    }
    backoff_ = std::min(backoff_ * 2, policy_->max_backoff);
    if (canceller_ != nullptr) {
      if (!canceller_->SleepFor(wait)) return true;
    } else {
      std::this_thread::sleep_for(wait);
    }
    // gRPC waits up to its own reconnect backoff (1 s, growing) before trying
    // the socket again: the policy's backoff governs instead.
    grpc::experimental::ChannelResetConnectionBackoff(channel_);
    return true;
  }

  const std::optional<RetryPolicy>& policy_;
  const std::optional<Deadline>& deadline_;
  CallCanceller* const canceller_;
  grpc::Channel* const channel_;
  std::optional<std::chrono::steady_clock::time_point> give_up_at_;
  std::chrono::milliseconds backoff_{0};
};

void CallCanceller::Cancel() {
  std::lock_guard lock(mu_);
  cancelled_ = true;
  for (grpc::ClientContext* context : contexts_) context->TryCancel();
  cancelled_cv_.notify_all();
}

bool CallCanceller::cancelled() const {
  std::lock_guard lock(mu_);
  return cancelled_;
}

bool CallCanceller::Bind(grpc::ClientContext* context) {
  std::lock_guard lock(mu_);
  if (cancelled_) return false;
  contexts_.push_back(context);
  return true;
}

void CallCanceller::Unbind(grpc::ClientContext* context) {
  std::lock_guard lock(mu_);
  contexts_.erase(std::remove(contexts_.begin(), contexts_.end(), context), contexts_.end());
}

bool CallCanceller::SleepFor(std::chrono::steady_clock::duration wait) {
  std::unique_lock lock(mu_);
  return !cancelled_cv_.wait_for(lock, wait, [&] { return cancelled_; });
}

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : channel_(std::move(channel)), stub_(v1::Asyncd::NewStub(channel_)), options_(options) {}

std::optional<Deadline> Client::DeadlineFor(const CallOptions& options, CallKind kind) const {
  if (options.deadline.has_value()) return options.deadline;
  if (kind == CallKind::kUnary && options_.default_timeout.count() > 0) {
    return std::chrono::system_clock::now() + options_.default_timeout + options.extra_time;
  }
  return std::nullopt;
}

bool Client::Prepare(grpc::ClientContext& context, const std::optional<Deadline>& deadline,
                     const CallOptions& options) {
  if (deadline.has_value()) context.set_deadline(*deadline);
  return options.canceller == nullptr || options.canceller->Bind(&context);
}

void Client::Unbind(grpc::ClientContext& context, const CallOptions& options) {
  if (options.canceller != nullptr) options.canceller->Unbind(&context);
}

template <typename Request, typename Response>
absl::Status Client::Call(grpc::Status (v1::Asyncd::Stub::*method)(grpc::ClientContext*,
                                                                   const Request&, Response*),
                          const Request& request, Response* response, const CallOptions& options,
                          Repeat repeat, Retrier* retrier) {
  const std::optional<Deadline> deadline = DeadlineFor(options);
  std::optional<Retrier> own;
  if (retrier == nullptr)
    retrier = &own.emplace(options_.retry, deadline, options.canceller, channel_.get());
  for (;;) {
    grpc::ClientContext context;
    if (!Prepare(context, deadline, options))
      return absl::CancelledError("cancelled before the call");
    absl::Status status;
    {
      absl::Cleanup unbind = [&] { Unbind(context, options); };
      status = ToAbslStatus((stub_.get()->*method)(&context, request, response));
    }
    if (status.ok() || !retrier->Again(status, repeat)) return status;
  }
}

absl::StatusOr<uint64_t> Client::OpenSession(std::string_view client_name, uint32_t lease_ms,
                                             v1::OpenSessionResponse* response) {
  v1::OpenSessionRequest request;
  request.set_client_name(std::string(client_name));
  request.set_lease_ms(lease_ms);
  v1::OpenSessionResponse local;
  v1::OpenSessionResponse& out = response != nullptr ? *response : local;
  if (absl::Status s = Call(&v1::Asyncd::Stub::OpenSession, request, &out); !s.ok()) {
    return s;
  }
  return out.session_id();
}

absl::StatusOr<uint32_t> Client::KeepAlive(uint64_t session_id) {
  v1::KeepAliveRequest request;
  request.set_session_id(session_id);
  v1::KeepAliveResponse response;
  if (absl::Status s = Call(&v1::Asyncd::Stub::KeepAlive, request, &response, {}, Repeat::kAlways);
      !s.ok()) {
    return s;
  }
  return response.lease_ms();
}

absl::StatusOr<v1::CancelCounts> Client::CloseSession(uint64_t session_id) {
  v1::CloseSessionRequest request;
  request.set_session_id(session_id);
  v1::CloseSessionResponse response;
  if (absl::Status s = Call(&v1::Asyncd::Stub::CloseSession, request, &response); !s.ok()) {
    return s;
  }
  return std::move(*response.mutable_counts());
}

absl::StatusOr<v1::Completion> Client::Submit(uint64_t session_id, const v1::Operation& op,
                                              std::optional<Deadline> deadline) {
  return Submit(session_id, op, CallOptions{.deadline = deadline});
}

absl::StatusOr<v1::Completion> Client::Submit(uint64_t session_id, const v1::Operation& op,
                                              const CallOptions& options) {
  v1::SubmitRequest request;
  request.set_session_id(session_id);
  *request.mutable_op() = op;
  // The call's deadline, fixed here: a submission repeated after a restart
  // keeps it.
  CallOptions fixed = options;
  fixed.deadline = DeadlineFor(options);
  Retrier retrier(options_.retry, fixed.deadline, options.canceller, channel_.get());
  for (;;) {
    v1::Completion completion;
    if (absl::Status s = Call(&v1::Asyncd::Stub::Submit, request, &completion, fixed,
                              Repeat::kIfNotRun, &retrier);
        !s.ok()) {
      return s;
    }
    if (!retrier.Again(completion)) return completion;
    *request.mutable_op() = AfterRestart(request.op(), completion);
  }
}

absl::StatusOr<uint32_t> Client::Open(uint64_t session_id, std::string_view path,
                                      v1::OpenMode access, const OpenOptions& options) {
  v1::Operation op;
  v1::Open* open = op.mutable_open();
  open->set_path(std::string(path));
  open->set_access(access);
  open->set_create(options.create);
  open->set_exclusive(options.exclusive);
  open->set_truncate(options.truncate);
  open->set_append(options.append);
  open->set_directory(options.directory);
  open->set_nonblock(options.nonblock);
  open->set_no_follow(options.no_follow);
  if (options.mode.has_value()) open->set_mode(*options.mode);
  absl::StatusOr<v1::Completion> c = Submit(session_id, op);
  if (!c.ok()) return c.status();
  if (absl::Status s = CompletionToStatus(*c, absl::StrCat("open ", ToAbsl(path))); !s.ok()) return s;
  return c->handle();
}

absl::StatusOr<std::string> Client::Read(uint64_t session_id, uint32_t handle, int64_t offset,
                                         uint32_t length) {
  v1::Operation op;
  v1::Read* read = op.mutable_read();
  read->set_handle(handle);
  read->set_offset(offset);
  read->set_length(length);
  absl::StatusOr<v1::Completion> c = Submit(session_id, op);
  if (!c.ok()) return c.status();
  if (absl::Status s = CompletionToStatus(*c, absl::StrCat("read ", HandleName(handle)));
      !s.ok()) {
    return s;
  }
  return std::move(*c->mutable_data());
}

absl::StatusOr<uint64_t> Client::Write(uint64_t session_id, uint32_t handle, int64_t offset,
                                       std::string_view data) {
  v1::Operation op;
  v1::Write* write = op.mutable_write();
  write->set_handle(handle);
  write->set_offset(offset);
  write->set_data(std::string(data));
  absl::StatusOr<v1::Completion> c = Submit(session_id, op);
  if (!c.ok()) return c.status();
  if (absl::Status s = CompletionToStatus(*c, absl::StrCat("write ", HandleName(handle)));
      !s.ok()) {
    return s;
  }
  return c->bytes_done();
}

absl::Status Client::Close(uint64_t session_id, uint32_t handle) {
  v1::Operation op;
  op.mutable_close()->set_handle(handle);
  absl::StatusOr<v1::Completion> c = Submit(session_id, op);
  if (!c.ok()) return c.status();
  return CompletionToStatus(*c, absl::StrCat("close ", HandleName(handle)));
}

absl::StatusOr<v1::Stat> Client::Stat(uint64_t session_id, uint32_t handle) {
  v1::Operation op;
  op.mutable_statx()->set_handle(handle);
  absl::StatusOr<v1::Completion> c = Submit(session_id, op);
  if (!c.ok()) return c.status();
  if (absl::Status s = CompletionToStatus(*c, absl::StrCat("statx ", HandleName(handle)));
      !s.ok()) {
    return s;
  }
  return std::move(*c->mutable_stat());
}

absl::StatusOr<v1::Stat> Client::StatPath(uint64_t session_id, std::string_view path) {
  v1::Operation op;
  op.mutable_statx()->set_path(std::string(path));
  absl::StatusOr<v1::Completion> c = Submit(session_id, op);
  if (!c.ok()) return c.status();
  if (absl::Status s = CompletionToStatus(*c, absl::StrCat("statx ", ToAbsl(path))); !s.ok()) return s;
  return std::move(*c->mutable_stat());
}

absl::StatusOr<v1::CancelResponse> Client::Cancel(uint64_t op_id) {
  v1::CancelRequest request;
  request.set_op_id(op_id);
  v1::CancelResponse response;
  if (absl::Status s = Call(&v1::Asyncd::Stub::Cancel, request, &response); !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<v1::CancelResponse> Client::Cancel(const v1::OpSelector& selector) {
  v1::CancelRequest request;
  *request.mutable_selector() = selector;
  v1::CancelResponse response;
  if (absl::Status s = Call(&v1::Asyncd::Stub::Cancel, request, &response); !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<v1::ListOperationsResponse> Client::ListOperations(const v1::OpSelector& filter,
                                                                  uint32_t page_size,
                                                                  std::string_view page_token,
                                                                  Timeline timeline) {
  v1::ListOperationsRequest request;
  *request.mutable_filter() = filter;
  request.set_page_size(page_size);
  request.set_page_token(std::string(page_token));
  request.set_include_timeline(timeline == Timeline::kInclude);
  v1::ListOperationsResponse response;
  if (absl::Status s =
          Call(&v1::Asyncd::Stub::ListOperations, request, &response, {}, Repeat::kAlways);
      !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<v1::ListOperationsResponse> Client::ListAllPages(const v1::OpSelector& filter,
                                                                size_t max_ops, Timeline timeline) {
  v1::ListOperationsResponse all;
  auto full = [&] { return max_ops != 0 && static_cast<size_t>(all.ops_size()) >= max_ops; };
  std::string token;
  for (bool first = true;; first = false) {
    const size_t wanted = max_ops == 0 ? kMaxPageSize : max_ops - all.ops_size();
    absl::StatusOr<v1::ListOperationsResponse> page = ListOperations(
        filter, static_cast<uint32_t>(std::min<size_t>(kMaxPageSize, wanted)), token, timeline);
    if (!page.ok()) return page.status();
    if (first) all.set_total_matched(page->total_matched());
    for (v1::OperationInfo& op : *page->mutable_ops()) {
      if (full()) break;
      *all.add_ops() = std::move(op);
    }
    // A token that does not advance would loop forever; treat it as the end.
    if (full() || page->next_page_token().empty() || page->next_page_token() == token) break;
    token = std::move(*page->mutable_next_page_token());
  }
  return all;
}

absl::StatusOr<std::vector<v1::OperationInfo>> Client::ListAll(const v1::OpSelector& filter,
                                                               Timeline timeline, size_t max_ops) {
  absl::StatusOr<v1::ListOperationsResponse> all = ListAllPages(filter, max_ops, timeline);
  if (!all.ok()) return all.status();
  return std::vector<v1::OperationInfo>(std::make_move_iterator(all->mutable_ops()->begin()),
                                        std::make_move_iterator(all->mutable_ops()->end()));
}

absl::StatusOr<v1::OperationInfo> Client::GetOperation(uint64_t op_id) {
  v1::GetOperationRequest request;
  request.set_op_id(op_id);
  v1::OperationInfo response;
  if (absl::Status s =
          Call(&v1::Asyncd::Stub::GetOperation, request, &response, {}, Repeat::kAlways);
      !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<std::vector<v1::OperationInfo>> Client::ListHistory(const v1::OpSelector& filter,
                                                                   uint32_t limit,
                                                                   HistoryOrder order,
                                                                   Timeline timeline) {
  v1::ListHistoryRequest request;
  *request.mutable_filter() = filter;
  request.set_limit(limit);
  request.set_slowest(order == HistoryOrder::kSlowestFirst);
  request.set_include_timeline(timeline == Timeline::kInclude);
  v1::ListHistoryResponse response;
  if (absl::Status s =
          Call(&v1::Asyncd::Stub::ListHistory, request, &response, {}, Repeat::kAlways);
      !s.ok()) {
    return s;
  }
  return std::vector<v1::OperationInfo>(std::make_move_iterator(response.mutable_ops()->begin()),
                                        std::make_move_iterator(response.mutable_ops()->end()));
}

absl::StatusOr<std::vector<v1::SessionInfo>> Client::ListSessions() {
  v1::ListSessionsRequest request;
  v1::ListSessionsResponse response;
  if (absl::Status s =
          Call(&v1::Asyncd::Stub::ListSessions, request, &response, {}, Repeat::kAlways);
      !s.ok()) {
    return s;
  }
  return std::vector<v1::SessionInfo>(
      std::make_move_iterator(response.mutable_sessions()->begin()),
      std::make_move_iterator(response.mutable_sessions()->end()));
}

absl::StatusOr<v1::Stats> Client::GetStats() {
  v1::GetStatsRequest request;
  v1::Stats response;
  if (absl::Status s = Call(&v1::Asyncd::Stub::GetStats, request, &response, {}, Repeat::kAlways);
      !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<v1::DrainResponse> Client::Drain(uint32_t grace_ms,
                                                std::optional<Deadline> deadline) {
  return Drain(grace_ms, CallOptions{.deadline = deadline});
}

absl::StatusOr<v1::DrainResponse> Client::Drain(uint32_t grace_ms, const CallOptions& options) {
  v1::DrainRequest request;
  request.set_grace_ms(grace_ms);
  v1::DrainResponse response;
  if (absl::Status s = Call(&v1::Asyncd::Stub::Drain, request, &response, options, Repeat::kNever);
      !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<::asyncd::state::v1::Checkpoint> Client::GetCheckpoint() {
  // The format this library reads (daemon/checkpoint.h's kCheckpointFormat).
  constexpr uint32_t kFormat = 1;
  v1::GetCheckpointRequest request;
  v1::GetCheckpointResponse response;
  if (absl::Status s =
          Call(&v1::Asyncd::Stub::GetCheckpoint, request, &response, {}, Repeat::kAlways);
      !s.ok()) {
    return s;
  }
  ::asyncd::state::v1::Sealed sealed;
  ::asyncd::state::v1::Checkpoint checkpoint;
  if (!sealed.ParseFromString(response.checkpoint())) {
    return absl::DataLossError("the daemon's checkpoint does not decode");
  }
  if (sealed.format() > kFormat) {
    return absl::FailedPreconditionError(absl::StrCat("the daemon's checkpoint format ",
                                                      sealed.format(), " is newer than ",
                                                      kFormat, ", the newest this client reads"));
  }
  if (!checkpoint.ParseFromString(sealed.checkpoint())) {
    return absl::DataLossError("the daemon's checkpoint does not decode");
  }
  return checkpoint;
}

absl::Status Client::Watch(const v1::OpSelector& filter, const std::vector<v1::EventType>& types,
                           const std::function<WatchNext(const v1::WatchEvent&)>& on_event,
                           const CallOptions& options) {
  v1::WatchRequest request;
  *request.mutable_filter() = filter;
  for (v1::EventType type : types) request.add_types(type);
  grpc::ClientContext context;
  if (!Prepare(context, DeadlineFor(options, CallKind::kStream), options)) {
    return absl::CancelledError("cancelled before the call");
  }
  absl::Cleanup unbind = [&] { Unbind(context, options); };
  std::unique_ptr<grpc::ClientReader<v1::WatchEvent>> reader = stub_->Watch(&context, request);
  v1::WatchEvent event;
  std::optional<absl::Status> ended_here;  // the handler stopped the watch
  while (!ended_here.has_value() && reader->Read(&event)) {
    try {
      if (on_event(event) == WatchNext::kStop) ended_here = absl::OkStatus();
    } catch (const std::exception& e) {
      ended_here = absl::InternalError(absl::StrCat("watch event handler threw: ", e.what()));
    } catch (...) {
      ended_here = absl::InternalError("watch event handler threw");
    }
  }
  // Finish waits for the stream to end: make it end now.
  if (ended_here.has_value()) context.TryCancel();
  grpc::Status status = reader->Finish();
  return ended_here.has_value() ? *ended_here : ToAbslStatus(status);
}

}  // namespace asyncd::client
