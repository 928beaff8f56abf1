#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "asyncd/v1/asyncd.grpc.pb.h"
#include "daemon/convert.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

class Service;

/// Submit: one op, one call. The reactor is the op's sink; the reply is
/// filled on the thread that finishes the op: a backend's, or the gRPC
/// thread when the backend ran it inline (Dispatcher::RunOrSubmit), or any
/// thread that completes it later (a cancel of a queued op). Whoever comes
/// second of Start and OnComplete finishes the call: a handshake on phase_,
/// never a guess from thread ids. The call ends DEADLINE_EXCEEDED whenever
/// its deadline has passed by the time the op ends. Deletes itself once both
/// Start and gRPC (OnDone) are done with it.
class SubmitCall final : public grpc::ServerUnaryReactor, public core::CompletionSink {
 public:
  /// `service` outlives every call; `ctx`, `req` and `resp` are gRPC's,
  /// valid until OnDone.
  SubmitCall(Service* service, grpc::CallbackServerContext* ctx, const v1::SubmitRequest* req,
             v1::Completion* resp)
      : service_(service), ctx_(ctx), req_(req), resp_(resp) {}

  /// Validates, charges the budgets and submits the op; returns the reactor
  /// the handler returns: this one, or the context's default reactor when
  /// the op ran inline and charged no payload bytes (then this object is
  /// already deleted). The gRPC thread of the handler; never blocks.
  grpc::ServerUnaryReactor* Start();

  /// The op ended: fills the reply and finishes the call, or leaves that to
  /// Start when Start has not returned from the submission yet. Any thread.
  /// Never blocks.
  void OnComplete(const core::Op& op) noexcept override;
  /// The client cancelled, or the deadline passed: cancels the op (timed
  /// out for a deadline). gRPC thread.
  void OnCancel() override;
  /// The reply has left: releases the payload bytes. gRPC thread.
  void OnDone() override;

 private:
  absl::Status Run();
  void Unref();
  core::EndReason CancelReason() const;
  // The status the call ends with now that its op has ended.
  grpc::Status EndStatus() const;

  enum Phase : int { kStarting, kStarted, kCompletedWhileStarting };

  Service* const service_;
  grpc::CallbackServerContext* const ctx_;
  const v1::SubmitRequest* const req_;
  v1::Completion* const resp_;
  OpBuffers buffers_;
  std::shared_ptr<core::Session> session_;  // keeps the op's memory while it runs
  uint64_t charged_bytes_ = 0;              // released by OnDone (the reply has left)
  std::atomic<uint64_t> op_id_{0};
  std::atomic<int> refs_{2};  // Start and OnDone
  std::atomic<int> phase_{kStarting};
  int64_t call_deadline_ns_ = 0;  // MonoNanos; 0 = none
};

}  // namespace asyncd::daemon
