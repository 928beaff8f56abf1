#include "daemon/carry.h"

#include <fcntl.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/file_area.h"
#include "src/core/clock.h"
#include "src/core/registry.h"

namespace asyncd::daemon {

namespace {

// `r` as it is `elapsed_us` later: less left of its deadline (one that has
// passed is 1) and of its wait.
void Age(state::Resubmit& r, int64_t elapsed_us) {
  if (elapsed_us <= 0) return;
  if (r.deadline_left_us() != 0) {
    r.set_deadline_left_us(static_cast<uint64_t>(
        std::max<int64_t>(1, static_cast<int64_t>(r.deadline_left_us()) - elapsed_us)));
  }
  if (r.op().has_timeout()) {
    v1::Timeout* wait = r.mutable_op()->mutable_timeout();
    wait->set_duration_us(static_cast<uint64_t>(
        std::max<int64_t>(0, static_cast<int64_t>(wait->duration_us()) - elapsed_us)));
  }
}

}  // namespace

std::optional<Carry::Again> Carry::RunAgainLater(const core::Op& op, const v1::Operation& request,
                                                 const v1::Completion& completion) {
  if (completion.outcome() != v1::OUTCOME_CANCELLED ||
      completion.end_reason() != v1::END_REASON_RESTART || completion.bytes_done() != 0 ||
      request.has_close()) {
    return std::nullopt;
  }
  const int64_t now = core::MonoNanos();
  const int64_t submitted = op.head->submitted_ns.load(std::memory_order_relaxed);
  Again again{.noted_ns = now};
  state::Resubmit& r = again.resubmit;
  r.set_op_id(op.id().value);
  *r.mutable_op() = request;
  if (op.params.deadline_ns != 0) {
    r.set_deadline_left_us(
        static_cast<uint64_t>(std::max<int64_t>(1, (op.params.deadline_ns - now) / 1000)));
  }
  r.set_submitted_unix_nanos(ToUnixNanos(submitted));
  // It waited since it was submitted: what is left of the wait runs again.
  if (request.has_timeout()) {
    v1::Timeout* wait = r.mutable_op()->mutable_timeout();
    wait->set_duration_us(static_cast<uint64_t>(std::max<int64_t>(
        0, static_cast<int64_t>(wait->duration_us()) - std::max<int64_t>(0, now - submitted) / 1000)));
  }
  return again;
}

void Carry::Keep(uint64_t next_seq, std::vector<v1::StreamResponse> messages,
                 std::vector<Again> again) {
  std::lock_guard lock(mu_);
  next_seq_ = next_seq;
  for (v1::StreamResponse& m : messages) unacked_.push_back(std::move(m));
  for (Again& a : again) again_.push_back(std::move(a));
  waiting_ = true;
}

bool Carry::waiting() const {
  std::lock_guard lock(mu_);
  return waiting_;
}

void Carry::Fill(state::Session& out) const {
  const int64_t now = core::MonoNanos();
  std::lock_guard lock(mu_);
  out.set_next_seq(next_seq_);
  if (!waiting_) return;
  out.set_resumable(true);
  for (const v1::StreamResponse& m : unacked_) *out.add_unacked() = m;
  for (const v1::Completion& c : undelivered_) *out.add_undelivered() = c;
  std::vector<const Again*> by_id;
  for (const Again& a : again_) by_id.push_back(&a);
  std::sort(by_id.begin(), by_id.end(), [](const Again* a, const Again* b) {
    return a->resubmit.op_id() < b->resubmit.op_id();
  });
  for (const Again* a : by_id) {
    state::Resubmit* r = out.add_resubmit();
    *r = a->resubmit;
    Age(*r, (now - a->noted_ns) / 1000);
  }
}

absl::Status Carry::Restore(const state::Session& saved, int64_t waited_ms,
                            core::Session& session, core::Dispatcher& dispatcher,
                            const FileArea& area, uint32_t max_op_bytes) {
  const int64_t now = core::MonoNanos();
  struct Ready {
    core::OpId id;
    core::OpRequest request;
  };
  std::vector<Ready> ready;
  std::lock_guard lock(mu_);
  // Every op converts before any is restored: a refusal changes nothing.
  for (state::Resubmit r : saved.resubmit()) {
    Age(r, waited_ms * 1000);  // the time the package waited
    auto running = std::make_unique<Running>();
    running->request = r.op();
    const int64_t deadline =
        r.deadline_left_us() != 0 ? now + static_cast<int64_t>(r.deadline_left_us()) * 1000 : 0;
    core::OpRequest request;
    absl::Status s =
        ToOpRequest(running->request, max_op_bytes, deadline, running->buffers, request);
    if (s.ok()) s = area.Place(request);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("operation ", r.op_id(), " to run again: ", s.message()));
    }
    request.sink = this;
    request.cookie = r.op_id();
    ready.push_back({core::OpId{r.op_id()}, request});
    running_[r.op_id()] = std::move(running);
  }
  absl::Status failed;
  size_t restored_ops = 0;
  for (Ready& op : ready) {
    // What the op shows in listings, and its cancel safety, as Prepare has them.
    bool stream = false;
    std::string target;
    if (op.request.handle != 0) {
      absl::StatusOr<core::HandleTable::Use> use = session.handles().Acquire(op.request.handle);
      if (use.ok()) {
        stream = use->stream;
        target = std::string(use->path);
        session.handles().Release(op.request.handle);
      }
    } else if (op.request.params.path != nullptr) {
      target = op.request.shown_path != nullptr ? op.request.shown_path : op.request.params.path;
    }
    const bool creates = op.request.kind == core::OpKind::kOpen &&
                         (op.request.params.flags & (O_CREAT | O_TRUNC)) != 0;
    absl::StatusOr<core::Op*> restored = session.Restore(
        op.id, op.request.kind, core::SafetyOf(op.request.kind, creates, stream),
        op.request.handle, target, now, op.request.tag, op.request.params.deadline_ns);
    if (!restored.ok()) {
      failed = absl::Status(restored.status().code(), absl::StrCat("operation ", op.id.value, ": ",
                                                                   restored.status().message()));
      break;
    }
    ++restored_ops;
  }
  // Those restored run even so: only a running op ends with its session.
  for (size_t i = restored_ops; i < ready.size(); ++i) running_.erase(ready[i].id.value);
  ready.resize(restored_ops);
  unacked_.assign(saved.unacked().begin(), saved.unacked().end());
  undelivered_.assign(saved.undelivered().begin(), saved.undelivered().end());
  next_seq_ = std::max<uint64_t>(1, saved.next_seq());
  waiting_ = saved.resumable();
  if (!ready.empty()) self_ = shared_from_this();
  for (Ready& op : ready) {
    absl::StatusOr<core::OpId> submitted = dispatcher.SubmitRestored(session, op.id, op.request);
    if (submitted.ok()) continue;
    // Refused (a handle gone, a backend full): its client hears why.
    auto it = running_.find(op.id.value);
    v1::Completion& c = it->second->buffers.completion;
    c.set_tag(it->second->request.tag());
    c.set_op_id(op.id.value);
    c.set_outcome(v1::OUTCOME_FAILED);
    c.set_message(absl::StrCat("could not run it again after the restart: ",
                               submitted.status().message()));
    undelivered_.push_back(std::move(c));
    running_.erase(it);
  }
  if (running_.empty()) self_.reset();  // `this` is still owned by its session
  return failed;
}

absl::StatusOr<Carry::Taken> Carry::Take(CarryTaker* taker, uint64_t resume_after) {
  std::lock_guard lock(mu_);
  if (resume_after != 0 && !waiting_) {
    return absl::FailedPreconditionError(
        "open.resume_after: nothing to resume: the session's last resumable stream ended "
        "without a restart, and its operations with it; open it without resume_after");
  }
  if (resume_after >= next_seq_) {
    return absl::InvalidArgumentError(absl::StrCat("open.resume_after: ", resume_after,
                                                   " is past the last message sent, ",
                                                   next_seq_ - 1));
  }
  Taken taken;
  taken.next_seq = next_seq_;
  for (v1::StreamResponse& m : unacked_) {
    if (m.seq() > resume_after) taken.replay.push_back(std::move(m));
  }
  unacked_.clear();
  taken.undelivered = std::move(undelivered_);
  undelivered_.clear();
  for (const auto& [id, running] : running_) taken.running.push_back(id);
  waiting_ = false;
  taker_ = taker;
  return taken;
}

void Carry::Release(CarryTaker* taker, uint64_t next_seq) {
  std::lock_guard lock(mu_);
  if (taker_ != taker) return;
  taker_ = nullptr;
  next_seq_ = std::max(next_seq_, next_seq);
}

void Carry::OnComplete(const core::Op& op) noexcept {
  std::shared_ptr<Carry> keep;  // released last: it may be the last reference
  CarryTaker* taker = nullptr;
  std::optional<v1::Completion> forward;
  {
    std::lock_guard lock(mu_);
    auto it = running_.find(op.cookie);
    if (it == running_.end()) return;
    Running& running = *it->second;
    FillCompletion(op, running.buffers);
    v1::Completion& c = running.buffers.completion;
    c.set_tag(running.request.tag());
    // A restart's cancel: it goes on in the next daemon.
    if (std::optional<Again> again = RunAgainLater(op, running.request, c)) {
      again_.push_back(*std::move(again));
      waiting_ = true;
    } else if (taker_ != nullptr) {
      forward.emplace(std::move(c));
    } else {
      undelivered_.push_back(std::move(c));
    }
    if (taker_ != nullptr) {
      taker = taker_;
      taker->Hold();
    }
    running_.erase(it);
    if (running_.empty()) keep = std::move(self_);
  }
  if (taker != nullptr) {
    taker->OnCarriedEnd(op.cookie, forward ? &*forward : nullptr);
    taker->Drop();
  }
}

}  // namespace asyncd::daemon
