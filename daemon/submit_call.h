#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "asyncd/v1/asyncd.grpc.pb.h"
#include "daemon/convert.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

class Service;

/// Submit: one op, one call. The reactor is the op's sink; the reply is
/// filled on the backend thread that finishes the op, or on the gRPC thread
/// when the backend ran it inline (Dispatcher::RunOrSubmit). Deletes itself
/// once both Start and gRPC (OnDone) are done with it.
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

  /// The op ended: fills the reply and finishes the call (or leaves that to
  /// Start when it runs inline). Backend thread, or Start's. Never blocks.
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

  Service* const service_;
  grpc::CallbackServerContext* const ctx_;
  const v1::SubmitRequest* const req_;
  v1::Completion* const resp_;
  OpBuffers buffers_;
  std::shared_ptr<core::Session> session_;  // keeps the op's memory while it runs
  uint64_t charged_bytes_ = 0;              // released by OnDone (the reply has left)
  std::atomic<uint64_t> op_id_{0};
  std::atomic<int> refs_{2};  // Start and OnDone
  std::thread::id start_thread_;
  bool finished_inline_ = false;  // the start thread's only
};

}  // namespace asyncd::daemon
