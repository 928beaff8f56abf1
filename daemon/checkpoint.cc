#include "daemon/checkpoint.h"

#include <memory>
#include <vector>

#include "daemon/carry.h"
#include "daemon/convert.h"
#include "daemon/history.h"
#include "daemon/selector.h"
#include "daemon/session_table.h"
#include "src/core/clock.h"
#include "src/core/registry.h"

namespace asyncd::daemon {

namespace {

void AddSession(const SessionMeta& meta, const FileAreas* areas, int64_t now,
                state::Session& out) {
  core::Session& s = *meta.session;
  const core::ClientInfo& client = s.client();
  out.set_session_id(s.id());
  out.set_client_name(client.name);
  out.set_uid(client.uid);
  out.set_gid(client.gid);
  out.set_pid(client.pid);
  // A session bound to a stream has no lease of its own, even while it
  // waits for its stream to resume after a restart.
  out.set_lease_ms(meta.stream_owned ? 0 : meta.lease_ms.load());
  out.set_lease_remaining_ms(meta.stream_owned ? 0 : meta.LeaseRemainingMs(now));
  out.set_bound_to_stream(meta.stream_owned);
  out.set_age_us((now - s.created_ns()) / 1000);
  out.set_whole_root(meta.area.whole_root());
  if (areas != nullptr) {
    for (std::string& share : areas->SharePaths(meta.area.shares())) {
      out.add_shares(std::move(share));
    }
  }

  std::vector<core::HandleTable::Listed> handles;
  std::vector<uint32_t> generations;
  s.handles().List(&handles, &generations);
  for (core::HandleTable::Listed& h : handles) {
    state::Handle* handle = out.add_handles();
    handle->set_handle(h.handle);
    handle->set_path(std::move(h.path));
    handle->set_open_flags(h.status_flags);
    handle->set_stream(h.stream);
    handle->set_fd(h.fd);
  }
  out.mutable_handle_slot_generations()->Add(generations.begin(), generations.end());
  if (std::shared_ptr<Carry> carry = meta.carry()) carry->Fill(out);

  // Slot order is op-id order within a session; a finished op still in its
  // slot has not been delivered to its client yet.
  s.ForEachSlot([&](core::Op& op) {
    if (std::optional<core::OpSnapshot> snap = core::Registry::Snapshot(op, s.id())) {
      ToOperationInfo(*snap, client.uid, client.pid, client.name, /*include_timeline=*/true, now,
                      *out.add_ops());
    }
  });
}

}  // namespace

state::Checkpoint TakeCheckpoint(const SessionTable& sessions, const core::Registry& registry,
                                 const History& history, size_t history_limit) {
  const int64_t started = core::MonoNanos();
  state::Checkpoint cp;
  cp.set_daemon_version(ASYNCD_VERSION);
  cp.set_taken_unix_nanos(ToUnixNanos(started));
  for (const std::shared_ptr<SessionMeta>& meta : sessions.All()) {
    AddSession(*meta, sessions.areas(), started, *cp.add_sessions());
  }
  for (const FinishedOp& f : history.Recent(Filter{}, history_limit)) {
    ToOperationInfo(f.snap, f.uid, f.pid, f.client, /*include_timeline=*/true, started,
                    *cp.add_history());
  }
  // Counters last: they only grow, so they cover every id seen above.
  for (const core::Registry::IndexCounters& c : registry.Counters()) {
    state::IdCounter* counter = cp.add_id_counters();
    counter->set_index(c.index);
    counter->set_serial(c.serial);
    counter->set_next_generation(c.next_gen);
  }
  cp.set_took_us((core::MonoNanos() - started) / 1000);
  return cp;
}

}  // namespace asyncd::daemon
