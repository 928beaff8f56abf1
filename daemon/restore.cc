#include "daemon/restore.h"

#include <unistd.h>

#include <algorithm>
#include <span>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "daemon/carry.h"
#include "daemon/convert.h"
#include "daemon/file_area.h"
#include "daemon/session_table.h"
#include "src/core/clock.h"
#include "src/core/registry.h"

namespace asyncd::daemon {

namespace {

// The opener of `s` as far as its file area goes, with the shares it
// reached that are still configured.
Caller Opener(const state::Session& s, const FileAreas* areas) {
  Caller opener{.uid = s.uid(), .gid = s.gid(), .pid = s.pid(), .admin = s.whole_root()};
  if (areas != nullptr) {
    opener.shares =
        areas->ShareBits(std::vector<std::string>(s.shares().begin(), s.shares().end()));
  }
  return opener;
}

}  // namespace

std::vector<core::Registry::IndexCounters> CountersOf(const state::Checkpoint& checkpoint) {
  std::vector<core::Registry::IndexCounters> counters;
  for (const state::IdCounter& c : checkpoint.id_counters()) {
    counters.push_back({c.index(), c.serial(), c.next_generation()});
  }
  return counters;
}

absl::StatusOr<RestoreSummary> RestoreCheckpoint(const state::Checkpoint& checkpoint,
                                                 std::vector<int> fds, core::Registry& registry,
                                                 SessionTable& sessions) {
  size_t next_fd = 0;  // fds[next_fd..] are still ours to close
  absl::Cleanup close_rest = [&] {
    for (size_t i = next_fd; i < fds.size(); ++i) ::close(fds[i]);
  };
  std::vector<uint64_t> ids;
  size_t handles = 0;
  for (const state::Session& s : checkpoint.sessions()) {
    ids.push_back(s.session_id());
    handles += static_cast<size_t>(s.handles_size());
  }
  if (handles != fds.size()) {
    const std::string why = absl::StrCat("the checkpoint names ", handles,
                                         " handles, but ", fds.size(), " descriptors came with it");
    sessions.NoteLost(ids, why);
    return absl::InvalidArgumentError(why);
  }

  const int64_t now = core::MonoNanos();
  // The time the package waited (in the store, through a start) counts
  // against every lease.
  const int64_t waited_ms =
      std::max<int64_t>(0, (ToUnixNanos(now) - checkpoint.taken_unix_nanos()) / 1'000'000);
  RestoreSummary summary;
  std::vector<uint64_t> restored;
  absl::Status failed;
  for (const state::Session& s : checkpoint.sessions()) {
    const std::string at = absl::StrCat("session ", s.session_id(), ": ");
    std::span<int> own(fds.data() + next_fd, static_cast<size_t>(s.handles_size()));
    if (s.bound_to_stream() && !s.resumable()) {
      // Its stream ended with the predecessor, and the session with it.
      for (int fd : own) ::close(fd);
      next_fd += own.size();
      continue;
    }
    const Caller opener = Opener(s, sessions.areas());
    absl::StatusOr<std::shared_ptr<core::Session>> session = registry.RestoreSession(
        s.session_id(), core::ClientInfo{s.client_name(), s.uid(), s.gid(), s.pid()});
    if (!session.ok()) {
      failed = session.status();  // it names the session
      break;
    }
    std::vector<core::HandleTable::RestoredHandle> restored_handles;
    for (int i = 0; i < s.handles_size(); ++i) {
      restored_handles.push_back({s.handles(i).handle(), own[i], s.handles(i).path()});
    }
    const std::vector<uint32_t> generations(s.handle_slot_generations().begin(),
                                            s.handle_slot_generations().end());
    absl::Status st = (*session)->handles().Restore(generations, restored_handles);
    if (st.ok()) next_fd += own.size();  // the table owns them now
    auto meta = std::make_shared<SessionMeta>();
    meta->session = *session;
    meta->uid = s.uid();
    if (st.ok()) {
      absl::StatusOr<FileArea> area = sessions.AreaOf(opener);
      if (area.ok()) meta->area = *area;
      st = area.status();
    }
    if (st.ok() && (s.resumable() || s.next_seq() != 0)) {
      auto carry = std::make_shared<Carry>();
      st = carry->Restore(s, waited_ms, **session, sessions.dispatcher(), meta->area,
                          sessions.live().max_op_bytes());
      meta->SetCarry(std::move(carry));
    }
    // A session bound to its stream waits for that stream to resume, as
    // long as a lease of the default length.
    const uint32_t lease_ms = s.bound_to_stream() ? sessions.live().default_lease_ms() : s.lease_ms();
    const uint32_t lease_remaining = s.bound_to_stream() ? lease_ms : s.lease_remaining_ms();
    const auto lease_left =
        static_cast<uint32_t>(std::max<int64_t>(0, int64_t{lease_remaining} - waited_ms));
    if (st.ok()) st = sessions.Restore(meta, lease_ms, lease_left, s.bound_to_stream(), now);
    restored.push_back(s.session_id());  // in core at least: ended there on failure
    if (!st.ok()) {
      failed = absl::Status(st.code(), at + std::string(st.message()));
      break;
    }
    ++summary.sessions;
    summary.handles += static_cast<uint32_t>(own.size());
    summary.ops += static_cast<uint32_t>(s.resubmit_size());
  }
  if (failed.ok()) return summary;
  for (uint64_t id : restored) (void)sessions.End(id, core::EndReason::kSessionClosed);
  sessions.NoteLost(ids, std::string(failed.message()));
  return failed;
}

}  // namespace asyncd::daemon
