// Cancel (daemon/cancel.h) through a real core::Registry and Dispatcher with
// the fake backend holding every op: by id (cancelled, not cancellable once a
// non-cancel-safe op started, not found for a stale id), by selector (only
// what matches; a non-admin only its own), who may cancel what and with which
// end reason, the outcome list cap, and what is counted and told to watchers.
#include "daemon/cancel.h"

#include "daemon/observer.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "src/core/clock.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::daemon {
namespace {

using mocks::FakeBackend;

class CancelTest : public ::testing::Test {
 protected:
  CancelTest() {
    dispatcher_.SetBackends({&backend_});
    dispatcher_.SetObserver(&observer_);
    db_ = *registry_.OpenSession({"db", 1000, 1000, 1});
    web_ = *registry_.OpenSession({"web", 1001, 1001, 2});
  }
  ~CancelTest() override { backend_.CompleteAll(0); }

  core::OpId Submit(core::Session& session, core::OpKind kind) {
    absl::StatusOr<core::OpId> id = dispatcher_.Submit(session, {.kind = kind});
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : core::OpId{};
  }
  v1::CancelResponse CancelId(const Caller& caller, core::OpId id, absl::Status* status) {
    v1::CancelRequest req;
    req.set_op_id(id.value);
    return canceller_.Cancel(caller, req, status);
  }
  v1::CancelResponse CancelWhere(const Caller& caller, const v1::OpSelector& sel,
                                 absl::Status* status) {
    v1::CancelRequest req;
    *req.mutable_selector() = sel;
    return canceller_.Cancel(caller, req, status);
  }
  core::EndReason EndReasonOf(core::OpId id) {
    std::optional<core::OpSnapshot> s = registry_.Snapshot(id);
    EXPECT_TRUE(s.has_value());
    return s ? s->end_reason : core::EndReason::kNone;
  }
  v1::Stats Stats() {
    v1::Stats stats;
    counters_.FillStats(stats);
    return stats;
  }

  static Caller User(uint32_t uid) { return Caller{.uid = uid, .gid = uid}; }
  static Caller Admin() { return Caller{.uid = 0, .gid = 0, .admin = true}; }

  core::Registry registry_{core::Registry::Options{.max_ops_per_session = 2048}};
  core::Dispatcher dispatcher_{registry_, -1};
  FakeBackend backend_{dispatcher_, {.completion = FakeBackend::Completion::kHeld}};
  Observer observer_{16, 0};  // no slowest set: the recent ring alone holds finished ops
  Counters& counters_ = observer_.counters();
  WatchHub& hub_ = observer_.watch_hub();
  Canceller canceller_{registry_, dispatcher_, counters_, observer_.history()};
  std::shared_ptr<core::Session> db_;   // uid 1000
  std::shared_ptr<core::Session> web_;  // uid 1001
};

TEST_F(CancelTest, ByIdCancelsTheOwnersOp) {
  const core::OpId id = Submit(*db_, core::OpKind::kTimeout);
  absl::Status status;
  v1::CancelResponse resp = CancelId(User(1000), id, &status);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(resp.outcomes_size(), 1);
  EXPECT_EQ(resp.outcomes(0).op_id(), id.value);
  EXPECT_EQ(resp.outcomes(0).result(), v1::CANCEL_RESULT_CANCELLED);
  EXPECT_EQ(resp.counts().cancelled(), 1u);
  EXPECT_EQ(backend_.interrupts(), 1u);
  EXPECT_EQ(EndReasonOf(id), core::EndReason::kClientRequest);
  EXPECT_EQ(Stats().cancels_cancelled(), 1u);
}

TEST_F(CancelTest, RequestTagIsEchoed) {
  v1::CancelRequest req;
  req.set_request_tag(77);
  req.set_op_id(Submit(*db_, core::OpKind::kTimeout).value);
  absl::Status status;
  EXPECT_EQ(canceller_.Cancel(User(1000), req, &status).request_tag(), 77u);
}

TEST_F(CancelTest, StartedNonCancelSafeOpIsNotCancellable) {
  const core::OpId id = Submit(*db_, core::OpKind::kMkdir);
  ASSERT_TRUE(backend_.held().front()->TryStart(core::MonoNanos()));
  absl::Status status;
  v1::CancelResponse resp = CancelId(User(1000), id, &status);
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(resp.outcomes_size(), 1);
  EXPECT_EQ(resp.outcomes(0).result(), v1::CANCEL_RESULT_NOT_CANCELLABLE);
  EXPECT_EQ(resp.counts().not_cancellable(), 1u);
  EXPECT_EQ(backend_.interrupts(), 0u);
  EXPECT_EQ(Stats().cancels_not_cancellable(), 1u);
}

// A finished op's id, its slot reused by a new op, answers ALREADY_DONE
// while the op is in the history, and never touches the new op.
TEST_F(CancelTest, FinishedIdIsAlreadyDoneWhileInTheHistoryEvenWhenItsSlotIsReused) {
  const core::OpId old_id = Submit(*db_, core::OpKind::kTimeout);
  backend_.CompleteAll(0);
  const core::OpId new_id = Submit(*db_, core::OpKind::kTimeout);
  ASSERT_EQ(new_id.slot(), old_id.slot());
  absl::Status status;
  v1::CancelResponse resp = CancelId(User(1000), old_id, &status);
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(resp.outcomes_size(), 1);
  EXPECT_EQ(resp.outcomes(0).op_id(), old_id.value);
  EXPECT_EQ(resp.outcomes(0).result(), v1::CANCEL_RESULT_ALREADY_DONE);
  EXPECT_EQ(resp.counts().already_done(), 1u);
  EXPECT_EQ(backend_.interrupts(), 0u);
  EXPECT_FALSE(registry_.Snapshot(new_id)->end_requested);
  EXPECT_EQ(Stats().cancels_already_done(), 1u);
  // Another user's finished op is still refused.
  CancelId(User(1001), old_id, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied);
}

// Once the history has forgotten it (or it never was), an id is NOT_FOUND.
TEST_F(CancelTest, IdGoneFromTheHistoryIsNotFound) {
  const core::OpId old_id = Submit(*db_, core::OpKind::kTimeout);
  backend_.CompleteAll(0);
  for (int i = 0; i < 40; ++i) {  // more than the history (16) holds
    Submit(*db_, core::OpKind::kNop);
    backend_.CompleteAll(0);
  }
  absl::Status status;
  v1::CancelResponse resp = CancelId(User(1000), old_id, &status);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(resp.outcomes(0).result(), v1::CANCEL_RESULT_NOT_FOUND);
  EXPECT_EQ(resp.counts().not_found(), 1u);
  EXPECT_EQ(Stats().cancels_not_found(), 1u);
  resp = CancelId(User(1000), core::OpId{0xdead0000beefull}, &status);
  EXPECT_EQ(resp.outcomes(0).result(), v1::CANCEL_RESULT_NOT_FOUND);
}

TEST_F(CancelTest, OpIdZeroIsInvalidAndAnswersNothing) {
  absl::Status status;
  v1::CancelResponse resp = CancelId(User(1000), core::OpId{0}, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "op_id: 0 is not an operation");
  EXPECT_EQ(resp.outcomes_size(), 0);
  EXPECT_FALSE(resp.has_counts());
}

TEST_F(CancelTest, NoTargetIsInvalid) {
  absl::Status status;
  canceller_.Cancel(User(1000), v1::CancelRequest(), &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "target: set op_id or selector");
}

TEST_F(CancelTest, AnotherUidsOpByIdIsDeniedAndLeftAlone) {
  const core::OpId id = Submit(*db_, core::OpKind::kTimeout);
  absl::Status status;
  v1::CancelResponse resp = CancelId(User(1001), id, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(resp.outcomes_size(), 0);
  EXPECT_EQ(backend_.interrupts(), 0u);
  EXPECT_FALSE(registry_.Snapshot(id)->end_requested);
}

TEST_F(CancelTest, AdminCancelsAnotherUidsOpAsAnOperator) {
  const core::OpId id = Submit(*db_, core::OpKind::kTimeout);
  absl::Status status;
  v1::CancelResponse resp = CancelId(Admin(), id, &status);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(resp.counts().cancelled(), 1u);
  EXPECT_EQ(EndReasonOf(id), core::EndReason::kOperatorRequest);
}

TEST_F(CancelTest, SelectorCancelsOnlyWhatMatches) {
  std::vector<core::OpId> timeouts;
  for (int i = 0; i < 3; ++i) timeouts.push_back(Submit(*db_, core::OpKind::kTimeout));
  const core::OpId nop = Submit(*db_, core::OpKind::kNop);
  v1::OpSelector sel;
  sel.add_kinds(v1::OP_KIND_TIMEOUT);
  absl::Status status;
  v1::CancelResponse resp = CancelWhere(User(1000), sel, &status);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(resp.counts().cancelled(), 3u);
  EXPECT_EQ(resp.outcomes_size(), 3);
  for (core::OpId id : timeouts) EXPECT_TRUE(registry_.Snapshot(id)->end_requested);
  EXPECT_FALSE(registry_.Snapshot(nop)->end_requested);
}

TEST_F(CancelTest, NonAdminSelectorKeepsToItsOwnOps) {
  const core::OpId mine = Submit(*db_, core::OpKind::kTimeout);
  const core::OpId theirs = Submit(*web_, core::OpKind::kTimeout);
  v1::OpSelector sel;
  sel.set_all(true);
  absl::Status status;
  v1::CancelResponse resp = CancelWhere(User(1000), sel, &status);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(resp.counts().cancelled(), 1u);
  EXPECT_TRUE(registry_.Snapshot(mine)->end_requested);
  EXPECT_FALSE(registry_.Snapshot(theirs)->end_requested);
}

TEST_F(CancelTest, AdminSelectorReachesEveryUid) {
  const core::OpId a = Submit(*db_, core::OpKind::kTimeout);
  const core::OpId b = Submit(*web_, core::OpKind::kTimeout);
  v1::OpSelector sel;
  sel.set_all(true);
  absl::Status status;
  v1::CancelResponse resp = CancelWhere(Admin(), sel, &status);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(resp.counts().cancelled(), 2u);
  EXPECT_EQ(EndReasonOf(a), core::EndReason::kOperatorRequest);
  EXPECT_EQ(EndReasonOf(b), core::EndReason::kOperatorRequest);
}

TEST_F(CancelTest, EmptySelectorIsRefusedAndCancelsNothing) {
  Submit(*db_, core::OpKind::kTimeout);
  absl::Status status;
  v1::CancelResponse resp = CancelWhere(User(1000), v1::OpSelector(), &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "selector: empty; set criteria, or all=true to select every operation");
  EXPECT_EQ(resp.outcomes_size(), 0);
  EXPECT_EQ(backend_.interrupts(), 0u);
}

TEST_F(CancelTest, OutcomeListIsCappedButTheCountsCoverAll) {
  const int n = static_cast<int>(Canceller::kMaxOutcomes) + 5;
  for (int i = 0; i < n; ++i) Submit(*db_, core::OpKind::kTimeout);
  v1::OpSelector sel;
  sel.set_all(true);
  absl::Status status;
  v1::CancelResponse resp = CancelWhere(User(1000), sel, &status);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(resp.outcomes_size(), static_cast<int>(Canceller::kMaxOutcomes));
  EXPECT_TRUE(resp.outcomes_truncated());
  EXPECT_EQ(resp.counts().cancelled(), static_cast<uint32_t>(n));
  EXPECT_EQ(Stats().cancels_cancelled(), static_cast<uint64_t>(n));
}

TEST_F(CancelTest, CancelledOpIsToldToWatchers) {
  auto watcher = std::make_shared<Watcher>(Filter{}, 0, 16, [] {});
  ASSERT_TRUE(hub_.Add(watcher, 1));
  const core::OpId id = Submit(*db_, core::OpKind::kTimeout);
  absl::Status status;
  CancelId(User(1000), id, &status);
  std::optional<v1::WatchEvent> e = watcher->Pop();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->type(), v1::EVENT_TYPE_SUBMITTED);
  e = watcher->Pop();
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->type(), v1::EVENT_TYPE_CANCEL_REQUESTED);
  EXPECT_EQ(e->op_id(), id.value);
  EXPECT_EQ(e->end_reason(), v1::END_REASON_CLIENT_REQUEST);
}

}  // namespace
}  // namespace asyncd::daemon
