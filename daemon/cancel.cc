#include "daemon/cancel.h"

#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/convert.h"
#include "daemon/selector.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

v1::CancelResponse Canceller::Cancel(const Caller& caller, const v1::CancelRequest& req,
                                     absl::Status* status) {
  v1::CancelResponse resp;
  resp.set_request_tag(req.request_tag());
  core::CancelCounts counts;
  const core::EndReason default_reason =
      caller.admin ? core::EndReason::kOperatorRequest : core::EndReason::kClientRequest;
  auto cancel_one = [&](core::Registry::Found& found, uint32_t gen) {
    const core::ClientInfo& owner = found.session->client();
    const core::EndReason reason =
        owner.uid == caller.uid ? core::EndReason::kClientRequest : default_reason;
    const core::CancelResult r = dispatcher_.Cancel(*found.op, gen, reason);
    counts.Add(r);
    counters_.OnCancelAnswered(r);
    const core::OpId id = core::OpId::Make(found.session->index(), found.op->slot_index, gen);
    if (r == core::CancelResult::kCancelled) {
      if (auto snap = core::Registry::Snapshot(*found.op, found.session->id(), gen)) {
        watch_hub_.PublishCancelRequested(*snap, owner);
      }
    }
    if (resp.outcomes_size() < static_cast<int>(kMaxOutcomes)) {
      v1::CancelOutcome* o = resp.add_outcomes();
      o->set_op_id(id.value);
      o->set_result(ToProto(r));
    } else {
      resp.set_outcomes_truncated(true);
    }
  };
  *status = absl::OkStatus();
  if (req.target_case() == v1::CancelRequest::kOpId) {
    const core::OpId id{req.op_id()};
    if (id.value == 0) {
      *status = absl::InvalidArgumentError("op_id: 0 is not an operation");
      return resp;
    }
    core::Registry::Found found = registry_.Find(id);
    if (!found) {
      counts.Add(core::CancelResult::kNotFound);
      counters_.OnCancelAnswered(core::CancelResult::kNotFound);
      v1::CancelOutcome* o = resp.add_outcomes();
      o->set_op_id(id.value);
      o->set_result(v1::CANCEL_RESULT_NOT_FOUND);
    } else if (found.session->client().uid != caller.uid && !caller.admin) {
      *status =
          Deny(caller, absl::StrCat("cancel operation ", id.value, ": it belongs to another user"));
      return resp;
    } else {
      cancel_one(found, id.generation());
    }
  } else if (req.target_case() == v1::CancelRequest::kSelector) {
    absl::StatusOr<Filter> filter = ToFilter(caller, req.selector(), Criteria::kRequired);
    if (!filter.ok()) {
      *status = filter.status();
      return resp;
    }
    // Collect first: cancelling while iterating would see ops change under us.
    std::vector<std::pair<core::OpId, std::shared_ptr<core::Session>>> targets;
    const int64_t now = core::MonoNanos();
    registry_.ForEach(
        [&](const core::OpSnapshot& snap, const std::shared_ptr<core::Session>& session) {
          if (!core::IsTerminal(snap.state) &&
              filter->Matches(snap, session->client().uid, session->client().name, now)) {
            targets.emplace_back(snap.id, session);
          }
          return true;
        });
    for (auto& [id, session] : targets) {
      core::Registry::Found found{session, session->Find(id.slot(), id.generation())};
      if (!found) {
        counts.Add(core::CancelResult::kAlreadyDone);  // finished since we looked
        continue;
      }
      cancel_one(found, id.generation());
    }
  } else {
    *status = absl::InvalidArgumentError("target: set op_id or selector");
    return resp;
  }
  v1::CancelCounts* c = resp.mutable_counts();
  c->set_cancelled(counts.cancelled);
  c->set_not_cancellable(counts.not_cancellable);
  c->set_already_done(counts.already_done);
  c->set_not_found(counts.not_found);
  return resp;
}

}  // namespace asyncd::daemon
