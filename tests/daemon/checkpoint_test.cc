// Checkpoints (daemon/checkpoint.h): what TakeCheckpoint records of the
// sessions, their handles and outstanding ops, the id counters and the
// history; that a checkpoint seals and loads back whole, also one taken
// while sessions, handles and ops come and go under it; and that the loader
// refuses every truncation, every damaged bit, a newer format and each
// contradiction, with a message naming what is wrong.
#include "daemon/checkpoint.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <set>
#include <thread>

#include "daemon/convert.h"
#include "daemon/history.h"
#include "daemon/session_table.h"
#include "src/core/clock.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::daemon {
namespace {

using mocks::FakeBackend;
using ::testing::HasSubstr;

class CheckpointTest : public ::testing::Test {
 protected:
  CheckpointTest() { dispatcher_.SetBackends({&backend_}); }
  ~CheckpointTest() override { backend_.CompleteAll(0); }

  std::shared_ptr<SessionMeta> Open(uint32_t uid, const std::string& name,
                                    SessionLifetime lifetime = SessionLifetime::kLeased) {
    auto meta = table_.Open(Caller{.uid = uid, .gid = uid}, name, 0, lifetime);
    EXPECT_TRUE(meta.ok()) << meta.status();
    return meta.ok() ? *meta : nullptr;
  }
  // A handle on a new pipe's read end, opened as `path`.
  uint32_t PipeHandle(core::Session& session, const std::string& path) {
    int fds[2];
    EXPECT_EQ(pipe2(fds, O_CLOEXEC | O_NONBLOCK), 0);
    ::close(fds[1]);
    absl::StatusOr<uint32_t> h = session.handles().Insert(fds[0], path);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *h : 0;
  }
  state::Checkpoint Take() { return TakeCheckpoint(table_, registry_, history_, 100); }

  static Config TestConfig() {
    Config config;
    config.default_lease_ms = 30000;
    config.max_lease_ms = 60000;
    return config;
  }

  const Config config_ = TestConfig();
  LiveLimits live_{config_};
  core::Registry registry_{core::Registry::Options{.max_sessions = 8, .max_handles_per_session = 64}};
  core::Dispatcher dispatcher_{registry_, -1};
  FakeBackend backend_{dispatcher_, {.completion = FakeBackend::Completion::kHeld}};
  SessionTable table_{registry_, dispatcher_, live_, config_.max_lease_ms};
  History history_{100, 10};
  const CheckpointLimits limits_{.max_sessions = 8, .max_handles_per_session = 64};
};

TEST_F(CheckpointTest, RecordsSessionsHandlesOutstandingOpsAndCounters) {
  auto leased = Open(1000, "leased");
  auto bound = Open(1001, "bound", SessionLifetime::kBoundToStream);
  ASSERT_NE(leased, nullptr);
  ASSERT_NE(bound, nullptr);
  const uint32_t closed = PipeHandle(*leased->session, "closed");
  absl::StatusOr<int> fd = leased->session->handles().Detach(closed);
  ASSERT_TRUE(fd.ok());
  ::close(*fd);
  const uint32_t h = PipeHandle(*leased->session, "fifo");  // reuses the slot, next generation
  ASSERT_NE(h, closed);
  absl::StatusOr<core::OpId> a = dispatcher_.Submit(*leased->session, {.kind = core::OpKind::kTimeout});
  absl::StatusOr<core::OpId> b = dispatcher_.Submit(*leased->session, {.kind = core::OpKind::kNop});
  ASSERT_TRUE(a.ok() && b.ok());

  const state::Checkpoint cp = Take();
  EXPECT_FALSE(cp.daemon_version().empty());
  EXPECT_GT(cp.taken_unix_nanos(), 0);
  ASSERT_EQ(cp.sessions_size(), 2);
  const state::Session& s = cp.sessions(0).session_id() == leased->session->id() ? cp.sessions(0)
                                                                                : cp.sessions(1);
  const state::Session& t = &s == &cp.sessions(0) ? cp.sessions(1) : cp.sessions(0);
  EXPECT_LT(cp.sessions(0).session_id(), cp.sessions(1).session_id());
  EXPECT_EQ(s.session_id(), leased->session->id());
  EXPECT_EQ(s.client_name(), "leased");
  EXPECT_EQ(s.uid(), 1000u);
  EXPECT_EQ(s.lease_ms(), 30000u);
  EXPECT_GT(s.lease_remaining_ms(), 0u);
  EXPECT_FALSE(s.bound_to_stream());
  ASSERT_EQ(s.handles_size(), 1);
  EXPECT_EQ(s.handles(0).handle(), h);
  EXPECT_EQ(s.handles(0).path(), "fifo");
  EXPECT_TRUE(s.handles(0).stream());
  EXPECT_NE(s.handles(0).open_flags() & O_NONBLOCK, 0);
  EXPECT_GE(s.handles(0).fd(), 0);
  ASSERT_EQ(s.handle_slot_generations_size(), 1);
  EXPECT_EQ(s.handle_slot_generations(0), h >> 16);
  ASSERT_EQ(s.ops_size(), 2);
  EXPECT_EQ(s.ops(0).op_id(), a->value);
  EXPECT_EQ(s.ops(0).kind(), v1::OP_KIND_TIMEOUT);
  EXPECT_EQ(s.ops(1).op_id(), b->value);
  EXPECT_EQ(s.ops(1).session_id(), s.session_id());
  EXPECT_FALSE(s.ops(0).timeline().empty());

  EXPECT_EQ(t.client_name(), "bound");
  EXPECT_TRUE(t.bound_to_stream());
  EXPECT_EQ(t.lease_ms(), 0u);
  EXPECT_TRUE(t.ops().empty());

  // The counters cover both sessions and stay above every op generation.
  ASSERT_EQ(cp.id_counters_size(), 2);
  for (const state::IdCounter& c : cp.id_counters()) {
    EXPECT_GE(c.serial(), 1u);
    if (c.index() == a->session_index()) {
      EXPECT_GT(c.next_generation(), a->generation());
    }
  }
}

TEST_F(CheckpointTest, EndedSessionsAndDeliveredOpsLeaveItButTheirIdsStayCounted) {
  auto first = Open(1000, "first");
  ASSERT_NE(first, nullptr);
  absl::StatusOr<core::OpId> done = dispatcher_.Submit(*first->session, {.kind = core::OpKind::kNop});
  ASSERT_TRUE(done.ok());
  backend_.CompleteAll(0);
  const uint64_t ended = first->session->id();
  ASSERT_TRUE(table_.End(ended, core::EndReason::kSessionClosed).ok());
  auto second = Open(1000, "second");
  ASSERT_NE(second, nullptr);

  const state::Checkpoint cp = Take();
  ASSERT_EQ(cp.sessions_size(), 1);
  EXPECT_EQ(cp.sessions(0).session_id(), second->session->id());
  EXPECT_TRUE(cp.sessions(0).ops().empty());
  // Its index's serial counts the ended session, whichever index it was on.
  uint64_t serials = 0;
  for (const state::IdCounter& c : cp.id_counters()) serials += c.serial();
  EXPECT_EQ(serials, 2u);
  const uint32_t index = static_cast<uint32_t>(ended & 0xffff);
  for (const state::IdCounter& c : cp.id_counters()) {
    if (c.index() == index) {
      EXPECT_GE(c.serial(), ended >> 16);
      EXPECT_GT(c.next_generation(), done->generation());
    }
  }
}

TEST_F(CheckpointTest, SealedCheckpointLoadsBackWhole) {
  auto meta = Open(1000, "client");
  PipeHandle(*meta->session, "a");
  PipeHandle(*meta->session, "b");
  ASSERT_TRUE(dispatcher_.Submit(*meta->session, {.kind = core::OpKind::kTimeout}).ok());
  const state::Checkpoint cp = Take();
  absl::StatusOr<state::Checkpoint> loaded = LoadCheckpoint(Seal(cp), limits_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(*loaded, cp));
  // An empty daemon's checkpoint loads too.
  EXPECT_TRUE(LoadCheckpoint(Seal(state::Checkpoint()), limits_).ok());
}

TEST_F(CheckpointTest, EveryTruncationAndEveryFlippedBitIsRefused) {
  auto meta = Open(1000, "client");
  PipeHandle(*meta->session, "fifo");
  ASSERT_TRUE(dispatcher_.Submit(*meta->session, {.kind = core::OpKind::kTimeout}).ok());
  const std::string sealed = Seal(Take());
  ASSERT_TRUE(LoadCheckpoint(sealed, limits_).ok());
  for (size_t n = 0; n < sealed.size(); ++n) {
    absl::StatusOr<state::Checkpoint> loaded = LoadCheckpoint(sealed.substr(0, n), limits_);
    ASSERT_FALSE(loaded.ok()) << "a prefix of " << n << " of " << sealed.size() << " bytes loaded";
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(loaded.status().message(), HasSubstr("checkpoint: "));
  }
  for (size_t i = 0; i < sealed.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string damaged = sealed;
      damaged[i] = static_cast<char>(damaged[i] ^ (1 << bit));
      absl::StatusOr<state::Checkpoint> loaded = LoadCheckpoint(damaged, limits_);
      ASSERT_FALSE(loaded.ok()) << "byte " << i << " bit " << bit << " flipped, and it loaded";
    }
  }
}

TEST_F(CheckpointTest, NewerFormatIsRefusedBeforeItsContentIsRead) {
  state::Sealed sealed;
  sealed.set_format(kCheckpointFormat + 1);
  sealed.set_checkpoint("whatever a newer daemon writes");
  absl::StatusOr<state::Checkpoint> loaded = LoadCheckpoint(sealed.SerializeAsString(), limits_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(loaded.status().message(), HasSubstr("format 2 is newer than this daemon's 1"));
  sealed.set_format(0);
  loaded = LoadCheckpoint(sealed.SerializeAsString(), limits_);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
}

// A valid two-session checkpoint, made by hand, that each case spoils once.
state::Checkpoint Valid() {
  state::Checkpoint cp;
  for (uint32_t index : {0u, 1u}) {
    state::IdCounter* c = cp.add_id_counters();
    c->set_index(index);
    c->set_serial(3);
    c->set_next_generation(100);
    state::Session* s = cp.add_sessions();
    s->set_session_id((uint64_t{3} << 16) | index);
    s->set_lease_ms(1000);
    s->set_lease_remaining_ms(500);
    s->add_handle_slot_generations(2);
    state::Handle* h = s->add_handles();
    h->set_handle((2u << 16) | 1);
    h->set_fd(10);
    v1::OperationInfo* op = s->add_ops();
    op->set_session_id(s->session_id());
    op->set_op_id(core::OpId::Make(index, 0, 7).value);
  }
  // Session 1 was a resumable stream's: its state came along.
  state::Session* s = cp.mutable_sessions(1);
  s->set_resumable(true);
  s->set_next_seq(5);
  s->add_unacked()->set_seq(3);
  s->add_unacked()->set_seq(4);
  s->add_undelivered()->set_tag(9);
  state::Resubmit* r = s->add_resubmit();
  r->set_op_id(core::OpId::Make(1, 1, 8).value);
  r->mutable_op()->mutable_nop();
  return cp;
}

TEST_F(CheckpointTest, ContradictionsAreRefusedNamingWhatIsWrong) {
  ASSERT_TRUE(LoadCheckpoint(Seal(Valid()), limits_).ok());
  struct Case {
    const char* name;
    std::function<void(state::Checkpoint&)> spoil;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"counters out of order", [](auto& cp) { cp.mutable_id_counters()->SwapElements(0, 1); },
       "id counters are not unique and in index order"},
      {"index past the session limit", [](auto& cp) { cp.mutable_id_counters(1)->set_index(8); },
       "id counter of index 8: over the limit of 8 sessions"},
      {"serial 0", [](auto& cp) { cp.mutable_id_counters(0)->set_serial(0); },
       "id counter of index 0: serial 0 out of range"},
      {"generation past 28 bits",
       [](auto& cp) { cp.mutable_id_counters(0)->set_next_generation(1u << 28); },
       "generation 268435456 out of range"},
      {"generation 0", [](auto& cp) { cp.mutable_id_counters(0)->set_next_generation(0); },
       "generation 0 out of range"},
      {"a serial whose next would overflow",
       [](auto& cp) { cp.mutable_id_counters(0)->set_serial((uint64_t{1} << 48) - 1); },
       "out of range"},
      {"whole root with shares",
       [](auto& cp) {
         cp.mutable_sessions(0)->set_whole_root(true);
         cp.mutable_sessions(0)->add_shares("common");
       },
       "beneath the whole root, yet named shares"},
      {"sessions out of order", [](auto& cp) { cp.mutable_sessions()->SwapElements(0, 1); },
       "sessions are not unique and in id order"},
      {"session above its counter",
       [](auto& cp) { cp.mutable_sessions(1)->set_session_id((uint64_t{4} << 16) | 1); },
       "session 262145: not covered by the id counters"},
      {"session on an index never used",
       [](auto& cp) {
         cp.mutable_sessions(1)->set_session_id((uint64_t{3} << 16) | 5);
         cp.mutable_sessions(1)->mutable_ops(0)->set_session_id((uint64_t{3} << 16) | 5);
       },
       "not covered by the id counters"},
      {"two sessions on one index",
       [](auto& cp) { cp.mutable_sessions(1)->set_session_id((uint64_t{2} << 16) | 0); },
       "sessions are not unique and in id order"},
      {"leased and bound to a stream",
       [](auto& cp) { cp.mutable_sessions(0)->set_bound_to_stream(true); },
       "session 196608: bound to a stream, yet leased"},
      {"neither leased nor bound",
       [](auto& cp) {
         cp.mutable_sessions(0)->set_lease_ms(0);
         cp.mutable_sessions(0)->set_lease_remaining_ms(0);
       },
       "session 196608: neither leased nor bound to a stream"},
      {"lease left over its length",
       [](auto& cp) { cp.mutable_sessions(0)->set_lease_remaining_ms(2000); },
       "session 196608: lease out of range"},
      {"long client name",
       [](auto& cp) { cp.mutable_sessions(0)->set_client_name(std::string(129, 'x')); },
       "client name over 128 bytes"},
      {"handle of a stale generation",
       [](auto& cp) { cp.mutable_sessions(0)->mutable_handles(0)->set_handle((1u << 16) | 1); },
       "handle 65537: not the handle of any of its session's slots"},
      {"handle past its slots",
       [](auto& cp) { cp.mutable_sessions(0)->mutable_handles(0)->set_handle((2u << 16) | 2); },
       "not the handle of any of its session's slots"},
      {"handle twice",
       [](auto& cp) { *cp.mutable_sessions(0)->add_handles() = cp.sessions(0).handles(0); },
       "handles are not unique and in slot order"},
      {"handle generation past 15 bits",
       [](auto& cp) { cp.mutable_sessions(0)->set_handle_slot_generations(0, 0x8000); },
       "handle slot 1 has generation 32768, over 15 bits"},
      {"too many handle slots",
       [](auto& cp) {
         for (int i = 0; i < 64; ++i) cp.mutable_sessions(0)->add_handle_slot_generations(0);
       },
       "65 handle slots, over the limit of 64"},
      {"negative descriptor",
       [](auto& cp) { cp.mutable_sessions(0)->mutable_handles(0)->set_fd(-1); },
       "negative descriptor"},
      {"long path",
       [](auto& cp) { cp.mutable_sessions(0)->mutable_handles(0)->set_path(std::string(4096, 'p')); },
       "path over 4095 bytes"},
      {"op of another session",
       [](auto& cp) { cp.mutable_sessions(0)->mutable_ops(0)->set_session_id(cp.sessions(1).session_id()); },
       "not an operation of its session"},
      {"op id of another index",
       [](auto& cp) {
         cp.mutable_sessions(0)->mutable_ops(0)->set_op_id(core::OpId::Make(1, 0, 7).value);
       },
       "not an operation of its session"},
      {"op twice",
       [](auto& cp) { *cp.mutable_sessions(0)->add_ops() = cp.sessions(0).ops(0); },
       "operations are not unique and in order"},
      {"a stream's state, not resumable",
       [](auto& cp) { cp.mutable_sessions(1)->set_resumable(false); },
       "session 196609: a stream's state, yet not resumable"},
      {"resumable without next_seq", [](auto& cp) { cp.mutable_sessions(1)->set_next_seq(0); },
       "resumable, yet no next_seq"},
      {"unacked message at next_seq",
       [](auto& cp) { cp.mutable_sessions(1)->set_next_seq(4); },
       "unacknowledged message 4 out of order or not below next_seq 4"},
      {"unacked messages out of order",
       [](auto& cp) { cp.mutable_sessions(1)->mutable_unacked()->SwapElements(0, 1); },
       "unacknowledged message 3 out of order"},
      {"unacked message 0", [](auto& cp) { cp.mutable_sessions(1)->mutable_unacked(0)->set_seq(0); },
       "unacknowledged message 0 out of order"},
      {"op to run again of another index",
       [](auto& cp) {
         cp.mutable_sessions(1)->mutable_resubmit(0)->set_op_id(core::OpId::Make(0, 1, 8).value);
       },
       "to run again: not an operation id of its session"},
      {"op to run again of generation 0",
       [](auto& cp) {
         cp.mutable_sessions(1)->mutable_resubmit(0)->set_op_id(core::OpId::Make(1, 1, 0).value);
       },
       "to run again: not an operation id of its session"},
      {"op to run again twice",
       [](auto& cp) { *cp.mutable_sessions(1)->add_resubmit() = cp.sessions(1).resubmit(0); },
       "to run again: operations are not unique and in order"},
      {"op to run again with no kind",
       [](auto& cp) { cp.mutable_sessions(1)->mutable_resubmit(0)->mutable_op()->clear_kind(); },
       "to run again: no kind"},
  };
  for (const Case& c : cases) {
    state::Checkpoint cp = Valid();
    c.spoil(cp);
    absl::StatusOr<state::Checkpoint> loaded = LoadCheckpoint(Seal(cp), limits_);
    ASSERT_FALSE(loaded.ok()) << c.name << ": loaded";
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(loaded.status().message(), HasSubstr(c.message)) << c.name;
  }
  // Over the loading daemon's limits, though valid for the daemon that took it.
  absl::StatusOr<state::Checkpoint> loaded =
      LoadCheckpoint(Seal(Valid()), CheckpointLimits{.max_sessions = 1});
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(), HasSubstr("over the limit of 1 sessions"));
  loaded = LoadCheckpoint(Seal(Valid()), CheckpointLimits{.max_ops_per_session = 0});
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(), HasSubstr("1 operations, over the limit of 0"));
}

// Checkpoints taken while sessions open and end, handles open and close and
// ops come and go: every one loads, and names each session and op once.
TEST_F(CheckpointTest, TakenUnderChurnEveryCheckpointLoads) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> churn;
  for (int t = 0; t < 3; ++t) {
    churn.emplace_back([&, t] {
      while (!stop.load()) {
        auto meta = table_.Open(Caller{.uid = 1000u + t}, "churn", 0, SessionLifetime::kLeased);
        if (!meta.ok()) continue;
        core::Session& s = *(*meta)->session;
        for (int i = 0; i < 20; ++i) {
          const uint32_t h = PipeHandle(s, "p");
          (void)dispatcher_.Submit(s, {.kind = core::OpKind::kNop});
          if (i % 2 == 0) {
            absl::StatusOr<int> fd = s.handles().Detach(h);
            if (fd.ok() && *fd >= 0) ::close(*fd);
          }
        }
        backend_.CompleteAll(0);
        (void)table_.End(s.id(), core::EndReason::kSessionClosed);
      }
    });
  }
  int taken = 0;
  for (const int64_t until = core::MonoNanos() + 500'000'000; core::MonoNanos() < until; ++taken) {
    const state::Checkpoint cp = Take();
    absl::StatusOr<state::Checkpoint> loaded = LoadCheckpoint(Seal(cp), limits_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    std::set<uint64_t> ops;
    for (const state::Session& s : cp.sessions()) {
      for (const v1::OperationInfo& op : s.ops()) EXPECT_TRUE(ops.insert(op.op_id()).second);
    }
  }
  stop.store(true);
  for (auto& t : churn) t.join();
  EXPECT_GT(taken, 10);
}

// The history a successor takes back shows as the predecessor showed it.
TEST(CheckpointHistoryTest, AFinishedOpRoundTripsThroughItsOperationInfo) {
  int seen = 0;
  core::OpSnapshot done;
  done.id = core::OpId::Make(1, 2, 3);
  done.session_id = (uint64_t{5} << 16) | 1;
  done.kind = core::OpKind::kRead;
  done.state = core::OpState::kCompleted;
  done.backend = core::BackendKind::kIoUring;
  done.handle = 65537;
  done.submitted_ns = core::MonoNanos() - 5'000'000;
  done.dispatched_ns = done.submitted_ns + 1000;
  done.finished_ns = done.submitted_ns + 3'000'000;
  done.result = 12;
  done.bytes_done = 12;
  done.tag = 9;
  done.deadline_ms = 100;
  std::snprintf(done.target, sizeof done.target, "%s", "fifo");
  core::OpSnapshot cancelled = done;
  cancelled.id = core::OpId::Make(1, 3, 3);
  cancelled.kind = core::OpKind::kTimeout;
  cancelled.state = core::OpState::kCancelled;
  cancelled.backend = core::BackendKind::kThreadPool;
  cancelled.end_requested = true;
  cancelled.end_reason = core::EndReason::kClientRequest;
  cancelled.cancel_requested = true;
  cancelled.started_ns = done.submitted_ns + 2000;
  cancelled.cancel_requested_ns = done.submitted_ns + 2'000'000;
  core::OpSnapshot failed = done;
  failed.state = core::OpState::kFailed;
  failed.result = -ENOMEM;
  failed.safety = core::CancelSafety::kOnlyBeforeStart;
  for (const core::OpSnapshot& s : {done, cancelled, failed}) {
    v1::OperationInfo shown;
    ToOperationInfo(s, 1000, 42, "client", /*include_timeline=*/true, core::MonoNanos(), shown);
    core::OpSnapshot back;
    ASSERT_TRUE(FromOperationInfo(shown, back));
    v1::OperationInfo again;
    ToOperationInfo(back, 1000, 42, "client", /*include_timeline=*/true, core::MonoNanos(), again);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(shown, again))
        << shown.DebugString() << "\nvs\n" << again.DebugString();
    ++seen;
  }
  EXPECT_EQ(seen, 3);
  // An op in flight is no history.
  v1::OperationInfo running;
  running.set_state(v1::OP_STATE_RUNNING);
  core::OpSnapshot none;
  EXPECT_FALSE(FromOperationInfo(running, none));
}

}  // namespace
}  // namespace asyncd::daemon
