#include "daemon/submit_call.h"

#include <algorithm>
#include <chrono>

#include "daemon/budget.h"
#include "daemon/service.h"
#include "daemon/status.h"
#include "src/core/clock.h"

namespace asyncd::daemon {
namespace {

// The gRPC deadline of a call as a MonoNanos() deadline; 0 = none.
int64_t CallDeadline(grpc::CallbackServerContext* ctx) {
  const auto deadline = ctx->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return 0;
  const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
      deadline - std::chrono::system_clock::now());
  return core::MonoNanos() + left.count();  // passed already if <= now
}

}  // namespace

grpc::ServerUnaryReactor* SubmitCall::Start() {
  absl::Status s = Run();
  if (!s.ok()) {
    service_->observer().counters().OnRejected();
    Finish(ToGrpcStatus(s));
    Unref();
    return this;
  }
  int phase = kStarting;
  if (phase_.compare_exchange_strong(phase, kStarted, std::memory_order_acq_rel)) {
    Unref();  // OnComplete finishes the call
    return this;
  }
  // The op ended before we got here (inline, or on a fast backend thread).
  if (charged_bytes_ == 0) {
    // Nothing to release once the reply is sent, so no OnDone is needed:
    // the default reactor's runs inline, where ours would be handed to
    // gRPC's executor thread (a wake-up per call).
    grpc::ServerUnaryReactor* reactor = ctx_->DefaultReactor();
    reactor->Finish(EndStatus());
    delete this;  // gRPC never sees this reactor
    return reactor;
  }
  Finish(EndStatus());
  Unref();
  return this;
}

void SubmitCall::OnComplete(const core::Op& op) noexcept {
  service_->budget().ReleaseOps(1);  // the bytes stay charged until the reply is sent
  FillCompletion(op, buffers_);
  buffers_.completion.set_tag(req_->op().tag());
  resp_->Swap(&buffers_.completion);
  int phase = kStarting;
  if (phase_.compare_exchange_strong(phase, kCompletedWhileStarting, std::memory_order_acq_rel)) {
    return;  // Start finishes the call
  }
  Finish(EndStatus());
}

grpc::Status SubmitCall::EndStatus() const {
  if (call_deadline_ns_ != 0 && core::MonoNanos() >= call_deadline_ns_) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        "the call's deadline passed; its operation's outcome is in the history");
  }
  return grpc::Status::OK;
}

void SubmitCall::OnCancel() {
  const uint64_t id = op_id_.load(std::memory_order_acquire);
  if (id != 0) service_->dispatcher().Cancel(core::OpId{id}, CancelReason());
}

void SubmitCall::OnDone() {
  service_->budget().ReleaseBytes(charged_bytes_);
  Unref();
}

absl::Status SubmitCall::Run() {
  if (service_->draining()) return Draining();
  call_deadline_ns_ = CallDeadline(ctx_);
  if (call_deadline_ns_ != 0 && core::MonoNanos() >= call_deadline_ns_) {
    return absl::DeadlineExceededError("the call's deadline passed before it arrived; nothing ran");
  }
  auto meta = service_->sessions().Own(service_->Identify(ctx_), req_->session_id());
  if (!meta.ok()) return meta.status();
  // Charge the daemon-wide budgets before the read buffer is allocated.
  const uint32_t max_op_bytes = service_->live().max_op_bytes();
  const uint64_t bytes = PayloadBytes(req_->op());
  const uint64_t charge = bytes <= max_op_bytes ? bytes : 0;  // else ToOpRequest refuses
  if (absl::Status s = service_->budget().Reserve(1, charge); !s.ok()) return s;
  auto refund = [&] {
    service_->budget().ReleaseOps(1);
    service_->budget().ReleaseBytes(charge);
  };
  core::OpRequest request;
  absl::Status s = ToOpRequest(req_->op(), max_op_bytes, call_deadline_ns_, buffers_, request);
  if (s.ok()) s = (*meta)->area.Place(request);
  if (!s.ok()) {
    refund();
    return s;
  }
  request.sink = this;
  session_ = (*meta)->session;
  (*meta)->RenewLease(core::MonoNanos());
  charged_bytes_ = charge;  // before Submit: the completion (and OnDone) may come at once
  absl::StatusOr<core::OpId> id = service_->dispatcher().RunOrSubmit(*session_, request);
  if (!id.ok()) {
    charged_bytes_ = 0;
    refund();
    return NameLimit(id.status());
  }
  op_id_.store(id->value, std::memory_order_release);
  // A cancel that arrived before the id was known would have been missed.
  if (ctx_->IsCancelled()) service_->dispatcher().Cancel(*id, CancelReason());
  return absl::OkStatus();
}

void SubmitCall::Unref() {
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

// A call that ended because its deadline passed times the op out; the
// op's own deadline timer may lose that race to gRPC's, whose timer may
// fire a little before the deadline: allow slack.
core::EndReason SubmitCall::CancelReason() const {
  constexpr int64_t kSlackNs = 50'000'000;
  return call_deadline_ns_ != 0 && core::MonoNanos() + kSlackNs >= call_deadline_ns_
             ? core::EndReason::kDeadline
             : core::EndReason::kRpcCancelled;
}

}  // namespace asyncd::daemon
