// Watchers and their hub (daemon/watch_hub.h): a watcher gets only the event
// types and ops its filter selects; its buffer is bounded, a full buffer
// drops and the next event delivered carries the count; the hub serves at
// most max_watchers, costs nothing while nobody watches, and stops feeding a
// removed watcher.
#include "daemon/watch_hub.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>

namespace asyncd::daemon {
namespace {

core::OpSnapshot Snap(uint64_t id, core::OpKind kind = core::OpKind::kRead) {
  core::OpSnapshot s;
  s.id = core::OpId{id};
  s.session_id = 1;
  s.kind = kind;
  s.state = core::OpState::kCompleted;
  s.submitted_ns = 1000;
  s.finished_ns = 2000;
  return s;
}

uint32_t Types(std::initializer_list<v1::EventType> types) {
  uint32_t bits = 0;
  for (v1::EventType t : types) bits |= 1u << t;
  return bits;
}

std::shared_ptr<Watcher> NewWatcher(Filter filter = {}, uint32_t types = 0, size_t capacity = 16,
                                    std::atomic<int>* wakes = nullptr) {
  return std::make_shared<Watcher>(std::move(filter), types, capacity, [wakes] {
    if (wakes != nullptr) wakes->fetch_add(1);
  });
}

TEST(WatchHubTest, NobodyWatchingIsInactive) {
  WatchHub hub;
  EXPECT_FALSE(hub.active());
  auto w = NewWatcher();
  ASSERT_TRUE(hub.Add(w, 4));
  EXPECT_TRUE(hub.active());
  hub.Remove(w.get());
  EXPECT_FALSE(hub.active());
}

TEST(WatchHubTest, FinishedEventCarriesTheOpAndItsOutcome) {
  WatchHub hub;
  auto w = NewWatcher();
  ASSERT_TRUE(hub.Add(w, 4));
  core::OpSnapshot s = Snap(42);
  s.state = core::OpState::kCancelled;
  s.end_reason = core::EndReason::kDrain;
  hub.PublishFinished(s, 1000, "db");
  std::optional<v1::WatchEvent> e = w->Pop();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->type(), v1::EVENT_TYPE_CANCELLED);
  EXPECT_EQ(e->op_id(), 42u);
  EXPECT_EQ(e->session_id(), 1u);
  EXPECT_EQ(e->kind(), v1::OP_KIND_READ);
  EXPECT_EQ(e->outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_EQ(e->end_reason(), v1::END_REASON_DRAIN);
  EXPECT_FALSE(w->Pop().has_value());
}

TEST(WatchHubTest, WatcherGetsOnlyTheTypesItAskedFor) {
  WatchHub hub;
  auto w = NewWatcher({}, Types({v1::EVENT_TYPE_SUBMITTED}));
  ASSERT_TRUE(hub.Add(w, 4));
  hub.PublishFinished(Snap(1), 1000, "db");
  hub.PublishSubmitted(Snap(2), 1000, "db");
  std::optional<v1::WatchEvent> e = w->Pop();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->type(), v1::EVENT_TYPE_SUBMITTED);
  EXPECT_EQ(e->op_id(), 2u);
  EXPECT_FALSE(w->Pop().has_value());
}

TEST(WatchHubTest, WatcherGetsOnlyTheOpsItsFilterSelects) {
  WatchHub hub;
  Filter writes_of_1000;
  writes_of_1000.kinds = 1u << static_cast<int>(core::OpKind::kWrite);
  writes_of_1000.uid = 1000;
  auto w = NewWatcher(writes_of_1000);
  ASSERT_TRUE(hub.Add(w, 4));
  hub.PublishFinished(Snap(1, core::OpKind::kRead), 1000, "db");
  hub.PublishFinished(Snap(2, core::OpKind::kWrite), 1001, "db");
  hub.PublishFinished(Snap(3, core::OpKind::kWrite), 1000, "db");
  std::optional<v1::WatchEvent> e = w->Pop();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->op_id(), 3u);
  EXPECT_FALSE(w->Pop().has_value());
}

TEST(WatchHubTest, CancelRequestedOrDeadlineExpired) {
  WatchHub hub;
  auto w = NewWatcher();
  ASSERT_TRUE(hub.Add(w, 4));
  hub.PublishEndRequested(Snap(1), core::EndReason::kSessionClosed, 1000, "db");
  hub.PublishEndRequested(Snap(2), core::EndReason::kDeadline, 1000, "db");
  std::optional<v1::WatchEvent> cancel = w->Pop();
  ASSERT_TRUE(cancel.has_value());
  EXPECT_EQ(cancel->type(), v1::EVENT_TYPE_CANCEL_REQUESTED);
  EXPECT_EQ(cancel->end_reason(), v1::END_REASON_SESSION_CLOSED);
  EXPECT_EQ(w->Pop()->type(), v1::EVENT_TYPE_DEADLINE_EXPIRED);
}

TEST(WatchHubTest, FullBufferDropsAndTheNextEventCarriesTheCount) {
  std::atomic<int> wakes{0};
  auto w = NewWatcher({}, 0, /*capacity=*/2, &wakes);
  for (uint64_t i = 1; i <= 5; ++i) {
    v1::WatchEvent e;
    e.set_op_id(i);
    w->Push(e);
  }
  EXPECT_EQ(wakes.load(), 2);  // only queued events wake the call
  EXPECT_EQ(w->Pop()->dropped(), 0u);
  EXPECT_EQ(w->Pop()->dropped(), 0u);
  EXPECT_FALSE(w->Pop().has_value());
  v1::WatchEvent next;
  next.set_op_id(6);
  w->Push(next);
  std::optional<v1::WatchEvent> e = w->Pop();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->op_id(), 6u);
  EXPECT_EQ(e->dropped(), 3u);
  v1::WatchEvent after;
  w->Push(after);
  EXPECT_EQ(w->Pop()->dropped(), 0u);  // the count is reported once
}

TEST(WatchHubTest, ServesAtMostMaxWatchers) {
  WatchHub hub;
  auto a = NewWatcher();
  auto b = NewWatcher();
  auto c = NewWatcher();
  EXPECT_TRUE(hub.Add(a, 2));
  EXPECT_TRUE(hub.Add(b, 2));
  EXPECT_FALSE(hub.Add(c, 2));
  hub.Remove(a.get());
  EXPECT_TRUE(hub.Add(c, 2));
}

TEST(WatchHubTest, RemovedWatcherGetsNothingMore) {
  WatchHub hub;
  auto a = NewWatcher();
  auto b = NewWatcher();
  ASSERT_TRUE(hub.Add(a, 4));
  ASSERT_TRUE(hub.Add(b, 4));
  hub.Remove(a.get());
  hub.PublishFinished(Snap(1), 1000, "db");
  EXPECT_FALSE(a->Pop().has_value());
  EXPECT_TRUE(b->Pop().has_value());
}

}  // namespace
}  // namespace asyncd::daemon
