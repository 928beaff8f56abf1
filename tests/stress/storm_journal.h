#pragma once

// The client's record of a storm against the daemon, and the checks of the
// contract's invariants over it (storm_test.cc runs the storms;
// storm_checks_test.cc shows that every check fires on a record that breaks
// it).
//
// Every event the client causes or sees (a message about to be written, a
// response read) takes its number from one counter under one lock, so "the
// client had received op X's completion before it sent request Y" is read
// off the numbers, never guessed from clocks. No check depends on timing.

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "asyncd/v1/asyncd.pb.h"
#include "src/core/op_id.h"

namespace asyncd::testing::storm {

namespace v1 = ::asyncd::v1;

/// How a request went to the daemon.
enum class Via { kStream, kUnary };

inline const char* Name(Via v) { return v == Via::kStream ? "stream" : "unary"; }

/// One operation the client submitted.
struct OpRecord {
  uint64_t tag = 0;  // unique in the journal: its index + 1
  Via via = Via::kStream;
  v1::Operation op;
  /// Unary only: the call's gRPC deadline, in us after the send; 0 = none.
  int64_t call_deadline_us = 0;
  uint64_t sent_seq = 0;      // 0 = never sent
  uint64_t accepted_seq = 0;  // stream: when its Accepted entry was read
  uint64_t op_id = 0;         // from Accepted (stream) or the Completion (unary)
  bool rejected = false;      // Accepted gave op_id 0
  /// Every completion read for it, with its number (the promise: one).
  std::vector<std::pair<uint64_t, v1::Completion>> completions;
  uint64_t returned_seq = 0;    // unary: when the call returned
  absl::Status call_status;     // unary
  std::vector<size_t> cancels;  // indices of the cancels sent while its id named it
};

/// One cancel request the client sent.
///
/// Two numbers bound when it left: sent_seq is taken just before the client
/// hands it to gRPC, written_seq once gRPC has taken it (a stream Write
/// returned; for a unary call, which writes its request at once, the same
/// as sent_seq). Checks use whichever bound cannot give a false positive:
/// "the completion arrived before the cancel left" is completion < sent_seq,
/// "it had not arrived when the cancel left" is completion > written_seq.
struct CancelRecord {
  uint64_t op_id = 0;
  Via via = Via::kUnary;
  uint64_t sent_seq = 0;
  uint64_t written_seq = 0;
  /// The op the id named when the cancel was sent, if the client knew one.
  std::optional<size_t> target;
  /// An id the daemon never issued (made up by the client).
  bool never_issued = false;
  uint64_t answered_seq = 0;  // 0 = no answer (yet)
  absl::Status status;
  v1::CancelResponse response;

  v1::CancelResult result() const {
    return response.outcomes_size() > 0 ? response.outcomes(0).result()
                                        : v1::CANCEL_RESULT_UNSPECIFIED;
  }
};

/// One ListOperations page request.
struct ListingRecord {
  uint64_t session_id = 0;  // the filter
  uint64_t sent_seq = 0;
  uint64_t answered_seq = 0;
  absl::Status status;
  std::vector<v1::OperationInfo> ops;
};

/// A broken promise the journal saw while recording (not per op).
struct Anomaly {
  std::string rule;
  std::string detail;
};

/// Thread-safe while recording; the checks read it once recording is over.
class Journal {
 public:
  /// Records `op` before it is sent and gives it a journal-unique tag.
  uint64_t AddOp(Via via, v1::Operation& op, int64_t call_deadline_us = 0) {
    std::lock_guard lock(mu_);
    OpRecord& r = ops_.emplace_back();
    r.tag = ops_.size();
    r.via = via;
    r.call_deadline_us = call_deadline_us;
    op.set_tag(r.tag);
    r.op = op;
    return r.tag;
  }

  /// The ops with these tags are about to leave, in one message.
  void Sent(std::span<const uint64_t> tags) {
    std::lock_guard lock(mu_);
    const uint64_t seq = ++seq_;
    for (uint64_t tag : tags) ops_[tag - 1].sent_seq = seq;
  }

  /// An Accepted message was read. Returns the (tag, op_id) of each op it
  /// accepted.
  std::vector<std::pair<uint64_t, uint64_t>> Accepted(const v1::Accepted& accepted) {
    std::vector<std::pair<uint64_t, uint64_t>> out;
    std::lock_guard lock(mu_);
    const uint64_t seq = ++seq_;
    for (const v1::AcceptedOp& a : accepted.ops()) {
      OpRecord* r = StreamOpLocked(a.tag());
      if (r == nullptr) {
        AnomalyLocked("Accepted names no op sent on the stream", a.ShortDebugString());
        continue;
      }
      if (r->accepted_seq != 0) {
        AnomalyLocked("an op in two Accepted messages", a.ShortDebugString());
        continue;
      }
      r->accepted_seq = seq;
      r->op_id = a.op_id();
      r->rejected = a.op_id() == 0;
      if (a.op_id() == 0) continue;
      BindIdLocked(a.op_id(), r->tag - 1);
      recent_ids_[recent_count_++ % kRecentIds] = a.op_id();
      out.emplace_back(a.tag(), a.op_id());
    }
    return out;
  }

  /// A stream completion was read. True if it is the first one for an op of
  /// the stream (the caller's window then has room for one more).
  bool Completed(const v1::Completion& c) {
    std::lock_guard lock(mu_);
    const uint64_t seq = ++seq_;
    OpRecord* r = StreamOpLocked(c.tag());
    if (r == nullptr) {
      stray_completions_.emplace_back(seq, c);
      return false;
    }
    r->completions.emplace_back(seq, c);
    return r->completions.size() == 1;
  }

  /// A unary Submit returned.
  void Returned(uint64_t tag, const absl::StatusOr<v1::Completion>& result) {
    std::lock_guard lock(mu_);
    OpRecord& r = ops_[tag - 1];
    r.returned_seq = ++seq_;
    r.call_status = result.status();
    if (!result.ok()) return;
    r.completions.emplace_back(r.returned_seq, *result);
    r.op_id = result->op_id();
    if (r.op_id != 0) BindIdLocked(r.op_id, tag - 1);
  }

  /// Numbers a cancel of `op_id` about to be sent; returns its index.
  size_t CancelSending(uint64_t op_id, Via via, bool never_issued = false) {
    std::lock_guard lock(mu_);
    const size_t index = cancels_.size();
    CancelRecord& c = cancels_.emplace_back();
    c.op_id = op_id;
    c.via = via;
    c.never_issued = never_issued;
    c.sent_seq = ++seq_;
    if (via == Via::kUnary) c.written_seq = c.sent_seq;
    if (auto it = id_to_op_.find(op_id); it != id_to_op_.end()) {
      c.target = it->second;
      ops_[it->second].cancels.push_back(index);
    }
    return index;
  }

  /// The stream Write of cancel `index` returned.
  void CancelWritten(size_t index) {
    std::lock_guard lock(mu_);
    cancels_[index].written_seq = ++seq_;
  }

  /// The answer to cancel `index` sent via `via`, or why the call failed.
  void CancelAnswered(size_t index, Via via, const absl::StatusOr<v1::CancelResponse>& answer) {
    std::lock_guard lock(mu_);
    const uint64_t seq = ++seq_;
    if (index >= cancels_.size() || cancels_[index].via != via) {
      AnomalyLocked("a cancel_result for no cancel sent",
                    answer.ok() ? answer->ShortDebugString() : answer.status().ToString());
      return;
    }
    CancelRecord& c = cancels_[index];
    if (c.answered_seq != 0) {
      AnomalyLocked("a cancel answered twice", absl::StrCat("op_id ", c.op_id));
      return;
    }
    c.answered_seq = seq;
    c.status = answer.status();
    if (answer.ok()) c.response = *answer;
  }

  size_t ListingSending(uint64_t session_id) {
    std::lock_guard lock(mu_);
    const size_t index = listings_.size();
    ListingRecord& l = listings_.emplace_back();
    l.session_id = session_id;
    l.sent_seq = ++seq_;
    return index;
  }

  void ListingAnswered(size_t index, const absl::StatusOr<v1::ListOperationsResponse>& answer) {
    std::lock_guard lock(mu_);
    ListingRecord& l = listings_[index];
    l.answered_seq = ++seq_;
    l.status = answer.status();
    if (answer.ok()) l.ops.assign(answer->ops().begin(), answer->ops().end());
  }

  /// A stream read a message it did not expect.
  void RecordAnomaly(const std::string& rule, const std::string& detail) {
    std::lock_guard lock(mu_);
    AnomalyLocked(rule, detail);
  }

  void StreamEnded(const absl::Status& status) {
    std::lock_guard lock(mu_);
    stream_ends_.push_back(status);
  }

  /// A recently accepted op id, live or finished; 0 if there is none yet.
  uint64_t RecentId(std::mt19937_64& rng) {
    std::lock_guard lock(mu_);
    const uint64_t n = std::min<uint64_t>(recent_count_, kRecentIds);
    return n == 0 ? 0 : recent_ids_[rng() % n];
  }

  /// The FIFO the reads drain: bytes the client wrote into it, and what was
  /// left in it once every op had ended.
  void FifoWritten(uint64_t bytes) {
    std::lock_guard lock(mu_);
    fifo_written_ += bytes;
  }
  void FifoLeftover(uint64_t bytes) {
    std::lock_guard lock(mu_);
    fifo_leftover_ = bytes;
  }

  size_t op_count() const {
    std::lock_guard lock(mu_);
    return ops_.size();
  }

  // For the checks, once recording is over.
  const std::deque<OpRecord>& ops() const { return ops_; }
  const std::deque<CancelRecord>& cancels() const { return cancels_; }
  const std::deque<ListingRecord>& listings() const { return listings_; }
  const std::vector<std::pair<uint64_t, v1::Completion>>& stray_completions() const {
    return stray_completions_;
  }
  const std::vector<Anomaly>& anomalies() const { return anomalies_; }
  const std::vector<absl::Status>& stream_ends() const { return stream_ends_; }
  bool streams_ended_ok() const {
    for (const absl::Status& s : stream_ends_) {
      if (!s.ok()) return false;
    }
    return true;
  }
  uint64_t fifo_written() const { return fifo_written_; }
  std::optional<uint64_t> fifo_leftover() const { return fifo_leftover_; }
  /// The op an id named, if the client learned it.
  std::optional<size_t> OpOfId(uint64_t op_id) const {
    auto it = id_to_op_.find(op_id);
    if (it == id_to_op_.end()) return std::nullopt;
    return it->second;
  }

  /// Everything the client knows of one op, on one line per event.
  std::string Describe(size_t index) const {
    const OpRecord& r = ops_[index];
    std::string out =
        absl::StrCat("op tag=", r.tag, " via=", Name(r.via), " {", r.op.ShortDebugString(), "}");
    if (r.call_deadline_us != 0) absl::StrAppend(&out, " call_deadline_us=", r.call_deadline_us);
    absl::StrAppend(&out, " sent#", r.sent_seq);
    if (r.accepted_seq != 0) absl::StrAppend(&out, " accepted#", r.accepted_seq);
    if (r.op_id != 0) absl::StrAppend(&out, " op_id=", IdString(r.op_id));
    if (r.returned_seq != 0) {
      absl::StrAppend(&out, " returned#", r.returned_seq, " status=", r.call_status.ToString());
    }
    for (const auto& [seq, c] : r.completions) {
      absl::StrAppend(&out, "\n      completion#", seq, " {", c.ShortDebugString(), "}");
    }
    for (size_t i : r.cancels) absl::StrAppend(&out, "\n      ", DescribeCancel(i));
    return out;
  }

  std::string DescribeCancel(size_t index) const {
    const CancelRecord& c = cancels_[index];
    std::string out =
        absl::StrCat("cancel#", c.sent_seq, " of ", IdString(c.op_id), " via=", Name(c.via));
    if (c.written_seq != c.sent_seq) absl::StrAppend(&out, " written#", c.written_seq);
    if (c.never_issued) absl::StrAppend(&out, " never_issued");
    if (c.answered_seq == 0) return absl::StrCat(out, " -> no answer");
    if (!c.status.ok()) {
      return absl::StrCat(out, " -> answer#", c.answered_seq, " ", c.status.ToString());
    }
    return absl::StrCat(out, " -> answer#", c.answered_seq, " {", c.response.ShortDebugString(),
                        "}");
  }

  /// An op id with its slot and generation, which say whether two ids name
  /// the same registry slot.
  static std::string IdString(uint64_t id) {
    const core::OpId o{id};
    return absl::StrCat(id, "(session ", o.session_index(), " slot ", o.slot(), " gen ",
                        o.generation(), ")");
  }

 private:
  static constexpr size_t kRecentIds = 512;

  OpRecord* StreamOpLocked(uint64_t tag) {
    if (tag == 0 || tag > ops_.size() || ops_[tag - 1].via != Via::kStream) return nullptr;
    return &ops_[tag - 1];
  }
  void BindIdLocked(uint64_t op_id, size_t index) {
    auto [it, inserted] = id_to_op_.emplace(op_id, index);
    if (!inserted && it->second != index) {
      AnomalyLocked("one op id for two ops",
                    absl::StrCat(IdString(op_id), ": tags ", it->second + 1, " and ", index + 1));
    }
  }
  void AnomalyLocked(const std::string& rule, const std::string& detail) {
    anomalies_.push_back({rule, detail});
  }

  mutable std::mutex mu_;
  uint64_t seq_ = 0;
  std::deque<OpRecord> ops_;
  std::deque<CancelRecord> cancels_;
  std::deque<ListingRecord> listings_;
  std::unordered_map<uint64_t, size_t> id_to_op_;
  std::vector<std::pair<uint64_t, v1::Completion>> stray_completions_;
  std::vector<Anomaly> anomalies_;
  std::vector<absl::Status> stream_ends_;
  uint64_t recent_ids_[kRecentIds] = {};
  uint64_t recent_count_ = 0;
  uint64_t fifo_written_ = 0;
  std::optional<uint64_t> fifo_leftover_;
};

// ---------------------------------------------------------------------------
// Checks. Each looks at the whole journal and counts violations per rule,
// keeping a few examples with everything the client knows of the op.

struct CheckResult {
  static constexpr size_t kExamplesPerRule = 3;

  std::string name;
  std::string examined;                    // what it looked at, e.g. "20000 ops"
  std::map<std::string, uint64_t> counts;  // violations per rule
  std::map<std::string, std::vector<std::string>> examples;

  bool ok() const { return counts.empty(); }
  uint64_t total() const {
    uint64_t n = 0;
    for (const auto& [rule, count] : counts) n += count;
    return n;
  }
  /// `example` is built only for the first few violations of a rule.
  void Add(const std::string& rule, const std::function<std::string()>& example, uint64_t n = 1) {
    std::vector<std::string>& e = examples[rule];
    if (e.size() < kExamplesPerRule) e.push_back(example());
    counts[rule] += n;
  }
  std::string Summary() const {
    if (ok()) return absl::StrCat(name, ": ok (", examined, ")");
    std::string out = absl::StrCat(name, ": FAILED, ", total(), " violations (", examined, "):");
    for (const auto& [rule, count] : counts) absl::StrAppend(&out, " [", rule, ": ", count, "]");
    return out;
  }
  std::string Report() const {
    std::string out = Summary();
    for (const auto& [rule, count] : counts) {
      absl::StrAppend(&out, "\n  ", rule, ": ", count);
      for (const std::string& e : examples.at(rule)) absl::StrAppend(&out, "\n    e.g. ", e);
    }
    return out;
  }
};

namespace internal {

inline bool IsTerminalOutcome(v1::Outcome o) {
  return o == v1::OUTCOME_COMPLETED || o == v1::OUTCOME_CANCELLED || o == v1::OUTCOME_TIMED_OUT ||
         o == v1::OUTCOME_FAILED;
}

inline bool IsTerminalState(v1::OpState s) {
  return s == v1::OP_STATE_COMPLETED || s == v1::OP_STATE_CANCELLED ||
         s == v1::OP_STATE_TIMED_OUT || s == v1::OP_STATE_FAILED;
}

inline bool HasDeadline(const OpRecord& r) {
  return r.op.deadline_ms() != 0 || r.call_deadline_us != 0;
}

// A cancel of this op left before this completion arrived (so it may have
// caused it).
inline bool CancelSentBefore(const Journal& j, const OpRecord& r, uint64_t completion_seq) {
  for (size_t i : r.cancels) {
    if (j.cancels()[i].sent_seq < completion_seq) return true;
  }
  return false;
}

// The seq of the first completion the client read for the op; 0 if none.
inline uint64_t FirstCompletionSeq(const OpRecord& r) {
  return r.completions.empty() ? 0 : r.completions.front().first;
}

// The cancel's target had certainly finished, its completion read, before
// the cancel left.
inline bool ReceivedBeforeSent(const Journal& j, const CancelRecord& c) {
  if (!c.target) return false;
  const uint64_t done = FirstCompletionSeq(j.ops()[*c.target]);
  return done != 0 && done < c.sent_seq;
}

// The cancel's target's completion had certainly not been read when the
// cancel left.
inline bool NotReceivedWhenWritten(const Journal& j, const CancelRecord& c) {
  if (!c.target || c.written_seq == 0) return false;
  const uint64_t done = FirstCompletionSeq(j.ops()[*c.target]);
  return done == 0 || done > c.written_seq;
}

}  // namespace internal

/// 1. Exactly one terminal completion per accepted op: per op_id from
/// Accepted on a stream, none for unknown ids; one answer per unary call.
inline CheckResult CheckExactlyOneCompletion(const Journal& j) {
  CheckResult res{.name = "invariant 1 (exactly one terminal completion per accepted op)"};
  const bool ended_ok = j.streams_ended_ok();
  uint64_t stream_ops = 0, unary_ops = 0;
  for (size_t i = 0; i < j.ops().size(); ++i) {
    const OpRecord& r = j.ops()[i];
    auto example = [&] { return j.Describe(i); };
    if (r.via == Via::kUnary) {
      if (r.returned_seq == 0 || !r.call_status.ok()) continue;
      ++unary_ops;
      const v1::Completion& c = r.completions.front().second;
      if (c.op_id() == 0 || !internal::IsTerminalOutcome(c.outcome())) {
        res.Add("a unary call answered OK without a terminal outcome of an op", example);
      }
      continue;
    }
    if (r.sent_seq == 0) continue;
    ++stream_ops;
    if (r.accepted_seq == 0) {
      if (ended_ok) res.Add("sent on a stream that ended OK, in no Accepted", example);
      if (!r.completions.empty()) res.Add("completion read before its Accepted", example);
      continue;
    }
    if (r.completions.empty()) {
      if (ended_ok && !r.rejected) {
        res.Add("accepted, no completion (the stream ended OK)", example);
      }
      continue;
    }
    if (r.completions.size() > 1) res.Add("more than one completion", example);
    for (const auto& [seq, c] : r.completions) {
      if (seq < r.accepted_seq) res.Add("completion read before its Accepted", example);
      if (c.op_id() != r.op_id) res.Add("completion's op_id is not its Accepted op_id", example);
      if (!r.rejected && !internal::IsTerminalOutcome(c.outcome())) {
        res.Add("an accepted op completed without a terminal outcome", example);
      }
    }
  }
  for (const auto& stray : j.stray_completions()) {
    res.Add("a completion whose tag names no op", [&] {
      return absl::StrCat("completion#", stray.first, " {", stray.second.ShortDebugString(), "}");
    });
  }
  for (const Anomaly& a : j.anomalies()) {
    res.Add(a.rule, [&] { return a.detail; });
  }
  res.examined = absl::StrCat(stream_ops, " stream ops, ", unary_ops, " unary answers");
  return res;
}

/// 2. Outcomes tell the truth: CANCELLED only after a cancel, TIMED_OUT only
/// with a deadline (end_reason DEADLINE), never COMPLETED with the daemon's
/// own ECANCELED/ETIMEDOUT, result == -error_number.
inline CheckResult CheckOutcomeTruthful(const Journal& j) {
  CheckResult res{.name = "invariant 2 (outcome truthfulness)"};
  uint64_t examined = 0;
  for (size_t i = 0; i < j.ops().size(); ++i) {
    const OpRecord& r = j.ops()[i];
    auto example = [&] { return j.Describe(i); };
    for (const auto& [seq, c] : r.completions) {
      if (c.outcome() == v1::OUTCOME_REJECTED) continue;
      ++examined;
      const bool cancelled_by_us = internal::CancelSentBefore(j, r, seq);
      const bool deadline = internal::HasDeadline(r);
      const int err = c.error_number();
      switch (c.outcome()) {
        case v1::OUTCOME_CANCELLED:
          if (!cancelled_by_us) {
            res.Add("CANCELLED, but no cancel of it was sent before its completion arrived",
                    example);
          }
          if (c.end_reason() == v1::END_REASON_UNSPECIFIED ||
              c.end_reason() == v1::END_REASON_DEADLINE) {
            res.Add("CANCELLED with end_reason UNSPECIFIED or DEADLINE", example);
          }
          if (err != ECANCELED) {
            res.Add("CANCELLED with error_number other than ECANCELED", example);
          }
          break;
        case v1::OUTCOME_TIMED_OUT:
          if (!deadline) res.Add("TIMED_OUT, but it had no deadline", example);
          if (c.end_reason() != v1::END_REASON_DEADLINE) {
            res.Add("TIMED_OUT with end_reason other than DEADLINE", example);
          }
          if (err != ETIMEDOUT) {
            res.Add("TIMED_OUT with error_number other than ETIMEDOUT", example);
          }
          break;
        case v1::OUTCOME_COMPLETED:
          if (err == ECANCELED || err == ETIMEDOUT) {
            // FIFO reads and timeouts never fail so by themselves: it is the
            // daemon's own cancel or deadline, reported as a syscall error.
            res.Add(!cancelled_by_us && !deadline
                        ? "COMPLETED with ECANCELED/ETIMEDOUT, not cancelled, no deadline"
                        : "COMPLETED with ECANCELED/ETIMEDOUT, cancelled or with a deadline",
                    example);
          } else if (err != 0) {
            res.Add("COMPLETED with an errno a FIFO read or a timeout never gives", example);
          }
          break;
        default:
          break;  // non-terminal outcomes are invariant 1's
      }
      if (err != 0 && c.result() != -err) res.Add("result != -error_number", example);
    }
  }
  res.examined = absl::StrCat(examined, " completions");
  return res;
}

/// 3. A cancel's answer agrees with the op's outcome (proto CancelResult).
inline CheckResult CheckCancelAnswers(const Journal& j) {
  CheckResult res{.name = "invariant 3 (cancel answer <=> outcome)"};
  const bool ended_ok = j.streams_ended_ok();
  uint64_t examined = 0;
  for (size_t ci = 0; ci < j.cancels().size(); ++ci) {
    const CancelRecord& c = j.cancels()[ci];
    if (!c.target) continue;  // ids the client never saw are invariant 6's
    const OpRecord& r = j.ops()[*c.target];
    auto example = [&] {
      return absl::StrCat(j.DescribeCancel(ci), "\n      of ", j.Describe(*c.target));
    };
    if (c.answered_seq == 0) {
      if (c.via == Via::kUnary || ended_ok) res.Add("a cancel got no answer", example);
      continue;
    }
    ++examined;
    if (!c.status.ok()) {
      res.Add("the cancel of an own op was refused with a gRPC error", example);
      continue;
    }
    const v1::Completion* done = r.completions.empty() ? nullptr : &r.completions.front().second;
    switch (c.result()) {
      case v1::CANCEL_RESULT_CANCELLED:
        if (done == nullptr) break;  // invariant 1 reports the missing completion
        if (done->outcome() != v1::OUTCOME_CANCELLED) {
          res.Add(
              absl::StrCat("answered CANCELLED, the op ended ", v1::Outcome_Name(done->outcome())),
              example);
        } else if (done->end_reason() != v1::END_REASON_CLIENT_REQUEST) {
          res.Add("answered CANCELLED, the op's end_reason is not CLIENT_REQUEST", example);
        }
        break;
      case v1::CANCEL_RESULT_NOT_CANCELLABLE:
        if (done != nullptr && done->outcome() != v1::OUTCOME_COMPLETED) {
          res.Add("answered NOT_CANCELLABLE, the op did not complete normally", example);
        }
        break;
      case v1::CANCEL_RESULT_NOT_FOUND: {
        // The daemon said "no such op", then delivered its completion: no
        // question of when the cancel left.
        const uint64_t done = internal::FirstCompletionSeq(r);
        if (done == 0 || done > c.answered_seq) {
          res.Add("NOT_FOUND answered before the op's completion reached the client", example);
        } else if (internal::NotReceivedWhenWritten(j, c)) {
          res.Add(
              "NOT_FOUND for an op whose completion the client had not received when the "
              "cancel left",
              example);
        }
        break;
      }
      default:
        break;
    }
  }
  // ALREADY_DONE (or any answer but CANCELLED) says the request did not
  // cancel the op: an op our cancels ended must have one CANCELLED answer.
  for (size_t i = 0; i < j.ops().size(); ++i) {
    const OpRecord& r = j.ops()[i];
    if (r.cancels.empty() || r.completions.empty()) continue;
    const v1::Completion& done = r.completions.front().second;
    if (done.outcome() != v1::OUTCOME_CANCELLED ||
        done.end_reason() != v1::END_REASON_CLIENT_REQUEST) {
      continue;
    }
    bool admitted = false, all_answered = true;
    for (size_t ci : r.cancels) {
      const CancelRecord& c = j.cancels()[ci];
      all_answered &= c.answered_seq != 0;
      admitted |= c.status.ok() && c.result() == v1::CANCEL_RESULT_CANCELLED;
    }
    if (!admitted && all_answered) {
      res.Add(
          "the op ended CANCELLED by a client request, yet no cancel of it was answered "
          "CANCELLED",
          [&] { return j.Describe(i); });
    }
  }
  res.examined = absl::StrCat(examined, " answered cancels of own ops");
  return res;
}

/// 4. ListOperations never lists a finished op: none in a terminal state,
/// none whose completion the client had read before it sent the request.
inline CheckResult CheckListingsShowNoFinishedOp(const Journal& j) {
  CheckResult res{.name = "invariant 4 (no finished op in a listing)"};
  uint64_t pages = 0, listed = 0;
  for (const ListingRecord& l : j.listings()) {
    if (l.answered_seq == 0) continue;
    if (!l.status.ok()) {
      res.Add("ListOperations failed", [&] { return l.status.ToString(); });
      continue;
    }
    ++pages;
    for (const v1::OperationInfo& info : l.ops) {
      ++listed;
      auto example = [&] {
        std::string e = absl::StrCat("listing sent#", l.sent_seq, " answered#", l.answered_seq,
                                     " listed {", info.ShortDebugString(), "}");
        if (auto op = j.OpOfId(info.op_id())) absl::StrAppend(&e, "\n      ", j.Describe(*op));
        return e;
      };
      if (info.session_id() != l.session_id) res.Add("listed an op of another session", example);
      if (internal::IsTerminalState(info.state())) {
        res.Add(absl::StrCat("listed in state ", v1::OpState_Name(info.state())), example);
      }
      if (auto op = j.OpOfId(info.op_id())) {
        const uint64_t done = internal::FirstCompletionSeq(j.ops()[*op]);
        if (done != 0 && done < l.sent_seq) {
          res.Add("listed although its completion reached the client before the request", example);
        }
      }
    }
  }
  res.examined = absl::StrCat(pages, " pages, ", listed, " ops listed");
  return res;
}

/// 5. A unary Submit whose call deadline passes ends DEADLINE_EXCEEDED, never
/// OK with a TIMED_OUT completion whose only deadline was the call's.
inline CheckResult CheckCallDeadlineEndsDeadlineExceeded(const Journal& j) {
  CheckResult res{.name = "invariant 5 (a passed call deadline ends DEADLINE_EXCEEDED)"};
  std::map<std::string, uint64_t> statuses;
  for (size_t i = 0; i < j.ops().size(); ++i) {
    const OpRecord& r = j.ops()[i];
    if (r.via != Via::kUnary || r.call_deadline_us == 0 || r.returned_seq == 0) continue;
    ++statuses[absl::StatusCodeToString(r.call_status.code())];
    if (!r.call_status.ok()) continue;
    const v1::Completion& c = r.completions.front().second;
    const bool own_deadline_first =
        r.op.deadline_ms() != 0 && int64_t{r.op.deadline_ms()} * 1000 < r.call_deadline_us;
    if (c.outcome() == v1::OUTCOME_TIMED_OUT && !own_deadline_first) {
      res.Add("OK with a TIMED_OUT completion whose only deadline was the call's",
              [&] { return j.Describe(i); });
    }
  }
  std::string examined = "calls with a deadline:";
  for (const auto& [code, n] : statuses) absl::StrAppend(&examined, " ", code, " ", n);
  res.examined = statuses.empty() ? "no calls with a deadline" : examined;
  return res;
}

/// 6. A stale id (its op finished, its slot maybe reused) never touches
/// another op.
inline CheckResult CheckStaleIdsTouchNoOtherOp(const Journal& j) {
  CheckResult res{.name = "invariant 6 (stale ids never touch a reused slot)"};
  uint64_t stale = 0;
  for (size_t ci = 0; ci < j.cancels().size(); ++ci) {
    const CancelRecord& c = j.cancels()[ci];
    if (c.answered_seq == 0 || !c.status.ok()) continue;
    auto example = [&] {
      std::string e = j.DescribeCancel(ci);
      if (c.target) absl::StrAppend(&e, "\n      of ", j.Describe(*c.target));
      return e;
    };
    if (c.response.outcomes_size() != 1 || c.response.outcomes(0).op_id() != c.op_id) {
      res.Add("the answer names another op than the id asked", example);
    }
    if (c.never_issued) {
      ++stale;
      if (c.result() != v1::CANCEL_RESULT_NOT_FOUND) {
        res.Add("a cancel of an id never issued answered other than NOT_FOUND", example);
      }
    } else if (internal::ReceivedBeforeSent(j, c)) {
      ++stale;
      if (c.result() == v1::CANCEL_RESULT_CANCELLED ||
          c.result() == v1::CANCEL_RESULT_NOT_CANCELLABLE) {
        res.Add(absl::StrCat("a finished op's id answered ", v1::CancelResult_Name(c.result())),
                example);
      }
    }
  }
  // A stale id that reached a reused slot cancels an op nobody named.
  if (stale > 0) {
    for (size_t i = 0; i < j.ops().size(); ++i) {
      const OpRecord& r = j.ops()[i];
      for (const auto& [seq, c] : r.completions) {
        if (c.outcome() == v1::OUTCOME_CANCELLED &&
            c.end_reason() == v1::END_REASON_CLIENT_REQUEST &&
            !internal::CancelSentBefore(j, r, seq)) {
          res.Add("an op ended CANCELLED by a client request though no cancel named its id",
                  [&] { return j.Describe(i); });
        }
      }
    }
  }
  res.examined = absl::StrCat(stale, " cancels of finished or never-issued ids");
  return res;
}

/// Beyond the six: bytes written into the FIFO are read exactly once (a
/// cancelled or timed-out read returns what it read), so written == read +
/// left over.
inline CheckResult CheckFifoBytesConserved(const Journal& j) {
  CheckResult res{.name = "FIFO bytes conserved (read data = bytes_done; none lost)"};
  if (!j.fifo_leftover()) {
    res.examined = "no FIFO accounting";
    return res;
  }
  uint64_t read = 0;
  for (size_t i = 0; i < j.ops().size(); ++i) {
    const OpRecord& r = j.ops()[i];
    if (!r.op.has_read()) continue;
    for (const auto& [seq, c] : r.completions) {
      if (c.outcome() == v1::OUTCOME_REJECTED) continue;
      read += c.data().size();
      auto example = [&] { return j.Describe(i); };
      if (c.data().size() != c.bytes_done()) res.Add("a read's data size != bytes_done", example);
      if (c.outcome() == v1::OUTCOME_COMPLETED && c.error_number() == 0 &&
          static_cast<uint64_t>(c.result()) != c.data().size()) {
        res.Add("a COMPLETED read's result != its data size", example);
      }
    }
  }
  const uint64_t accounted = read + *j.fifo_leftover();
  auto totals = [&] {
    return absl::StrCat("written ", j.fifo_written(), ", read ", read, ", left in the FIFO ",
                        *j.fifo_leftover());
  };
  if (accounted < j.fifo_written()) {
    res.Add("bytes lost", totals, j.fifo_written() - accounted);
  } else if (accounted > j.fifo_written()) {
    res.Add("bytes invented", totals, accounted - j.fifo_written());
  }
  res.examined = totals();
  return res;
}

inline std::vector<CheckResult> CheckAll(const Journal& j) {
  return {CheckExactlyOneCompletion(j),
          CheckOutcomeTruthful(j),
          CheckCancelAnswers(j),
          CheckListingsShowNoFinishedOp(j),
          CheckCallDeadlineEndsDeadlineExceeded(j),
          CheckStaleIdsTouchNoOtherOp(j),
          CheckFifoBytesConserved(j)};
}

}  // namespace asyncd::testing::storm
