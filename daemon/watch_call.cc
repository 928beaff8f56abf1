#include "daemon/watch_call.h"

#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "daemon/selector.h"
#include "daemon/service.h"
#include "daemon/status.h"

namespace asyncd::daemon {

WatchCall::WatchCall(Service* service, grpc::CallbackServerContext* ctx,
                     const v1::WatchRequest* req)
    : service_(service) {
  const Caller caller = service->Identify(ctx);
  absl::StatusOr<Filter> filter = ToFilter(caller, req->filter(), Criteria::kOptional);
  uint32_t types = 0;
  for (int t : req->types()) {
    if (t < 1 || t > v1::EventType_MAX) {
      filter = absl::InvalidArgumentError(absl::StrCat("types: unknown event type ", t));
      break;
    }
    if (t == v1::EVENT_TYPE_DISPATCHED || t == v1::EVENT_TYPE_STARTED) {
      filter = absl::InvalidArgumentError(
          absl::StrCat("types: ", v1::EventType_Name(t),
                       " is in an operation's timeline (GetOperation) only; Watch never sends it"));
      break;
    }
    types |= 1u << t;
  }
  if (!filter.ok()) {
    Finish(ToGrpcStatus(filter.status()));
    return;
  }
  watcher_ = std::make_shared<Watcher>(*filter, types, service->config().watch_buffer_events,
                                       [this] { Pump(); });
  if (service->draining()) {
    watcher_.reset();
    Finish(ToGrpcStatus(Draining()));
    return;
  }
  if (!service->observer().watch_hub().Add(watcher_, service->config().max_watchers)) {
    watcher_.reset();
    Finish(ToGrpcStatus(absl::ResourceExhaustedError(absl::StrCat(
        "the daemon serves the maximum of ", service->config().max_watchers, " watchers"))));
    return;
  }
  service->watch_calls().Add(this);
}

void WatchCall::Stop(const grpc::Status& status) {
  std::lock_guard lock(mu_);
  if (done_) return;
  done_ = true;
  Finish(status);
}

void WatchCall::OnWriteDone(bool ok) {
  {
    std::lock_guard lock(mu_);
    writing_ = false;
    if (!ok && !done_) {
      done_ = true;
      Finish(grpc::Status::CANCELLED);
      return;
    }
  }
  Pump();
}

void WatchCall::OnCancel() { Stop(grpc::Status::CANCELLED); }

void WatchCall::OnDone() {
  if (watcher_ != nullptr) {
    service_->observer().watch_hub().Remove(watcher_.get());
    service_->watch_calls().Remove(this);
  }
  delete this;
}

void WatchCall::Pump() {
  std::lock_guard lock(mu_);
  if (writing_ || done_) return;
  std::optional<v1::WatchEvent> next = watcher_->Pop();
  if (!next) return;
  current_ = std::move(*next);
  writing_ = true;
  StartWrite(&current_);
}

void WatchCalls::Add(WatchCall* call) {
  std::lock_guard lock(mu_);
  calls_.push_back(call);
}

void WatchCalls::Remove(WatchCall* call) {
  std::lock_guard lock(mu_);
  std::erase(calls_, call);
}

void WatchCalls::StopAll(const grpc::Status& status) {
  std::lock_guard lock(mu_);
  for (WatchCall* call : calls_) call->Stop(status);
}

}  // namespace asyncd::daemon
