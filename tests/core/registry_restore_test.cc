// Restoring a predecessor's state: id counters, sessions, handles and ops
// with their exact ids. Afterwards no session id or op id issued before is
// issued again, and restored handles and ops work as they did; every refusal
// leaves everything as it was.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "src/core/dispatcher.h"
#include "src/core/registry.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::core {
namespace {

using ::testing::HasSubstr;

ClientInfo Client(const char* name = "client") { return {name, 1000, 1000, 42}; }

void FinishAndRetire(Op& op) {
  if (op.state() < OpState::kRunning) {
    ASSERT_TRUE(op.TryStart(1));
  }
  op.Finish(0, 2);
  op.session->Retire(op);
}

// Every id a registry handed out.
struct IdSets {
  std::set<uint64_t> sessions;
  std::set<uint64_t> ops;
};

// Registers `batch` ops at once, `rounds` times, retiring them after each
// round; every id must be new to `seen` and absent from `before`.
void RunOps(Session& s, int rounds, int batch, IdSets& seen, const IdSets& before) {
  for (int round = 0; round < rounds; ++round) {
    std::vector<Op*> ops;
    for (int i = 0; i < batch; ++i) {
      auto op = s.Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
      ASSERT_TRUE(op.ok()) << op.status();
      const uint64_t id = (*op)->id().value;
      EXPECT_EQ(before.ops.count(id), 0u) << "op id " << id << " issued again";
      EXPECT_TRUE(seen.ops.insert(id).second) << "op id " << id << " issued twice";
      ops.push_back(*op);
    }
    for (Op* op : ops) FinishAndRetire(*op);
  }
}

Registry::IndexCounters Counter(uint32_t index, uint64_t serial, uint32_t next_gen) {
  return Registry::IndexCounters{index, serial, next_gen};
}

bool SameCounters(const std::vector<Registry::IndexCounters>& a,
                  const std::vector<Registry::IndexCounters>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
    return x.index == y.index && x.serial == y.serial && x.next_gen == y.next_gen;
  });
}

std::set<uint64_t> Walked(const Registry& registry) {
  std::set<uint64_t> ids;
  registry.Walk(OpId{}, [&](const Op&, const OpBrief& b, const std::shared_ptr<Session>&) {
    ids.insert(b.id.value);
    return true;
  });
  return ids;
}

bool FdOpen(int fd) { return fcntl(fd, F_GETFD) >= 0; }

// --- id counters -----------------------------------------------------------

// The promise the counters exist for: a successor that took them over never
// issues a session id or op id its predecessor issued, whether it restores
// the live sessions (and their ops) or opens new ones, on any index, across
// sessions ending and others taking their index.
TEST(RestoreCountersTest, IdsAfterRestoreNeverRepeatThoseIssuedBefore) {
  const Registry::Options options{.max_sessions = 4, .max_ops_per_session = 600};
  IdSets before;
  std::vector<Registry::IndexCounters> counters;
  struct LiveOp {
    OpId id;
    OpKind kind;
  };
  std::vector<uint64_t> live_sessions;
  std::vector<LiveOp> live_ops;
  {
    Registry predecessor(options);
    for (int round = 0; round < 3; ++round) {
      std::vector<std::shared_ptr<Session>> sessions;
      for (int i = 0; i < 4; ++i) {
        sessions.push_back(*predecessor.OpenSession(Client()));
        before.sessions.insert(sessions.back()->id());
        RunOps(*sessions.back(), 2 + i, 100 + 150 * i, before, {});  // up to 3 slabs
      }
      // Two end; the others live on into the next round, or the checkpoint.
      for (int i = 0; i < 2; ++i) {
        ASSERT_NE(predecessor.BeginClose(sessions[i]->id()), nullptr);
      }
      if (round < 2) {
        for (int i = 2; i < 4; ++i) ASSERT_NE(predecessor.BeginClose(sessions[i]->id()), nullptr);
        continue;
      }
      // In flight at the checkpoint: 10 of 520 ops, over more than one slab.
      for (int i = 2; i < 4; ++i) {
        live_sessions.push_back(sessions[i]->id());
        for (int k = 0; k < 520; ++k) {
          Op& op = **sessions[i]->Register(k % 2 ? OpKind::kRead : OpKind::kNop,
                                           CancelSafety::kAlways, 0, "", 1);
          before.ops.insert(op.id().value);
          if (k < 5 || k >= 515) live_ops.push_back({op.id(), op.head->kind.load()});
        }
      }
      // The ops not kept live finish: their slots' generations move on.
      for (auto& s : {sessions[2], sessions[3]}) {
        std::vector<Op*> done;
        s->ForEachSlot([&](Op& op) {
          const uint64_t id = op.id().value;
          if (std::none_of(live_ops.begin(), live_ops.end(),
                           [&](const LiveOp& l) { return l.id.value == id; })) {
            done.push_back(&op);
          }
        });
        for (Op* op : done) FinishAndRetire(*op);
      }
    }
    counters = predecessor.Counters();
    ASSERT_EQ(counters.size(), 4u);
    // The predecessor's ops end with it: its slots hold them still.
    for (const LiveOp& l : live_ops) FinishAndRetire(*predecessor.Find(l.id).op);
  }

  Registry successor(options);
  ASSERT_TRUE(successor.RestoreCounters(counters).ok());
  std::vector<std::shared_ptr<Session>> restored;
  for (uint64_t id : live_sessions) {
    auto s = successor.RestoreSession(id, Client("restored"));
    ASSERT_TRUE(s.ok()) << s.status();
    restored.push_back(*s);
  }
  std::vector<Op*> restored_ops;
  for (const LiveOp& l : live_ops) {
    for (auto& s : restored) {
      if (s->index() != l.id.session_index()) continue;
      auto op = s->Restore(l.id, l.kind, CancelSafety::kAlways, 0, "", 1);
      ASSERT_TRUE(op.ok()) << op.status();
      restored_ops.push_back(*op);
    }
  }
  ASSERT_EQ(restored_ops.size(), live_ops.size());

  IdSets after;
  // New sessions on the free indices, ops beside the restored ones everywhere.
  std::vector<std::shared_ptr<Session>> opened;
  for (int i = 0; i < 2; ++i) {
    opened.push_back(*successor.OpenSession(Client()));
    EXPECT_EQ(before.sessions.count(opened.back()->id()), 0u);
    EXPECT_TRUE(after.sessions.insert(opened.back()->id()).second);
  }
  for (auto& s : restored) RunOps(*s, 4, 300, after, before);
  for (auto& s : opened) RunOps(*s, 4, 300, after, before);
  for (Op* op : restored_ops) FinishAndRetire(*op);
  for (auto& s : restored) RunOps(*s, 2, 550, after, before);
  // Every index ends and takes new sessions, twice.
  for (int cycle = 0; cycle < 2; ++cycle) {
    for (auto& s : successor.Sessions()) ASSERT_NE(successor.BeginClose(s->id()), nullptr);
    ASSERT_EQ(successor.session_count(), 0u);
    for (int i = 0; i < 4; ++i) {
      auto s = *successor.OpenSession(Client());
      EXPECT_EQ(before.sessions.count(s->id()), 0u) << "session id " << s->id() << " again";
      EXPECT_TRUE(after.sessions.insert(s->id()).second);
      RunOps(*s, 6, 300, after, before);
    }
  }
  EXPECT_GT(after.ops.size(), 10'000u);
}

TEST(RestoreCountersTest, OpenSessionGoesOnFromTheRestoredCounters) {
  Registry registry(Registry::Options{.max_sessions = 4});
  const std::vector<Registry::IndexCounters> counters = {Counter(0, 7, 1000),
                                                         Counter(2, 3, OpId::kGenMask)};
  ASSERT_TRUE(registry.RestoreCounters(counters).ok());
  EXPECT_TRUE(SameCounters(registry.Counters(), counters));
  EXPECT_TRUE(registry.Issued((uint64_t{7} << OpId::kSessionBits) | 0));
  EXPECT_FALSE(registry.Issued((uint64_t{8} << OpId::kSessionBits) | 0));
  EXPECT_EQ(registry.FindSession((uint64_t{7} << OpId::kSessionBits) | 0), nullptr);

  std::vector<std::shared_ptr<Session>> sessions;
  for (int i = 0; i < 4; ++i) sessions.push_back(*registry.OpenSession(Client()));
  for (auto& s : sessions) {
    Op& op = **s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
    switch (s->index()) {
      case 0:
        EXPECT_EQ(s->id(), (uint64_t{8} << OpId::kSessionBits) | 0);
        EXPECT_EQ(op.generation(), 1000u);
        break;
      case 2:
        EXPECT_EQ(s->id(), (uint64_t{4} << OpId::kSessionBits) | 2);
        EXPECT_EQ(op.generation(), OpId::kGenMask);
        FinishAndRetire(op);  // the generation wraps past 0, never to it
        EXPECT_EQ((**s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1)).generation(), 1u);
        break;
      default:  // not restored: as in a fresh registry
        EXPECT_EQ(s->id() >> OpId::kSessionBits, 1u);
        EXPECT_EQ(op.generation(), 1u);
    }
  }
}

TEST(RestoreCountersTest, RefusalsChangeNothing) {
  Registry registry(Registry::Options{.max_sessions = 4});
  struct Case {
    std::vector<Registry::IndexCounters> counters;
    std::string names;  // what the message must name
  };
  const std::vector<Case> refused = {
      {{Counter(4, 1, 1)}, "session index 4"},
      {{Counter(1, 1, 1), Counter(3, 2, 2), Counter(1, 5, 5)}, "session index 1: named twice"},
      {{Counter(0, 1, 1), Counter(2, 0, 1)}, "session index 2: serial 0"},
      {{Counter(3, (uint64_t{1} << 48) - 1, 1)}, "session index 3: serial"},
      {{Counter(1, 1, 0)}, "session index 1: generation 0"},
      {{Counter(2, 1, OpId::kGenMask + 1)}, "session index 2: generation"},
  };
  for (const Case& c : refused) {
    const absl::Status status = registry.RestoreCounters(c.counters);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.names;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.names));
    EXPECT_TRUE(registry.Counters().empty()) << c.names;
  }
  // None of them counted as the one restore.
  const std::vector<Registry::IndexCounters> good = {Counter(1, 9, 90)};
  ASSERT_TRUE(registry.RestoreCounters(good).ok());
  EXPECT_EQ(registry.RestoreCounters(std::vector{Counter(0, 1, 1)}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(SameCounters(registry.Counters(), good));

  // Too late once a session was opened, even one that has ended.
  Registry used(Registry::Options{.max_sessions = 4});
  auto s = *used.OpenSession(Client());
  ASSERT_NE(used.BeginClose(s->id()), nullptr);
  const std::vector<Registry::IndexCounters> had = used.Counters();
  EXPECT_EQ(used.RestoreCounters(std::vector{Counter(s->index(), 40, 400)}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(SameCounters(used.Counters(), had));
}

// --- sessions ----------------------------------------------------------------

TEST(RestoreSessionTest, OpensWithItsExactIdAndGenerationsFromItsIndex) {
  Registry registry(Registry::Options{.max_sessions = 2});
  ASSERT_TRUE(registry.RestoreCounters(std::vector{Counter(1, 5, 777)}).ok());
  const uint64_t id = (uint64_t{5} << OpId::kSessionBits) | 1;
  auto restored = registry.RestoreSession(id, Client("back"));
  ASSERT_TRUE(restored.ok()) << restored.status();
  std::shared_ptr<Session> s = *restored;
  EXPECT_EQ(s->id(), id);
  EXPECT_EQ(s->index(), 1u);
  EXPECT_EQ(s->client().name, "back");
  EXPECT_EQ(registry.FindSession(id), s);
  EXPECT_TRUE(registry.Issued(id));
  EXPECT_TRUE(registry.Issued(id - (uint64_t{1} << OpId::kSessionBits)));
  EXPECT_FALSE(registry.Issued(id + (uint64_t{1} << OpId::kSessionBits)));
  EXPECT_EQ(registry.session_count(), 1u);
  EXPECT_EQ(registry.Sessions(), std::vector<std::shared_ptr<Session>>{s});
  EXPECT_EQ((**s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1)).generation(), 777u);
  EXPECT_EQ(registry.RestoreCounters({}).code(), absl::StatusCode::kFailedPrecondition);

  // Its index left the free list: one more session fits, on index 0.
  auto other = registry.OpenSession(Client());
  ASSERT_TRUE(other.ok());
  EXPECT_EQ((*other)->index(), 0u);
  EXPECT_EQ(registry.OpenSession(Client()).status().code(), absl::StatusCode::kResourceExhausted);

  // It ends as any session, and its index goes on counting.
  s->ForEachSlot([](Op& op) { FinishAndRetire(op); });
  ASSERT_NE(registry.BeginClose(id), nullptr);
  EXPECT_EQ(registry.FindSession(id), nullptr);
  EXPECT_TRUE(registry.Issued(id));
  auto next = registry.OpenSession(Client());
  ASSERT_TRUE(next.ok());
  EXPECT_EQ((*next)->id(), (uint64_t{6} << OpId::kSessionBits) | 1);
  EXPECT_GT((**(*next)->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1)).generation(),
            777u);
}

TEST(RestoreSessionTest, RefusalsChangeNothing) {
  Registry registry(Registry::Options{.max_sessions = 3});
  ASSERT_TRUE(registry.RestoreCounters(std::vector{Counter(0, 4, 10), Counter(1, 2, 10)}).ok());
  const auto id = [](uint64_t serial, uint32_t index) {
    return (serial << OpId::kSessionBits) | index;
  };
  ASSERT_TRUE(registry.RestoreSession(id(4, 0), Client()).ok());
  const std::vector<Registry::IndexCounters> had = registry.Counters();

  EXPECT_EQ(registry.RestoreSession(id(0, 1), Client()).status().code(),
            absl::StatusCode::kInvalidArgument);  // serial 0
  EXPECT_EQ(registry.RestoreSession(id(3, 1), Client()).status().code(),
            absl::StatusCode::kInvalidArgument);  // above its index's serial
  EXPECT_EQ(registry.RestoreSession(id(1, 2), Client()).status().code(),
            absl::StatusCode::kInvalidArgument);  // an index never restored: serial 0
  EXPECT_EQ(registry.RestoreSession(id(1, 3), Client()).status().code(),
            absl::StatusCode::kInvalidArgument);  // past the table
  EXPECT_EQ(registry.RestoreSession(id(4, 0), Client()).status().code(),
            absl::StatusCode::kFailedPrecondition);  // its index holds a session
  EXPECT_EQ(registry.RestoreSession(id(3, 0), Client()).status().code(),
            absl::StatusCode::kFailedPrecondition);

  EXPECT_EQ(registry.session_count(), 1u);
  EXPECT_TRUE(SameCounters(registry.Counters(), had));
  EXPECT_FALSE(registry.Issued(id(3, 1)));
  // Indices 1 and 2 are still free, each once.
  std::set<uint32_t> indices;
  for (int i = 0; i < 2; ++i) indices.insert((*registry.OpenSession(Client()))->index());
  EXPECT_EQ(indices, (std::set<uint32_t>{1, 2}));
  EXPECT_EQ(registry.OpenSession(Client()).status().code(), absl::StatusCode::kResourceExhausted);
}

// --- handles -----------------------------------------------------------------

TEST(HandleRestoreTest, ARestoredTableListsAsItsPredecessorAndReadsTheSameFiles) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK), 0);
  const int file = ::memfd_create("restore", MFD_CLOEXEC);
  ASSERT_GE(file, 0);
  ASSERT_EQ(::pwrite(file, "contents", 8, 0), 8);

  HandleTable predecessor(8);
  const uint32_t gone = *predecessor.Insert(::open("/dev/null", O_RDONLY | O_CLOEXEC), "gone");
  const uint32_t h_pipe = *predecessor.Insert(pipe_fds[0], "fifo");
  const uint32_t h_file = *predecessor.Insert(file, "file");
  ::close(*predecessor.Detach(gone));  // slot 1 moves on a generation
  std::vector<HandleTable::Listed> listed;
  std::vector<uint32_t> generations;
  predecessor.List(&listed, &generations);
  ASSERT_EQ(listed.size(), 2u);

  // The successor gets the same open files under other descriptor numbers.
  std::vector<HandleTable::RestoredHandle> handles;
  for (const HandleTable::Listed& l : listed) handles.push_back({l.handle, ::dup(l.fd), l.path});
  HandleTable table(8);
  ASSERT_TRUE(table.Restore(generations, handles).ok());
  EXPECT_EQ(table.open_count(), 2u);

  std::vector<HandleTable::Listed> relisted;
  std::vector<uint32_t> regenerations;
  table.List(&relisted, &regenerations);
  EXPECT_EQ(regenerations, generations);
  ASSERT_EQ(relisted.size(), listed.size());
  for (size_t i = 0; i < listed.size(); ++i) {
    EXPECT_EQ(relisted[i].handle, listed[i].handle);
    EXPECT_EQ(relisted[i].fd, handles[i].fd);
    EXPECT_EQ(relisted[i].stream, listed[i].stream);
    EXPECT_EQ(relisted[i].status_flags, listed[i].status_flags);
    EXPECT_EQ(relisted[i].path, listed[i].path);
  }

  // Each handle is usable as before the restart.
  auto pipe_use = table.Acquire(h_pipe);
  ASSERT_TRUE(pipe_use.ok()) << pipe_use.status();
  EXPECT_EQ(pipe_use->fd, handles[0].fd);
  EXPECT_TRUE(pipe_use->stream);
  EXPECT_TRUE(pipe_use->nonblock);
  EXPECT_EQ(pipe_use->path, "fifo");
  ASSERT_EQ(::write(pipe_fds[1], "ping", 4), 4);
  char buf[8] = {};
  EXPECT_EQ(::read(pipe_use->fd, buf, sizeof(buf)), 4);
  EXPECT_EQ(std::string(buf, 4), "ping");
  table.Release(h_pipe);
  auto file_use = table.Acquire(h_file);
  ASSERT_TRUE(file_use.ok());
  EXPECT_FALSE(file_use->stream);
  EXPECT_FALSE(file_use->nonblock);
  EXPECT_EQ(::pread(file_use->fd, buf, 8, 0), 8);
  EXPECT_EQ(std::string(buf, 8), "contents");
  table.Release(h_file);
  EXPECT_FALSE(table.Acquire(gone).ok());  // stale before the restart, stale after
  EXPECT_FALSE(table.Acquire(h_file + (1u << 16)).ok());

  // A free slot is handed out in its listed generation; then the table grows.
  const uint32_t next = *table.Insert(::open("/dev/null", O_RDONLY | O_CLOEXEC), "next");
  EXPECT_EQ(next, (generations[0] << 16) | 1);
  EXPECT_NE(next, gone);
  EXPECT_EQ(*table.Insert(::open("/dev/null", O_RDONLY | O_CLOEXEC)) & 0xffff, 4u);

  // Closing a restored handle hands its descriptor back.
  auto detached = table.Detach(h_file);
  ASSERT_TRUE(detached.ok());
  EXPECT_EQ(*detached, handles[1].fd);
  ::close(*detached);
  ::close(pipe_fds[1]);
}

TEST(HandleRestoreTest, RefusalsOwnNoDescriptorAndChangeNothing) {
  const int a = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const int b = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  const std::vector<uint32_t> gens = {3, 0, 7};
  const auto h = [](uint32_t gen, uint32_t slot) { return (gen << 16) | slot; };
  struct Case {
    std::vector<uint32_t> gens;
    std::vector<HandleTable::RestoredHandle> handles;
    const char* what;
  };
  const std::vector<Case> refused = {
      {{1, 1, 1, 1, 1}, {}, "more slots than max_handles"},
      {{3, 0x8000}, {}, "a generation over 15 bits"},
      {gens, {{h(3, 0), a, ""}}, "slot 0"},
      {gens, {{h(3, 4), a, ""}}, "a slot past the slots"},
      {gens, {{h(3, 1), a, ""}, {h(1, 2), b, ""}}, "a generation not its slot's"},
      {gens, {{h(7, 3), a, ""}, {h(7, 3), b, ""}}, "a slot named twice"},
      {gens, {{h(3, 1), a, ""}, {h(7, 3), a, ""}}, "a descriptor named twice"},
      {gens, {{h(3, 1), -1, ""}}, "no descriptor"},
  };
  HandleTable table(4);
  for (const Case& c : refused) {
    EXPECT_EQ(table.Restore(c.gens, c.handles).code(), absl::StatusCode::kInvalidArgument)
        << c.what;
    EXPECT_TRUE(FdOpen(a) && FdOpen(b)) << c.what << ": a refused restore closed a descriptor";
    std::vector<HandleTable::Listed> open;
    std::vector<uint32_t> listed_gens;
    table.List(&open, &listed_gens);
    EXPECT_TRUE(open.empty() && listed_gens.empty()) << c.what;
  }
  // Still unused: a good restore is taken.
  ASSERT_TRUE(table
                  .Restore(gens, std::vector<HandleTable::RestoredHandle>{{h(3, 1), a, "a"},
                                                                          {h(7, 3), b, "b"}})
                  .ok());
  EXPECT_EQ(table.open_count(), 2u);
  EXPECT_EQ(table.Acquire(h(7, 3))->fd, b);
  table.Release(h(7, 3));

  // Once a table has held a handle, or closed, it takes no restore.
  const int c = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  HandleTable used(4);
  ::close(*used.Detach(*used.Insert(::open("/dev/null", O_RDONLY | O_CLOEXEC))));
  EXPECT_EQ(used.Restore({{5}}, std::vector<HandleTable::RestoredHandle>{{h(5, 1), c, ""}}).code(),
            absl::StatusCode::kFailedPrecondition);
  HandleTable closed(4);
  closed.CloseAll();
  EXPECT_EQ(
      closed.Restore({{5}}, std::vector<HandleTable::RestoredHandle>{{h(5, 1), c, ""}}).code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(FdOpen(c));
  EXPECT_EQ(used.open_count() + closed.open_count(), 0u);
  ::close(c);
}

// --- ops ---------------------------------------------------------------------

class RecordingSink : public CompletionSink {
 public:
  void OnComplete(const Op& op) noexcept override {
    states.push_back(op.state());
    results.push_back(op.result.load());
    ids.push_back(op.id());
  }
  std::vector<OpState> states;
  std::vector<int64_t> results;
  std::vector<OpId> ids;
};

// A successor: index 0 restored with serial 3 and next_gen 500, its session
// restored, a dispatcher over a backend that holds ops until told.
class OpRestoreTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kSessionId = (uint64_t{3} << OpId::kSessionBits) | 0;
  static constexpr uint32_t kNextGen = 500;

  OpRestoreTest() {
    dispatcher_.SetBackends({&backend_});
    EXPECT_TRUE(registry_.RestoreCounters(std::vector{Counter(0, 3, kNextGen)}).ok());
    session_ = *registry_.RestoreSession(kSessionId, Client());
  }

  absl::StatusOr<Op*> Restore(uint32_t slot, uint32_t gen, OpKind kind = OpKind::kNop,
                              uint32_t handle = 0) {
    return session_->Restore(OpId::Make(0, slot, gen), kind, CancelSafety::kAlways, handle, "",
                             MonoNanos());
  }

  Registry registry_{Registry::Options{.max_sessions = 2, .max_ops_per_session = 700}};
  Dispatcher dispatcher_{registry_, AT_FDCWD};
  mocks::FakeBackend backend_{
      dispatcher_, {.completion = mocks::FakeBackend::Completion::kHeld, .capacity = 1000}};
  std::shared_ptr<Session> session_;
  RecordingSink sink_;
};

TEST_F(OpRestoreTest, ARestoredOpIsFoundListedRunsAndRetires) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  const uint32_t handle = (2u << 16) | 1;
  ASSERT_TRUE(
      session_->handles()
          .Restore({{2}}, std::vector<HandleTable::RestoredHandle>{{handle, pipe_fds[0], "fifo"}})
          .ok());
  const OpId id = OpId::Make(0, 300, 420);  // issued by the predecessor, below next_gen
  const int64_t submitted = MonoNanos() - 5'000'000;
  auto restored = session_->Restore(id, OpKind::kRead, CancelSafety::kAlways, handle, "fifo",
                                    submitted, /*tag=*/9, submitted + 2'000'000'000);
  ASSERT_TRUE(restored.ok()) << restored.status();
  Op& op = **restored;
  EXPECT_EQ(op.id(), id);
  EXPECT_EQ(session_->live_ops(), 1u);
  EXPECT_EQ(session_->inflight_ops(), 1u);

  Registry::Found found = registry_.Find(id);
  ASSERT_TRUE(found);
  EXPECT_EQ(found.op, &op);
  EXPECT_EQ(found.session, session_);
  std::optional<OpSnapshot> snap = registry_.Snapshot(id);
  ASSERT_TRUE(snap.has_value());
  EXPECT_EQ(snap->session_id, kSessionId);
  EXPECT_EQ(snap->state, OpState::kQueued);
  EXPECT_EQ(snap->kind, OpKind::kRead);
  EXPECT_EQ(snap->handle, handle);
  EXPECT_STREQ(snap->target, "fifo");
  EXPECT_EQ(snap->tag, 9u);
  EXPECT_EQ(snap->submitted_ns, submitted);
  EXPECT_EQ(snap->deadline_ms, 2000u);
  EXPECT_EQ(Walked(registry_), std::set<uint64_t>{id.value});
  int listed = 0;
  registry_.ForEach([&](const OpSnapshot& s, const std::shared_ptr<Session>& owner) {
    EXPECT_EQ(s.id, id);
    EXPECT_EQ(owner, session_);
    ++listed;
    return true;
  });
  EXPECT_EQ(listed, 1);

  char buf[16];
  auto submitted_id = dispatcher_.SubmitRestored(*session_, id,
                                                 {.kind = OpKind::kRead,
                                                  .handle = handle,
                                                  .params = {.len = sizeof(buf), .buf = buf},
                                                  .sink = &sink_,
                                                  .cookie = 77});
  ASSERT_TRUE(submitted_id.ok()) << submitted_id.status();
  EXPECT_EQ(*submitted_id, id);
  ASSERT_EQ(backend_.held(), std::vector<Op*>{&op});
  EXPECT_EQ(op.params.fd, pipe_fds[0]);
  EXPECT_EQ(op.params.buf, buf);
  EXPECT_EQ(op.cookie, 77u);
  EXPECT_EQ(registry_.Snapshot(id)->backend, BackendKind::kThreadPool);
  EXPECT_EQ(dispatcher_.SubmitRestored(*session_, id, {.kind = OpKind::kRead, .handle = handle})
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);  // once only

  backend_.CompleteAll(4);
  ASSERT_EQ(sink_.states.size(), 1u);
  EXPECT_EQ(sink_.states[0], OpState::kCompleted);
  EXPECT_EQ(sink_.results[0], 4);
  EXPECT_EQ(sink_.ids[0], id);
  EXPECT_EQ(session_->live_ops(), 0u);
  EXPECT_FALSE(registry_.Find(id));
  EXPECT_TRUE(Walked(registry_).empty());
  // The op let go of its handle: nobody holds it, so a close returns the descriptor.
  EXPECT_EQ(*session_->handles().Detach(handle), pipe_fds[0]);
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);

  // Its slot is reused at the session's first generation, above any the
  // predecessor may have issued there after it.
  Op& reused = **session_->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
  EXPECT_EQ(reused.id(), OpId::Make(0, 300, kNextGen));
}

// Restored in any order, ops leave the free list consistent: Register hands
// out every other slot exactly once, in this session's generation, never a
// restored one while it lives; a retired restored slot comes back.
TEST_F(OpRestoreTest, RegisterTakesEveryOtherSlotOnceAndNoRestoredOne) {
  const std::vector<uint32_t> slots = {0, 1, 5, 255, 256, 257, 300, 511, 512, 600, 698, 699};
  enum class Order { kAscending, kDescending, kShuffled, kFromTheTop };
  for (Order order :
       {Order::kAscending, Order::kDescending, Order::kShuffled, Order::kFromTheTop}) {
    SCOPED_TRACE(static_cast<int>(order));
    Registry registry(Registry::Options{.max_sessions = 1, .max_ops_per_session = 700});
    ASSERT_TRUE(registry.RestoreCounters(std::vector{Counter(0, 1, kNextGen)}).ok());
    auto s = *registry.RestoreSession(uint64_t{1} << OpId::kSessionBits, Client());
    std::vector<uint32_t> in_order = slots;
    if (order == Order::kDescending) std::reverse(in_order.begin(), in_order.end());
    if (order == Order::kShuffled) std::shuffle(in_order.begin(), in_order.end(), std::mt19937(7));
    if (order == Order::kFromTheTop)
      std::rotate(in_order.begin(), in_order.end() - 1, in_order.end());
    std::set<uint64_t> restored;
    std::vector<Op*> restored_ops;
    for (uint32_t slot : in_order) {
      auto op = s->Restore(OpId::Make(0, slot, 100 + slot), OpKind::kNop, CancelSafety::kAlways, 0,
                           "", 1);
      ASSERT_TRUE(op.ok()) << slot << ": " << op.status();
      restored.insert((*op)->id().value);
      restored_ops.push_back(*op);
    }
    std::set<uint32_t> taken;
    for (;;) {
      auto op = s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
      if (!op.ok()) {
        EXPECT_EQ(op.status().code(), absl::StatusCode::kResourceExhausted);
        break;
      }
      EXPECT_EQ((*op)->generation(), kNextGen);
      EXPECT_TRUE(taken.insert((*op)->slot_index).second) << "slot handed out twice";
      EXPECT_EQ(std::count(slots.begin(), slots.end(), (*op)->slot_index), 0)
          << "slot " << (*op)->slot_index << " of a live restored op handed out";
    }
    EXPECT_EQ(taken.size(), 700 - slots.size());
    EXPECT_EQ(s->live_ops(), 700u);
    std::set<uint64_t> walked = Walked(registry);
    EXPECT_EQ(walked.size(), 700u);
    for (uint64_t id : restored) EXPECT_EQ(walked.count(id), 1u);

    Op& back = *restored_ops[0];
    const uint32_t slot = back.slot_index;
    const uint32_t gen = back.generation();
    FinishAndRetire(back);
    Op& again = **s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
    EXPECT_EQ(again.id(), OpId::Make(0, slot, std::max(gen + 1, kNextGen)));
  }
}

// Restore takes a slot off the free list in amortized constant time: a full
// session, restored in a random order, is quick.
TEST(OpRestoreScaleTest, EverySlotOfALargeSessionInRandomOrder) {
  constexpr uint32_t kSlots = 1u << 16;
  Registry registry(Registry::Options{.max_sessions = 1, .max_ops_per_session = kSlots});
  ASSERT_TRUE(registry.RestoreCounters(std::vector{Counter(0, 1, 10)}).ok());
  auto s = *registry.RestoreSession(uint64_t{1} << OpId::kSessionBits, Client());
  std::vector<uint32_t> slots(kSlots);
  std::iota(slots.begin(), slots.end(), 0u);
  std::shuffle(slots.begin(), slots.end(), std::mt19937(11));
  // All but the last few: Register must find exactly those.
  for (size_t i = 0; i + 3 < slots.size(); ++i) {
    ASSERT_TRUE(
        s->Restore(OpId::Make(0, slots[i], 5), OpKind::kNop, CancelSafety::kAlways, 0, "", 1).ok())
        << slots[i];
  }
  std::set<uint32_t> left(slots.end() - 3, slots.end());
  std::set<uint32_t> taken;
  for (int i = 0; i < 3; ++i) {
    taken.insert((**s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1)).slot_index);
  }
  EXPECT_EQ(taken, left);
  EXPECT_EQ(s->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(OpRestoreTest, RefusalsChangeNothing) {
  ASSERT_TRUE(Restore(10, 400).ok());
  const auto refused = [&](absl::StatusOr<Op*> op, absl::StatusCode code, const char* what) {
    EXPECT_EQ(op.status().code(), code) << what;
    EXPECT_EQ(session_->live_ops(), 1u) << what;
    EXPECT_EQ(Walked(registry_), std::set<uint64_t>{OpId::Make(0, 10, 400).value}) << what;
  };
  refused(session_->Restore(OpId::Make(1, 11, 400), OpKind::kNop, CancelSafety::kAlways, 0, "", 1),
          absl::StatusCode::kInvalidArgument, "another session's index");
  refused(Restore(700, 400), absl::StatusCode::kInvalidArgument, "a slot at the op limit");
  refused(Restore(11, 0), absl::StatusCode::kInvalidArgument, "generation 0");
  refused(Restore(10, 400), absl::StatusCode::kInvalidArgument, "a slot holding an op");
  refused(Restore(10, 401), absl::StatusCode::kInvalidArgument, "a slot holding an op");
  // Nothing was taken off the free list by a refusal: 699 slots are left.
  ASSERT_TRUE(Restore(600, 450).ok());
  std::vector<Op*> registered;
  for (int i = 0; i < 698; ++i) {
    auto op = session_->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
    ASSERT_TRUE(op.ok()) << i << ": " << op.status();
    registered.push_back(*op);
  }
  EXPECT_FALSE(session_->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1).ok());
  for (Op* op : registered) FinishAndRetire(*op);

  // After Register the session is in use: restoring is over.
  EXPECT_EQ(session_->live_ops(), 2u);
  const std::set<uint64_t> live = Walked(registry_);
  EXPECT_EQ(Restore(20, 400).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session_->live_ops(), 2u);
  EXPECT_EQ(Walked(registry_), live);
}

TEST_F(OpRestoreTest, NoRestoreOnceAnOpRetiredOrTheSessionCloses) {
  Op& op = **Restore(1, 400);
  ASSERT_TRUE(Restore(2, 400).ok());
  FinishAndRetire(op);
  EXPECT_EQ(Restore(3, 400).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(session_->live_ops(), 1u);

  Registry registry(Registry::Options{.max_sessions = 1});
  ASSERT_TRUE(registry.RestoreCounters(std::vector{Counter(0, 1, 9)}).ok());
  auto s = *registry.RestoreSession(uint64_t{1} << OpId::kSessionBits, Client());
  Op& kept = **s->Restore(OpId::Make(0, 0, 5), OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
  ASSERT_NE(registry.BeginClose(s->id()), nullptr);
  EXPECT_EQ(s->Restore(OpId::Make(0, 1, 5), OpKind::kNop, CancelSafety::kAlways, 0, "", 1)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s->live_ops(), 1u);
  FinishAndRetire(kept);  // the last op of a closing session: it leaves the table
  EXPECT_EQ(registry.session_count(), 0u);
}

TEST_F(OpRestoreTest, SubmitRestoredRefusals) {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const uint32_t handle = (1u << 16) | 1;
  ASSERT_TRUE(session_->handles()
                  .Restore({{1}}, std::vector<HandleTable::RestoredHandle>{{handle, fd, ""}})
                  .ok());
  const OpId id = (**Restore(7, 400, OpKind::kRead, handle)).id();
  const OpId orphan = (**Restore(8, 400, OpKind::kRead, handle + 1)).id();  // handle not restored
  const OpRequest read{.kind = OpKind::kRead, .handle = handle, .sink = &sink_};

  // About the op itself: nothing changes.
  EXPECT_EQ(dispatcher_.SubmitRestored(*session_, OpId::Make(0, 9, 400), read).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(dispatcher_.SubmitRestored(*session_, OpId::Make(0, 7, 401), read).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(dispatcher_.SubmitRestored(*session_, OpId::Make(1, 7, 400), read).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(dispatcher_.SubmitRestored(*session_, id, {.kind = OpKind::kWrite, .handle = handle})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dispatcher_.SubmitRestored(*session_, id, {.kind = OpKind::kRead, .handle = 5})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(session_->live_ops(), 2u);
  EXPECT_EQ(registry_.Snapshot(id)->state, OpState::kQueued);
  EXPECT_TRUE(backend_.held().empty());

  // Refused as Submit refuses: the op ends, without a completion.
  EXPECT_EQ(dispatcher_
                .SubmitRestored(*session_, orphan,
                                {.kind = OpKind::kRead, .handle = handle + 1, .sink = &sink_})
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(registry_.Find(orphan));
  EXPECT_EQ(session_->live_ops(), 1u);
  EXPECT_TRUE(sink_.states.empty());

  // The refusals left the good one intact.
  ASSERT_TRUE(dispatcher_.SubmitRestored(*session_, id, read).ok());
  backend_.CompleteAll(0);
  ASSERT_EQ(sink_.states.size(), 1u);
  EXPECT_EQ(sink_.ids[0], id);
  EXPECT_EQ(session_->live_ops(), 0u);
}

// A session closed before its restored ops were submitted drains when they are.
TEST_F(OpRestoreTest, SubmitRestoredToAClosingSessionEndsTheOp) {
  const OpId id = (**Restore(3, 400, OpKind::kTimeout)).id();
  auto counts = dispatcher_.CloseSession(kSessionId, EndReason::kSessionClosed);
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->cancelled, 1u);
  EXPECT_EQ(registry_.session_count(), 1u);  // its op holds it in the table
  EXPECT_EQ(dispatcher_.SubmitRestored(*session_, id, {.kind = OpKind::kTimeout, .sink = &sink_})
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(sink_.states.empty());
  EXPECT_EQ(registry_.session_count(), 0u);
  EXPECT_FALSE(registry_.Find(id));
}

// The predecessor issued a restored op's generation below the session's
// first: when the session ends, its index must go on above every generation
// the session handed out, the restored slots' and the others' alike.
TEST(OpRestoreGenerationTest, ARestoredSessionsIndexIssuesNoOpIdAgainAfterItEnds) {
  Registry registry(Registry::Options{.max_sessions = 1, .max_ops_per_session = 512});
  ASSERT_TRUE(registry.RestoreCounters(std::vector{Counter(0, 1, 50)}).ok());
  auto s = *registry.RestoreSession(uint64_t{1} << OpId::kSessionBits, Client());
  Op& restored = **s->Restore(OpId::Make(0, 0, 40), OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
  IdSets seen;
  seen.ops.insert(restored.id().value);
  RunOps(*s, 5, 10, seen, {});  // slots 1..10 go through generations 50..54
  FinishAndRetire(restored);
  const std::vector<Registry::IndexCounters> live = registry.Counters();
  ASSERT_EQ(live.size(), 1u);
  EXPECT_GT(live[0].next_gen, 54u);
  ASSERT_NE(registry.BeginClose(s->id()), nullptr);
  EXPECT_TRUE(SameCounters(registry.Counters(), live));
  for (int cycle = 0; cycle < 3; ++cycle) {
    auto next = *registry.OpenSession(Client());
    RunOps(*next, 10, 20, seen, {});
    ASSERT_NE(registry.BeginClose(next->id()), nullptr);
  }
}

// The predecessor ended the op it hands over (a restart's cancel) and may
// have issued the next generations of its slot before it took the
// checkpoint: once the restored op retires, its slot goes on above all of
// them, never at the op's own generation plus one.
TEST(OpRestoreGenerationTest, ARestoredOpsSlotGoesOnAboveWhatThePredecessorIssuedThere) {
  Registry registry(Registry::Options{.max_sessions = 1, .max_ops_per_session = 512});
  ASSERT_TRUE(registry.RestoreCounters(std::vector{Counter(0, 1, 50)}).ok());
  auto s = *registry.RestoreSession(uint64_t{1} << OpId::kSessionBits, Client());
  // Slot 0 held generations 40 (the op handed over), then 41..48.
  Op& restored = **s->Restore(OpId::Make(0, 0, 40), OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
  FinishAndRetire(restored);
  IdSets before;
  for (uint32_t gen = 40; gen < 50; ++gen) before.ops.insert(OpId::Make(0, 0, gen).value);
  IdSets seen;
  RunOps(*s, 20, 3, seen, before);  // slot 0 among the first taken each round
  EXPECT_TRUE(seen.ops.count(OpId::Make(0, 0, 50).value));
}

// The predecessor may have issued generations up to next_gen in slots the
// successor never grows: a session whose grown slots all held restored ops
// still leaves its index at next_gen or above.
TEST(OpRestoreGenerationTest, SlotsNeverGrownCountAsTheirFirstGeneration) {
  Registry registry(Registry::Options{.max_sessions = 1, .max_ops_per_session = 512});
  ASSERT_TRUE(registry.RestoreCounters(std::vector{Counter(0, 1, 50)}).ok());
  auto s = *registry.RestoreSession(uint64_t{1} << OpId::kSessionBits, Client());
  std::vector<Op*> ops;
  for (uint32_t slot = 0; slot < Session::kSlabSlots; ++slot) {
    ops.push_back(
        *s->Restore(OpId::Make(0, slot, 40), OpKind::kNop, CancelSafety::kAlways, 0, "", 1));
  }
  for (Op* op : ops) FinishAndRetire(*op);
  ASSERT_NE(registry.BeginClose(s->id()), nullptr);
  ASSERT_EQ(registry.Counters().size(), 1u);
  EXPECT_GE(registry.Counters()[0].next_gen, 50u);
}

// After a restore, ops come and go on several threads while another walks
// the registry, snapshots what it finds and takes the counters. Run under
// TSan: the restored state must be published as any other.
TEST(OpRestoreConcurrencyTest, RegisterRetireAndWalkAfterRestore) {
  Registry registry(Registry::Options{.max_sessions = 4, .max_ops_per_session = 2048});
  ASSERT_TRUE(registry.RestoreCounters(std::vector{Counter(0, 2, 300), Counter(1, 6, 9000)}).ok());
  std::vector<std::shared_ptr<Session>> sessions;
  std::set<uint64_t> restored;
  std::vector<Op*> restored_ops;
  for (uint64_t id :
       {(uint64_t{2} << OpId::kSessionBits) | 0, (uint64_t{6} << OpId::kSessionBits) | 1}) {
    sessions.push_back(*registry.RestoreSession(id, Client()));
    for (uint32_t i = 0; i < 64; ++i) {
      Op& op =
          **sessions.back()->Restore(OpId::Make(sessions.back()->index(), (i * 37) % 2048, 100 + i),
                                     OpKind::kRead, CancelSafety::kAlways, 0, "r", 1);
      restored.insert(op.id().value);
      restored_ops.push_back(&op);
    }
  }
  sessions.push_back(*registry.OpenSession(Client()));

  constexpr int kWorkers = 3;
  constexpr int kRounds = 2000;
  std::atomic<int> running{kWorkers};
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      Session& s = *sessions[w % sessions.size()];
      std::vector<Op*> ops;
      for (int round = 0; round < kRounds; ++round) {
        for (int i = 0; i < 16; ++i) {
          auto op = s.Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
          ASSERT_TRUE(op.ok()) << op.status();
          EXPECT_EQ(restored.count((*op)->id().value), 0u);
          ops.push_back(*op);
        }
        for (Op* op : ops) FinishAndRetire(*op);
        ops.clear();
      }
      running.fetch_sub(1, std::memory_order_release);
    });
  }
  int passes = 0;
  do {
    std::set<uint64_t> seen;
    registry.Walk(OpId{}, [&](const Op& op, const OpBrief& b, const std::shared_ptr<Session>& s) {
      seen.insert(b.id.value);
      if (std::optional<OpSnapshot> snap = Registry::Snapshot(op, s->id(), b.id.generation())) {
        EXPECT_EQ(snap->id, b.id);
        EXPECT_EQ(snap->session_id, s->id());
      }
      return true;
    });
    for (uint64_t id : restored) EXPECT_EQ(seen.count(id), 1u) << "a restored op went missing";
    EXPECT_EQ(registry.Counters().size(), 3u);
    ++passes;
  } while (running.load(std::memory_order_acquire) > 0);
  for (std::thread& t : workers) t.join();
  EXPECT_GT(passes, 0);
  for (Op* op : restored_ops) FinishAndRetire(*op);
  EXPECT_EQ(registry.live_ops(), 0u);
}

}  // namespace
}  // namespace asyncd::core
