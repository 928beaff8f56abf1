#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <vector>

#include "asyncd/v1/asyncd.grpc.pb.h"
#include "daemon/watch_hub.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

class Service;

/// Watch: a bounded queue per watcher (see Watcher), fed by the hub; one
/// write in flight. Registers itself with the service's WatchCalls so that
/// shutdown can end it. Deletes itself in OnDone.
class WatchCall final : public grpc::ServerWriteReactor<v1::WatchEvent> {
 public:
  /// Validates the request and subscribes; or finishes at once with
  /// INVALID_ARGUMENT (bad filter or type), UNAVAILABLE (draining) or
  /// RESOURCE_EXHAUSTED (limits.max_watchers). `service` outlives every
  /// call; `ctx` and `req` are gRPC's. gRPC thread.
  WatchCall(Service* service, grpc::CallbackServerContext* ctx, const v1::WatchRequest* req);

  /// Ends the watch with `status` (shutdown). Any thread; never blocks
  /// beyond the call's lock.
  void Stop(const grpc::Status& status);
  /// An event was written (or the client is gone): writes the next. gRPC thread.
  void OnWriteDone(bool ok) override;
  /// The client cancelled: ends the watch. gRPC thread.
  void OnCancel() override;
  /// Unsubscribes and deletes the call. gRPC thread.
  void OnDone() override;

 private:
  // Starts writing the next queued event unless a write is in flight. The
  // watcher's wake-up (hub's thread) and OnWriteDone.
  void Pump();

  Service* const service_;
  std::shared_ptr<Watcher> watcher_;
  std::mutex mu_;
  v1::WatchEvent current_;
  bool writing_ = false;
  bool done_ = false;
};

/// The Watch calls in progress, so that shutdown can end them. Any thread.
class WatchCalls {
 public:
  void Add(WatchCall* call);
  void Remove(WatchCall* call);
  /// Stops every call with `status`. Holds the set's lock meanwhile, so a
  /// call cannot be deleted under it (OnDone removes it first).
  void StopAll(const grpc::Status& status);

 private:
  std::mutex mu_;
  std::vector<WatchCall*> calls_;
};

}  // namespace asyncd::daemon
