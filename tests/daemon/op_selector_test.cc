// Selectors (daemon/selector.h): every INVALID_ARGUMENT message ToFilter
// gives for a bad v1.OpSelector, the empty-selector rule of bulk cancel, the
// owner restriction of non-admins, and what Filter::Matches selects.
#include "daemon/selector.h"

#include <gtest/gtest.h>

namespace asyncd::daemon {
namespace {

Caller User(uint32_t uid) { return Caller{.uid = uid, .gid = uid}; }
Caller Admin() { return Caller{.uid = 0, .gid = 0, .admin = true}; }

void ExpectInvalid(const v1::OpSelector& sel, const std::string& message,
                   Criteria criteria = Criteria::kOptional) {
  absl::StatusOr<Filter> f = ToFilter(Admin(), sel, criteria);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.status().message(), message);
}

core::OpSnapshot Snap(uint64_t session, core::OpKind kind, core::OpState state,
                      core::BackendKind backend, int64_t submitted_ns, uint32_t handle = 0) {
  core::OpSnapshot s;
  s.session_id = session;
  s.kind = kind;
  s.state = state;
  s.backend = backend;
  s.submitted_ns = submitted_ns;
  s.handle = handle;
  return s;
}

TEST(SelectorTest, HandleWithoutSessionIsInvalid) {
  v1::OpSelector sel;
  sel.set_handle(3);
  ExpectInvalid(sel, "selector.handle: requires selector.session_id");
}

TEST(SelectorTest, KindZeroIsUnknown) {
  v1::OpSelector sel;
  sel.add_kinds(v1::OP_KIND_UNSPECIFIED);
  ExpectInvalid(sel, "selector.kinds: unknown kind 0");
}

TEST(SelectorTest, KindPastTheLastIsUnknown) {
  v1::OpSelector sel;
  sel.add_kinds(static_cast<v1::OpKind>(core::kOpKindCount + 1));
  ExpectInvalid(sel, "selector.kinds: unknown kind 15");
}

TEST(SelectorTest, StateZeroIsUnknown) {
  v1::OpSelector sel;
  sel.add_states(v1::OP_STATE_UNSPECIFIED);
  ExpectInvalid(sel, "selector.states: unknown state 0");
}

TEST(SelectorTest, StatePastTheLastIsUnknown) {
  v1::OpSelector sel;
  sel.add_states(static_cast<v1::OpState>(8));
  ExpectInvalid(sel, "selector.states: unknown state 8");
}

TEST(SelectorTest, UnknownBackendIsInvalid) {
  v1::OpSelector sel;
  sel.set_backend(static_cast<v1::Backend>(4));
  ExpectInvalid(sel, "selector.backend: unknown backend");
}

TEST(SelectorTest, EmptySelectorIsRefusedWhereCriteriaAreRequired) {
  ExpectInvalid(v1::OpSelector(),
                "selector: empty; set criteria, or all=true to select every operation",
                Criteria::kRequired);
}

TEST(SelectorTest, AllTrueSatisfiesRequiredCriteria) {
  v1::OpSelector sel;
  sel.set_all(true);
  EXPECT_TRUE(ToFilter(Admin(), sel, Criteria::kRequired).ok());
}

TEST(SelectorTest, AHandleAloneIsNotACriterion) {
  // handle needs session_id, which is one: a handle never stands alone.
  v1::OpSelector sel;
  sel.set_session_id(7);
  sel.set_handle(2);
  absl::StatusOr<Filter> f = ToFilter(Admin(), sel, Criteria::kRequired);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->session_id, 7u);
  EXPECT_EQ(f->handle, 2u);
}

TEST(SelectorTest, EmptySelectorSelectsEverythingWhereCriteriaAreOptional) {
  absl::StatusOr<Filter> f = ToFilter(Admin(), v1::OpSelector(), Criteria::kOptional);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->Matches(
      Snap(1, core::OpKind::kRead, core::OpState::kRunning, core::BackendKind::kIoUring, 0), 1234,
      "anyone", 0));
}

TEST(SelectorTest, NonAdminFilterKeepsToItsOwnUid) {
  absl::StatusOr<Filter> f = ToFilter(User(1000), v1::OpSelector(), Criteria::kOptional);
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f->uid.has_value());
  EXPECT_EQ(*f->uid, 1000u);
  const core::OpSnapshot s =
      Snap(1, core::OpKind::kNop, core::OpState::kQueued, core::BackendKind::kNone, 0);
  EXPECT_TRUE(f->Matches(s, 1000, "c", 0));
  EXPECT_FALSE(f->Matches(s, 1001, "c", 0));
}

TEST(SelectorTest, AdminFilterSeesEveryUid) {
  absl::StatusOr<Filter> f = ToFilter(Admin(), v1::OpSelector(), Criteria::kOptional);
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(f->uid.has_value());
}

TEST(SelectorTest, MatchesBySessionClientAndHandle) {
  v1::OpSelector sel;
  sel.set_session_id(5);
  sel.set_client("db");
  sel.set_handle(9);
  absl::StatusOr<Filter> f = ToFilter(Admin(), sel, Criteria::kOptional);
  ASSERT_TRUE(f.ok());
  auto snap = [](uint64_t session, uint32_t handle) {
    return Snap(session, core::OpKind::kRead, core::OpState::kRunning,
                core::BackendKind::kThreadPool, 0, handle);
  };
  EXPECT_TRUE(f->Matches(snap(5, 9), 1, "db", 0));
  EXPECT_FALSE(f->Matches(snap(6, 9), 1, "db", 0));
  EXPECT_FALSE(f->Matches(snap(5, 8), 1, "db", 0));
  EXPECT_FALSE(f->Matches(snap(5, 9), 1, "web", 0));
}

TEST(SelectorTest, MatchesByKindStateAndBackend) {
  v1::OpSelector sel;
  sel.add_kinds(v1::OP_KIND_READ);
  sel.add_kinds(v1::OP_KIND_WRITE);
  sel.add_states(v1::OP_STATE_DISPATCHED);
  sel.set_backend(v1::BACKEND_IO_URING);
  absl::StatusOr<Filter> f = ToFilter(Admin(), sel, Criteria::kRequired);
  ASSERT_TRUE(f.ok()) << f.status();
  auto snap = [](core::OpKind k, core::OpState s, core::BackendKind b) {
    return Snap(1, k, s, b, 0);
  };
  using K = core::OpKind;
  using S = core::OpState;
  using B = core::BackendKind;
  EXPECT_TRUE(f->Matches(snap(K::kRead, S::kRunning, B::kIoUring), 0, "", 0));
  EXPECT_TRUE(f->Matches(snap(K::kWrite, S::kRunning, B::kIoUring), 0, "", 0));
  EXPECT_FALSE(f->Matches(snap(K::kFsync, S::kRunning, B::kIoUring), 0, "", 0));
  EXPECT_FALSE(f->Matches(snap(K::kRead, S::kQueued, B::kIoUring), 0, "", 0));
  EXPECT_FALSE(f->Matches(snap(K::kRead, S::kRunning, B::kThreadPool), 0, "", 0));
}

// States select as they are listed: waiting in a backend's queue is QUEUED
// on every backend, taken by io_uring DISPATCHED, run by a thread RUNNING.
TEST(SelectorTest, StatesSelectAsListed) {
  auto only = [](v1::OpState state) {
    v1::OpSelector sel;
    sel.add_states(state);
    return *ToFilter(Admin(), sel, Criteria::kRequired);
  };
  using S = core::OpState;
  using B = core::BackendKind;
  auto matches = [](const Filter& f, S s, B b) {
    return f.Matches(Snap(1, core::OpKind::kRead, s, b, 0), 0, "", 0);
  };
  const Filter queued = only(v1::OP_STATE_QUEUED);
  const Filter dispatched = only(v1::OP_STATE_DISPATCHED);
  const Filter running = only(v1::OP_STATE_RUNNING);
  for (B b : {B::kIoUring, B::kThreadPool}) {
    EXPECT_TRUE(matches(queued, S::kDispatched, b));
    EXPECT_FALSE(matches(dispatched, S::kDispatched, b));
    EXPECT_FALSE(matches(running, S::kDispatched, b));
  }
  EXPECT_TRUE(matches(dispatched, S::kRunning, B::kIoUring));
  EXPECT_FALSE(matches(running, S::kRunning, B::kIoUring));
  EXPECT_TRUE(matches(running, S::kRunning, B::kThreadPool));
  EXPECT_FALSE(matches(dispatched, S::kRunning, B::kThreadPool));
}

// all=true selects everything; with another criterion it is refused.
TEST(SelectorTest, AllWithAnotherCriterionIsInvalid) {
  v1::OpSelector sel;
  sel.set_all(true);
  EXPECT_TRUE(ToFilter(Admin(), sel, Criteria::kRequired).ok());
  sel.add_kinds(v1::OP_KIND_READ);
  absl::StatusOr<Filter> f = ToFilter(Admin(), sel, Criteria::kRequired);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.status().message(),
            "selector.all: selects every operation; it cannot be combined with other criteria");
}

TEST(SelectorTest, OlderThanSelectsOpsAtLeastThatOld) {
  v1::OpSelector sel;
  sel.set_older_than_ms(100);
  absl::StatusOr<Filter> f = ToFilter(Admin(), sel, Criteria::kRequired);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->older_than_ns, 100'000'000);
  const int64_t now = 1'000'000'000;
  auto submitted_at = [](int64_t ns) {
    return Snap(1, core::OpKind::kNop, core::OpState::kQueued, core::BackendKind::kNone, ns);
  };
  EXPECT_TRUE(f->Matches(submitted_at(now - 100'000'000), 0, "", now));
  EXPECT_FALSE(f->Matches(submitted_at(now - 99'999'999), 0, "", now));
}

}  // namespace
}  // namespace asyncd::daemon
