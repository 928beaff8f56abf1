#include "daemon/observer.h"

#include <algorithm>
#include <cstring>
#include <optional>

namespace asyncd::daemon {

void Observer::OnFinished(const core::Op& op) noexcept {
  const core::Session& session = *op.session;
  if (session.id() == ignored_session_.load(std::memory_order_relaxed)) return;
  FinishedOp f;  // built in place: this runs once per op
  if (!core::Registry::SnapshotInto(op, session.id(), f.snap)) return;
  counters_.OnFinished(f.snap);
  f.uid = session.client().uid;
  f.pid = session.client().pid;
  const std::string& name = session.client().name;
  std::memcpy(f.client, name.data(), std::min(name.size(), sizeof(f.client) - 1));
  history_.Record(f);
  watch_hub_.PublishFinished(f.snap, f.uid, name);
}

void Observer::OnSubmitted(const core::Op& op) noexcept {
  if (!watch_hub_.active()) return;  // spares the snapshot
  std::optional<core::OpSnapshot> snap = core::Registry::Snapshot(op, op.session->id());
  if (!snap) return;
  watch_hub_.PublishSubmitted(*snap, op.session->client().uid, op.session->client().name);
}

void Observer::OnEndRequested(const core::Op& op, uint32_t gen, core::EndReason reason,
                              core::CancelResult result) noexcept {
  const core::Session& session = *op.session;  // the requester holds a reference
  if (session.id() == ignored_session_.load(std::memory_order_relaxed)) return;
  counters_.OnCancelAnswered(result);
  if (!watch_hub_.active()) return;
  std::optional<core::OpSnapshot> snap = core::Registry::Snapshot(op, session.id(), gen);
  if (!snap) return;  // finished and retired meanwhile: its end says the rest
  watch_hub_.PublishEndRequested(*snap, reason, session.client().uid, session.client().name);
}

}  // namespace asyncd::daemon
