// The storm's checks (storm_journal.h) can fail: each fires, on the rule it
// names, for a journal of client events that breaks its invariant, and all
// stay quiet on one that keeps every invariant. A check that cannot fail
// checks nothing. No daemon: the journals are written by hand.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <iostream>

#include "tests/stress/storm_journal.h"

namespace asyncd::testing::storm {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Key;

// Op ids as the daemon makes them: session 1, the given slot and generation.
uint64_t Id(uint32_t slot, uint32_t gen) { return core::OpId::Make(1, slot, gen).value; }

v1::Operation Read(uint32_t deadline_ms) {
  v1::Operation op;
  op.mutable_read()->set_handle(1);
  op.mutable_read()->set_offset(-1);
  op.mutable_read()->set_length(1);
  op.set_deadline_ms(deadline_ms);
  return op;
}

v1::Operation Timeout() {
  v1::Operation op;
  op.mutable_timeout()->set_duration_us(1000);
  return op;
}

v1::Completion Done(uint64_t tag, uint64_t op_id, v1::Outcome outcome,
                    v1::EndReason reason = v1::END_REASON_UNSPECIFIED, int error = 0,
                    std::string data = "") {
  v1::Completion c;
  c.set_tag(tag);
  c.set_op_id(op_id);
  c.set_outcome(outcome);
  c.set_end_reason(reason);
  c.set_error_number(error);
  c.set_result(error != 0 ? -error : static_cast<int32_t>(data.size()));
  c.set_bytes_done(data.size());
  c.set_data(data);
  return c;
}

v1::CancelResponse Answer(uint64_t op_id, v1::CancelResult result) {
  v1::CancelResponse r;
  v1::CancelOutcome* o = r.add_outcomes();
  o->set_op_id(op_id);
  o->set_result(result);
  return r;
}

// Writes events into a journal as the storm's stream and clients would.
class Events {
 public:
  uint64_t Send(v1::Operation op) {
    const uint64_t tag = j.AddOp(Via::kStream, op);
    const uint64_t tags[] = {tag};
    j.Sent(tags);
    return tag;
  }
  void Accept(uint64_t tag, uint64_t op_id) {
    v1::Accepted a;
    v1::AcceptedOp* e = a.add_ops();
    e->set_tag(tag);
    e->set_op_id(op_id);
    (void)j.Accepted(a);
  }
  uint64_t SendAccepted(v1::Operation op, uint64_t op_id) {
    const uint64_t tag = Send(std::move(op));
    Accept(tag, op_id);
    return tag;
  }
  void Cancel(uint64_t op_id, v1::CancelResult result, bool never_issued = false) {
    const size_t i = j.CancelSending(op_id, Via::kUnary, never_issued);
    j.CancelAnswered(i, Via::kUnary, Answer(op_id, result));
  }
  // The answer comes after other events: returns the cancel's index.
  size_t CancelSent(uint64_t op_id) { return j.CancelSending(op_id, Via::kUnary); }
  void CancelAnswered(size_t i, uint64_t op_id, v1::CancelResult result) {
    j.CancelAnswered(i, Via::kUnary, Answer(op_id, result));
  }
  void List(const std::vector<std::pair<uint64_t, v1::OpState>>& ops) {
    const size_t i = j.ListingSending(1);
    v1::ListOperationsResponse page;
    for (const auto& [id, state] : ops) {
      v1::OperationInfo* info = page.add_ops();
      info->set_op_id(id);
      info->set_session_id(1);
      info->set_state(state);
    }
    j.ListingAnswered(i, page);
  }
  void Unary(v1::Operation op, int64_t call_deadline_us,
             const absl::StatusOr<v1::Completion>& result) {
    const uint64_t tag = j.AddOp(Via::kUnary, op, call_deadline_us);
    const uint64_t tags[] = {tag};
    j.Sent(tags);
    j.Returned(tag, result);
  }

  Journal j;
};

// A storm in miniature that keeps every invariant.
void KeepEveryInvariant(Events& e) {
  // A read its deadline ended, a timeout that ran out, a read that got data.
  const uint64_t t1 = e.SendAccepted(Read(5), Id(0, 1));
  const uint64_t t2 = e.SendAccepted(Timeout(), Id(1, 1));
  const uint64_t t3 = e.SendAccepted(Read(5), Id(2, 1));
  e.j.FifoWritten(2);
  e.List({{Id(0, 1), v1::OP_STATE_DISPATCHED}, {Id(1, 1), v1::OP_STATE_RUNNING}});
  e.j.Completed(Done(t1, Id(0, 1), v1::OUTCOME_TIMED_OUT, v1::END_REASON_DEADLINE, ETIMEDOUT));
  e.j.Completed(Done(t2, Id(1, 1), v1::OUTCOME_COMPLETED));
  e.j.Completed(Done(t3, Id(2, 1), v1::OUTCOME_COMPLETED, v1::END_REASON_UNSPECIFIED, 0, "x"));
  // A cancel that took effect; then its stale id, while the slot is reused.
  const uint64_t t4 = e.SendAccepted(Read(0), Id(3, 1));
  e.Cancel(Id(3, 1), v1::CANCEL_RESULT_CANCELLED);
  e.j.Completed(
      Done(t4, Id(3, 1), v1::OUTCOME_CANCELLED, v1::END_REASON_CLIENT_REQUEST, ECANCELED));
  const uint64_t t5 = e.SendAccepted(Read(0), Id(3, 2));
  e.Cancel(Id(3, 1), v1::CANCEL_RESULT_NOT_FOUND);
  e.Cancel(Id(3, 1 + (1u << 27)), v1::CANCEL_RESULT_NOT_FOUND, /*never_issued=*/true);
  // A cancel that crossed the completion: ALREADY_DONE, as it should be.
  const size_t late = e.CancelSent(Id(3, 2));
  e.j.Completed(Done(t5, Id(3, 2), v1::OUTCOME_COMPLETED, v1::END_REASON_UNSPECIFIED, 0, "y"));
  e.CancelAnswered(late, Id(3, 2), v1::CANCEL_RESULT_ALREADY_DONE);
  // A unary call whose deadline passed.
  e.Unary(Read(0), 300'000, absl::DeadlineExceededError("deadline"));
  e.j.StreamEnded(absl::OkStatus());
  e.j.FifoLeftover(0);
}

CheckResult Find(const std::vector<CheckResult>& all, const std::string& name_part) {
  for (const CheckResult& r : all) {
    if (r.name.find(name_part) != std::string::npos) return r;
  }
  ADD_FAILURE() << "no check named " << name_part;
  return {};
}

// `check` fails, on a rule containing `rule` (others may too: a stale id
// that cancels another op also breaks outcome truthfulness).
void ExpectFires(const Journal& j, const std::string& check, const std::string& rule) {
  const std::vector<CheckResult> all = CheckAll(j);
  const CheckResult r = Find(all, check);
  EXPECT_THAT(r.counts, Contains(Key(HasSubstr(rule)))) << r.Report();
  std::cout << r.Report() << "\n";
}

TEST(StormChecksTest, AJournalThatKeepsEveryInvariantPassesEveryCheck) {
  Events e;
  KeepEveryInvariant(e);
  for (const CheckResult& r : CheckAll(e.j)) EXPECT_TRUE(r.ok()) << r.Report();
}

TEST(StormChecksTest, ExactlyOneCompletionFires) {
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Timeout(), Id(9, 1));
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_COMPLETED));
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_COMPLETED));
    ExpectFires(e.j, "invariant 1", "more than one completion");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    e.SendAccepted(Timeout(), Id(9, 1));
    ExpectFires(e.j, "invariant 1", "no completion");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    e.j.Completed(Done(12345, Id(9, 1), v1::OUTCOME_COMPLETED));
    ExpectFires(e.j, "invariant 1", "names no op");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.Send(Timeout());
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_COMPLETED));
    e.Accept(t, Id(9, 1));
    ExpectFires(e.j, "invariant 1", "before its Accepted");
  }
}

TEST(StormChecksTest, OutcomeTruthfulnessFires) {
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Timeout(), Id(9, 1));
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_COMPLETED, v1::END_REASON_UNSPECIFIED, ECANCELED));
    ExpectFires(e.j, "invariant 2", "not cancelled, no deadline");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Read(3), Id(9, 1));
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_COMPLETED, v1::END_REASON_UNSPECIFIED, ECANCELED));
    ExpectFires(e.j, "invariant 2", "cancelled or with a deadline");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Timeout(), Id(9, 1));
    e.j.Completed(
        Done(t, Id(9, 1), v1::OUTCOME_CANCELLED, v1::END_REASON_CLIENT_REQUEST, ECANCELED));
    ExpectFires(e.j, "invariant 2", "no cancel of it was sent");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Timeout(), Id(9, 1));
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_TIMED_OUT, v1::END_REASON_DEADLINE, ETIMEDOUT));
    ExpectFires(e.j, "invariant 2", "no deadline");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Read(3), Id(9, 1));
    v1::Completion c = Done(t, Id(9, 1), v1::OUTCOME_TIMED_OUT, v1::END_REASON_DEADLINE, ETIMEDOUT);
    c.set_result(0);
    e.j.Completed(c);
    ExpectFires(e.j, "invariant 2", "result != -error_number");
  }
}

TEST(StormChecksTest, CancelAnswersFire) {
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Read(33), Id(9, 1));
    e.Cancel(Id(9, 1), v1::CANCEL_RESULT_CANCELLED);
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_TIMED_OUT, v1::END_REASON_DEADLINE, ETIMEDOUT));
    ExpectFires(e.j, "invariant 3", "answered CANCELLED, the op ended OUTCOME_TIMED_OUT");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Read(33), Id(9, 1));
    e.Cancel(Id(9, 1), v1::CANCEL_RESULT_NOT_FOUND);
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_TIMED_OUT, v1::END_REASON_DEADLINE, ETIMEDOUT));
    ExpectFires(e.j, "invariant 3", "NOT_FOUND answered before the op's completion");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Read(33), Id(9, 1));
    const size_t c = e.CancelSent(Id(9, 1));
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_TIMED_OUT, v1::END_REASON_DEADLINE, ETIMEDOUT));
    e.CancelAnswered(c, Id(9, 1), v1::CANCEL_RESULT_NOT_FOUND);
    ExpectFires(e.j, "invariant 3", "had not received when the cancel left");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Read(33), Id(9, 1));
    e.Cancel(Id(9, 1), v1::CANCEL_RESULT_ALREADY_DONE);
    e.j.Completed(
        Done(t, Id(9, 1), v1::OUTCOME_CANCELLED, v1::END_REASON_CLIENT_REQUEST, ECANCELED));
    ExpectFires(e.j, "invariant 3", "no cancel of it was answered CANCELLED");
  }
}

TEST(StormChecksTest, ListingsFire) {
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Timeout(), Id(9, 1));
    e.List({{Id(9, 1), v1::OP_STATE_COMPLETED}});
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_COMPLETED));
    ExpectFires(e.j, "invariant 4", "listed in state OP_STATE_COMPLETED");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    const uint64_t t = e.SendAccepted(Timeout(), Id(9, 1));
    e.j.Completed(Done(t, Id(9, 1), v1::OUTCOME_COMPLETED));
    e.List({{Id(9, 1), v1::OP_STATE_RUNNING}});
    ExpectFires(e.j, "invariant 4", "reached the client before the request");
  }
}

TEST(StormChecksTest, CallDeadlineFires) {
  Events e;
  KeepEveryInvariant(e);
  e.Unary(Read(0), 300'000,
          Done(0, Id(9, 1), v1::OUTCOME_TIMED_OUT, v1::END_REASON_DEADLINE, ETIMEDOUT));
  ExpectFires(e.j, "invariant 5", "only deadline was the call's");
}

TEST(StormChecksTest, StaleIdsFire) {
  {
    Events e;
    KeepEveryInvariant(e);
    e.Cancel(Id(3, 1), v1::CANCEL_RESULT_CANCELLED);  // finished above
    ExpectFires(e.j, "invariant 6", "a finished op's id answered CANCEL_RESULT_CANCELLED");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    e.Cancel(Id(3, 7), v1::CANCEL_RESULT_CANCELLED, /*never_issued=*/true);
    ExpectFires(e.j, "invariant 6", "never issued");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    // The stale cancel of Id(3, 1) above hit the op now in its slot.
    const uint64_t t = e.SendAccepted(Read(0), Id(3, 3));
    e.j.Completed(
        Done(t, Id(3, 3), v1::OUTCOME_CANCELLED, v1::END_REASON_CLIENT_REQUEST, ECANCELED));
    ExpectFires(e.j, "invariant 6", "no cancel named its id");
  }
  {
    Events e;
    KeepEveryInvariant(e);
    const size_t i = e.j.CancelSending(Id(3, 1), Via::kUnary);
    e.j.CancelAnswered(i, Via::kUnary, Answer(Id(3, 2), v1::CANCEL_RESULT_NOT_FOUND));
    ExpectFires(e.j, "invariant 6", "names another op");
  }
}

TEST(StormChecksTest, FifoBytesFire) {
  Events e;
  KeepEveryInvariant(e);
  e.j.FifoWritten(3);
  ExpectFires(e.j, "FIFO bytes", "bytes lost");
}

}  // namespace
}  // namespace asyncd::testing::storm
