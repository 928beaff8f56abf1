#include "daemon/ring.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "daemon/convert.h"
#include "daemon/service.h"
#include "src/core/check.h"
#include "src/core/clock.h"

namespace asyncd::daemon {
namespace {

template <typename T>
T* At(void* base, uint64_t offset) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(base) + offset);
}

// Why the Dispatcher refused an op, as a ring reason.
asyncd_ring_reason ReasonOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kNotFound:
      return ASYNCD_RING_REASON_UNKNOWN_HANDLE;
    case absl::StatusCode::kFailedPrecondition:
      return ASYNCD_RING_REASON_SESSION_ENDED;
    case absl::StatusCode::kUnavailable:
      return ASYNCD_RING_REASON_DRAINING;
    case absl::StatusCode::kInvalidArgument:
      return ASYNCD_RING_REASON_BAD_FIELD;
    default:
      return ASYNCD_RING_REASON_OVER_LIMIT;
  }
}

void WriteEventfd(int fd) {
  const uint64_t one = 1;
  (void)!write(fd, &one, sizeof one);
}

// The completion pipe's write end is non-blocking and the daemon's alone: a
// full pipe (a client that does not read it) already holds a wake-up.
void WakeClient(int fd) {
  const char one = 1;
  (void)!write(fd, &one, 1);
}

}  // namespace

Ring::Ring(Service& service, std::shared_ptr<SessionMeta> meta, RingRegion region, int wake_fd)
    : service_(service),
      dispatcher_(service.dispatcher()),
      meta_(std::move(meta)),
      region_(region),
      wake_fd_(wake_fd),
      ctl_(static_cast<asyncd_ring_ctl*>(region.base)),
      area_(dispatcher_.RegisterArea(At<uint8_t>(region.base, region.buffer_offset),
                                     region.buffer_bytes)),
      sq_{ctl_, At<const asyncd_ring_sqe>(region.base, region.sq_offset), region.sq_entries, 0},
      taken_(region.sq_entries),
      overflow_(region.cq_entries),
      cq_(ctl_, At<asyncd_ring_cqe>(region.base, region.cq_offset), region.cq_entries,
          overflow_.data()),
      ctxs_(region.cq_entries) {
  requests_.reserve(region.sq_entries);
  request_ctx_.reserve(region.sq_entries);
  rejects_.reserve(region.sq_entries);
  for (uint32_t i = 0; i < ctxs_.size(); ++i) ctxs_[i].next = i + 1 < ctxs_.size() ? i + 1 : kNone;
  free_ = 0;
}

Ring::~Ring() {
  ASYNCD_CHECK(inflight_ == 0);
  if (area_ != 0) dispatcher_.UnregisterArea(area_);
  munmap(region_.base, region_.bytes);
  for (int fd : {region_.memfd, region_.submit_fd, region_.complete_fd,
                 region_.complete_write_fd, conn_}) {
    if (fd >= 0) close(fd);
  }
  service_.budget().ReleaseBytes(region_.buffer_bytes);
  meta_->has_ring.store(false);
}

absl::Status Ring::Attach(const Caller& caller) {
  meta_->Attach(this);
  // A session ended before the attach would never tell this ring.
  absl::StatusOr<std::shared_ptr<SessionMeta>> still =
      service_.sessions().Own(caller, session_id());
  if (!still.ok()) {
    meta_->Detach(this, core::MonoNanos());
    return still.status();
  }
  attached_ = true;
  // A drain that began before the attach did not see this ring.
  if (service_.draining()) OnDraining(service_.restarting());
  return absl::OkStatus();
}

void Ring::Detach() {
  if (!attached_) return;
  attached_ = false;
  meta_->Detach(this, core::MonoNanos());
}

uint64_t Ring::session_id() const { return meta_->session->id(); }

uint32_t Ring::Pass(uint32_t max) {
  uint32_t room;
  core::EndReason cancel = core::EndReason::kNone;
  {
    std::lock_guard lock(mu_);
    if (cq_.overflowed() > 0 && !cq_broken_) {
      if (!cq_.Flush()) {
        cq_broken_ = true;
        CloseLocked(absl::StatusCode::kInvalidArgument, ASYNCD_RING_REASON_BROKEN_INDEX,
                    core::EndReason::kRpcCancelled);
      }
      PublishLocked();
    }
    if (cancel_reason_ != core::EndReason::kNone) {
      for (uint32_t i = oldest_; i != kNone; i = ctxs_[i].next) {
        if (ctxs_[i].op_id != 0) to_cancel_.push_back(ctxs_[i].op_id);
      }
      cancel = cancel_reason_;
      cancel_reason_ = core::EndReason::kNone;
    }
    if (!closed_ && draining_.load(std::memory_order_relaxed) && inflight_ == 0) {
      CloseLocked(absl::StatusCode::kUnavailable,
                  restart_ ? ASYNCD_RING_REASON_RESTART : ASYNCD_RING_REASON_DRAINING);
    }
    room = closed_ ? 0 : region_.cq_entries - static_cast<uint32_t>(taken_total_ - cq_.posted());
  }
  for (uint64_t id : to_cancel_) (void)dispatcher_.Cancel(core::OpId{id}, cancel);
  to_cancel_.clear();
  if (room == 0) return 0;
  const int n = TakeRingEntries(sq_, std::min(max, room), taken_.data());
  if (n <= 0) {
    if (n < 0) {
      std::lock_guard lock(mu_);
      CloseLocked(absl::StatusCode::kInvalidArgument, ASYNCD_RING_REASON_BROKEN_INDEX,
                  core::EndReason::kRpcCancelled);
    }
    return 0;
  }
  PublishSqHead(sq_, static_cast<uint32_t>(n));
  taken_total_ += static_cast<uint32_t>(n);
  const RingEntryLimits limits{.max_op_bytes = service_.live().max_op_bytes(),
                               .buffer = At<uint8_t>(region_.base, region_.buffer_offset),
                               .buffer_bytes = region_.buffer_bytes,
                               .area = area_,
                               .now_ns = core::MonoNanos()};
  const bool draining = draining_.load(std::memory_order_relaxed);
  for (int i = 0; i < n; ++i) {
    const asyncd_ring_sqe& e = taken_[i];
    // As over gRPC, a drain refuses ops before looking at them, but it
    // leaves cancels working.
    if (draining && e.kind != ASYNCD_RING_OP_CANCEL) {
      rejects_.push_back({e.user_data, ASYNCD_RING_REASON_DRAINING});
      continue;
    }
    RingEntry checked = CheckRingEntry(e, limits);
    switch (checked.kind) {
      case RingEntry::Kind::kRejected:
        rejects_.push_back({e.user_data, checked.reason});
        break;
      case RingEntry::Kind::kCancel:
        SubmitGathered();  // a cancel sees the ops before it
        AnswerCancel(e.user_data, checked.cancel_user_data);
        break;
      case RingEntry::Kind::kOp:
        // Only the op count: the bytes are the buffer area's, charged at setup.
        if (!service_.budget().Reserve(1, 0).ok()) {
          rejects_.push_back({e.user_data, ASYNCD_RING_REASON_OVER_LIMIT});
          break;
        }
        checked.request.sink = this;
        requests_.push_back(checked.request);
        break;
    }
  }
  SubmitGathered();
  return static_cast<uint32_t>(n);
}

void Ring::SubmitGathered() {
  if (requests_.empty() && rejects_.empty()) return;
  {
    std::lock_guard lock(mu_);
    // Counted in flight first: completions may arrive during SubmitBatch.
    for (core::OpRequest& r : requests_) {
      const uint32_t i = AllocCtxLocked();
      ctxs_[i].user_data = r.tag;
      r.cookie = i;
      request_ctx_.push_back(i);
    }
    inflight_ += static_cast<uint32_t>(requests_.size());
    for (const Rejected& r : rejects_) PostRejectedLocked(r);
    if (!rejects_.empty()) PublishLocked();
  }
  rejects_.clear();
  if (requests_.empty()) return;
  ids_.assign(requests_.size(), absl::StatusOr<core::OpId>());
  {
    // NOPs complete in here: their completions take mu_ once, at the end.
    core::CompletionBatch batch;
    dispatcher_.SubmitBatch(*meta_->session, requests_, ids_,
                            core::Dispatcher::Nops::kAnswerInline);
  }
  {
    std::lock_guard lock(mu_);
    bool refused = false;
    for (size_t j = 0; j < requests_.size(); ++j) {
      OpCtx& c = ctxs_[request_ctx_[j]];
      if (ids_[j].ok()) {
        // Unless it ended already (its context is free again, and nobody
        // else takes contexts).
        if (c.live) c.op_id = ids_[j]->value;
        continue;
      }
      service_.budget().ReleaseOps(1);
      const absl::StatusCode code = ids_[j].status().code();
      PostRejectedLocked({c.user_data, ReasonOf(code), code});
      FreeCtxLocked(request_ctx_[j]);
      --inflight_;
      refused = true;
    }
    if (refused) PublishLocked();
  }
  requests_.clear();
  request_ctx_.clear();
}

void Ring::AnswerCancel(uint64_t entry_user_data, uint64_t target) {
  uint64_t id = 0;
  {
    std::lock_guard lock(mu_);
    for (uint32_t i = oldest_; i != kNone; i = ctxs_[i].next) {
      if (ctxs_[i].user_data == target && ctxs_[i].op_id != 0) {
        id = ctxs_[i].op_id;
        break;
      }
    }
  }
  core::CancelResult result = core::CancelResult::kNotFound;
  if (id != 0) {
    result = dispatcher_.Cancel(core::OpId{id}, core::EndReason::kClientRequest);
    // It was in flight a moment ago: it has ended since.
    if (result == core::CancelResult::kNotFound) result = core::CancelResult::kAlreadyDone;
  }
  service_.observer().counters().OnCancelAnswered(result);
  asyncd_ring_cqe answer{};
  answer.user_data = entry_user_data;
  answer.op_id = id;
  answer.result = ToProto(result);
  answer.outcome = v1::OUTCOME_COMPLETED;
  answer.flags = ASYNCD_RING_CQE_CANCEL_ANSWER;
  std::lock_guard lock(mu_);
  PostLocked(answer);
  PublishLocked();
}

void Ring::OnComplete(const core::Op& op) noexcept {
  OpCtx& c = ctxs_[op.cookie];
  const uint64_t w = op.head->word.load(std::memory_order_acquire);
  const core::OpState state = core::OpWord::State(w);
  asyncd_ring_cqe& cqe = c.cqe;
  cqe = asyncd_ring_cqe{};
  cqe.user_data = c.user_data;
  cqe.op_id = op.id().value;
  cqe.result = CompletionResult(state, op.head->kind.load(std::memory_order_relaxed),
                                op.result.load(std::memory_order_relaxed));
  cqe.bytes = op.bytes_done.load(std::memory_order_relaxed);
  cqe.outcome = static_cast<uint8_t>(OutcomeOf(state));
  if (state == core::OpState::kCancelled || state == core::OpState::kTimedOut) {
    cqe.end_reason = static_cast<uint8_t>(ToProto(core::OpWord::Reason(w)));
  }
  cqe.backend = static_cast<uint8_t>(ToProto(op.head->backend.load(std::memory_order_relaxed)));
  service_.budget().ReleaseOps(1);
  // In a backend's batch, take mu_ once for all of this ring's ops.
  if (core::CompletionBatch::Defer(this, op.cookie)) return;
  OnDeferred(std::span<const uint64_t>(&op.cookie, 1));
}

void Ring::OnDeferred(std::span<const uint64_t> cookies) noexcept {
  // The ring lives while it has ops in flight: nothing here touches it
  // after mu_ is released.
  std::lock_guard lock(mu_);
  for (uint64_t cookie : cookies) {
    const uint32_t i = static_cast<uint32_t>(cookie);
    PostLocked(ctxs_[i].cqe);
    FreeCtxLocked(i);
  }
  inflight_ -= static_cast<uint32_t>(cookies.size());
  PublishLocked();
  if (inflight_ == 0 && (closed_ || draining_.load(std::memory_order_relaxed))) WakePoller();
}

void Ring::OnSessionEnded() noexcept {
  std::lock_guard lock(mu_);
  CloseLocked(absl::StatusCode::kFailedPrecondition, ASYNCD_RING_REASON_SESSION_ENDED);
}

void Ring::OnDraining(bool restart) noexcept {
  std::lock_guard lock(mu_);
  restart_ = restart;
  draining_.store(true, std::memory_order_relaxed);
  WakePoller();
}

void Ring::ClientGone() {
  std::lock_guard lock(mu_);
  client_gone_ = true;
  CloseLocked(absl::StatusCode::kCancelled, ASYNCD_RING_REASON_CLIENT_GONE,
              core::EndReason::kRpcCancelled);
}

void Ring::Shutdown(bool restart) {
  std::lock_guard lock(mu_);
  stopping_ = true;
  CloseLocked(absl::StatusCode::kUnavailable,
              restart ? ASYNCD_RING_REASON_RESTART : ASYNCD_RING_REASON_DRAINING,
              restart ? core::EndReason::kRestart : core::EndReason::kDrain);
}

void Ring::SetNeedWakeup(bool on) {
  std::lock_guard lock(mu_);
  flags_ = on ? (flags_ | ASYNCD_RING_NEED_WAKEUP) : (flags_ & ~ASYNCD_RING_NEED_WAKEUP);
  PublishFlagsLocked();
}

bool Ring::HasWork() {
  std::lock_guard lock(mu_);
  if (cancel_reason_ != core::EndReason::kNone || cq_.Flushable()) return true;
  if (closed_) return false;
  if (draining_.load(std::memory_order_relaxed) && inflight_ == 0) return true;
  return __atomic_load_n(&ctl_->sq_tail, __ATOMIC_ACQUIRE) != sq_.head;
}

bool Ring::Finishable() {
  std::lock_guard lock(mu_);
  if (!closed_ || inflight_ > 0 || cancel_reason_ != core::EndReason::kNone) return false;
  // Completions that wait for room keep the ring (and its charge) until the
  // client reaps them or goes.
  return cq_.overflowed() == 0 || client_gone_ || stopping_ || cq_broken_;
}

void Ring::Close() {
  std::lock_guard lock(mu_);
  (void)cq_.Flush();
  PublishLocked();
  WakeClient(region_.complete_write_fd);  // whether the client waits or not: this is the end
}

void Ring::PostLocked(const asyncd_ring_cqe& cqe) {
  if (cq_broken_) return;  // nothing can reach that client again
  // The admission rule keeps the overflow within its cq_entries.
  ASYNCD_CHECK(cq_.Post(cqe));
}

void Ring::PostRejectedLocked(const Rejected& r) {
  asyncd_ring_cqe cqe{};
  cqe.user_data = r.user_data;
  cqe.outcome = v1::OUTCOME_REJECTED;
  cqe.status =
      static_cast<uint16_t>(r.code != absl::StatusCode::kOk ? r.code : RingReasonCode(r.reason));
  cqe.reason = static_cast<uint16_t>(r.reason);
  PostLocked(cqe);
  service_.observer().counters().OnRejected();
}

void Ring::PublishLocked() {
  if (cq_.overflowed() > 0) {
    flags_ |= ASYNCD_RING_CQ_OVERFLOW;
  } else {
    flags_ &= ~ASYNCD_RING_CQ_OVERFLOW;
  }
  PublishFlagsLocked();
  if (cq_.Publish()) WakeClient(region_.complete_write_fd);
}

void Ring::PublishFlagsLocked() {
  // The daemon's copy is the truth: what the client may have scribbled
  // there is overwritten, never read back.
  __atomic_store_n(&ctl_->flags, flags_, __ATOMIC_RELEASE);
}

void Ring::CloseLocked(absl::StatusCode status, asyncd_ring_reason reason, core::EndReason cancel) {
  if (cancel != core::EndReason::kNone && cancel_reason_ == core::EndReason::kNone) {
    cancel_reason_ = cancel;
    WakePoller();
  }
  if (closed_) return;  // the first reason stands
  WakePoller();
  closed_ = true;
  __atomic_store_n(&ctl_->closed_status, static_cast<uint32_t>(status), __ATOMIC_RELAXED);
  __atomic_store_n(&ctl_->closed_reason, static_cast<uint32_t>(reason), __ATOMIC_RELAXED);
  flags_ |= ASYNCD_RING_CLOSED;
  PublishFlagsLocked();
}

uint32_t Ring::AllocCtxLocked() {
  const uint32_t i = free_;
  ASYNCD_CHECK(i != kNone);  // at most cq_entries ops are admitted
  OpCtx& c = ctxs_[i];
  free_ = c.next;
  c.live = true;
  c.op_id = 0;
  c.prev = newest_;
  c.next = kNone;
  if (newest_ != kNone) {
    ctxs_[newest_].next = i;
  } else {
    oldest_ = i;
  }
  newest_ = i;
  return i;
}

void Ring::FreeCtxLocked(uint32_t i) {
  OpCtx& c = ctxs_[i];
  if (c.prev != kNone) {
    ctxs_[c.prev].next = c.next;
  } else {
    oldest_ = c.next;
  }
  if (c.next != kNone) {
    ctxs_[c.next].prev = c.prev;
  } else {
    newest_ = c.prev;
  }
  c.live = false;
  c.op_id = 0;
  c.prev = kNone;
  c.next = free_;
  free_ = i;
}

void Ring::WakePoller() { WriteEventfd(wake_fd_); }

}  // namespace asyncd::daemon
