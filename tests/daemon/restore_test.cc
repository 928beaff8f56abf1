// Restoring a predecessor's checkpoint (daemon/restore.h): its sessions come
// back with their ids, owners, leases (less the time the handover waited)
// and handles, each reading the very file it did; sessions bound to a
// stream do not, and their descriptors are closed. All or nothing: a
// restore that fails part way ends what it restored, closes every
// descriptor, and leaves each of the predecessor's sessions answering
// FAILED_PRECONDITION with why.
#include "daemon/restore.h"

#include <dirent.h>
#include <filesystem>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "daemon/file_area.h"
#include "daemon/history.h"
#include "daemon/session_table.h"
#include "src/core/clock.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::daemon {
namespace {

using ::testing::HasSubstr;

size_t OpenFdCount() {
  size_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d) != nullptr) ++n;
    closedir(d);
  }
  return n;
}

ino_t Inode(int fd) {
  struct stat st {};
  fstat(fd, &st);
  return st.st_ino;
}

Config TestConfig() {
  Config config;
  config.default_lease_ms = 30000;
  config.max_lease_ms = 60000;
  return config;
}

// One daemon's registry, dispatcher and session table.
struct Daemon {
  explicit Daemon(uint64_t first_serial = 1)
      : registry(core::Registry::Options{.max_sessions = 8, .first_serial = first_serial}) {
    dispatcher.SetBackends({&backend});
  }
  ~Daemon() { backend.CompleteAll(0); }
  std::shared_ptr<SessionMeta> Open(uint32_t uid, const std::string& name,
                                    SessionLifetime lifetime = SessionLifetime::kLeased) {
    auto meta = table.Open(Caller{.uid = uid, .gid = uid}, name, 0, lifetime);
    EXPECT_TRUE(meta.ok()) << meta.status();
    return *meta;
  }
  // A handle on a new pipe's read end.
  uint32_t Pipe(core::Session& s, const std::string& path) {
    int fds[2];
    EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0);
    close(fds[1]);
    return *s.handles().Insert(fds[0], path);
  }
  state::Checkpoint Take() { return TakeCheckpoint(table, registry, history, 100); }

  const Config config = TestConfig();
  LiveLimits live{config};
  core::Registry registry;
  core::Dispatcher dispatcher{registry, -1};
  mocks::FakeBackend backend{dispatcher, {.completion = mocks::FakeBackend::Completion::kHeld}};
  SessionTable table{registry, dispatcher, live, config.max_lease_ms};
  History history{100, 10};
};

// What the predecessor hands over: the checkpoint and a copy of each
// handle's descriptor, in checkpoint order.
std::vector<int> HandedOver(const state::Checkpoint& cp) {
  std::vector<int> fds;
  for (const auto& s : cp.sessions()) {
    for (const auto& h : s.handles()) fds.push_back(fcntl(h.fd(), F_DUPFD_CLOEXEC, 0));
  }
  return fds;
}

absl::StatusOr<RestoreSummary> RestoreInto(Daemon& next, const state::Checkpoint& cp,
                                           std::vector<int> fds) {
  if (absl::Status s = next.registry.RestoreCounters(CountersOf(cp)); !s.ok()) return s;
  return RestoreCheckpoint(cp, std::move(fds), next.registry, next.table);
}

TEST(RestoreTest, SessionsComeBackWithTheirIdsOwnersLeasesAndHandles) {
  Daemon old;
  auto a = old.Open(1000, "a");
  auto b = old.Open(1001, "b");
  auto bound = old.Open(1002, "bound", SessionLifetime::kBoundToStream);
  const uint32_t ha = old.Pipe(*a->session, "fifo-a");
  const uint32_t hb = old.Pipe(*b->session, "fifo-b");
  old.Pipe(*bound->session, "fifo-bound");
  const ino_t ino_a = Inode(a->session->handles().Acquire(ha)->fd);
  a->session->handles().Release(ha);
  state::Checkpoint cp = old.Take();
  // The package waited 5 s (a start retried, say): the leases count it.
  cp.set_taken_unix_nanos(cp.taken_unix_nanos() - 5'000'000'000);

  const size_t fds_before = OpenFdCount();
  Daemon next(uint64_t{1} << 30);
  absl::StatusOr<RestoreSummary> restored = RestoreInto(next, cp, HandedOver(cp));
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->sessions, 2u);
  EXPECT_EQ(restored->handles, 2u);

  auto own_a = next.table.Own(Caller{.uid = 1000, .gid = 1000}, a->session->id());
  ASSERT_TRUE(own_a.ok()) << own_a.status();
  EXPECT_EQ((*own_a)->session->client().name, "a");
  EXPECT_EQ((*own_a)->lease_ms.load(), 30000u);
  const uint32_t left = (*own_a)->LeaseRemainingMs(core::MonoNanos());
  EXPECT_LE(left, 25000u);
  EXPECT_GT(left, 20000u);
  EXPECT_EQ(next.table.Own(Caller{.uid = 1000}, b->session->id()).status().code(),
            absl::StatusCode::kPermissionDenied);
  absl::StatusOr<core::HandleTable::Use> use = (*own_a)->session->handles().Acquire(ha);
  ASSERT_TRUE(use.ok()) << use.status();
  EXPECT_EQ(Inode(use->fd), ino_a);
  EXPECT_EQ(use->path, "fifo-a");
  (*own_a)->session->handles().Release(ha);
  auto own_b = next.table.Own(Caller{.uid = 1001, .gid = 1001}, b->session->id());
  ASSERT_TRUE(own_b.ok());
  EXPECT_TRUE((*own_b)->session->handles().Acquire(hb).ok());
  (*own_b)->session->handles().Release(hb);
  // The stream-bound session is not back, and its descriptor is closed: the
  // two restored handles are all the restore holds.
  EXPECT_FALSE(next.table.Own(Caller{.uid = 1002}, bound->session->id()).ok());
  EXPECT_EQ(OpenFdCount(), fds_before + 2);
}

// What a resumable stream left its session comes back with it, bound to its
// stream and waiting for it as long as the default lease; its ops run again
// at once under their ids, and their completions wait for the stream.
TEST(RestoreTest, AResumableStreamsSessionComesBackWithItsOpsRunningAgain) {
  struct NoSink : core::CompletionSink {
    void OnComplete(const core::Op&) noexcept override {}
  } no_sink;
  Daemon old;
  auto bound = old.Open(1000, "bound", SessionLifetime::kBoundToStream);
  absl::StatusOr<core::OpId> id = old.dispatcher.Submit(
      *bound->session, core::OpRequest{.kind = core::OpKind::kNop, .sink = &no_sink});
  ASSERT_TRUE(id.ok()) << id.status();
  old.backend.CompleteAll(0);  // as the restart's cancel ended it
  auto carry = std::make_shared<Carry>();
  bound->SetCarry(carry);
  v1::StreamResponse kept;
  kept.set_seq(3);
  kept.mutable_completions()->add_completions()->set_tag(7);
  state::Resubmit again;
  again.set_op_id(id->value);
  again.mutable_op()->set_tag(5);
  again.mutable_op()->mutable_nop();
  carry->Keep(4, {kept}, {Carry::Again{.resubmit = again, .noted_ns = core::MonoNanos()}});
  const state::Checkpoint cp = old.Take();
  ASSERT_EQ(cp.sessions_size(), 1);
  EXPECT_TRUE(cp.sessions(0).resumable());
  EXPECT_EQ(cp.sessions(0).next_seq(), 4u);
  ASSERT_EQ(cp.sessions(0).resubmit_size(), 1);
  EXPECT_EQ(cp.sessions(0).resubmit(0).op_id(), id->value);

  Daemon next;
  ASSERT_TRUE(RestoreInto(next, cp, HandedOver(cp)).ok());
  auto meta = next.table.Own(Caller{.uid = 1000, .gid = 1000}, bound->session->id());
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_TRUE((*meta)->stream_owned);
  EXPECT_EQ((*meta)->lease_ms.load(), 30000u);
  EXPECT_NE((*meta)->session->Find(id->slot(), id->generation()), nullptr);
  EXPECT_EQ(next.registry.live_ops(), 1u);
  next.backend.CompleteAll(0);
  EXPECT_EQ(next.registry.live_ops(), 0u);

  struct Taker : CarryTaker {
    void OnCarriedEnd(uint64_t, v1::Completion*) noexcept override { ++ends; }
    void Hold() noexcept override {}
    void Drop() noexcept override {}
    int ends = 0;
  } taker;
  ASSERT_TRUE((*meta)->carry()->waiting());
  EXPECT_EQ((*meta)->carry()->Take(&taker, 4).status().code(),
            absl::StatusCode::kInvalidArgument);  // past the last message, 3
  absl::StatusOr<Carry::Taken> taken = (*meta)->carry()->Take(&taker, 2);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(taken->next_seq, 4u);
  ASSERT_EQ(taken->replay.size(), 1u);
  EXPECT_EQ(taken->replay[0].seq(), 3u);
  ASSERT_EQ(taken->undelivered.size(), 1u);
  EXPECT_EQ(taken->undelivered[0].op_id(), id->value);
  EXPECT_EQ(taken->undelivered[0].tag(), 5u);
  EXPECT_EQ(taken->undelivered[0].outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_TRUE(taken->running.empty());
  EXPECT_EQ(taker.ends, 0);
  EXPECT_FALSE((*meta)->carry()->waiting());
  (*meta)->carry()->Release(&taker, 4);
  // The restored session is checkpointed again as it was: bound to its
  // stream, with no lease of its own (the wait for its stream is not one).
  const state::Checkpoint later = next.Take();
  ASSERT_EQ(later.sessions_size(), 1);
  EXPECT_TRUE(later.sessions(0).bound_to_stream());
  EXPECT_EQ(later.sessions(0).lease_ms(), 0u);
  EXPECT_EQ(later.sessions(0).next_seq(), 4u);
  EXPECT_TRUE(LoadCheckpoint(Seal(later), CheckpointLimits{}).ok());
  (void)next.table.End(bound->session->id(), core::EndReason::kSessionClosed);
}

TEST(RestoreTest, DescriptorsThatDoNotMatchTheHandlesRestoreNothingAndCloseAll) {
  Daemon old;
  auto a = old.Open(1000, "a");
  old.Pipe(*a->session, "p");
  const state::Checkpoint cp = old.Take();
  const size_t fds_before = OpenFdCount();
  std::vector<int> fds = HandedOver(cp);
  fds.push_back(fcntl(0, F_DUPFD_CLOEXEC, 0));  // one too many
  Daemon next(uint64_t{1} << 30);
  absl::StatusOr<RestoreSummary> restored = RestoreInto(next, cp, std::move(fds));
  ASSERT_FALSE(restored.ok());
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenFdCount(), fds_before);
  absl::StatusOr<std::shared_ptr<SessionMeta>> own =
      next.table.Own(Caller{.uid = 1000, .gid = 1000}, a->session->id());
  EXPECT_EQ(own.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(own.status().message()),
              HasSubstr("was lost when the daemon restarted: the checkpoint names 1 handles, but "
                        "2 descriptors came with it"));
}

TEST(RestoreTest, AFailurePartWayEndsWhatWasRestoredAndClosesEveryDescriptor) {
  Daemon old;
  auto a = old.Open(1000, "a");
  auto b = old.Open(1000, "b");
  old.Pipe(*a->session, "pa");
  old.Pipe(*b->session, "pb");
  const state::Checkpoint cp = old.Take();
  const size_t fds_before = OpenFdCount();
  Daemon next(uint64_t{1} << 30);
  ASSERT_TRUE(next.registry.RestoreCounters(CountersOf(cp)).ok());
  // Someone took b's index before the restore: b cannot come back.
  const uint32_t b_index = static_cast<uint32_t>(b->session->id() & 0xffff);
  std::vector<std::shared_ptr<core::Session>> squatters;
  while (true) {
    auto s = next.registry.OpenSession({"squatter", 1, 1, 1});
    ASSERT_TRUE(s.ok());
    squatters.push_back(*s);
    if ((*s)->index() == b_index) break;
  }
  // Every index but b's is free again (closed last first: the free list is
  // a stack).
  for (size_t i = squatters.size() - 1; i-- > 0;) next.registry.BeginClose(squatters[i]->id());
  absl::StatusOr<RestoreSummary> restored =
      RestoreCheckpoint(cp, HandedOver(cp), next.registry, next.table);
  ASSERT_FALSE(restored.ok());
  EXPECT_THAT(std::string(restored.status().message()),
              HasSubstr(absl::StrCat("session ", b->session->id())));
  // All or nothing: a, restored first, has ended too; no descriptor is left.
  for (uint64_t id : {a->session->id(), b->session->id()}) {
    absl::StatusOr<std::shared_ptr<SessionMeta>> own =
        next.table.Own(Caller{.uid = 1000, .gid = 1000}, id);
    EXPECT_EQ(own.status().code(), absl::StatusCode::kFailedPrecondition) << id;
    EXPECT_THAT(std::string(own.status().message()), HasSubstr("was lost when the daemon restarted"));
  }
  squatters.clear();
  EXPECT_EQ(OpenFdCount(), fds_before);
}

// A session keeps its opener's file area: the shares it reached are
// recorded by path, and come back as the bits of the next daemon's config,
// whatever their order there; a share no longer configured is dropped.
TEST(RestoreTest, ASessionsSharesComeBackByPath) {
  char tmpl[] = "/tmp/asyncd-restore-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const int root_fd = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  auto old_areas = FileAreas::Open(root_fd, {ShareConfig{.path = "common"},
                                             ShareConfig{.path = "gone"}});
  auto next_areas = FileAreas::Open(root_fd, {ShareConfig{.path = "other"},
                                              ShareConfig{.path = "common"}});
  ASSERT_TRUE(old_areas.ok() && next_areas.ok());
  Daemon old;
  SessionTable old_table{old.registry, old.dispatcher, old.live, old.config.max_lease_ms,
                         old_areas->get()};
  auto meta = old_table.Open(Caller{.uid = 1000, .gid = 1000, .shares = 0b11}, "s", 0,
                             SessionLifetime::kLeased);
  ASSERT_TRUE(meta.ok()) << meta.status();
  const state::Checkpoint cp = TakeCheckpoint(old_table, old.registry, old.history, 0);
  ASSERT_EQ(cp.sessions_size(), 1);
  const auto& shares = cp.sessions(0).shares();
  EXPECT_EQ(std::vector<std::string>(shares.begin(), shares.end()),
            (std::vector<std::string>{"common", "gone"}));
  EXPECT_FALSE(cp.sessions(0).whole_root());

  Daemon next(uint64_t{1} << 30);
  SessionTable next_table{next.registry, next.dispatcher, next.live, next.config.max_lease_ms,
                          next_areas->get()};
  ASSERT_TRUE(next.registry.RestoreCounters(CountersOf(cp)).ok());
  ASSERT_TRUE(RestoreCheckpoint(cp, {}, next.registry, next_table).ok());
  auto restored =
      next_table.Own(Caller{.uid = 1000, .gid = 1000, .shares = 0b10}, (*meta)->session->id());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ((*restored)->area.shares(), 0b10u);  // "common", second in the next config
  (void)next_table.End((*meta)->session->id(), core::EndReason::kSessionClosed);
  (void)old_table.End((*meta)->session->id(), core::EndReason::kSessionClosed);
  close(root_fd);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace asyncd::daemon
