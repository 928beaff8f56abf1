#include "daemon/session_table.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/status.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

void SessionMeta::Attach(SessionListener* listener) {
  std::lock_guard lock(listeners_mu_);
  listeners_.push_back(listener);
  streams.fetch_add(1);
}

void SessionMeta::ForgetListener(SessionListener* listener) {
  std::lock_guard lock(listeners_mu_);
  std::erase(listeners_, listener);
}

void SessionMeta::NotifyEnded() {
  std::lock_guard lock(listeners_mu_);
  for (SessionListener* l : listeners_) l->OnSessionEnded();
}

void SessionMeta::NotifyDraining(bool restart) {
  std::lock_guard lock(listeners_mu_);
  for (SessionListener* l : listeners_) l->OnDraining(restart);
}

absl::StatusOr<std::shared_ptr<Carry>> SessionMeta::AttachResumable(bool opened_it) {
  std::lock_guard lock(listeners_mu_);
  if (stream_owned && !opened_it && !(carry_ != nullptr && carry_->waiting())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", session->id(), " is bound to the stream that opened it"));
  }
  if (resumable_attached_.exchange(true)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", session->id(), " has a resumable stream attached already"));
  }
  if (carry_ == nullptr) carry_ = std::make_shared<Carry>();
  return carry_;
}

std::shared_ptr<Carry> SessionMeta::carry() const {
  std::lock_guard lock(listeners_mu_);
  return carry_;
}

void SessionMeta::SetCarry(std::shared_ptr<Carry> carry) {
  std::lock_guard lock(listeners_mu_);
  carry_ = std::move(carry);
}

void SessionTable::NotifyDraining(bool restart) const {
  std::vector<std::shared_ptr<SessionMeta>> metas;
  {
    std::shared_lock lock(mu_);
    metas.reserve(sessions_.size());
    for (const auto& [id, meta] : sessions_) metas.push_back(meta);
  }
  for (const auto& meta : metas) meta->NotifyDraining(restart);
}

absl::Status SessionTable::Missing(uint64_t session_id) const {
  {
    std::shared_lock lock(mu_);
    if (auto it = lost_.find(session_id); it != lost_.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("session ", session_id, " was lost when the daemon restarted: ", it->second));
    }
    // Without the predecessor's counters every index starts at first_serial:
    // what is below it was issued before this daemon started, whatever the
    // index (a predecessor may have had a larger table).
    const uint64_t serial = session_id >> core::OpId::kSessionBits;
    if (lost_before_start_ && serial != 0 && serial < registry_.options().first_serial) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session ", session_id,
          " was opened by an earlier daemon whose state did not reach this one (",
          lost_before_start_why_.empty()
              ? "none was handed over: it was stopped, killed or could not hand over"
              : lost_before_start_why_,
          "); open a new one"));
    }
  }
  if (registry_.Issued(session_id)) {
    return absl::FailedPreconditionError(absl::StrCat("session ", session_id, " has ended"));
  }
  return absl::NotFoundError(absl::StrCat("no session ", session_id));
}

absl::StatusOr<uint32_t> SessionTable::LeaseMs(uint32_t asked, uint32_t zero_means,
                                               std::string_view field) const {
  if (asked == 0) return zero_means;
  if (asked < 100 || asked > max_lease_ms_) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(field), ": must be 0 or in [100, ", max_lease_ms_, "]"));
  }
  return asked;
}

absl::StatusOr<FileArea> SessionTable::AreaOf(const Caller& opener) const {
  if (areas_ == nullptr) return FileArea();
  return areas_->For(opener);
}

absl::Status SessionTable::Restore(std::shared_ptr<SessionMeta> meta, uint32_t lease_ms,
                                   uint32_t lease_left_ms, bool bound_to_stream,
                                   int64_t now_ns) {
  meta->stream_owned = bound_to_stream;
  meta->lease_ms.store(lease_ms);
  meta->lease_deadline_ns.store(now_ns + int64_t{lease_left_ms} * 1'000'000);
  std::unique_lock lock(mu_);
  sessions_[meta->session->id()] = std::move(meta);
  return absl::OkStatus();
}

void SessionTable::NoteLostBeforeStart(const std::string& why) {
  std::unique_lock lock(mu_);
  lost_before_start_ = true;
  lost_before_start_why_ = why;
}

void SessionTable::NoteLost(const std::vector<uint64_t>& session_ids, const std::string& why) {
  std::unique_lock lock(mu_);
  for (uint64_t id : session_ids) lost_[id] = why;
}

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
  if (name.size() > 128) return absl::InvalidArgumentError("client_name: longer than 128 bytes");
  if (!stream_owned) {
    absl::StatusOr<uint32_t> lease = LeaseMs(lease_ms, live_.default_lease_ms(), "lease_ms");
    if (!lease.ok()) return lease.status();
    lease_ms = *lease;
  }
  FileArea area;
  if (areas_ != nullptr) {
    absl::StatusOr<FileArea> found = areas_->For(caller);
    if (!found.ok()) return found.status();
    area = *found;
  }
  absl::StatusOr<std::shared_ptr<core::Session>> session =
      registry_.OpenSession({name, caller.uid, caller.gid, caller.pid});
  if (!session.ok()) return NameLimit(session.status());
  auto meta = std::make_shared<SessionMeta>();
  meta->session = *session;
  meta->uid = caller.uid;
  meta->area = area;
  meta->stream_owned = stream_owned;
  meta->lease_ms.store(stream_owned ? 0 : lease_ms);
  meta->lease_deadline_ns.store(core::MonoNanos() + int64_t{lease_ms} * 1'000'000);
  std::unique_lock lock(mu_);
  sessions_[meta->session->id()] = meta;
  return meta;
}

absl::StatusOr<std::shared_ptr<SessionMeta>> SessionTable::Own(const Caller& caller,
                                                               uint64_t session_id) const {
  if (session_id == 0) return absl::InvalidArgumentError("session_id: 0 is not a session");
  std::shared_ptr<SessionMeta> meta = Find(session_id);
  if (meta == nullptr) return Missing(session_id);
  if (meta->uid != caller.uid) {
    return Deny(caller, absl::StrCat("session ", session_id, " belongs to another user (uid ",
                                     caller.uid, " may use only its own sessions)"));
  }
  if (areas_ != nullptr && !meta->area.CoveredBy(caller)) {
    return Deny(caller, absl::StrCat("session ", session_id,
                                     " reaches files this caller may not (it was opened by an "
                                     "admin, or by a member of a share this caller is not)"));
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
  if ((*meta)->streams.load() > 0) return 0u;  // no lease runs while a stream holds it
  (*meta)->RenewLease(now_ns);
  return (*meta)->lease_ms.load();
}

absl::StatusOr<core::CancelCounts> SessionTable::Close(const Caller& caller, uint64_t session_id) {
  if (session_id == 0) return absl::InvalidArgumentError("session_id: 0 is not a session");
  std::shared_ptr<SessionMeta> meta = Find(session_id);
  if (meta == nullptr) return Missing(session_id);
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
  std::shared_ptr<SessionMeta> meta;
  {
    std::unique_lock lock(mu_);
    auto it = sessions_.find(session_id);
    if (it != sessions_.end()) {
      meta = std::move(it->second);
      sessions_.erase(it);
    }
  }
  absl::StatusOr<core::CancelCounts> counts = dispatcher_.CloseSession(session_id, reason);
  if (meta != nullptr) meta->NotifyEnded();
  return counts;
}

void SessionTable::ExpireLeases(int64_t now_ns) {
  std::vector<uint64_t> expired;
  {
    std::shared_lock lock(mu_);
    for (const auto& [id, meta] : sessions_) {
      if (meta->lease_ms.load() != 0 && meta->streams.load() == 0 &&
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
    info->set_inflight(s.inflight_ops());
    info->set_handles(meta->session->handles().open_count());
    info->set_age_us((now_ns - s.created_ns()) / 1000);
    info->set_lease_remaining_ms(meta->LeaseRemainingMs(now_ns));
    info->set_bound_to_stream(meta->stream_owned);
  }
  lock.unlock();
  std::sort(out->mutable_sessions()->begin(), out->mutable_sessions()->end(),
            [](const v1::SessionInfo& a, const v1::SessionInfo& b) {
              return a.session_id() < b.session_id();
            });
}

std::vector<std::shared_ptr<SessionMeta>> SessionTable::All() const {
  std::vector<std::shared_ptr<SessionMeta>> out;
  {
    std::shared_lock lock(mu_);
    out.reserve(sessions_.size());
    for (const auto& [id, meta] : sessions_) out.push_back(meta);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a->session->id() < b->session->id();
  });
  return out;
}

}  // namespace asyncd::daemon
