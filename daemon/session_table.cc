#include "daemon/session_table.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/status.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

std::shared_ptr<SessionMeta> SessionTable::Find(uint64_t session_id) const {
  std::shared_lock lock(mu_);
  auto it = sessions_.find(session_id);
  return it != sessions_.end() ? it->second : nullptr;
}

absl::StatusOr<std::shared_ptr<SessionMeta>> SessionTable::Open(const Caller& caller,
                                                                const std::string& name,
                                                                uint32_t lease_ms,
                                                                SessionLifetime lifetime) {
  const bool stream_owned = lifetime == SessionLifetime::kBoundToStream;
  if (name.size() > 256) return absl::InvalidArgumentError("client_name: longer than 256 bytes");
  if (!stream_owned) {
    if (lease_ms == 0) lease_ms = live_.default_lease_ms();
    if (lease_ms < 100 || lease_ms > max_lease_ms_) {
      return absl::InvalidArgumentError(
          absl::StrCat("lease_ms: must be in [100, ", max_lease_ms_, "]"));
    }
  }
  absl::StatusOr<std::shared_ptr<core::Session>> session =
      registry_.OpenSession({name, caller.uid, caller.gid, caller.pid});
  if (!session.ok()) return NameLimit(session.status());
  auto meta = std::make_shared<SessionMeta>();
  meta->session = *session;
  meta->uid = caller.uid;
  meta->stream_owned = stream_owned;
  meta->lease_ms = stream_owned ? 0 : lease_ms;
  meta->lease_deadline_ns.store(core::MonoNanos() + int64_t{lease_ms} * 1'000'000);
  std::unique_lock lock(mu_);
  sessions_[meta->session->id()] = meta;
  return meta;
}

absl::StatusOr<std::shared_ptr<SessionMeta>> SessionTable::Own(const Caller& caller,
                                                               uint64_t session_id) const {
  if (session_id == 0) return absl::InvalidArgumentError("session_id: 0 is not a session");
  std::shared_ptr<SessionMeta> meta = Find(session_id);
  if (meta == nullptr) {
    return absl::NotFoundError(absl::StrCat("no session ", session_id));
  }
  if (meta->uid != caller.uid) {
    return Deny(caller, absl::StrCat("session ", session_id, " belongs to another user (uid ",
                                     caller.uid, " may use only its own sessions)"));
  }
  if (meta->session->closing()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", session_id, " has ended"));
  }
  return meta;
}

absl::StatusOr<uint32_t> SessionTable::KeepAlive(const Caller& caller, uint64_t session_id,
                                                 int64_t now_ns) {
  absl::StatusOr<std::shared_ptr<SessionMeta>> meta = Own(caller, session_id);
  if (!meta.ok()) return meta.status();
  (*meta)->RenewLease(now_ns);
  return (*meta)->lease_ms;
}

absl::StatusOr<core::CancelCounts> SessionTable::Close(const Caller& caller, uint64_t session_id) {
  if (session_id == 0) return absl::InvalidArgumentError("session_id: 0 is not a session");
  std::shared_ptr<SessionMeta> meta = Find(session_id);
  if (meta == nullptr) return absl::NotFoundError(absl::StrCat("no session ", session_id));
  if (meta->uid != caller.uid && !caller.admin) {
    return Deny(caller, absl::StrCat("close session ", session_id,
                                     ": it belongs to another user and the caller is "
                                     "not an admin"));
  }
  absl::StatusOr<core::CancelCounts> counts = End(session_id, core::EndReason::kSessionClosed);
  if (!counts.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", session_id, " has already ended"));
  }
  return counts;
}

absl::StatusOr<core::CancelCounts> SessionTable::End(uint64_t session_id, core::EndReason reason) {
  {
    std::unique_lock lock(mu_);
    sessions_.erase(session_id);
  }
  return dispatcher_.CloseSession(session_id, reason);
}

void SessionTable::ExpireLeases(int64_t now_ns) {
  std::vector<uint64_t> expired;
  {
    std::shared_lock lock(mu_);
    for (const auto& [id, meta] : sessions_) {
      if (meta->lease_ms != 0 && meta->streams.load() == 0 &&
          meta->lease_deadline_ns.load(std::memory_order_relaxed) < now_ns) {
        expired.push_back(id);
      }
    }
  }
  for (uint64_t id : expired) {
    spdlog::info("session {} lease expired: ending it", id);
    (void)End(id, core::EndReason::kSessionClosed);
  }
}

void SessionTable::List(const Caller& caller, int64_t now_ns, v1::ListSessionsResponse* out) const {
  std::shared_lock lock(mu_);
  for (const auto& [id, meta] : sessions_) {
    const core::Session& s = *meta->session;
    if (meta->uid != caller.uid && !caller.admin) continue;
    v1::SessionInfo* info = out->add_sessions();
    info->set_session_id(id);
    info->set_client_name(s.client().name);
    info->set_uid(s.client().uid);
    info->set_gid(s.client().gid);
    info->set_pid(s.client().pid);
    info->set_inflight(s.live_ops());
    info->set_handles(meta->session->handles().open_count());
    info->set_age_us((now_ns - s.created_ns()) / 1000);
    if (meta->lease_ms != 0) {
      const int64_t left = meta->lease_deadline_ns.load() - now_ns;
      info->set_lease_remaining_ms(left > 0 ? static_cast<uint32_t>(left / 1'000'000) : 0);
    }
    info->set_bound_to_stream(meta->streams.load() > 0);
  }
  lock.unlock();
  std::sort(out->mutable_sessions()->begin(), out->mutable_sessions()->end(),
            [](const v1::SessionInfo& a, const v1::SessionInfo& b) {
              return a.session_id() < b.session_id();
            });
}

}  // namespace asyncd::daemon
