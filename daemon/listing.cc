#include "daemon/listing.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/convert.h"
#include "daemon/selector.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

absl::Status Listing::ListOperations(const Caller& caller, const v1::ListOperationsRequest& req,
                                     v1::ListOperationsResponse* resp) const {
  absl::StatusOr<Filter> filter = ToFilter(caller, req.filter(), Criteria::kOptional);
  if (!filter.ok()) return filter.status();
  uint64_t after = 0;
  if (!req.page_token().empty() && !absl::SimpleAtoi(req.page_token(), &after)) {
    return absl::InvalidArgumentError("page_token: not a token from this daemon");
  }
  const uint32_t page =
      req.page_size() == 0 ? kDefaultPageSize : std::min(req.page_size(), kMaxPageSize);
  struct Row {
    core::OpSnapshot snap;
    std::shared_ptr<core::Session> session;
  };
  std::vector<Row> rows;
  const int64_t now = core::MonoNanos();
  uint64_t matched = 0;
  registry_.ForEach(
      [&](const core::OpSnapshot& snap, const std::shared_ptr<core::Session>& session) {
        if (!filter->Matches(snap, session->client().uid, session->client().name, now)) return true;
        ++matched;
        if (snap.id.value > after) rows.push_back({snap, session});
        return true;
      });
  // Pages are ordered by op id, so a token is just the last id returned.
  const size_t n = std::min<size_t>(rows.size(), page);
  std::partial_sort(rows.begin(), rows.begin() + n, rows.end(),
                    [](const Row& a, const Row& b) { return a.snap.id.value < b.snap.id.value; });
  for (size_t i = 0; i < n; ++i) {
    const core::ClientInfo& client = rows[i].session->client();
    ToOperationInfo(rows[i].snap, client.uid, client.pid, client.name, req.include_timeline(), now,
                    *resp->add_ops());
  }
  if (rows.size() > n) resp->set_next_page_token(absl::StrCat(rows[n - 1].snap.id.value));
  resp->set_total_matched(matched);
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
