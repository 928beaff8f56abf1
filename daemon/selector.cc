#include "daemon/selector.h"

namespace asyncd::daemon {

bool Filter::Matches(const core::OpSnapshot& s, uint32_t op_uid, std::string_view op_client,
                     int64_t now_ns) const {
  if (uid && *uid != op_uid) return false;
  if (session_id != 0 && s.session_id != session_id) return false;
  if (!client.empty() && client != op_client) return false;
  if (handle != 0 && s.handle != handle) return false;
  if (kinds != 0 && (kinds & (1u << static_cast<int>(s.kind))) == 0) return false;
  if (states != 0 && (states & (1u << static_cast<int>(s.state))) == 0) return false;
  if (backend != core::BackendKind::kNone && s.backend != backend) return false;
  if (older_than_ns > 0 && now_ns - s.submitted_ns < older_than_ns) return false;
  return true;
}

}  // namespace asyncd::daemon
