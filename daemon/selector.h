#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "asyncd/v1/asyncd.pb.h"
#include "daemon/caller.h"
#include "src/core/registry.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// Selects ops for listing, cancelling and watching (v1.OpSelector, resolved).
struct Filter {
  uint64_t session_id = 0;
  std::string client;
  uint32_t handle = 0;
  uint32_t kinds = 0;   // bit per core::OpKind; 0 = any
  uint32_t states = 0;  // bit per v1::OpState, as listed (ToProto(state, backend)); 0 = any
  core::BackendKind backend = core::BackendKind::kNone;
  int64_t older_than_ns = 0;
  std::optional<uint32_t> uid;  // set for non-admin callers: only their own ops
  /// Whether the op `s`, owned by `uid` and client `client`, is selected at
  /// `now_ns` (MonoNanos). Pure; any thread.
  bool Matches(const core::OpSnapshot& s, uint32_t uid, std::string_view client,
               int64_t now_ns) const;
  /// The same for a brief (a walk's view) of an op of `session`.
  bool Matches(const core::OpBrief& b, const core::Session& session, int64_t now_ns) const;

 private:
  bool Matches(uint64_t op_session, core::OpKind kind, core::OpState state,
               core::BackendKind op_backend, uint32_t op_handle, int64_t submitted_ns,
               uint32_t op_uid, std::string_view op_client, int64_t now_ns) const;
};

/// Whether a selector must name something.
enum class Criteria {
  kOptional,  // an empty selector selects every op (listing, watching)
  kRequired,  // an empty selector is refused unless all=true (bulk cancel)
};

/// The filter `sel` asks for, as `caller` may see it: a non-admin's filter
/// keeps to the caller's own ops. INVALID_ARGUMENT names the bad field.
/// Pure; any thread.
[[nodiscard]] absl::StatusOr<Filter> ToFilter(const Caller& caller, const v1::OpSelector& sel,
                                              Criteria criteria);

}  // namespace asyncd::daemon
