#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "asyncd/v1/asyncd.pb.h"
#include "daemon/caller.h"
#include "daemon/carry.h"
#include "daemon/config.h"
#include "daemon/file_area.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// The daemon's view of a session: the core session plus its owner and lease.
/// A stream attached to a session, told when the session ends under it.
class SessionListener {
 public:
  virtual ~SessionListener() = default;
  /// The session ended (CloseSession, or an admin's): the stream delivers
  /// what its ops owe and ends FAILED_PRECONDITION. Called with the
  /// session's listener lock held; must not block.
  virtual void OnSessionEnded() noexcept = 0;
  /// The daemon started draining: the stream refuses new ops and ends
  /// UNAVAILABLE once its ops are done; for a live restart (`restart`) a
  /// resumable stream leaves its state to the session's carry instead.
  /// Same locking as OnSessionEnded.
  virtual void OnDraining(bool restart) noexcept = 0;
};

/// The daemon's view of a session: the core session plus its owner and lease.
struct SessionMeta {
  std::shared_ptr<core::Session> session;
  uint32_t uid = 0;
  FileArea area;  // where its paths resolve: the opener's
  std::atomic<uint32_t> lease_ms{0};  // 0 = bound to a stream, no lease
  std::atomic<int64_t> lease_deadline_ns{0};
  std::atomic<int> streams{0};  // attached streams pause the lease
  bool stream_owned = false;    // ends with the stream that created it
  std::atomic<bool> has_ring{false};  // a local ring is attached: one at most

  /// The lease runs lease_ms from `now_ns` (MonoNanos). Any thread.
  void RenewLease(int64_t now_ns) {
    lease_deadline_ns.store(now_ns + int64_t{lease_ms.load()} * 1'000'000);
  }
  /// Time left before the lease runs out at `now_ns`, at most its length (a
  /// renewal after `now_ns` was taken); 0 while no lease runs (a stream
  /// holds the session, or it is bound to one).
  uint32_t LeaseRemainingMs(int64_t now_ns) const {
    const uint32_t length = lease_ms.load();
    if (length == 0 || streams.load() != 0) return 0;
    const int64_t left = lease_deadline_ns.load() - now_ns;
    return left > 0 ? static_cast<uint32_t>(std::min<int64_t>(left / 1'000'000, length)) : 0;
  }
  /// A stream attaches: its lease pauses, and it hears of the session's end.
  void Attach(SessionListener* listener);
  /// It detaches: ReleaseLease, then ForgetListener.
  void Detach(SessionListener* listener, int64_t now_ns) {
    ReleaseLease(now_ns);
    ForgetListener(listener);
  }
  /// A stream about to end stops pausing the lease (before its client can
  /// see the end); the last one restarts it at full length. Takes no lock.
  void ReleaseLease(int64_t now_ns) {
    if (streams.fetch_sub(1) == 1) RenewLease(now_ns);
  }
  /// The stream is gone: it hears of the session's end no more.
  void ForgetListener(SessionListener* listener);
  /// Tells every attached stream the session ended. Any thread.
  void NotifyEnded();
  /// Tells every attached stream the daemon drains (for a live restart:
  /// `restart`). Any thread.
  void NotifyDraining(bool restart);

  /// A resumable stream attaches: at most one at a time (else
  /// FAILED_PRECONDITION). Returns the session's carry, made if it had
  /// none. To a session bound to a stream, only the stream that opened it
  /// (`opened_it`), or one resuming it after a restart while its carry
  /// waits.
  [[nodiscard]] absl::StatusOr<std::shared_ptr<Carry>> AttachResumable(bool opened_it);
  /// The resumable stream is gone (or ends: a client may attach the next
  /// as soon as it sees the end). Takes no lock.
  void DetachResumable() { resumable_attached_.store(false); }
  /// The carry, if a resumable stream ever held the session (or a restore
  /// brought one): what it leaves across a restart.
  std::shared_ptr<Carry> carry() const;
  /// A restore brings the carry. Before the daemon serves.
  void SetCarry(std::shared_ptr<Carry> carry);

 private:
  mutable std::mutex listeners_mu_;
  std::vector<SessionListener*> listeners_;
  std::shared_ptr<Carry> carry_;  // under listeners_mu_
  std::atomic<bool> resumable_attached_{false};
};

/// What ends a session.
enum class SessionLifetime {
  kLeased,         // its lease runs out (KeepAlive and use renew it), or CloseSession
  kBoundToStream,  // the stream that opened it ends; no lease
};

/// The sessions clients opened, by id, with their owners and leases. Core
/// owns the sessions themselves; the table shares them until they end.
/// Lookups take a shared lock, open and end an exclusive one, never across
/// a call into core that may complete ops. Any thread; never blocks beyond
/// that lock.
class SessionTable {
 public:
  /// `registry`, `dispatcher`, `live` and `areas` must outlive the table.
  /// Without `areas` every session's paths resolve beneath the whole root.
  SessionTable(core::Registry& registry, core::Dispatcher& dispatcher, const LiveLimits& live,
               uint32_t max_lease_ms, FileAreas* areas = nullptr)
      : registry_(registry),
        dispatcher_(dispatcher),
        live_(live),
        max_lease_ms_(max_lease_ms),
        areas_(areas) {}

  /// Opens a session for `caller`. A leased one gets `lease_ms` (0 = the
  /// default), which must be in [100, max_lease_ms]. Its paths resolve in
  /// the caller's file area. INVALID_ARGUMENT (name over 128 bytes, lease
  /// out of range); RESOURCE_EXHAUSTED naming limits.max_sessions;
  /// FAILED_PRECONDITION when the caller's area cannot be made. Refusing
  /// while draining is the caller's part.
  [[nodiscard]] absl::StatusOr<std::shared_ptr<SessionMeta>> Open(const Caller& caller,
                                                                  const std::string& name,
                                                                  uint32_t lease_ms,
                                                                  SessionLifetime lifetime);
  /// The caller's own open session `session_id`. INVALID_ARGUMENT (0),
  /// NOT_FOUND (never issued), PERMISSION_DENIED (another uid's, admins
  /// too; or its file area reaches what the caller may not: an admin's
  /// session, or a share the caller is no member of), FAILED_PRECONDITION
  /// (it is ending or has ended: ids are never reused, so that holds
  /// forever; or an earlier daemon opened it and did not hand it to this
  /// one: see NoteLost, NoteLostBeforeStart).
  [[nodiscard]] absl::StatusOr<std::shared_ptr<SessionMeta>> Own(const Caller& caller,
                                                                 uint64_t session_id) const;
  /// KeepAlive: renews the caller's own session's lease from `now_ns` and
  /// returns its lease_ms; 0 while a stream is attached (no lease runs).
  /// Errors as Own.
  [[nodiscard]] absl::StatusOr<uint32_t> KeepAlive(const Caller& caller, uint64_t session_id,
                                                   int64_t now_ns);
  /// CloseSession: ends a session of the caller's, or any session for an
  /// admin, cancelling its ops; its attached streams end. INVALID_ARGUMENT
  /// (0), NOT_FOUND (never issued), PERMISSION_DENIED,
  /// FAILED_PRECONDITION (it has already ended, as in Own).
  [[nodiscard]] absl::StatusOr<core::CancelCounts> Close(const Caller& caller, uint64_t session_id);
  /// Forgets the session and ends it in core (its ops are cancelled with
  /// `reason`). NOT_FOUND when core has no such open session.
  absl::StatusOr<core::CancelCounts> End(uint64_t session_id, core::EndReason reason);
  /// Tells every stream attached to any session that the daemon drains
  /// (for a live restart: `restart`). A stream attaching later checks for
  /// itself.
  void NotifyDraining(bool restart) const;
  /// Ends every leased session with no stream attached whose lease ran out
  /// before `now_ns`. Called by the housekeeping thread.
  void ExpireLeases(int64_t now_ns);
  /// ListSessions: the sessions `caller` may see (its own; every one for an
  /// admin), by id, as of `now_ns`.
  void List(const Caller& caller, int64_t now_ns, v1::ListSessionsResponse* out) const;
  /// Takes a session restored from a predecessor's checkpoint: `session`
  /// (restored in core with its id), opened by `opener` (whose file area it
  /// keeps), leased `lease_ms` with `lease_left_ms` of it left as of
  /// `now_ns`; `bound_to_stream`: it ends with the stream that resumes it
  /// (its lease is then the time it waits for that). With its `carry`, if
  /// a resumable stream held it. Before the daemon serves.
  [[nodiscard]] absl::Status Restore(std::shared_ptr<SessionMeta> meta, uint32_t lease_ms,
                                     uint32_t lease_left_ms, bool bound_to_stream,
                                     int64_t now_ns);
  /// The file area of `opener`'s sessions, for Restore. FAILED_PRECONDITION
  /// when it cannot be made.
  [[nodiscard]] absl::StatusOr<FileArea> AreaOf(const Caller& opener) const;
  /// Sessions a restart could not keep: from now on each answers
  /// FAILED_PRECONDITION naming `why`, not merely "has ended".
  void NoteLost(const std::vector<uint64_t>& session_ids, const std::string& why);
  /// The daemon started without its predecessor's state (no handover came,
  /// or it was refused: `why`, empty for none), so its registry issues
  /// serials from first_serial on every index: every session id below that
  /// was issued before this daemon started and is not here. From now on
  /// each answers FAILED_PRECONDITION saying so, and `why`, whatever its
  /// index. Before the daemon serves.
  void NoteLostBeforeStart(const std::string& why);
  /// Every open session, by id: a copy of the table's references.
  std::vector<std::shared_ptr<SessionMeta>> All() const;
  /// Where sessions' paths resolve; null: beneath the whole root.
  FileAreas* areas() const { return areas_; }
  core::Dispatcher& dispatcher() const { return dispatcher_; }
  const LiveLimits& live() const { return live_; }
  /// Validates a lease length asked for (OpenSessionRequest.lease_ms,
  /// StreamOpen.lease_ms): 0 = `zero_means`, else [100, max_lease_ms].
  /// INVALID_ARGUMENT naming `field`.
  [[nodiscard]] absl::StatusOr<uint32_t> LeaseMs(uint32_t asked, uint32_t zero_means,
                                                 std::string_view field) const;

 private:
  std::shared_ptr<SessionMeta> Find(uint64_t session_id) const;
  // NOT_FOUND for an id never issued, FAILED_PRECONDITION for an ended one,
  // naming why when a restart lost it.
  absl::Status Missing(uint64_t session_id) const;

  core::Registry& registry_;
  core::Dispatcher& dispatcher_;
  const LiveLimits& live_;
  const uint32_t max_lease_ms_;
  FileAreas* const areas_;
  mutable std::shared_mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<SessionMeta>> sessions_;
  std::unordered_map<uint64_t, std::string> lost_;  // session id -> why a restart lost it
  bool lost_before_start_ = false;   // the predecessor's state did not reach this daemon
  std::string lost_before_start_why_;  // why: a refused handover's reason, or empty
};

}  // namespace asyncd::daemon
