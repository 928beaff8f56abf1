#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "asyncd/v1/asyncd.pb.h"
#include "daemon/caller.h"
#include "daemon/counters.h"
#include "daemon/history.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// Cancel, for the Cancel RPC and a stream's cancel messages: one op by id,
/// or every in-flight op a selector matches. Answers per op in the spirit of
/// aio_cancel (cancelled, not cancellable, already done, not found), with
/// counts. A finished op's id answers ALREADY_DONE while it is in the
/// history. Requests that reach core are counted and told to watchers by the
/// observer (as every end request is); the answers given here from the
/// history or for a missing id are counted here.
class Canceller {
 public:
  /// At most this many per-op outcomes in a response; the counts cover all.
  static constexpr size_t kMaxOutcomes = 1000;

  /// Every reference must outlive the canceller.
  Canceller(core::Registry& registry, core::Dispatcher& dispatcher, Counters& counters,
            const History& history)
      : registry_(registry), dispatcher_(dispatcher), counters_(counters), history_(history) {}

  /// Requests the end of what `req` names, as `caller` may: a non-admin
  /// cancels only its own uid's ops (by id, another uid's op is
  /// PERMISSION_DENIED, also while it is in the history; a selector keeps to
  /// its own). The end reason is
  /// CLIENT_REQUEST for the op's owner, else OPERATOR_REQUEST. Sets
  /// `*status` (INVALID_ARGUMENT: op_id 0, bad or empty selector, no
  /// target; PERMISSION_DENIED) and returns the answer, which on error
  /// carries only request_tag. Never blocks: ends are requested, not awaited;
  /// a backend may complete a cancelled op on this thread. Any thread.
  v1::CancelResponse Cancel(const Caller& caller, const v1::CancelRequest& req,
                            absl::Status* status);

 private:
  core::Registry& registry_;
  core::Dispatcher& dispatcher_;
  Counters& counters_;
  const History& history_;
};

}  // namespace asyncd::daemon
