#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "asyncd/v1/asyncd.pb.h"
#include "daemon/caller.h"
#include "daemon/history.h"
#include "src/core/registry.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// What operators and clients can look at: in-flight ops (in pages, from the
/// registry) and finished ones (from the history). A non-admin sees only its
/// own uid's ops. Reads snapshots: never stops submission or completion.
/// Any thread; never blocks beyond the registry's and history's short locks.
class Listing {
 public:
  static constexpr uint32_t kDefaultPageSize = 100;  // for page_size or limit 0
  static constexpr uint32_t kMaxPageSize = 1000;     // larger ones are cut to this

  /// `registry` and `history` must outlive the listing.
  Listing(const core::Registry& registry, const History& history)
      : registry_(registry), history_(history) {}

  /// ListOperations: one page of the in-flight ops the filter matches, in
  /// op id order, with the token of the next page (the last id returned)
  /// when more match, and how many match in all. INVALID_ARGUMENT (bad
  /// filter, bad page_token); `*resp` is then untouched.
  [[nodiscard]] absl::Status ListOperations(const Caller& caller,
                                            const v1::ListOperationsRequest& req,
                                            v1::ListOperationsResponse* resp) const;
  /// GetOperation: the op with its timeline, in flight or from the history.
  /// INVALID_ARGUMENT (op_id 0), NOT_FOUND (neither in flight nor in the
  /// history), PERMISSION_DENIED (another uid's).
  [[nodiscard]] absl::Status GetOperation(const Caller& caller, const v1::GetOperationRequest& req,
                                          v1::OperationInfo* resp) const;
  /// ListHistory: the most recent (or the slowest) finished ops the filter
  /// matches, at most `limit`. INVALID_ARGUMENT (bad filter).
  [[nodiscard]] absl::Status ListHistory(const Caller& caller, const v1::ListHistoryRequest& req,
                                         v1::ListHistoryResponse* resp) const;

 private:
  const core::Registry& registry_;
  const History& history_;
};

}  // namespace asyncd::daemon
