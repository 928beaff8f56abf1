#include "daemon/watch_hub.h"

#include "daemon/convert.h"
#include "src/core/clock.h"

namespace asyncd::daemon {

void Watcher::Push(const v1::WatchEvent& event) {
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= capacity_) {
      ++dropped_;
      return;
    }
    queue_.push_back(event);
    queue_.back().set_dropped(dropped_);
    dropped_ = 0;
  }
  wake_();
}

std::optional<v1::WatchEvent> Watcher::Pop() {
  std::lock_guard lock(mu_);
  if (queue_.empty()) return std::nullopt;
  v1::WatchEvent e = std::move(queue_.front());
  queue_.pop_front();
  return e;
}

bool WatchHub::Add(std::shared_ptr<Watcher> w, size_t max_watchers) {
  std::lock_guard lock(mu_);
  if (watchers_.size() >= max_watchers) return false;
  watchers_.push_back(std::move(w));
  watcher_count_.store(static_cast<int>(watchers_.size()), std::memory_order_release);
  return true;
}

void WatchHub::Remove(const Watcher* w) {
  std::lock_guard lock(mu_);
  std::erase_if(watchers_, [w](const auto& p) { return p.get() == w; });
  watcher_count_.store(static_cast<int>(watchers_.size()), std::memory_order_release);
}

void WatchHub::PublishSubmitted(const core::OpSnapshot& snap, uint32_t uid,
                                std::string_view client) {
  if (!active()) return;
  v1::WatchEvent e;
  e.set_type(v1::EVENT_TYPE_SUBMITTED);
  e.set_unix_nanos(ToUnixNanos(snap.submitted_ns));
  Publish(e, snap, uid, client);
}

void WatchHub::PublishFinished(const core::OpSnapshot& snap, uint32_t uid,
                               std::string_view client) {
  if (!active()) return;
  v1::WatchEvent e;
  e.set_type(TerminalEvent(snap.state));
  e.set_outcome(OutcomeOf(snap.state));
  e.set_end_reason(ToProto(snap.end_reason));
  e.set_unix_nanos(ToUnixNanos(snap.finished_ns));
  Publish(e, snap, uid, client);
}

void WatchHub::PublishEndRequested(const core::OpSnapshot& snap, core::EndReason reason,
                                   uint32_t uid, std::string_view client) {
  if (!active()) return;
  v1::WatchEvent e;
  e.set_type(reason == core::EndReason::kDeadline ? v1::EVENT_TYPE_DEADLINE_EXPIRED
                                                  : v1::EVENT_TYPE_CANCEL_REQUESTED);
  e.set_end_reason(ToProto(reason));
  e.set_unix_nanos(core::UnixNanos());
  Publish(e, snap, uid, client);
}

void WatchHub::Publish(const v1::WatchEvent& base, const core::OpSnapshot& snap, uint32_t uid,
                       std::string_view client) {
  v1::WatchEvent e = base;
  e.set_op_id(snap.id.value);
  e.set_session_id(snap.session_id);
  e.set_kind(ToProto(snap.kind));
  e.set_target(snap.target);
  const int64_t now = core::MonoNanos();
  std::lock_guard lock(mu_);
  for (const auto& w : watchers_) {
    if (w->Wants(e.type()) && w->filter().Matches(snap, uid, client, now)) w->Push(e);
  }
}

}  // namespace asyncd::daemon
