// Sessions, arenas, lookup, listing and teardown of the registry.
#include "src/core/registry.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "src/core/dispatcher.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::core {
namespace {

std::shared_ptr<Session> Open(Registry& r, const char* name = "client") {
  auto s = r.OpenSession({name, 1000, 1000, 42});
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

void FinishAndRetire(Op& op) {
  if (op.state() < OpState::kRunning) {
    ASSERT_TRUE(op.TryStart(1));
  }
  op.Finish(0, 2);
  op.session->Retire(op);
}

TEST(RegistryTest, SessionIdsAreUniqueAndFindable) {
  Registry registry;
  auto a = Open(registry, "a");
  auto b = Open(registry, "b");
  EXPECT_NE(a->id(), b->id());
  EXPECT_EQ(registry.FindSession(a->id()), a);
  EXPECT_EQ(registry.FindSession(b->id()), b);
  EXPECT_EQ(registry.FindSession(a->id() + (1u << 16)), nullptr);  // same index, other serial
  EXPECT_EQ(registry.session_count(), 2u);
  EXPECT_EQ(a->client().name, "a");
  EXPECT_EQ(a->client().pid, 42u);
}

// A finished op is out of the in-flight count at once, though it stays
// live (its slot held) until its completion was delivered and it retired;
// a closing session still leaves the table with its last retire.
TEST(RegistryTest, FinishedOpIsNotInFlightBeforeItRetires) {
  Registry registry;
  auto s = Open(registry);
  auto a = s->Register(OpKind::kRead, CancelSafety::kAlways, 1, "", 1);
  auto b = s->Register(OpKind::kRead, CancelSafety::kAlways, 1, "", 1);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*a)->TryStart(1));
  (*a)->Finish(0, 2);
  s->NoteFinished(**a);
  EXPECT_EQ(s->live_ops(), 2u);
  EXPECT_EQ(s->inflight_ops(), 1u);
  EXPECT_EQ(registry.inflight_ops(), 1u);
  ASSERT_NE(registry.BeginClose(s->id()), nullptr);
  s->Retire(**a);
  EXPECT_EQ(s->live_ops(), 1u);
  EXPECT_EQ(s->inflight_ops(), 1u);
  EXPECT_EQ(registry.session_count(), 1u);
  ASSERT_TRUE((*b)->TryStart(1));
  (*b)->Finish(0, 2);
  s->NoteFinished(**b);
  EXPECT_EQ(s->inflight_ops(), 0u);
  EXPECT_EQ(registry.session_count(), 1u);
  s->Retire(**b);
  EXPECT_EQ(registry.session_count(), 0u);
  EXPECT_EQ(registry.inflight_ops(), 0u);
}

TEST(RegistryTest, SessionTableIsBounded) {
  Registry registry(Registry::Options{.max_sessions = 2});
  auto a = Open(registry);
  auto b = Open(registry);
  auto c = registry.OpenSession({"c", 0, 0, 0});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  registry.BeginClose(a->id());  // no ops: leaves the table at once
  EXPECT_TRUE(registry.OpenSession({"c", 0, 0, 0}).ok());
}

TEST(RegistryTest, ArenaGrowsBySlabsUpToTheLimit) {
  Registry registry(Registry::Options{.max_ops_per_session = 600});
  auto s = Open(registry);
  std::vector<Op*> ops;
  std::set<uint64_t> ids;
  for (int i = 0; i < 600; ++i) {
    auto op = s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
    ASSERT_TRUE(op.ok()) << i << ": " << op.status();
    ops.push_back(*op);
    ids.insert((*op)->id().value);
  }
  EXPECT_EQ(ids.size(), 600u);
  auto over = s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s->live_ops(), 600u);
  for (Op* op : ops) FinishAndRetire(*op);
  EXPECT_EQ(s->live_ops(), 0u);
  // Freed slots are reused: no new slab is needed for another full round.
  for (int i = 0; i < 600; ++i) {
    auto op = s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
    ASSERT_TRUE(op.ok());
    EXPECT_EQ(ids.count((*op)->id().value), 0u) << "an id was handed out twice";
    FinishAndRetire(**op);
  }
}

TEST(RegistryTest, ListingSeesEveryLiveOpOfEverySession) {
  Registry registry;
  auto a = Open(registry, "a");
  auto b = Open(registry, "b");
  std::set<uint64_t> want;
  for (int i = 0; i < 300; ++i) {
    auto& s = (i % 3 == 0) ? b : a;
    auto op = s->Register(OpKind::kRead, CancelSafety::kAlways, 7, "h:7", 100 + i);
    ASSERT_TRUE(op.ok());
    want.insert((*op)->id().value);
  }
  std::set<uint64_t> seen;
  registry.ForEach([&](const OpSnapshot& snap, const auto&) {
    seen.insert(snap.id.value);
    EXPECT_EQ(snap.kind, OpKind::kRead);
    EXPECT_EQ(snap.state, OpState::kQueued);
    EXPECT_EQ(snap.handle, 7u);
    EXPECT_STREQ(snap.target, "h:7");
    EXPECT_TRUE(snap.cancellable());
    EXPECT_EQ(registry.FindSession(snap.session_id) != nullptr, true);
    return true;
  });
  EXPECT_EQ(seen, want);
  EXPECT_EQ(registry.live_ops(), 300u);
  // ForEach stops when asked to.
  int visited = 0;
  registry.ForEach([&](const OpSnapshot&, const auto&) { return ++visited < 5; });
  EXPECT_EQ(visited, 5);
}

TEST(RegistryTest, SnapshotShowsStateTimestampsAndCancellability) {
  Registry registry;
  auto s = Open(registry);
  Op& op = **s->Register(OpKind::kWrite, CancelSafety::kOnlyBeforeStart, 3, "h:3", 10);
  op.MarkDispatched(BackendKind::kIoUring, 11);
  auto snap = registry.Snapshot(op.id());
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->state, OpState::kDispatched);
  EXPECT_EQ(snap->backend, BackendKind::kIoUring);
  EXPECT_EQ(snap->submitted_ns, 10);
  EXPECT_EQ(snap->dispatched_ns, 11);
  EXPECT_TRUE(snap->cancellable());
  ASSERT_TRUE(op.TryStart(12));
  snap = registry.Snapshot(op.id());
  EXPECT_EQ(snap->state, OpState::kRunning);
  EXPECT_EQ(snap->started_ns, 12);
  EXPECT_FALSE(snap->cancellable());  // a started write is not cancel-safe
}

TEST(RegistryTest, SnapshotShowsTheClientsTagAndTheDeadlineInMilliseconds) {
  Registry registry;
  auto s = Open(registry);
  const int64_t now = 1'000'000'000;
  Op& a = **s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", now, 77,
                        now + 2'500'000'001);  // rounded up
  Op& b = **s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", now, 0, now - 5);
  Op& c = **s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", now);
  EXPECT_EQ(registry.Snapshot(a.id())->tag, 77u);
  EXPECT_EQ(registry.Snapshot(a.id())->deadline_ms, 2501u);
  EXPECT_EQ(registry.Snapshot(b.id())->deadline_ms, 1u);  // passed already: still a deadline
  EXPECT_EQ(registry.Snapshot(c.id())->tag, 0u);
  EXPECT_EQ(registry.Snapshot(c.id())->deadline_ms, 0u);
  // A reused slot does not keep its last op's tag.
  FinishAndRetire(a);
  Op& d = **s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", now);
  ASSERT_EQ(&d, &a);
  EXPECT_EQ(registry.Snapshot(d.id())->tag, 0u);
  EXPECT_EQ(registry.Snapshot(d.id())->deadline_ms, 0u);
}

// An open's result is its handle, in Op::result and Completion.result
// (both int32): a slot reused for a long time must not make it negative.
TEST(HandleTableTest, HandlesStayPositiveInt32AsTheirSlotIsReused) {
  HandleTable table(4);
  std::set<uint32_t> seen;
  uint32_t first = 0;
  for (int i = 0; i < 40'000; ++i) {
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    auto h = table.Insert(fd);
    ASSERT_TRUE(h.ok());
    ASSERT_LE(*h, uint32_t{INT32_MAX}) << "after " << i << " reuses";
    ASSERT_NE(*h, 0u);
    if (i == 0) first = *h;
    if (i < 32'768) {
      EXPECT_TRUE(seen.insert(*h).second) << "handle repeated after " << i;
    }
    if (i == 32'768) {
      EXPECT_EQ(*h, first);  // the generation wrapped
    }
    auto detached = table.Detach(*h);
    ASSERT_TRUE(detached.ok());
    ::close(*detached);
    EXPECT_FALSE(table.Acquire(*h).ok());  // a closed handle names nothing
  }
}

// What a checkpoint needs of the registry: per index, the sessions opened so
// far and a generation above every op id issued there, live session or not.
TEST(RegistryTest, CountersCoverEverySessionAndOpIdIssued) {
  Registry registry(Registry::Options{.max_sessions = 4});
  auto a = Open(registry, "a");
  Op& op = **a->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
  const OpId first = op.id();
  FinishAndRetire(op);
  Op& second = **a->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
  const OpId live = second.id();
  std::vector<Registry::IndexCounters> counters = registry.Counters();
  ASSERT_EQ(counters.size(), 1u);
  EXPECT_EQ(counters[0].index, a->index());
  EXPECT_EQ(counters[0].serial, 1u);
  EXPECT_GT(counters[0].next_gen, std::max(first.generation(), live.generation()));

  // Ended, its index's counters stay; reopened there, the serial counts on.
  FinishAndRetire(second);
  ASSERT_NE(registry.BeginClose(a->id()), nullptr);
  counters = registry.Counters();
  ASSERT_EQ(counters.size(), 1u);
  EXPECT_EQ(counters[0].serial, 1u);
  EXPECT_GT(counters[0].next_gen, live.generation());
  auto b = Open(registry, "b");
  counters = registry.Counters();
  uint64_t serials = 0;
  for (const auto& c : counters) serials += c.serial;
  EXPECT_EQ(serials, 2u);
  for (const auto& c : counters) {
    if (c.index == b->index()) EXPECT_EQ(b->id(), (c.serial << OpId::kSessionBits) | c.index);
  }
}

// An op limit that is not a multiple of the slab size leaves the last
// slab's tail without slots: the counters skip it.
TEST(RegistryTest, CountersOfASessionWithAShortLastSlab) {
  Registry registry(Registry::Options{.max_ops_per_session = Session::kSlabSlots + 10});
  auto s = Open(registry);
  std::vector<Op*> ops;
  for (uint32_t i = 0; i < Session::kSlabSlots + 10; ++i) {
    ops.push_back(*s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1));
  }
  for (Op* op : ops) FinishAndRetire(*op);
  ASSERT_EQ(registry.Counters().size(), 1u);
  EXPECT_EQ(registry.Counters()[0].next_gen, 4u);  // each slot went 1 -> 2; 2 more may follow
  ASSERT_NE(registry.BeginClose(s->id()), nullptr);
  EXPECT_EQ(registry.Counters()[0].next_gen, 4u);
}

TEST(HandleTableTest, ListsOpenHandlesAndEverySlotsGeneration) {
  HandleTable table(8);
  const int a = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const int b = ::open("/dev/null", O_WRONLY | O_APPEND | O_CLOEXEC);
  const uint32_t ha = *table.Insert(a, "a");
  const uint32_t hb = *table.Insert(b, "b");
  ::close(*table.Detach(ha));  // slot 1 moves to its next generation
  std::vector<HandleTable::Listed> open;
  std::vector<uint32_t> generations;
  table.List(&open, &generations);
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].handle, hb);
  EXPECT_EQ(open[0].fd, b);
  EXPECT_EQ(open[0].path, "b");
  EXPECT_TRUE(open[0].stream);  // /dev/null is a character device
  EXPECT_EQ(open[0].status_flags & O_ACCMODE, O_WRONLY);
  EXPECT_NE(open[0].status_flags & O_APPEND, 0);
  ASSERT_EQ(generations.size(), 2u);
  EXPECT_EQ(generations[0], (ha >> 16) + 1);
  EXPECT_EQ(generations[1], hb >> 16);
  // The next open of slot 1 is the generation listed.
  const uint32_t hc = *table.Insert(::open("/dev/null", O_RDONLY | O_CLOEXEC), "c");
  EXPECT_EQ(hc, (generations[0] << 16) | 1);
}

// A registry that starts above its predecessors' serials: its ids start
// there, the ids below count as issued (ended), and only used indexes have
// counters to hand on.
TEST(RegistryTest, SerialsStartAtTheFirstSerialAndTheOnesBelowCountAsIssued) {
  constexpr uint64_t kFirst = uint64_t{1} << 40;
  Registry registry(Registry::Options{.max_sessions = 4, .first_serial = kFirst});
  auto s = Open(registry);
  EXPECT_EQ(s->id() >> OpId::kSessionBits, kFirst);
  EXPECT_TRUE(registry.Issued((uint64_t{5} << OpId::kSessionBits) | 2));  // an older daemon's
  EXPECT_FALSE(registry.Issued(((kFirst + 1) << OpId::kSessionBits) | s->index()));
  std::vector<Registry::IndexCounters> counters = registry.Counters();
  ASSERT_EQ(counters.size(), 1u);
  EXPECT_EQ(counters[0].serial, kFirst);
}

TEST(RegistryTest, ClosingSessionRefusesNewOpsAndLeavesWhenDrained) {
  Registry registry;
  auto s = Open(registry);
  Op& op = **s->Register(OpKind::kRead, CancelSafety::kAlways, 0, "", 1);
  const OpId id = op.id();
  EXPECT_EQ(registry.BeginClose(s->id()), s);
  EXPECT_EQ(registry.BeginClose(s->id()), nullptr);  // only once
  EXPECT_TRUE(s->closing());
  auto refused = s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  // Still visible to operators while its op runs.
  EXPECT_TRUE(registry.Find(id));
  EXPECT_EQ(registry.session_count(), 1u);
  FinishAndRetire(op);
  EXPECT_EQ(registry.session_count(), 0u);
  EXPECT_EQ(registry.FindSession(s->id()), nullptr);
  EXPECT_FALSE(registry.Find(id));
}

TEST(RegistryTest, ARefusedRegisterOnARemovedSessionFreesNoSecondSlot) {
  Registry registry(Registry::Options{.max_sessions = 2});
  auto a = Open(registry);
  auto b = Open(registry);
  registry.BeginClose(a->id());  // no ops: removed at once
  // The refusal takes the count back to "closing, none live", as the last
  // op's retirement would: the session must not leave the table twice.
  auto refused = a->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(registry.OpenSession({"c", 0, 0, 0}).ok());
  auto d = registry.OpenSession({"d", 0, 0, 0});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(registry.session_count(), 2u);
}

TEST(RegistryTest, IdsOfAClosedSessionDoNotMatchItsSuccessor) {
  Registry registry(Registry::Options{.max_sessions = 1});
  auto first = Open(registry);
  std::vector<OpId> old_ids;
  for (int round = 0; round < 3; ++round) {
    Op& op = **first->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
    old_ids.push_back(op.id());
    FinishAndRetire(op);
  }
  registry.BeginClose(first->id());
  auto second = Open(registry);
  ASSERT_EQ(second->index(), first->index());
  for (int i = 0; i < 10; ++i) {
    Op& op = **second->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
    for (OpId old : old_ids) EXPECT_NE(op.id(), old);
    for (OpId old : old_ids) EXPECT_FALSE(registry.Find(old));
  }
}

// A recording sink for dispatcher-level tests that need no real backend.
class Sink : public CompletionSink {
 public:
  void OnComplete(const Op& op) noexcept override {
    states.push_back(op.state());
    results.push_back(op.result.load());
  }
  std::vector<OpState> states;
  std::vector<int64_t> results;
};

class DispatcherTest : public ::testing::Test {
 protected:
  DispatcherTest() { dispatcher_.SetBackends({&backend_}); }
  Registry registry_;
  Dispatcher dispatcher_{registry_, AT_FDCWD};
  // Holds ops until told to finish them: lets tests decide order.
  mocks::FakeBackend backend_{
      dispatcher_, {.completion = mocks::FakeBackend::Completion::kHeld, .capacity = 1000}};
  std::shared_ptr<Session> session_ = Open(registry_);
  Sink sink_;
};

TEST_F(DispatcherTest, UnknownHandleIsRefusedAndChangesNothing) {
  OpRequest req{.kind = OpKind::kRead, .handle = 12345, .sink = &sink_};
  auto id = dispatcher_.Submit(*session_, req);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(session_->live_ops(), 0u);
  EXPECT_TRUE(backend_.held().empty());
  EXPECT_TRUE(sink_.states.empty());
}

TEST_F(DispatcherTest, FullBackendIsResourceExhaustedAndLeaksNothing) {
  backend_.set_capacity(2);
  std::vector<OpRequest> reqs(5, OpRequest{.kind = OpKind::kNop, .sink = &sink_});
  std::vector<absl::StatusOr<OpId>> out(5);
  dispatcher_.SubmitBatch(*session_, reqs, out);
  EXPECT_TRUE(out[0].ok());
  EXPECT_TRUE(out[1].ok());
  for (int i = 2; i < 5; ++i) {
    ASSERT_FALSE(out[i].ok());
    EXPECT_EQ(out[i].status().code(), absl::StatusCode::kResourceExhausted);
  }
  EXPECT_EQ(session_->live_ops(), 2u);
  EXPECT_TRUE(sink_.states.empty());  // refused ops report nothing
  backend_.CompleteAll(0);
  EXPECT_EQ(sink_.states.size(), 2u);
  EXPECT_EQ(session_->live_ops(), 0u);
}

TEST_F(DispatcherTest, OpenYieldsAHandleAndCloseOfAnInUseHandleIsDeferred) {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  uint32_t handle = *session_->handles().Insert(fd);
  // A read holds the handle; closing it meanwhile must not close the fd.
  ASSERT_TRUE(dispatcher_.Submit(*session_, {.kind = OpKind::kRead, .handle = handle,
                                             .sink = &sink_}).ok());
  ASSERT_TRUE(dispatcher_.Submit(*session_, {.kind = OpKind::kClose, .handle = handle,
                                             .sink = &sink_}).ok());
  ASSERT_EQ(sink_.states.size(), 1u);  // the close completed inline
  EXPECT_EQ(sink_.results[0], 0);
  EXPECT_GE(fcntl(fd, F_GETFD), 0) << "fd closed under a running read";
  auto again = dispatcher_.Submit(*session_, {.kind = OpKind::kRead, .handle = handle});
  EXPECT_EQ(again.status().code(), absl::StatusCode::kNotFound);
  backend_.CompleteAll(0);
  EXPECT_EQ(fcntl(fd, F_GETFD), -1);  // the last user closed it
  EXPECT_EQ(errno, EBADF);
}

TEST_F(DispatcherTest, CancelInterruptsTheHoldingBackendOnce) {
  auto nop = dispatcher_.Submit(*session_, {.kind = OpKind::kTimeout, .sink = &sink_});
  ASSERT_TRUE(nop.ok());
  EXPECT_EQ(dispatcher_.Cancel(*nop, EndReason::kClientRequest), CancelResult::kCancelled);
  EXPECT_EQ(backend_.interrupted().size(), 1u);
  backend_.CompleteAll(0);
  ASSERT_FALSE(sink_.states.empty());
  EXPECT_EQ(sink_.states.back(), OpState::kCancelled);
  EXPECT_EQ(dispatcher_.Cancel(*nop, EndReason::kClientRequest), CancelResult::kNotFound);
}

// A cancel that found the op live, then reached it after it finished and
// retired, answers ALREADY_DONE: it saw the op, so the op was not unknown.
TEST_F(DispatcherTest, CancelOfAnOpRetiredSinceItWasFoundIsAlreadyDone) {
  auto id = dispatcher_.Submit(*session_, {.kind = OpKind::kTimeout, .sink = &sink_});
  ASSERT_TRUE(id.ok());
  Registry::Found found = registry_.Find(*id);
  ASSERT_TRUE(found);
  backend_.CompleteAll(0);
  ASSERT_EQ(session_->live_ops(), 0u);  // retired: the slot's generation moved on
  EXPECT_EQ(dispatcher_.Cancel(*found.op, id->generation(), EndReason::kClientRequest),
            CancelResult::kAlreadyDone);
  EXPECT_EQ(dispatcher_.Cancel(*id, EndReason::kClientRequest), CancelResult::kNotFound);
}

// An op reaching a closing session is refused for that reason, before its
// handle (closed with the session) is looked at.
TEST_F(DispatcherTest, SubmitToAClosingSessionIsFailedPrecondition) {
  const uint32_t handle = *session_->handles().Insert(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  ASSERT_NE(registry_.BeginClose(session_->id()), nullptr);
  auto id = dispatcher_.Submit(*session_, {.kind = OpKind::kRead, .handle = handle, .sink = &sink_});
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition) << id.status();
  EXPECT_TRUE(sink_.states.empty());
}

TEST_F(DispatcherTest, CloseSessionCancelsEverythingItOwns) {
  const int fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  const uint32_t handle = *session_->handles().Insert(fd);
  std::vector<OpRequest> reqs(50, OpRequest{.kind = OpKind::kTimeout, .sink = &sink_});
  reqs.push_back({.kind = OpKind::kWrite, .handle = handle, .sink = &sink_});
  std::vector<absl::StatusOr<OpId>> out(reqs.size());
  dispatcher_.SubmitBatch(*session_, reqs, out);
  auto counts = dispatcher_.CloseSession(session_->id(), EndReason::kSessionClosed);
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->cancelled, reqs.size());  // none had started
  EXPECT_EQ(dispatcher_.CloseSession(session_->id(), EndReason::kSessionClosed).status().code(),
            absl::StatusCode::kNotFound);
  backend_.CompleteAll(0);
  ASSERT_EQ(sink_.states.size(), reqs.size());
  for (OpState s : sink_.states) EXPECT_EQ(s, OpState::kCancelled);
  EXPECT_EQ(registry_.session_count(), 0u);
  EXPECT_EQ(fcntl(fd, F_GETFD), -1) << "session end must close its handles";
}

// A close still queued when its session ends never runs: the descriptor it
// took from the handle table is closed all the same.
TEST_F(DispatcherTest, CloseCancelledBeforeItRanStillClosesTheDescriptor) {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const uint32_t handle = *session_->handles().Insert(fd);
  ASSERT_TRUE(dispatcher_.Submit(*session_, {.kind = OpKind::kClose, .handle = handle,
                                             .sink = &sink_}).ok());
  ASSERT_TRUE(dispatcher_.CloseSession(session_->id(), EndReason::kSessionClosed).ok());
  backend_.CompleteAll(0);  // TryStart refuses: it completes cancelled
  ASSERT_EQ(sink_.states.size(), 1u);
  EXPECT_EQ(sink_.states[0], OpState::kCancelled);
  EXPECT_EQ(fcntl(fd, F_GETFD), -1) << "a cancelled close leaked its descriptor";
}

// An open that is past cancelling (it creates) finishes after its session
// ended: its descriptor is closed at once, not kept until the session's
// memory goes, and the client is told the open was cancelled.
TEST_F(DispatcherTest, OpenFinishingAfterItsSessionEndedClosesItsDescriptor) {
  ASSERT_TRUE(dispatcher_.Submit(*session_, {.kind = OpKind::kOpen,
                                             .params = {.flags = O_CREAT | O_RDWR},
                                             .sink = &sink_}).ok());
  ASSERT_TRUE(backend_.held().front()->TryStart(1));  // running: no longer cancellable
  auto counts = dispatcher_.CloseSession(session_->id(), EndReason::kSessionClosed);
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->not_cancellable, 1u);
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::vector<Op*> held = backend_.TakeHeld();
  dispatcher_.Complete(*held.front(), fd);  // the open returns its descriptor
  ASSERT_EQ(sink_.results.size(), 1u);
  EXPECT_EQ(sink_.results[0], -ECANCELED);
  EXPECT_EQ(fcntl(fd, F_GETFD), -1) << "descriptor kept by an ended session";
  EXPECT_EQ(session_->handles().open_count(), 0u);
}

// A walk visits live ops in op-id order and resumes after any id: pages
// taken one after another see every op exactly once.
// Areas go to the backend that runs reads and writes; it alone sees the
// number, which an op carries to it unchanged. 0 is never forwarded.
TEST(DispatcherAreaTest, RegistersWithTheBackendOfReadsAndWrites) {
  Registry registry;
  Dispatcher dispatcher(registry, AT_FDCWD);
  mocks::FakeBackend ring(dispatcher, {.kind = BackendKind::kIoUring,
                                       .kinds = {OpKind::kRead, OpKind::kWrite},
                                       .completion = mocks::FakeBackend::Completion::kHeld,
                                       .area = 7});
  mocks::FakeBackend fallback(dispatcher, {.area = 9});
  EXPECT_EQ(dispatcher.RegisterArea(nullptr, 4096), 0) << "no backends yet";
  dispatcher.SetBackends({&ring, &fallback});
  char area[64];
  EXPECT_EQ(dispatcher.RegisterArea(area, sizeof(area)), 7);
  EXPECT_EQ(ring.areas_registered(), 1u);
  EXPECT_EQ(fallback.areas_registered(), 0u);

  std::shared_ptr<Session> session = Open(registry);
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  absl::StatusOr<uint32_t> h = session->handles().Insert(fd);
  ASSERT_TRUE(h.ok()) << h.status();
  Sink sink;
  OpRequest read{.kind = OpKind::kRead, .handle = *h, .sink = &sink};
  read.params.buf = area;
  read.params.len = sizeof(area);
  read.params.area = 7;
  ASSERT_TRUE(dispatcher.Submit(*session, read).ok());
  ASSERT_EQ(ring.held_count(), 1u);
  EXPECT_EQ(ring.held()[0]->params.area, 7);
  ring.CompleteAll(0);

  dispatcher.UnregisterArea(0);
  dispatcher.UnregisterArea(7);
  EXPECT_EQ(ring.unregistered(), std::vector<uint8_t>{7});
  EXPECT_TRUE(fallback.unregistered().empty());
}

// When reads and writes go to different backends no number could name an
// area for both: nothing is registered.
TEST(DispatcherAreaTest, NoAreaWhenReadsAndWritesGoToDifferentBackends) {
  Registry registry;
  Dispatcher dispatcher(registry, AT_FDCWD);
  mocks::FakeBackend reads(dispatcher,
                           {.kind = BackendKind::kIoUring, .kinds = {OpKind::kRead}, .area = 7});
  mocks::FakeBackend fallback(dispatcher, {.area = 9});
  dispatcher.SetBackends({&reads, &fallback});
  char area[64];
  EXPECT_EQ(dispatcher.RegisterArea(area, sizeof(area)), 0);
  EXPECT_EQ(reads.areas_registered() + fallback.areas_registered(), 0u);
}

TEST(RegistryWalkTest, PagesInIdOrderSeeEveryOpOnce) {
  Registry registry;
  std::vector<std::shared_ptr<Session>> sessions;
  std::set<uint64_t> live;
  for (int s = 0; s < 3; ++s) {
    sessions.push_back(*registry.OpenSession({"w", 1, 1, 1}));
    for (int i = 0; i < 700; ++i) {  // crosses slab boundaries
      live.insert((*sessions.back()->Register(OpKind::kRead, CancelSafety::kAlways, 0, "", 1))
                      ->id()
                      .value);
    }
  }
  // Retire every third op: the walk must skip free slots.
  std::vector<uint64_t> retired;
  for (uint64_t id : live) {
    if (id % 3 != 0) continue;
    Registry::Found f = registry.Find(OpId{id});
    ASSERT_TRUE(f);
    ASSERT_TRUE(f.op->TryStart(1));
    f.op->Finish(0, 2);
    f.session->Retire(*f.op);
    retired.push_back(id);
  }
  for (uint64_t id : retired) live.erase(id);
  std::vector<uint64_t> seen;
  OpId after{};
  for (;;) {
    int rows = 0;
    registry.Walk(after, [&](const Op&, const OpBrief& b, const std::shared_ptr<Session>&) {
      EXPECT_TRUE(seen.empty() || b.id.value > seen.back()) << "out of order";
      seen.push_back(b.id.value);
      after = b.id;
      return ++rows < 128;
    });
    if (rows < 128) break;
  }
  EXPECT_EQ(std::set<uint64_t>(seen.begin(), seen.end()), live);
  EXPECT_EQ(seen.size(), live.size());
}

// A walk that stops early visits no more than it must.
TEST(RegistryWalkTest, StopsWhenTold) {
  Registry registry;
  auto s = *registry.OpenSession({"w", 1, 1, 1});
  for (int i = 0; i < 1000; ++i) {
    (void)s->Register(OpKind::kRead, CancelSafety::kAlways, 0, "", 1);
  }
  int visits = 0;
  registry.Walk(OpId{}, [&](const Op&, const OpBrief&, const std::shared_ptr<Session>&) {
    return ++visits < 10;
  });
  EXPECT_EQ(visits, 10);
}

// An ended session's id is told apart from one never issued, forever: ids
// are never reused.
TEST(RegistrySessionTest, IssuedIdsStayKnownAfterTheyEnd) {
  Registry registry(Registry::Options{.max_sessions = 2});
  auto a = *registry.OpenSession({"a", 1, 1, 1});
  const uint64_t first = a->id();
  EXPECT_TRUE(registry.Issued(first));
  ASSERT_NE(registry.BeginClose(first), nullptr);
  a.reset();
  EXPECT_EQ(registry.FindSession(first), nullptr);
  EXPECT_TRUE(registry.Issued(first));
  auto b = *registry.OpenSession({"b", 1, 1, 1});  // may take the same table index
  EXPECT_NE(b->id(), first);
  EXPECT_TRUE(registry.Issued(first));
  EXPECT_TRUE(registry.Issued(b->id()));
  EXPECT_FALSE(registry.Issued(b->id() + (uint64_t{1} << OpId::kSessionBits)));  // a later serial
  EXPECT_FALSE(registry.Issued(0));
  EXPECT_FALSE(registry.Issued(5));  // index 5 is past a table of 2
}

}  // namespace
}  // namespace asyncd::core
