#include "daemon/listing.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <vector>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_cat.h"
#include "daemon/convert.h"
#include "daemon/selector.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

namespace {

// A page token is the last op id returned and a fingerprint of the filter
// it was returned for: a token reused with another filter is refused.
uint64_t Fingerprint(const v1::OpSelector& selector) {
  std::string bytes;
  google::protobuf::io::StringOutputStream stream(&bytes);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  selector.SerializeToCodedStream(&coded);
  coded.Trim();
  return std::hash<std::string>{}(bytes);
}

}  // namespace

absl::Status Listing::ListOperations(const Caller& caller, const v1::ListOperationsRequest& req,
                                     v1::ListOperationsResponse* resp) const {
  absl::StatusOr<Filter> filter = ToFilter(caller, req.filter(), Criteria::kOptional);
  if (!filter.ok()) return filter.status();
  const uint64_t fingerprint = Fingerprint(req.filter());
  // The token carries the last id returned, what the pages before matched
  // and walked (for total_matched), and the filter's fingerprint.
  uint64_t after = 0, prior_matched = 0, prior_visited = 0;
  if (!req.page_token().empty()) {
    const std::vector<std::string> parts = absl::StrSplit(req.page_token(), '.');
    uint64_t issued_for = 0;
    if (parts.size() != 4 || !absl::SimpleAtoi(parts[0], &after) ||
        !absl::SimpleAtoi(parts[1], &prior_matched) ||
        !absl::SimpleAtoi(parts[2], &prior_visited) ||
        !absl::SimpleHexAtoi(parts[3], &issued_for)) {
      return absl::InvalidArgumentError("page_token: not a token from this daemon");
    }
    if (issued_for != fingerprint) {
      return absl::InvalidArgumentError(
          "page_token: issued for another filter; list again from the first page");
    }
  }
  const uint32_t page =
      req.page_size() == 0 ? kDefaultPageSize : std::min(req.page_size(), kMaxPageSize);
  const int64_t now = core::MonoNanos();
  uint64_t visited = 0, matched = 0, last = 0;
  bool more = false;
  // In op id order from the token, stopping at the page: a page costs what
  // it holds, not the registry's size.
  registry_.Walk(core::OpId{after}, [&](const core::Op& op, const core::OpBrief& brief,
                                        const std::shared_ptr<core::Session>& session) {
    if (core::IsTerminal(brief.state) || !filter->Matches(brief, *session, now)) {
      ++visited;
      return true;
    }
    std::optional<core::OpSnapshot> snap =
        core::Registry::Snapshot(op, session->id(), brief.id.generation());
    if (!snap || core::IsTerminal(snap->state)) {  // finished meanwhile
      ++visited;
      return true;
    }
    if (matched == page) {
      more = true;  // the next page starts here
      return false;
    }
    ++visited;
    ++matched;
    last = snap->id.value;
    const core::ClientInfo& client = session->client();
    ToOperationInfo(*snap, client.uid, client.pid, client.name, req.include_timeline(), now,
                    *resp->add_ops());
    return true;
  });
  const uint64_t total_matched = prior_matched + matched;
  const uint64_t total_visited = prior_visited + visited;
  if (!more) {
    resp->set_total_matched(total_matched);
    return absl::OkStatus();
  }
  resp->set_next_page_token(
      absl::StrCat(last, ".", total_matched, ".", total_visited, ".", absl::Hex(fingerprint)));
  // What is left to walk, at the share that has matched so far.
  const uint64_t live = registry_.live_ops();
  const uint64_t left = live > total_visited ? live - total_visited : 0;
  resp->set_total_matched(std::max(
      total_matched + 1, total_matched + left * total_matched / std::max<uint64_t>(1, total_visited)));
  return absl::OkStatus();
}

absl::Status Listing::GetOperation(const Caller& caller, const v1::GetOperationRequest& req,
                                   v1::OperationInfo* resp) const {
  if (req.op_id() == 0) return absl::InvalidArgumentError("op_id: 0 is not an operation");
  const core::OpId id{req.op_id()};
  const int64_t now = core::MonoNanos();
  core::Registry::Found found = registry_.Find(id);
  if (found) {
    const core::ClientInfo& client = found.session->client();
    if (client.uid != caller.uid && !caller.admin) {
      return Deny(caller, absl::StrCat("get operation ", id.value, ": it belongs to another user"));
    }
    if (auto snap = core::Registry::Snapshot(*found.op, found.session->id(), id.generation())) {
      ToOperationInfo(*snap, client.uid, client.pid, client.name, true, now, *resp);
      return absl::OkStatus();
    }
  }
  if (std::optional<FinishedOp> f = history_.FindFinished(id.value)) {
    if (f->uid != caller.uid && !caller.admin) {
      return Deny(caller, absl::StrCat("get operation ", id.value, ": it belongs to another user"));
    }
    ToOperationInfo(f->snap, f->uid, f->pid, f->client, true, now, *resp);
    return absl::OkStatus();
  }
  return absl::NotFoundError(
      absl::StrCat("operation ", id.value, " is neither in flight nor in the history"));
}

absl::Status Listing::ListHistory(const Caller& caller, const v1::ListHistoryRequest& req,
                                  v1::ListHistoryResponse* resp) const {
  absl::StatusOr<Filter> filter = ToFilter(caller, req.filter(), Criteria::kOptional);
  if (!filter.ok()) return filter.status();
  const uint32_t limit = req.limit() == 0 ? kDefaultPageSize : std::min(req.limit(), kMaxPageSize);
  const std::vector<FinishedOp> ops =
      req.slowest() ? history_.Slowest(*filter, limit) : history_.Recent(*filter, limit);
  const int64_t now = core::MonoNanos();
  for (const FinishedOp& f : ops) {
    ToOperationInfo(f.snap, f.uid, f.pid, f.client, req.include_timeline(), now, *resp->add_ops());
  }
  return absl::OkStatus();
}

}  // namespace asyncd::daemon
