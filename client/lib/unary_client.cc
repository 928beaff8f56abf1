#include "asyncd/unary_client.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "client/lib/string_compat.h"

namespace asyncd::client {
namespace {

using internal::ToAbsl;

constexpr uint32_t kMaxPageSize = 1000;

std::string HandleName(uint32_t handle) { return absl::StrCat("h:", handle); }

}  // namespace

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : channel_(std::move(channel)), stub_(v1::Asyncd::NewStub(channel_)), options_(options) {}

void Client::Prepare(grpc::ClientContext& context, std::optional<Deadline> deadline) const {
  if (deadline.has_value()) {
    context.set_deadline(*deadline);
  } else if (options_.default_timeout.count() > 0) {
    context.set_deadline(std::chrono::system_clock::now() + options_.default_timeout);
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
  if (absl::Status s = Call(&v1::Asyncd::Stub::KeepAlive, request, &response); !s.ok()) {
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
  v1::SubmitRequest request;
  request.set_session_id(session_id);
  *request.mutable_op() = op;
  v1::Completion completion;
  if (absl::Status s = Call(&v1::Asyncd::Stub::Submit, request, &completion, deadline); !s.ok()) {
    return s;
  }
  return completion;
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
  if (absl::Status s = Call(&v1::Asyncd::Stub::ListOperations, request, &response); !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<std::vector<v1::OperationInfo>> Client::ListAll(const v1::OpSelector& filter,
                                                               Timeline timeline,
                                                               size_t max_ops) {
  std::vector<v1::OperationInfo> all;
  std::string token;
  do {
    absl::StatusOr<v1::ListOperationsResponse> page =
        ListOperations(filter, kMaxPageSize, token, timeline);
    if (!page.ok()) return page.status();
    for (v1::OperationInfo& op : *page->mutable_ops()) {
      if (max_ops != 0 && all.size() >= max_ops) return all;
      all.push_back(std::move(op));
    }
    // A token that does not advance would loop forever; treat it as the end.
    if (page->next_page_token() == token) break;
    token = std::move(*page->mutable_next_page_token());
  } while (!token.empty());
  return all;
}

absl::StatusOr<v1::OperationInfo> Client::GetOperation(uint64_t op_id) {
  v1::GetOperationRequest request;
  request.set_op_id(op_id);
  v1::OperationInfo response;
  if (absl::Status s = Call(&v1::Asyncd::Stub::GetOperation, request, &response); !s.ok()) {
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
  if (absl::Status s = Call(&v1::Asyncd::Stub::ListHistory, request, &response); !s.ok()) {
    return s;
  }
  return std::vector<v1::OperationInfo>(std::make_move_iterator(response.mutable_ops()->begin()),
                                        std::make_move_iterator(response.mutable_ops()->end()));
}

absl::StatusOr<std::vector<v1::SessionInfo>> Client::ListSessions() {
  v1::ListSessionsRequest request;
  v1::ListSessionsResponse response;
  if (absl::Status s = Call(&v1::Asyncd::Stub::ListSessions, request, &response); !s.ok()) {
    return s;
  }
  return std::vector<v1::SessionInfo>(
      std::make_move_iterator(response.mutable_sessions()->begin()),
      std::make_move_iterator(response.mutable_sessions()->end()));
}

absl::StatusOr<v1::Stats> Client::GetStats() {
  v1::GetStatsRequest request;
  v1::Stats response;
  if (absl::Status s = Call(&v1::Asyncd::Stub::GetStats, request, &response); !s.ok()) {
    return s;
  }
  return response;
}

absl::StatusOr<v1::DrainResponse> Client::Drain(uint32_t grace_ms,
                                                std::optional<Deadline> deadline) {
  v1::DrainRequest request;
  request.set_grace_ms(grace_ms);
  v1::DrainResponse response;
  if (absl::Status s = Call(&v1::Asyncd::Stub::Drain, request, &response, deadline); !s.ok()) {
    return s;
  }
  return response;
}

}  // namespace asyncd::client
