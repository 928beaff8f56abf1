#include "daemon/cancel.h"

#include <memory>
#include <optional>
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
  auto answer = [&](core::OpId id, core::CancelResult r) {
    counts.Add(r);
    if (resp.outcomes_size() < static_cast<int>(kMaxOutcomes)) {
      v1::CancelOutcome* o = resp.add_outcomes();
      o->set_op_id(id.value);
      o->set_result(ToProto(r));
    } else {
      resp.set_outcomes_truncated(true);
    }
  };
  auto cancel_one = [&](core::Op& op, const core::Session& session, uint32_t gen) {
    const core::EndReason reason = session.client().uid == caller.uid
                                       ? core::EndReason::kClientRequest
                                       : core::EndReason::kOperatorRequest;
    answer(core::OpId::Make(session.index(), op.slot_index, gen),
           dispatcher_.Cancel(op, gen, reason));
  };
  *status = absl::OkStatus();
  if (req.target_case() == v1::CancelRequest::kOpId) {
    const core::OpId id{req.op_id()};
    if (id.value == 0) {
      *status = absl::InvalidArgumentError("op_id: 0 is not an operation");
      return resp;
    }
    uint32_t owner = 0;
    core::Registry::Found found = registry_.Find(id);
    std::optional<FinishedOp> finished;
    if (found) {
      owner = found.session->client().uid;
    } else if ((finished = history_.FindFinished(id.value))) {
      owner = finished->uid;
    }
    if ((found || finished) && owner != caller.uid && !caller.admin) {
      *status =
          Deny(caller, absl::StrCat("cancel operation ", id.value, ": it belongs to another user"));
      return resp;
    }
    if (found) {
      cancel_one(*found.op, *found.session, id.generation());
    } else {
      const core::CancelResult r =
          finished ? core::CancelResult::kAlreadyDone : core::CancelResult::kNotFound;
      counters_.OnCancelAnswered(r);
      answer(id, r);
    }
  } else if (req.target_case() == v1::CancelRequest::kSelector) {
    absl::StatusOr<Filter> filter = ToFilter(caller, req.selector(), Criteria::kRequired);
    if (!filter.ok()) {
      *status = filter.status();
      return resp;
    }
    // Collect first: cancelling while walking would see ops change under us.
    struct Target {
      core::Op* op;
      uint32_t gen;
      std::shared_ptr<core::Session> session;  // keeps the op's memory
    };
    std::vector<Target> targets;
    const int64_t now = core::MonoNanos();
    registry_.Walk(core::OpId{}, [&](core::Op& op, const core::OpBrief& brief,
                                     const std::shared_ptr<core::Session>& session) {
      if (!core::IsTerminal(brief.state) && filter->Matches(brief, *session, now)) {
        targets.push_back({&op, brief.id.generation(), session});
      }
      return true;
    });
    // An op that finished since, retired or not, is ALREADY_DONE (core).
    for (const Target& t : targets) cancel_one(*t.op, *t.session, t.gen);
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
