// The session table (daemon/session_table.h): opening (name and lease
// rules, the session limit named), ownership (only the owner uses a session;
// the owner or an admin closes it), lease renewal and expiry (streams pause
// it; stream-bound sessions have none), ending, the rows ListSessions
// shows to whom, and what an earlier daemon's session ids answer.
#include "daemon/session_table.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "src/core/clock.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::daemon {
namespace {

using mocks::FakeBackend;

constexpr int64_t kMs = 1'000'000;

class SessionTableTest : public ::testing::Test {
 protected:
  SessionTableTest() { dispatcher_.SetBackends({&backend_}); }
  ~SessionTableTest() override { backend_.CompleteAll(0); }

  std::shared_ptr<SessionMeta> Open(const Caller& caller, uint32_t lease_ms = 0,
                                    SessionLifetime lifetime = SessionLifetime::kLeased) {
    auto meta = table_.Open(caller, "client", lease_ms, lifetime);
    EXPECT_TRUE(meta.ok()) << meta.status();
    return meta.ok() ? *meta : nullptr;
  }
  // Whether the table still has session `id`.
  bool Exists(uint64_t id) {
    v1::ListSessionsResponse all;
    table_.List(Admin(), core::MonoNanos(), &all);
    for (const v1::SessionInfo& s : all.sessions()) {
      if (s.session_id() == id) return true;
    }
    return false;
  }

  static Caller User(uint32_t uid) { return Caller{.uid = uid, .gid = uid}; }
  static Caller Admin() { return Caller{.uid = 0, .gid = 0, .admin = true}; }

  static Config TestConfig() {
    Config config;
    config.default_lease_ms = 30000;
    config.max_lease_ms = 60000;
    return config;
  }

  const Config config_ = TestConfig();
  LiveLimits live_{config_};
  core::Registry registry_{core::Registry::Options{.max_sessions = 4}};
  core::Dispatcher dispatcher_{registry_, -1};
  FakeBackend backend_{dispatcher_,
                       {.completion = FakeBackend::Completion::kHeld,
                        .on_interrupt = FakeBackend::OnInterrupt::kCompleteCancelled}};
  SessionTable table_{registry_, dispatcher_, live_, config_.max_lease_ms};
};

TEST_F(SessionTableTest, OpenGivesTheDefaultLease) {
  auto meta = Open(User(1000));
  ASSERT_NE(meta, nullptr);
  EXPECT_EQ(meta->lease_ms, 30000u);
  EXPECT_EQ(meta->uid, 1000u);
  EXPECT_FALSE(meta->stream_owned);
  EXPECT_EQ(meta->session->client().uid, 1000u);
  EXPECT_EQ(meta->session->client().name, "client");
}

TEST_F(SessionTableTest, LeaseOutOfRangeIsInvalid) {
  for (uint32_t lease : {99u, 60001u}) {
    auto meta = table_.Open(User(1000), "c", lease, SessionLifetime::kLeased);
    ASSERT_FALSE(meta.ok());
    EXPECT_EQ(meta.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(meta.status().message(), "lease_ms: must be 0 or in [100, 60000]");
  }
  EXPECT_EQ(registry_.session_count(), 0u);
}

TEST_F(SessionTableTest, LongNameIsInvalid) {
  EXPECT_TRUE(table_.Open(User(1000), std::string(128, 'x'), 0, SessionLifetime::kLeased).ok());
  auto meta = table_.Open(User(1000), std::string(129, 'x'), 0, SessionLifetime::kLeased);
  ASSERT_FALSE(meta.ok());
  EXPECT_EQ(meta.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(meta.status().message(), "client_name: longer than 128 bytes");
}

TEST_F(SessionTableTest, SessionLimitNamesItsConfigKey) {
  for (int i = 0; i < 4; ++i) Open(User(1000));
  auto meta = table_.Open(User(1000), "c", 0, SessionLifetime::kLeased);
  ASSERT_FALSE(meta.ok());
  EXPECT_EQ(meta.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(meta.status().message().find("(limits.max_sessions)"), std::string::npos)
      << meta.status();
}

TEST_F(SessionTableTest, StreamBoundSessionHasNoLease) {
  auto meta = Open(User(1000), 500, SessionLifetime::kBoundToStream);
  ASSERT_NE(meta, nullptr);
  EXPECT_EQ(meta->lease_ms, 0u);
  EXPECT_TRUE(meta->stream_owned);
  table_.ExpireLeases(core::MonoNanos() + 3600'000 * kMs);
  EXPECT_TRUE(Exists(meta->session->id()));
}

TEST_F(SessionTableTest, OwnerUsesItsSession) {
  auto meta = Open(User(1000));
  auto own = table_.Own(User(1000), meta->session->id());
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(*own, meta);
}

TEST_F(SessionTableTest, AnotherUidCannotUseIt) {
  auto meta = Open(User(1000));
  auto other = table_.Own(User(1001), meta->session->id());
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), absl::StatusCode::kPermissionDenied);
  // Not even an admin: sessions are used by their owner only.
  EXPECT_EQ(table_.Own(Admin(), meta->session->id()).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(SessionTableTest, ZeroAndUnknownSessions) {
  EXPECT_EQ(table_.Own(User(1000), 0).status().message(), "session_id: 0 is not a session");
  auto unknown = table_.Own(User(1000), 12345);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(unknown.status().message(), "no session 12345");
}

TEST_F(SessionTableTest, SessionEndingInCoreIsFailedPrecondition) {
  auto meta = Open(User(1000));
  const uint64_t id = meta->session->id();
  ASSERT_TRUE(dispatcher_.CloseSession(id, core::EndReason::kSessionClosed).ok());
  auto own = table_.Own(User(1000), id);
  EXPECT_EQ(own.status().code(), absl::StatusCode::kFailedPrecondition);
  auto closed = table_.Close(User(1000), id);
  EXPECT_EQ(closed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(closed.status().message(), absl::StrCat("session ", id, " has already ended"));
}

TEST_F(SessionTableTest, KeepAliveRenewsTheLease) {
  auto meta = Open(User(1000), 1000);
  const int64_t later = core::MonoNanos() + 10'000 * kMs;
  auto lease = table_.KeepAlive(User(1000), meta->session->id(), later);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(*lease, 1000u);
  EXPECT_EQ(meta->lease_deadline_ns.load(), later + 1000 * kMs);
  table_.ExpireLeases(later + 999 * kMs);
  EXPECT_TRUE(Exists(meta->session->id()));
}

TEST_F(SessionTableTest, KeepAliveOfAnotherUidsSessionIsDenied) {
  auto meta = Open(User(1000), 1000);
  const int64_t before = meta->lease_deadline_ns.load();
  auto lease = table_.KeepAlive(User(1001), meta->session->id(), before + 5000 * kMs);
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(meta->lease_deadline_ns.load(), before);
}

TEST_F(SessionTableTest, ExpiredLeaseEndsTheSessionAndCancelsItsOps) {
  auto meta = Open(User(1000), 100);
  const uint64_t id = meta->session->id();
  ASSERT_TRUE(dispatcher_.Submit(*meta->session, {.kind = core::OpKind::kTimeout}).ok());
  table_.ExpireLeases(meta->lease_deadline_ns.load() + 1);
  EXPECT_FALSE(Exists(id));
  EXPECT_EQ(backend_.interrupts(), 1u);
  EXPECT_EQ(registry_.session_count(), 0u);  // its only op ended: it is gone
}

TEST_F(SessionTableTest, LeaseThatHasNotRunOutIsKept) {
  auto meta = Open(User(1000), 100);
  table_.ExpireLeases(meta->lease_deadline_ns.load() - 1);
  EXPECT_TRUE(Exists(meta->session->id()));
}

TEST_F(SessionTableTest, AnAttachedStreamPausesTheLease) {
  auto meta = Open(User(1000), 100);
  meta->streams.fetch_add(1);
  table_.ExpireLeases(meta->lease_deadline_ns.load() + 3600'000 * kMs);
  EXPECT_TRUE(Exists(meta->session->id()));
  meta->streams.fetch_sub(1);
  table_.ExpireLeases(meta->lease_deadline_ns.load() + 1);
  EXPECT_FALSE(Exists(meta->session->id()));
}

TEST_F(SessionTableTest, OwnerClosesItsSessionWithCounts) {
  auto meta = Open(User(1000));
  const uint64_t id = meta->session->id();
  ASSERT_TRUE(dispatcher_.Submit(*meta->session, {.kind = core::OpKind::kTimeout}).ok());
  ASSERT_TRUE(dispatcher_.Submit(*meta->session, {.kind = core::OpKind::kNop}).ok());
  auto counts = table_.Close(User(1000), id);
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(counts->cancelled, 2u);
  // Ended: FAILED_PRECONDITION, forever (ids are never reused); NOT_FOUND is
  // for an id never issued.
  EXPECT_EQ(table_.Close(User(1000), id).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(table_.KeepAlive(User(1000), id, 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(table_.Own(User(1000), id).status().code(), absl::StatusCode::kFailedPrecondition);
  const uint64_t never = id + (uint64_t{1} << 40);
  EXPECT_EQ(table_.Close(User(1000), never).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table_.Own(User(1000), never).status().code(), absl::StatusCode::kNotFound);
}

// A stream attached to a leased session pauses its lease: KeepAlive answers
// 0 and the listing shows no lease running; when the last stream detaches
// the lease restarts at full length. The stream hears when the session is
// closed under it.
TEST_F(SessionTableTest, AttachedStreamPausesTheLeaseAndHearsTheEnd) {
  struct Listener : SessionListener {
    void OnSessionEnded() noexcept override { ++ended; }
    void OnDraining(bool) noexcept override {}
    int ended = 0;
  } stream;
  auto meta = Open(User(1000));
  const uint64_t id = meta->session->id();
  meta->Attach(&stream);
  EXPECT_EQ(*table_.KeepAlive(User(1000), id, 1), 0u);
  v1::ListSessionsResponse listed;
  table_.List(User(1000), core::MonoNanos(), &listed);
  ASSERT_EQ(listed.sessions_size(), 1);
  EXPECT_EQ(listed.sessions(0).lease_remaining_ms(), 0u);
  EXPECT_FALSE(listed.sessions(0).bound_to_stream());  // attached, not created by it
  table_.ExpireLeases(meta->lease_deadline_ns.load() + int64_t{3600} * 1'000'000'000);
  EXPECT_TRUE(Exists(id)) << "a paused lease expired";
  meta->Detach(&stream, 1000);
  EXPECT_EQ(meta->lease_deadline_ns.load(), 1000 + int64_t{meta->lease_ms.load()} * 1'000'000);
  meta->Attach(&stream);
  ASSERT_TRUE(table_.Close(User(1000), id).ok());
  EXPECT_EQ(stream.ended, 1);
  meta->Detach(&stream, 2000);
}

// A drain reaches every stream attached to any session, once, and no
// stream that has detached.
TEST_F(SessionTableTest, DrainingReachesEveryAttachedStream) {
  struct Listener : SessionListener {
    void OnSessionEnded() noexcept override {}
    void OnDraining(bool) noexcept override { ++drained; }
    int drained = 0;
  } a, b, gone;
  auto one = Open(User(1000));
  auto two = Open(User(1001));
  one->Attach(&a);
  two->Attach(&b);
  two->Attach(&gone);
  two->Detach(&gone, 1);
  table_.NotifyDraining(false);
  EXPECT_EQ(a.drained, 1);
  EXPECT_EQ(b.drained, 1);
  EXPECT_EQ(gone.drained, 0);
  one->Detach(&a, 2);
  two->Detach(&b, 2);
}

TEST_F(SessionTableTest, AnotherUidCannotCloseItButAnAdminCan) {
  auto meta = Open(User(1000));
  const uint64_t id = meta->session->id();
  auto denied = table_.Close(User(1001), id);
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(Exists(id));
  EXPECT_TRUE(table_.Close(Admin(), id).ok());
  EXPECT_FALSE(Exists(id));
}

TEST_F(SessionTableTest, EndForgetsTheSession) {
  auto meta = Open(User(1000));
  const uint64_t id = meta->session->id();
  EXPECT_TRUE(table_.End(id, core::EndReason::kRpcCancelled).ok());
  EXPECT_FALSE(Exists(id));
  EXPECT_EQ(table_.End(id, core::EndReason::kRpcCancelled).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(SessionTableTest, ListShowsOwnSessionsToUsersAndAllToAdmins) {
  auto a = Open(User(1000), 1000);
  auto b = Open(User(1001));
  auto c = Open(User(1000), 0, SessionLifetime::kBoundToStream);
  c->streams.fetch_add(1);
  const int64_t now = core::MonoNanos();
  v1::ListSessionsResponse mine;
  table_.List(User(1000), now, &mine);
  ASSERT_EQ(mine.sessions_size(), 2);
  EXPECT_EQ(mine.sessions(0).session_id(), std::min(a->session->id(), c->session->id()));
  EXPECT_LT(mine.sessions(0).session_id(), mine.sessions(1).session_id());
  for (const v1::SessionInfo& s : mine.sessions()) EXPECT_EQ(s.uid(), 1000u);
  v1::ListSessionsResponse all;
  table_.List(Admin(), now, &all);
  EXPECT_EQ(all.sessions_size(), 3);
  for (const v1::SessionInfo& s : all.sessions()) {
    if (s.session_id() == a->session->id()) {
      EXPECT_GT(s.lease_remaining_ms(), 0u);
      EXPECT_LE(s.lease_remaining_ms(), 1000u);
      EXPECT_FALSE(s.bound_to_stream());
    } else if (s.session_id() == c->session->id()) {
      EXPECT_EQ(s.lease_remaining_ms(), 0u);
      EXPECT_TRUE(s.bound_to_stream());
    } else {
      EXPECT_EQ(s.session_id(), b->session->id());
      EXPECT_EQ(s.uid(), 1001u);
    }
  }
}

// A daemon started without its predecessor's state (none handed over, or
// refused) issues serials from first_serial: every id below it, on any
// index, even one past this daemon's table (a predecessor with a larger
// max_sessions), is an earlier daemon's and says so; ids this daemon issues
// answer as ever.
TEST(SessionTableLostBeforeStartTest, EarlierDaemonsIdsSayTheirStateDidNotComeHere) {
  constexpr uint64_t kFirst = uint64_t{1} << 30;
  Config config;
  LiveLimits live{config};
  core::Registry registry{core::Registry::Options{.max_sessions = 4, .first_serial = kFirst}};
  core::Dispatcher dispatcher{registry, -1};
  FakeBackend backend{dispatcher};
  dispatcher.SetBackends({&backend});
  SessionTable table{registry, dispatcher, live, config.max_lease_ms};
  const Caller user{.uid = 1000, .gid = 1000};
  const uint64_t earlier = ((kFirst - 7) << core::OpId::kSessionBits) | 1;
  const uint64_t past_the_table = ((kFirst - 7) << core::OpId::kSessionBits) | 9;
  const uint64_t never = ((kFirst + 5) << core::OpId::kSessionBits) | 1;

  // Nothing noted (a test's table, or a restored predecessor): as before.
  EXPECT_EQ(table.Own(user, past_the_table).status().code(), absl::StatusCode::kNotFound);

  table.NoteLostBeforeStart("");
  for (uint64_t id : {earlier, past_the_table}) {
    const std::string why = absl::StrCat(
        "session ", id,
        " was opened by an earlier daemon whose state did not reach this one (none was handed "
        "over: it was stopped, killed or could not hand over); open a new one");
    absl::Status own = table.Own(user, id).status();
    EXPECT_EQ(own.code(), absl::StatusCode::kFailedPrecondition) << own;
    EXPECT_EQ(own.message(), why);
    EXPECT_EQ(table.KeepAlive(user, id, core::MonoNanos()).status().message(), why);
    EXPECT_EQ(table.Close(user, id).status().message(), why);
  }
  EXPECT_EQ(table.Own(user, never).status().code(), absl::StatusCode::kNotFound);
  // This daemon's own sessions are not an earlier daemon's.
  auto mine = table.Open(user, "mine", 0, SessionLifetime::kLeased);
  ASSERT_TRUE(mine.ok()) << mine.status();
  const uint64_t id = (*mine)->session->id();
  EXPECT_TRUE(table.KeepAlive(user, id, core::MonoNanos()).ok());
  ASSERT_TRUE(table.Close(user, id).ok());
  EXPECT_EQ(table.Own(user, id).status().message(), absl::StrCat("session ", id, " has ended"));

  // A refused handover's reason is named.
  table.NoteLostBeforeStart("the handover is refused: cut short");
  EXPECT_EQ(table.Own(user, earlier).status().message(),
            absl::StrCat("session ", earlier,
                         " was opened by an earlier daemon whose state did not reach this one "
                         "(the handover is refused: cut short); open a new one"));
}

}  // namespace
}  // namespace asyncd::daemon
