#include "daemon/stream_call.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/budget.h"
#include "daemon/service.h"
#include "daemon/status.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

StreamCall::StreamCall(Service* service, grpc::CallbackServerContext* ctx)
    : service_(service), ctx_(ctx), caller_(service->Identify(ctx)), in_(new Batch) {
  StartRead(in_->request);
}

void StreamCall::OnReadDone(bool ok) {
  if (!ok) {  // the client half-closed, or the stream broke
    std::lock_guard lock(mu_);
    reading_ = false;
    half_closed_ = true;
    MaybeFinishLocked();
    return;
  }
  {
    std::lock_guard lock(mu_);
    // Read no more: what came after the close is dropped; after a restart's
    // start, the client sends it again to the next daemon (no `accepted`),
    // also before the restart's start has reached this stream.
    if (session_ended_ || restarting_.load(std::memory_order_relaxed) ||
        (resumable_ && service_->draining() && service_->restarting())) {
      reading_ = false;
      in_->Reset();
      MaybeFinishLocked();
      return;
    }
  }
  const Batch* handled = in_;
  absl::Status s = Handle();
  // Open and cancel messages are done with; a submit took its batch along.
  if (in_ == handled) in_->Reset();
  std::vector<uint64_t> to_cancel;
  core::Dispatcher& dispatcher = service_->dispatcher();
  {
    std::lock_guard lock(mu_);
    reading_ = false;
    if (s.ok()) {
      MaybeReadLocked();
      // A cancel that came while this read was being handled could not
      // finish the stream then (a read was outstanding): finish it now.
      MaybeFinishLocked();
      return;
    }
    end_status_ = ToGrpcStatus(s);
    half_closed_ = true;
    to_cancel = LiveIdsLocked();
    MaybeFinishLocked();
  }
  CancelIds(dispatcher, to_cancel);
}

void StreamCall::OnWriteDone(bool ok) {
  std::vector<uint64_t> to_cancel;
  core::Dispatcher& dispatcher = service_->dispatcher();
  {
    std::lock_guard lock(mu_);
    writing_ = false;
    if (resumable_ && !carried_ && current_->seq() > acked_) {
      // Kept, charged, until the client acks it.
      unacked_.push_back({std::move(current_), current_completions_, current_charged_});
      unacked_completions_ += current_completions_;
    } else {
      service_->budget().ReleaseBytes(current_charged_);  // written, or never will be
      RecycleMessageLocked(std::move(current_), current_data_bytes_);
    }
    current_charged_ = 0;
    if (!ok) {
      // The client is gone: nothing more can be delivered.
      broken_ = true;  // the outbox is dropped with the reactor
      to_cancel = LiveIdsLocked();
    }
    WriteNextLocked();
    MaybeReadLocked();
    MaybeFinishLocked();
  }
  CancelIds(dispatcher, to_cancel);
}

void StreamCall::OnCancel() {
  std::vector<uint64_t> to_cancel;
  core::Dispatcher& dispatcher = service_->dispatcher();
  {
    std::lock_guard lock(mu_);
    broken_ = true;
    to_cancel = LiveIdsLocked();
    MaybeFinishLocked();  // nothing may be outstanding to finish it otherwise
  }
  CancelIds(dispatcher, to_cancel);
}

void StreamCall::OnComplete(const core::Op& op) noexcept {
  refs_.fetch_add(1, std::memory_order_relaxed);
  auto* ctx = reinterpret_cast<OpCtx*>(op.cookie);
  service_->budget().ReleaseOps(1);
  FillCompletion(op, ctx->buffers);
  ctx->buffers.completion.set_tag(ctx->tag);
  if (resumable_) {
    ctx->again = Carry::RunAgainLater(op, *ctx->request, ctx->buffers.completion);
    // At a restart the state must reach the carry before the op retires:
    // the handover waits for no more than that.
    if (restarting_.load(std::memory_order_acquire)) {
      OnDeferred(std::span<const uint64_t>(&op.cookie, 1));
      return;
    }
  }
  // In a backend's batch, take mu_ once for all of this stream's ops.
  if (core::CompletionBatch::Defer(this, op.cookie)) return;  // keeps the ref
  OnDeferred(std::span<const uint64_t>(&op.cookie, 1));
}

void StreamCall::OnDeferred(std::span<const uint64_t> cookies) noexcept {
  {
    std::lock_guard lock(mu_);
    for (uint64_t cookie : cookies) DeliverLocked(reinterpret_cast<OpCtx*>(cookie));
    WriteNextLocked();
    MaybeReadLocked();
    MaybeFinishLocked();
  }
  Unref(static_cast<int>(cookies.size()));
}

void StreamCall::OnSessionEnded() noexcept {
  std::lock_guard lock(mu_);
  session_ended_ = true;
  half_closed_ = true;  // read no more
  end_status_ = grpc::Status(
      grpc::StatusCode::FAILED_PRECONDITION,
      absl::StrCat("session ", meta_->session->id(), " was closed; open a new one"));
  MaybeFinishLocked();
}

void StreamCall::OnDraining(bool restart) noexcept {
  std::lock_guard lock(mu_);
  draining_ = true;
  // Only a stream still going: one ending or broken keeps nothing.
  if (restart && resumable_ && !finished_ && !broken_ && end_status_.ok()) {
    restarting_.store(true, std::memory_order_release);
    half_closed_ = true;  // read no more
    end_status_ = grpc::Status(
        grpc::StatusCode::UNAVAILABLE,
        absl::StrCat("the daemon is restarting: resume session ", meta_->session->id(),
                     " (StreamOpen.resume_after)"));
  }
  if (end_status_.ok()) {
    end_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                               "the daemon is draining: its operations are done; retry elsewhere");
  }
  MaybeFinishLocked();
}

void StreamCall::OnCarriedEnd(uint64_t op_id, v1::Completion* completion) noexcept {
  std::lock_guard lock(mu_);
  std::erase(carried_live_, op_id);
  --inflight_;
  if (completion != nullptr && !broken_) AppendCompletionLocked(*completion, 0);
  WriteNextLocked();
  MaybeReadLocked();
  MaybeFinishLocked();
}

void StreamCall::OnDone() {
  if (meta_ != nullptr) {
    bool carried;
    {
      std::lock_guard lock(mu_);
      ReleaseLeaseLocked();
      LetGoOfCarryLocked();
      carried = carried_;
    }
    meta_->ForgetListener(this);
    // A session whose stream a restart carried over waits for it to resume.
    if (meta_->stream_owned && !carried) {
      (void)service_->sessions().End(meta_->session->id(), core::EndReason::kRpcCancelled);
    }
  }
  Unref();
}

StreamCall::~StreamCall() {
  for (OpCtx* c : free_ctx_) delete c;
  for (Batch* b : spare_batches_) delete b;
  delete in_;
  uint64_t charged = current_charged_;
  for (const Outgoing& o : outbox_) charged += o.charged;
  for (const Unacked& u : unacked_) charged += u.charged;
  service_->budget().ReleaseBytes(charged);
}

void StreamCall::Unref(int n) {
  if (refs_.fetch_sub(n, std::memory_order_acq_rel) == n) delete this;
}

// A completed op's result goes out (or is dropped if nobody can take it).
void StreamCall::DeliverLocked(OpCtx* ctx) {
  Unlink(ctx);
  --inflight_;
  if (ctx->again) {  // the next daemon runs it again: no completion here
    again_.push_back(*std::move(ctx->again));
    ctx->again.reset();
    service_->budget().ReleaseBytes(ctx->charged);
  } else if (!broken_) {
    AppendCompletionLocked(ctx->buffers.completion, ctx->charged);
  } else {
    service_->budget().ReleaseBytes(ctx->charged);  // dropped: nobody to deliver to
  }
  ctx->charged = 0;
  FreeCtxLocked(ctx);
}

absl::Status StreamCall::Handle() {
  const v1::StreamRequest& in = *in_->request;
  switch (in.msg_case()) {
    case v1::StreamRequest::kOpen:
      return HandleOpen(in.open());
    case v1::StreamRequest::kSubmit: {
      if (meta_ == nullptr) return absl::InvalidArgumentError("the first message must be open");
      // Acks share the request stream with submits, so unacknowledged
      // messages cannot stop reading; a client that does not ack is ended
      // instead, which bounds what it makes the daemon keep.
      const size_t most_unacked = 2 * size_t{service_->config().max_inflight_per_session};
      size_t unacked;
      size_t unacked_messages;
      {
        std::lock_guard lock(mu_);
        unacked = unacked_completions_;
        unacked_messages = unacked_.size();
      }
      if (unacked > most_unacked || unacked_messages > most_unacked) {
        return absl::ResourceExhaustedError(absl::StrCat(
            unacked, " completions in ", unacked_messages,
            " messages not acknowledged (StreamRequest.ack), over twice "
            "limits.max_inflight_per_session"));
      }
      return HandleSubmit();
    }
    case v1::StreamRequest::kCancel: {
      if (meta_ == nullptr) return absl::InvalidArgumentError("the first message must be open");
      absl::Status status;
      v1::CancelResponse resp = service_->canceller().Cancel(caller_, in.cancel(), &status);
      // A refused cancel is answered in-band, with why, not by ending the stream.
      resp.set_request_tag(in.cancel().request_tag());
      if (!status.ok()) {
        resp.set_status_code(static_cast<int32_t>(status.code()));
        resp.set_message(std::string(status.message()));
      }
      Outgoing out{.msg = std::make_unique<v1::StreamResponse>()};
      *out.msg->mutable_cancel_result() = std::move(resp);
      std::lock_guard lock(mu_);
      outbox_.push_back(std::move(out));
      WriteNextLocked();
      return absl::OkStatus();
    }
    case v1::StreamRequest::kAck:
      return HandleAck(in.ack());
    default:
      return absl::InvalidArgumentError(
          "StreamRequest: none of open, submit, cancel or ack is set");
  }
}

absl::Status StreamCall::HandleOpen(const v1::StreamOpen& open) {
  if (meta_ != nullptr) return absl::InvalidArgumentError("open: sent twice");
  if (open.resume_after() != 0 && (!open.resumable() || open.session_id() == 0)) {
    return absl::InvalidArgumentError(
        "open.resume_after: only to resume a session (with session_id and resumable)");
  }
  if (service_->draining()) return Draining();
  std::shared_ptr<SessionMeta> meta;
  uint32_t lease_ms = 0;
  const bool creates = open.session_id() == 0;
  if (creates) {
    auto created =
        service_->sessions().Open(caller_, open.client_name(), 0, SessionLifetime::kBoundToStream);
    if (!created.ok()) return created.status();
    meta = *created;
  } else {
    auto owned = service_->sessions().Own(caller_, open.session_id());
    if (!owned.ok()) return owned.status();
    absl::StatusOr<uint32_t> lease =
        service_->sessions().LeaseMs(open.lease_ms(), (*owned)->lease_ms.load(), "open.lease_ms");
    if (!lease.ok()) return lease.status();
    meta = *owned;
    lease_ms = *lease;
  }
  // A session bound to its stream has no lease, resumed or not; a refused
  // attach changes nothing.
  if (!creates) lease_ms = meta->stream_owned ? 0 : lease_ms;
  Outgoing out{.msg = std::make_unique<v1::StreamResponse>()};
  v1::StreamOpened* opened = out.msg->mutable_opened();
  opened->set_session_id(meta->session->id());
  opened->set_lease_ms(creates ? meta->lease_ms.load() : lease_ms);
  *opened->mutable_limits() = service_->LimitsProto();
  if (open.resumable()) {
    // Before the stream attaches: a restart's start cannot reach it half
    // taken.
    absl::StatusOr<std::shared_ptr<Carry>> carry = meta->AttachResumable(creates);
    absl::Status taken = carry.status();
    if (carry.ok()) {
      std::lock_guard lock(mu_);
      carry_ = *carry;
      resumable_ = true;  // before the carry can hand this stream anything
      outbox_.push_back(std::move(out));
      taken = TakeCarryLocked(open);
      if (!taken.ok()) {
        outbox_.clear();
        resumable_ = false;
      }
    }
    if (!taken.ok()) {
      if (carry.ok()) meta->DetachResumable();
      carry_.reset();
      if (creates) (void)service_->sessions().End(meta->session->id(), core::EndReason::kRpcCancelled);
      return taken;
    }
    service_->ResumableAttached();
  } else {
    std::lock_guard lock(mu_);
    outbox_.push_back(std::move(out));
  }
  if (!creates) meta->lease_ms.store(lease_ms);
  meta_ = std::move(meta);
  meta_->Attach(this);
  {
    std::lock_guard lock(mu_);
    WriteNextLocked();
  }
  // A drain that began before the attach did not see this stream.
  if (service_->draining()) OnDraining(service_->restarting());
  return absl::OkStatus();
}

absl::Status StreamCall::TakeCarryLocked(const v1::StreamOpen& open) {
  absl::StatusOr<Carry::Taken> taken = carry_->Take(this, open.resume_after());
  if (!taken.ok()) return taken.status();
  next_seq_ = taken->next_seq;
  for (v1::StreamResponse& m : taken->replay) {
    Outgoing o{.msg = std::make_unique<v1::StreamResponse>(std::move(m))};
    if (o.msg->has_completions()) {
      o.completions = static_cast<uint32_t>(o.msg->completions().completions_size());
      for (const v1::Completion& c : o.msg->completions().completions()) {
        o.data_bytes += c.data().size();
      }
      undelivered_ += o.completions;
    }
    outbox_.push_back(std::move(o));
  }
  for (v1::Completion& c : taken->undelivered) AppendCompletionLocked(c, 0);
  carried_live_ = std::move(taken->running);
  inflight_ += carried_live_.size();
  return absl::OkStatus();
}

absl::Status StreamCall::HandleAck(uint64_t seq) {
  if (meta_ == nullptr) return absl::InvalidArgumentError("the first message must be open");
  if (!resumable_) return absl::InvalidArgumentError("ack: the stream is not resumable");
  std::lock_guard lock(mu_);
  if (seq >= next_seq_) {
    return absl::InvalidArgumentError(
        absl::StrCat("ack: ", seq, " is past the last message sent, ", next_seq_ - 1));
  }
  acked_ = std::max(acked_, seq);
  while (!unacked_.empty() && unacked_.front().msg->seq() <= seq) {
    unacked_completions_ -= unacked_.front().completions;
    service_->budget().ReleaseBytes(unacked_.front().charged);
    unacked_.pop_front();
  }
  return absl::OkStatus();
}

void StreamCall::CarryOverLocked() {
  carried_ = true;
  std::vector<v1::StreamResponse> messages;
  uint64_t charged = 0;
  for (Unacked& u : unacked_) {
    messages.push_back(std::move(*u.msg));
    charged += u.charged;
  }
  unacked_.clear();
  unacked_completions_ = 0;
  // The one being written comes after those, and may not arrive.
  if (writing_ && current_->seq() > acked_) messages.push_back(*current_);
  for (Outgoing& o : outbox_) {
    charged += o.charged;
    if (o.msg->has_opened()) continue;  // a resumed stream gets its own
    if (o.msg->seq() == 0) o.msg->set_seq(next_seq_++);
    messages.push_back(std::move(*o.msg));
  }
  service_->budget().ReleaseBytes(charged);
  outbox_.clear();
  undelivered_ = 0;
  carry_->Keep(next_seq_, std::move(messages), std::move(again_));
  again_.clear();
}

absl::Status StreamCall::HandleSubmit() {
  // Once per batch: it is refused whole or not at all. A resumable stream
  // leaves one that comes once a restart has begun unanswered, for its
  // client to send again to the next daemon.
  const bool draining = service_->draining();
  if (draining && resumable_ && service_->restarting()) return absl::OkStatus();
  // The batch stays with its ops; the next read gets another.
  Batch* batch = in_;
  const v1::SubmitBatch& sb = batch->request->submit();
  const int n = sb.ops_size();
  // Reserve the Accepted message's place before any op can complete.
  Outgoing* accepted_slot;
  std::vector<OpCtx*>& ctxs = scratch_ctxs_;
  ctxs.assign(n, nullptr);
  {
    std::lock_guard lock(mu_);
    in_ = TakeBatchLocked();
    batch->users = 1;
    submitting_ = true;
    outbox_.push_back(Outgoing{.msg = TakeMessageLocked(kAcceptedKind), .ready = false});
    accepted_slot = &outbox_.back();
    for (int i = 0; i < n; ++i) {
      if (free_ctx_.empty()) {
        ctxs[i] = new OpCtx;
      } else {
        ctxs[i] = free_ctx_.back();
        free_ctx_.pop_back();
      }
      ctxs[i]->op_id = 0;
    }
    batch->users += n;
  }
  std::vector<core::OpRequest>& requests = scratch_requests_;
  std::vector<int>& index = scratch_index_;  // request -> op position
  requests.clear();
  index.clear();
  std::vector<absl::Status>& rejected = scratch_rejected_;
  rejected.assign(n, absl::OkStatus());
  const int64_t no_deadline = 0;
  const uint32_t max_batch_ops = service_->live().max_batch_ops();
  const uint32_t max_op_bytes = service_->live().max_op_bytes();
  const bool over_batch = static_cast<uint32_t>(n) > max_batch_ops;
  for (int i = 0; i < n; ++i) {
    OpCtx* c = ctxs[i];
    c->tag = sb.ops(i).tag();
    c->request = &sb.ops(i);
    c->batch = batch;
    if (draining) {
      rejected[i] = Draining();
      continue;
    }
    if (over_batch) {
      rejected[i] = absl::ResourceExhaustedError(
          absl::StrCat("batch of ", n, " ops is over max_batch_ops ", max_batch_ops));
      continue;
    }
    // Charge the daemon-wide budgets before the read buffer is allocated.
    const uint64_t bytes = PayloadBytes(sb.ops(i));
    const uint64_t charge = bytes <= max_op_bytes ? bytes : 0;  // else ToOpRequest refuses
    rejected[i] = service_->budget().Reserve(1, charge);
    if (!rejected[i].ok()) continue;
    c->charged = charge;
    core::OpRequest r;
    rejected[i] = ToOpRequest(sb.ops(i), max_op_bytes, no_deadline, c->buffers, r);
    if (rejected[i].ok()) rejected[i] = meta_->area.Place(r);
    if (!rejected[i].ok()) {
      service_->budget().ReleaseOps(1);
      service_->budget().ReleaseBytes(c->charged);
      c->charged = 0;
      continue;
    }
    r.sink = this;
    r.cookie = reinterpret_cast<uint64_t>(c);
    requests.push_back(r);
    index.push_back(i);
  }
  std::vector<absl::StatusOr<core::OpId>>& ids = scratch_ids_;
  ids.assign(requests.size(), absl::StatusOr<core::OpId>());
  {
    // Count them in flight first: completions may arrive during SubmitBatch.
    std::lock_guard lock(mu_);
    inflight_ += requests.size();
    for (size_t j = 0; j < requests.size(); ++j) Link(ctxs[index[j]]);
  }
  if (!requests.empty()) service_->dispatcher().SubmitBatch(*meta_->session, requests, ids);
  std::vector<uint64_t> to_cancel;
  std::unique_lock lock(mu_);
  v1::Accepted& accepted = *accepted_slot->msg->mutable_accepted();
  accepted.set_batch_tag(sb.batch_tag());
  // An op may have completed already (its ctx is back in the pool, kept
  // there while submitting_): ids are read from `ids`, not from ctxs.
  std::vector<uint64_t>& op_ids = scratch_op_ids_;
  op_ids.assign(n, 0);
  for (size_t j = 0; j < requests.size(); ++j) {
    if (ids[j].ok()) {
      op_ids[index[j]] = ids[j]->value;
      if (ctxs[index[j]]->linked) ctxs[index[j]]->op_id = ids[j]->value;
    } else {
      rejected[index[j]] = NameLimit(ids[j].status());
      service_->budget().ReleaseOps(1);
      service_->budget().ReleaseBytes(ctxs[index[j]]->charged);
      ctxs[index[j]]->charged = 0;
    }
  }
  if (broken_) to_cancel = LiveIdsLocked();  // broke during the submit
  for (int i = 0; i < n; ++i) {
    v1::AcceptedOp* a = accepted.add_ops();
    a->set_tag(sb.ops(i).tag());
    a->set_op_id(op_ids[i]);
  }
  accepted_slot->ready = true;
  for (int i = 0; i < n; ++i) {
    if (rejected[i].ok()) continue;
    service_->observer().counters().OnRejected();
    if (ctxs[i]->linked) {  // was submitted, then refused
      Unlink(ctxs[i]);
      --inflight_;
    }
    FillRejected(rejected[i], sb.ops(i).tag(), ctxs[i]->buffers.completion);
    AppendCompletionLocked(ctxs[i]->buffers.completion, 0);
    FreeCtxLocked(ctxs[i]);
  }
  ReleaseBatchLocked(batch);  // HandleSubmit's use
  submitting_ = false;
  while (free_ctx_.size() > kSpareCtxs) {
    delete free_ctx_.back();
    free_ctx_.pop_back();
  }
  if (meta_->lease_ms.load() != 0) {
    meta_->RenewLease(core::MonoNanos());
  }
  WriteNextLocked();
  lock.unlock();
  CancelIds(service_->dispatcher(), to_cancel);
  return absl::OkStatus();
}

void StreamCall::Link(OpCtx* c) {
  c->linked = true;
  c->prev = nullptr;
  c->next = live_;
  if (live_ != nullptr) live_->prev = c;
  live_ = c;
}

void StreamCall::Unlink(OpCtx* c) {
  if (c->prev != nullptr) c->prev->next = c->next;
  if (c->next != nullptr) c->next->prev = c->prev;
  if (live_ == c) live_ = c->next;
  c->prev = c->next = nullptr;
  c->linked = false;
}

// Moves `c` (by swap: no copy, and `c` gets a cleared spare) into the
// last unsent batch: fewer, larger messages, each well under
// max_message_bytes (read data counted; the rest is small).
void StreamCall::AppendCompletionLocked(v1::Completion& c, uint64_t charged) {
  const uint64_t data = c.data().size();
  const uint64_t cap = std::min<uint64_t>(4 << 20, service_->config().max_message_bytes / 2);
  // A numbered message (a resumed stream's replay) stays as it was sent.
  if (outbox_.empty() || !outbox_.back().msg->has_completions() || outbox_.back().msg->seq() != 0 ||
      outbox_.back().completions >= 1024 ||
      (outbox_.back().completions > 0 && outbox_.back().data_bytes + data > cap)) {
    outbox_.push_back(Outgoing{.msg = TakeMessageLocked(kCompletionsKind)});
  }
  Outgoing& out = outbox_.back();
  out.msg->mutable_completions()->add_completions()->Swap(&c);
  ++out.completions;
  out.data_bytes += data;
  out.charged += charged;
  ++undelivered_;
}

void StreamCall::WriteNextLocked() {
  if (writing_ || broken_ || finished_ || outbox_.empty() || !outbox_.front().ready) return;
  current_ = std::move(outbox_.front().msg);
  current_charged_ = outbox_.front().charged;
  current_data_bytes_ = outbox_.front().data_bytes;
  const uint32_t completions = outbox_.front().completions;
  undelivered_ -= completions;
  outbox_.pop_front();
  current_completions_ = completions;
  // Numbered as it goes out (a replayed message keeps its number); kept
  // once written until the client acks it (OnWriteDone).
  if (resumable_ && !current_->has_opened() && current_->seq() == 0) {
    current_->set_seq(next_seq_++);
  }
  writing_ = true;
  StartWrite(current_.get());
}

std::unique_ptr<v1::StreamResponse> StreamCall::TakeMessageLocked(MessageKind kind) {
  auto& spare = spare_messages_[kind];
  if (!spare.empty()) {
    auto msg = std::move(spare.back());
    spare.pop_back();
    return msg;
  }
  auto msg = std::make_unique<v1::StreamResponse>();
  if (kind == kCompletionsKind) {
    msg->mutable_completions();
  } else {
    msg->mutable_accepted();
  }
  return msg;
}

void StreamCall::RecycleMessageLocked(std::unique_ptr<v1::StreamResponse> msg,
                                      uint64_t data_bytes) {
  if (msg == nullptr || data_bytes > kRecycledMessageData) return;
  msg->set_seq(0);
  MessageKind kind;
  if (msg->has_completions()) {
    msg->mutable_completions()->Clear();
    kind = kCompletionsKind;
  } else if (msg->has_accepted()) {
    msg->mutable_accepted()->Clear();
    kind = kAcceptedKind;
  } else {
    return;
  }
  if (spare_messages_[kind].size() < kSpareMessages) {
    spare_messages_[kind].push_back(std::move(msg));
  }
}

StreamCall::Batch* StreamCall::TakeBatchLocked() {
  if (spare_batches_.empty()) return new Batch;
  Batch* b = spare_batches_.back();
  spare_batches_.pop_back();
  return b;
}

void StreamCall::ReleaseBatchLocked(Batch* b) {
  if (--b->users > 0) return;
  if (spare_batches_.size() >= kSpareBatches) {
    delete b;
    return;
  }
  b->Reset();
  spare_batches_.push_back(b);
}

// The ctx's op is over: its batch use ends, and it is kept for the next op
// with its Completion cleared (a small read buffer stays allocated).
void StreamCall::FreeCtxLocked(OpCtx* ctx) {
  if (ctx->batch != nullptr) {
    ReleaseBatchLocked(ctx->batch);
    ctx->batch = nullptr;
  }
  // HandleSubmit may still hold it (it trims the pool when it is done).
  if (!submitting_ && free_ctx_.size() >= kSpareCtxs) {
    delete ctx;
    return;
  }
  ctx->request = nullptr;
  ctx->again.reset();
  v1::Completion& c = ctx->buffers.completion;
  if (c.data().capacity() > kKeptReadBuffer) {
    c = v1::Completion();
  } else {
    c.Clear();
  }
  free_ctx_.push_back(ctx);
}

void StreamCall::MaybeReadLocked() {
  if (reading_ || half_closed_ || broken_ || finished_) return;
  // Flow control: stop taking work while the client is not taking results.
  // Completions count one by one (a coalesced message holds up to 1024),
  // so a client that never reads makes us hold at most about
  // max_inflight_per_session results plus the message gRPC is writing.
  if (inflight_ + undelivered_ + outbox_.size() >= service_->config().max_inflight_per_session) {
    return;
  }
  reading_ = true;
  StartRead(in_->request);
}

// Cancels run without mu_: a backend may complete a cancelled op on the
// cancelling thread, and OnComplete takes mu_.
std::vector<uint64_t> StreamCall::LiveIdsLocked() const {
  std::vector<uint64_t> ids;
  for (const OpCtx* c = live_; c != nullptr; c = c->next) {
    if (c->op_id != 0) ids.push_back(c->op_id);
  }
  ids.insert(ids.end(), carried_live_.begin(), carried_live_.end());
  return ids;
}

// Static: the reactor may be gone once the lock is released.
void StreamCall::CancelIds(core::Dispatcher& dispatcher, const std::vector<uint64_t>& ids) {
  for (uint64_t id : ids) dispatcher.Cancel(core::OpId{id}, core::EndReason::kRpcCancelled);
}

void StreamCall::MaybeFinishLocked() {
  // At a restart, the state goes to the carry once no op is left to end.
  if (restarting_.load(std::memory_order_relaxed) && !carried_ && inflight_ == 0 &&
      !submitting_) {
    CarryOverLocked();
  }
  // A read may stay outstanding once the session ended or the daemon
  // drains: gRPC fails it when the call finishes.
  const bool ending = session_ended_ || draining_;
  if (finished_ || (reading_ && !ending) || !(half_closed_ || broken_ || ending) || inflight_ > 0) {
    return;
  }
  if (!broken_ && (writing_ || !outbox_.empty())) return;  // deliver everything first
  if (writing_) return;  // a failed write still owes us OnWriteDone
  finished_ = true;
  // Before the client can see the end: a KeepAlive it sends next finds the
  // stream detached, and a resumable stream it opens next may attach.
  ReleaseLeaseLocked();
  LetGoOfCarryLocked();
  Finish(end_status_);
}

void StreamCall::LetGoOfCarryLocked() {
  if (!resumable_ || let_go_) return;
  let_go_ = true;
  carry_->Release(this, next_seq_);
  meta_->DetachResumable();
  service_->ResumableDone();
}

void StreamCall::ReleaseLeaseLocked() {
  if (meta_ == nullptr || lease_released_) return;
  lease_released_ = true;
  meta_->ReleaseLease(core::MonoNanos());
}
}  // namespace asyncd::daemon
