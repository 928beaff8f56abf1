#include "daemon/selector.h"

#include "absl/strings/str_cat.h"
#include "daemon/convert.h"

namespace asyncd::daemon {

bool Filter::Matches(uint64_t op_session, core::OpKind kind, core::OpState state,
                     core::BackendKind op_backend, uint32_t op_handle, int64_t submitted_ns,
                     uint32_t op_uid, std::string_view op_client, int64_t now_ns) const {
  if (uid && *uid != op_uid) return false;
  if (session_id != 0 && op_session != session_id) return false;
  if (!client.empty() && client != op_client) return false;
  if (handle != 0 && op_handle != handle) return false;
  if (kinds != 0 && (kinds & (1u << static_cast<int>(kind))) == 0) return false;
  if (states != 0 && (states & (1u << ToProto(state, op_backend))) == 0) return false;
  if (backend != core::BackendKind::kNone && op_backend != backend) return false;
  if (older_than_ns > 0 && now_ns - submitted_ns < older_than_ns) return false;
  return true;
}

bool Filter::Matches(const core::OpSnapshot& s, uint32_t op_uid, std::string_view op_client,
                     int64_t now_ns) const {
  return Matches(s.session_id, s.kind, s.state, s.backend, s.handle, s.submitted_ns, op_uid,
                 op_client, now_ns);
}

bool Filter::Matches(const core::OpBrief& b, const core::Session& session, int64_t now_ns) const {
  return Matches(session.id(), b.kind, b.state, b.backend, b.handle, b.submitted_ns,
                 session.client().uid, session.client().name, now_ns);
}

absl::StatusOr<Filter> ToFilter(const Caller& caller, const v1::OpSelector& sel,
                                Criteria criteria) {
  Filter f;
  f.session_id = sel.session_id();
  f.client = sel.client();
  f.handle = sel.handle();
  if (f.handle != 0 && f.session_id == 0) {
    return absl::InvalidArgumentError("selector.handle: requires selector.session_id");
  }
  for (int k : sel.kinds()) {
    if (k < 1 || k > core::kOpKindCount) {
      return absl::InvalidArgumentError(absl::StrCat("selector.kinds: unknown kind ", k));
    }
    f.kinds |= 1u << k;
  }
  for (int st : sel.states()) {
    if (st < 1 || st > 7) {
      return absl::InvalidArgumentError(absl::StrCat("selector.states: unknown state ", st));
    }
    f.states |= 1u << st;
  }
  switch (sel.backend()) {
    case v1::BACKEND_UNSPECIFIED:
      break;
    case v1::BACKEND_IO_URING:
      f.backend = core::BackendKind::kIoUring;
      break;
    case v1::BACKEND_THREAD_POOL:
      f.backend = core::BackendKind::kThreadPool;
      break;
    case v1::BACKEND_INLINE:
      f.backend = core::BackendKind::kInline;
      break;
    default:
      return absl::InvalidArgumentError("selector.backend: unknown backend");
  }
  f.older_than_ns = static_cast<int64_t>(sel.older_than_ms()) * 1'000'000;
  const bool has_criteria = f.session_id != 0 || !f.client.empty() || f.kinds != 0 ||
                            f.states != 0 || f.backend != core::BackendKind::kNone ||
                            f.older_than_ns != 0;
  if (sel.all() && has_criteria) {
    return absl::InvalidArgumentError(
        "selector.all: selects every operation; it cannot be combined with other criteria");
  }
  if (criteria == Criteria::kRequired && !has_criteria && !sel.all()) {
    return absl::InvalidArgumentError(
        "selector: empty; set criteria, or all=true to select every operation");
  }
  if (!caller.admin) f.uid = caller.uid;
  return f;
}

}  // namespace asyncd::daemon
