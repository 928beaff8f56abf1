// The io_uring backend's own behaviour, driven through a real Registry and
// Dispatcher: batching, cancellation of blocked reads (one and in bulk),
// deadlines, the timeout kind, cancel racing completion (every op reaches
// exactly one completion: liburing's test/cancel-race.c invariant),
// shutdown with blocked ops, ops spread over several rings (shards), path
// confinement, registered areas (fixed buffers: on every ring, from any
// thread, within RLIMIT_MEMLOCK), and the fallback when
// io_uring is unavailable (a seccomp filter, the environment switch).
// Tests that need a ring skip visibly, with the probe's reason, when the
// kernel cannot give one.

#include "src/backends/uring_backend.h"

#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "src/backends/probe.h"
#include "src/core/clock.h"
#include "src/core/dispatcher.h"
#include "src/core/registry.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::backends {
namespace {

using core::OpKind;
using core::OpRequest;
using core::OpState;

/// Records each op's outcome by cookie (the op's index in the test).
class Recorder final : public core::CompletionSink {
 public:
  explicit Recorder(size_t n) : counts_(n), states_(n), results_(n) {}
  void OnComplete(const core::Op& op) noexcept override {
    const size_t i = op.cookie;
    states_[i] = op.state();
    results_[i] = op.result.load(std::memory_order_relaxed);
    counts_[i].fetch_add(1, std::memory_order_release);  // publishes state and result
    done_.fetch_add(1, std::memory_order_release);
  }
  int done() const { return done_.load(std::memory_order_acquire); }
  int count(size_t i) const { return counts_[i].load(std::memory_order_acquire); }
  OpState state(size_t i) const { return states_[i]; }
  int64_t result(size_t i) const { return results_[i]; }

  bool WaitFor(int n, std::chrono::milliseconds limit = std::chrono::seconds(10)) const {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (done() < n) {
      if (std::chrono::steady_clock::now() > end) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return true;
  }

 private:
  std::atomic<int> done_{0};
  std::vector<std::atomic<int>> counts_;
  std::vector<OpState> states_;
  std::vector<int64_t> results_;
};

class UringBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/asyncd-uring-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_path_ = tmpl;
    root_fd_ = open(tmpl, O_PATH | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(root_fd_, 0);
    core::Registry::Options ropts;
    ropts.max_ops_per_session = 1 << 16;
    registry_ = std::make_unique<core::Registry>(ropts);
    dispatcher_ = std::make_unique<core::Dispatcher>(*registry_, root_fd_);
    // Runs every kind by failing it with -ENOSYS: stands in for the thread
    // pool so these tests do not depend on it (the dispatcher needs a last
    // backend that supports every kind).
    fallback_ = std::make_unique<mocks::FakeBackend>(
        *dispatcher_, mocks::FakeBackend::Options{.result = -ENOSYS});
    auto backend = UringBackend::Create(*dispatcher_, BackendOptions());
    if (!backend.ok()) {
      GTEST_SKIP() << "io_uring unavailable: " << backend.status().message();
    }
    backend_ = std::move(*backend);
    dispatcher_->SetBackends({backend_.get(), fallback_.get()});
    auto session = registry_->OpenSession(core::ClientInfo{.name = "test"});
    ASSERT_TRUE(session.ok());
    session_ = *session;
  }

  virtual UringOptions BackendOptions() const { return UringOptions{.entries = 256}; }

  void TearDown() override {
    if (backend_) backend_->Shutdown();
    session_.reset();
    backend_.reset();
    if (root_fd_ >= 0) close(root_fd_);
    if (!root_path_.empty()) {
      std::string cmd = "rm -rf '" + root_path_ + "'";
      [[maybe_unused]] int r = std::system(cmd.c_str());
    }
  }

  // A pipe whose read end blocks until data arrives; the write end stays
  // open so reads never see EOF. Returns the read end's handle.
  uint32_t BlockingPipeHandle() {
    int fds[2];
    EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0);
    pipe_writers_.push_back(fds[1]);
    auto h = session_->handles().Insert(fds[0]);
    EXPECT_TRUE(h.ok());
    return *h;
  }

  OpRequest ReadReq(uint32_t handle, Recorder& rec, uint64_t cookie, void* buf, uint32_t len) {
    OpRequest r;
    r.kind = OpKind::kRead;
    r.handle = handle;
    r.params.buf = buf;
    r.params.len = len;
    r.sink = &rec;
    r.cookie = cookie;
    return r;
  }

  // Submits `n` 8-byte reads of `handle` into `bufs` (cookies 0 to n-1) in
  // one batch, and expects every one accepted.
  std::vector<core::OpId> SubmitReads(uint32_t handle, Recorder& rec, size_t n,
                                      std::vector<char>& bufs) {
    bufs.assign(n * 8, 0);
    std::vector<OpRequest> reqs;
    for (size_t i = 0; i < n; ++i) reqs.push_back(ReadReq(handle, rec, i, &bufs[i * 8], 8));
    std::vector<absl::StatusOr<core::OpId>> out(n);
    dispatcher_->SubmitBatch(*session_, reqs, out);
    std::vector<core::OpId> ids;
    for (auto& id : out) {
      EXPECT_TRUE(id.ok()) << id.status();
      ids.push_back(id.value_or(core::OpId{}));
    }
    return ids;
  }

  // Submits in one batch, resubmitting what the backend refused as full
  // (back-pressure is part of the contract) until all are accepted.
  std::vector<core::OpId> SubmitAll(std::vector<OpRequest> reqs) {
    std::vector<core::OpId> ids(reqs.size());
    std::vector<size_t> todo(reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) todo[i] = i;
    while (!todo.empty()) {
      std::vector<OpRequest> batch;
      for (size_t i : todo) batch.push_back(reqs[i]);
      std::vector<absl::StatusOr<core::OpId>> out(batch.size());
      dispatcher_->SubmitBatch(*session_, batch, out);
      std::vector<size_t> again;
      for (size_t j = 0; j < todo.size(); ++j) {
        if (out[j].ok()) {
          ids[todo[j]] = *out[j];
        } else {
          EXPECT_EQ(out[j].status().code(), absl::StatusCode::kResourceExhausted) << out[j].status();
          again.push_back(todo[j]);
        }
      }
      todo.swap(again);
      if (!todo.empty()) std::this_thread::yield();
    }
    return ids;
  }

  // The body of the CancelRacingCompletion tests, one per fixture.
  void RunCancelRacingCompletion() {
    constexpr int kOps = 20000;
    Recorder rec(kOps);
    std::vector<core::OpId> ids(kOps);
    std::atomic<int> submitted{0};
    std::thread canceller([&] {
      std::mt19937 rng(42);
      int next = 0;
      while (next < kOps) {
        const int upto = submitted.load(std::memory_order_acquire);
        for (; next < upto; ++next) {
          if (rng() % 4 == 0) std::this_thread::yield();
          dispatcher_->Cancel(ids[next], core::EndReason::kClientRequest);
        }
      }
    });
    constexpr int kBatch = 50;  // divides kOps
    for (int base = 0; base < kOps; base += kBatch) {
      std::vector<OpRequest> reqs(kBatch);
      for (int i = 0; i < kBatch; ++i) {
        // A mix: NOPs finish at once, short timeouts a little later.
        reqs[i].kind = (i % 2 == 0) ? OpKind::kNop : OpKind::kTimeout;
        reqs[i].params.timeout_ns = 1000 * (i % 7);
        reqs[i].sink = &rec;
        reqs[i].cookie = base + i;
      }
      const std::vector<core::OpId> got = SubmitAll(std::move(reqs));
      std::copy(got.begin(), got.end(), ids.begin() + base);
      submitted.store(base + kBatch, std::memory_order_release);
    }
    canceller.join();
    ASSERT_TRUE(rec.WaitFor(kOps, std::chrono::seconds(30)));
    int cancelled = 0;
    for (int i = 0; i < kOps; ++i) {
      ASSERT_EQ(rec.count(i), 1) << i;
      const OpState s = rec.state(i);
      ASSERT_TRUE(s == OpState::kCompleted || s == OpState::kCancelled) << core::Name(s);
      cancelled += s == OpState::kCancelled;
    }
    RecordProperty("cancelled", cancelled);
    ExpectLiveOpsReachZero();
  }

  // Waits until the backend has `n` ops on its rings (Stats sums the shards).
  void ExpectRunning(uint64_t n) {
    for (int i = 0; i < 5000 && backend_->Stats().running != n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(backend_->Stats().running, n);
  }

  // A file in the root holding `content`, as a session handle.
  uint32_t FileHandle(const std::string& name, const std::string& content) {
    const std::string path = root_path_ + "/" + name;
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    EXPECT_EQ(write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
    auto h = session_->handles().Insert(fd);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.value_or(0);
  }

  // Reads `len` bytes at 0 of `handle` into `buf`, naming `area`; waits.
  int64_t ReadInArea(uint32_t handle, void* buf, uint32_t len, uint8_t area, Recorder& rec,
                     uint64_t cookie) {
    OpRequest r = ReadReq(handle, rec, cookie, buf, len);
    r.params.offset = 0;
    r.params.area = area;
    auto id = dispatcher_->Submit(*session_, r);
    EXPECT_TRUE(id.ok()) << id.status();
    for (int i = 0; i < 10000 && rec.count(cookie) == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    EXPECT_EQ(rec.count(cookie), 1) << "read " << cookie;
    return rec.result(cookie);
  }

  void ExpectLiveOpsReachZero() {
    for (int i = 0; i < 5000 && session_->live_ops() != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(session_->live_ops(), 0u);
  }

  ~UringBackendTest() override {
    for (int fd : pipe_writers_) close(fd);
  }

  std::string root_path_;
  int root_fd_ = -1;
  std::unique_ptr<core::Registry> registry_;
  std::unique_ptr<core::Dispatcher> dispatcher_;
  std::unique_ptr<mocks::FakeBackend> fallback_;
  std::unique_ptr<UringBackend> backend_;
  std::shared_ptr<core::Session> session_;
  std::vector<int> pipe_writers_;
};

TEST_F(UringBackendTest, RoutesConfinableKindsToTheRing) {
  EXPECT_TRUE(backend_->probe().usable);
  for (OpKind k : {OpKind::kNop, OpKind::kOpen, OpKind::kClose, OpKind::kRead, OpKind::kWrite,
                   OpKind::kFsync, OpKind::kPoll, OpKind::kTimeout, OpKind::kStatx}) {
    EXPECT_EQ(dispatcher_->RouteFor(k), core::BackendKind::kIoUring) << core::Name(k);
  }
  // No ftruncate opcode in liburing 2.3; *AT ops cannot be confined on the ring.
  for (OpKind k : {OpKind::kFtruncate, OpKind::kUnlink, OpKind::kRename, OpKind::kMkdir}) {
    EXPECT_EQ(dispatcher_->RouteFor(k), core::BackendKind::kThreadPool) << core::Name(k);
  }
  EXPECT_EQ(backend_->Stats().threads, 1u);
}

TEST_F(UringBackendTest, TenThousandNopsInBatchesCompleteExactlyOnce) {
  constexpr int kOps = 10000;
  constexpr int kBatch = 100;
  Recorder rec(kOps);
  for (int base = 0; base < kOps; base += kBatch) {
    std::vector<OpRequest> reqs(kBatch);
    for (int i = 0; i < kBatch; ++i) {
      reqs[i].kind = OpKind::kNop;
      reqs[i].sink = &rec;
      reqs[i].cookie = base + i;
    }
    SubmitAll(std::move(reqs));
  }
  ASSERT_TRUE(rec.WaitFor(kOps));
  for (int i = 0; i < kOps; ++i) {
    ASSERT_EQ(rec.count(i), 1) << i;
    ASSERT_EQ(rec.state(i), OpState::kCompleted);
    ASSERT_EQ(rec.result(i), 0);
  }
  ExpectLiveOpsReachZero();
  const core::BackendStats stats = backend_->Stats();
  EXPECT_EQ(stats.queued + stats.running, 0u);
}

TEST_F(UringBackendTest, FileOpsRunConfinedBeneathTheRoot) {
  Recorder rec(16);
  auto run = [&](OpRequest r, size_t cookie) {
    r.sink = &rec;
    r.cookie = cookie;
    const int before = rec.done();
    auto id = dispatcher_->Submit(*session_, r);
    EXPECT_TRUE(id.ok()) << id.status();
    EXPECT_TRUE(rec.WaitFor(before + 1));
    return rec.result(cookie);
  };
  // A leading '/' names the root (RESOLVE_IN_ROOT).
  OpRequest open_req;
  open_req.kind = OpKind::kOpen;
  open_req.params.path = "/f.txt";
  open_req.params.flags = O_RDWR | O_CREAT;
  open_req.params.mode = 0600;
  const int64_t h = run(open_req, 0);
  ASSERT_GT(h, 0);
  ASSERT_EQ(access((root_path_ + "/f.txt").c_str(), F_OK), 0);

  char data[] = "hello ring";
  OpRequest w;
  w.kind = OpKind::kWrite;
  w.handle = static_cast<uint32_t>(h);
  w.params.buf = data;
  w.params.len = sizeof(data);
  w.params.offset = 0;
  EXPECT_EQ(run(w, 1), static_cast<int64_t>(sizeof(data)));

  char back[32] = {};
  OpRequest r = ReadReq(static_cast<uint32_t>(h), rec, 0, back, sizeof(back));
  r.params.offset = 6;
  EXPECT_EQ(run(r, 2), static_cast<int64_t>(sizeof(data) - 6));
  EXPECT_STREQ(back, "ring");

  struct statx stx = {};
  OpRequest st;
  st.kind = OpKind::kStatx;
  st.handle = static_cast<uint32_t>(h);
  st.params.buf = &stx;
  EXPECT_EQ(run(st, 3), 0);
  EXPECT_EQ(stx.stx_size, sizeof(data));

  struct statx stx2 = {};
  OpRequest sp;
  sp.kind = OpKind::kStatx;
  sp.params.path = "f.txt";
  sp.params.buf = &stx2;
  EXPECT_EQ(run(sp, 4), 0);
  EXPECT_EQ(stx2.stx_size, sizeof(data));
  EXPECT_EQ(stx2.stx_ino, stx.stx_ino);

  OpRequest fs;
  fs.kind = OpKind::kFsync;
  fs.handle = static_cast<uint32_t>(h);
  fs.params.flags = 1;
  EXPECT_EQ(run(fs, 5), 0);

  // Escapes stay inside the root: "..", and a symlink to an absolute path.
  ASSERT_EQ(symlink("/etc/passwd", (root_path_ + "/evil").c_str()), 0);
  OpRequest esc = open_req;
  esc.params.path = "../../../../etc/passwd";
  esc.params.flags = O_RDONLY;
  EXPECT_EQ(run(esc, 6), -ENOENT);
  esc.params.path = "evil";
  EXPECT_EQ(run(esc, 7), -ENOENT);
  struct statx stx3 = {};
  sp.params.path = "evil";
  sp.params.buf = &stx3;
  EXPECT_EQ(run(sp, 8), -ENOENT);
  sp.params.flags = AT_SYMLINK_NOFOLLOW;  // the link itself is inside the root
  EXPECT_EQ(run(sp, 9), 0);
  EXPECT_TRUE(S_ISLNK(stx3.stx_mode));

  OpRequest cl;
  cl.kind = OpKind::kClose;
  cl.handle = static_cast<uint32_t>(h);
  EXPECT_EQ(run(cl, 10), 0);
  ExpectLiveOpsReachZero();
}

TEST_F(UringBackendTest, CancelOfBlockedFifoReadEndsCancelled) {
  const uint32_t h = BlockingPipeHandle();
  Recorder rec(1);
  char buf[16];
  auto id = dispatcher_->Submit(*session_, ReadReq(h, rec, 0, buf, sizeof(buf)));
  ASSERT_TRUE(id.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(rec.done(), 0);  // blocked
  EXPECT_EQ(backend_->Stats().running, 1u);
  EXPECT_EQ(dispatcher_->Cancel(*id, core::EndReason::kClientRequest),
            core::CancelResult::kCancelled);
  ASSERT_TRUE(rec.WaitFor(1));
  EXPECT_EQ(rec.state(0), OpState::kCancelled);
  EXPECT_EQ(rec.count(0), 1);
  ExpectLiveOpsReachZero();
}

TEST_F(UringBackendTest, BulkCancelOfAThousandBlockedFifoReads) {
  constexpr int kOps = 1000;
  const uint32_t h = BlockingPipeHandle();
  Recorder rec(kOps);
  std::vector<char> bufs;
  SubmitReads(h, rec, kOps, bufs);
  for (int i = 0; i < 2000 && backend_->Stats().running < kOps; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(backend_->Stats().running, static_cast<uint64_t>(kOps));
  EXPECT_EQ(rec.done(), 0);
  auto counts = dispatcher_->CloseSession(session_->id(), core::EndReason::kSessionClosed);
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->cancelled, static_cast<uint32_t>(kOps));
  ASSERT_TRUE(rec.WaitFor(kOps));
  for (int i = 0; i < kOps; ++i) {
    ASSERT_EQ(rec.count(i), 1);
    ASSERT_EQ(rec.state(i), OpState::kCancelled) << i;
  }
  ExpectLiveOpsReachZero();
}

// The inline attempt honours a deadline that has already passed: the read
// does not run (the bytes stay in the pipe) and ends timed out.
TEST_F(UringBackendTest, RunOrSubmitDoesNotRunAReadWhoseDeadlinePassed) {
  const uint32_t h = BlockingPipeHandle();
  ASSERT_EQ(write(pipe_writers_.back(), "abc", 3), 3);
  Recorder rec(1);
  char buf[16];
  OpRequest r = ReadReq(h, rec, 0, buf, sizeof(buf));
  r.params.deadline_ns = core::MonoNanos() - 1;
  ASSERT_TRUE(dispatcher_->RunOrSubmit(*session_, r).ok());
  ASSERT_TRUE(rec.WaitFor(1));
  EXPECT_EQ(rec.state(0), OpState::kTimedOut);
  int queued = -1;
  ASSERT_EQ(ioctl(pipe_writers_.back(), FIONREAD, &queued), 0);
  EXPECT_EQ(queued, 3);
  ExpectLiveOpsReachZero();
}

// A full backend refuses RunOrSubmit as it refuses Submit, having run
// nothing; with room again, the NOP runs inline.
TEST_F(UringBackendTest, RunOrSubmitIsRefusedWhenTheBackendIsFull) {
  const uint64_t capacity = backend_->Stats().capacity;
  const uint32_t h = BlockingPipeHandle();
  Recorder rec(capacity + 2);
  std::vector<char> bufs;
  const std::vector<core::OpId> ids = SubmitReads(h, rec, capacity, bufs);
  OpRequest nop;
  nop.kind = OpKind::kNop;
  nop.sink = &rec;
  nop.cookie = capacity;
  auto refused = dispatcher_->RunOrSubmit(*session_, nop);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_EQ(rec.count(capacity), 0);
  EXPECT_EQ(session_->live_ops(), capacity);
  ASSERT_TRUE(dispatcher_->Cancel(ids[0], core::EndReason::kClientRequest) ==
              core::CancelResult::kCancelled);
  ASSERT_TRUE(rec.WaitFor(1));
  nop.cookie = capacity + 1;
  for (int i = 0; i < 2000 && backend_->Stats().queued + backend_->Stats().running >= capacity;
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(dispatcher_->RunOrSubmit(*session_, nop).ok());
  EXPECT_EQ(rec.count(capacity + 1), 1) << "not run inline";
  EXPECT_EQ(rec.state(capacity + 1), OpState::kCompleted);
  ASSERT_TRUE(dispatcher_->CloseSession(session_->id(), core::EndReason::kSessionClosed).ok());
  ASSERT_TRUE(rec.WaitFor(static_cast<int>(capacity + 1)));
  ExpectLiveOpsReachZero();
}

TEST_F(UringBackendTest, DeadlineOnBlockedFifoReadEndsTimedOut) {
  const uint32_t h = BlockingPipeHandle();
  Recorder rec(1);
  char buf[16];
  OpRequest r = ReadReq(h, rec, 0, buf, sizeof(buf));
  const int64_t start = core::MonoNanos();
  r.params.deadline_ns = start + 30'000'000;
  ASSERT_TRUE(dispatcher_->Submit(*session_, r).ok());
  ASSERT_TRUE(rec.WaitFor(1));
  EXPECT_GE(core::MonoNanos() - start, 30'000'000);
  EXPECT_EQ(rec.state(0), OpState::kTimedOut);
  ExpectLiveOpsReachZero();
}

TEST_F(UringBackendTest, ExpiredDeadlineStopsAWriteBeforeItStarts) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  auto h = session_->handles().Insert(fds[1]);
  ASSERT_TRUE(h.ok());
  Recorder rec(1);
  char data[4] = {'x', 'y', 'z', 0};
  OpRequest w;
  w.kind = OpKind::kWrite;
  w.handle = *h;
  w.params.buf = data;
  w.params.len = 4;
  w.params.deadline_ns = core::MonoNanos() - 1;
  w.sink = &rec;
  ASSERT_TRUE(dispatcher_->Submit(*session_, w).ok());
  ASSERT_TRUE(rec.WaitFor(1));
  EXPECT_EQ(rec.state(0), OpState::kTimedOut);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  char b[4];
  EXPECT_EQ(read(fds[0], b, sizeof(b)), -1);  // nothing was written
  close(fds[0]);
}

TEST_F(UringBackendTest, TimeoutKindElapsesAsSuccess) {
  Recorder rec(2);
  OpRequest t;
  t.kind = OpKind::kTimeout;
  t.params.timeout_ns = 20'000'000;
  t.sink = &rec;
  const int64_t start = core::MonoNanos();
  ASSERT_TRUE(dispatcher_->Submit(*session_, t).ok());
  ASSERT_TRUE(rec.WaitFor(1));
  EXPECT_GE(core::MonoNanos() - start, 20'000'000);
  EXPECT_EQ(rec.state(0), OpState::kCompleted);
  EXPECT_EQ(rec.result(0), 0);
  // A deadline shorter than the timeout ends it timed out.
  t.params.timeout_ns = 10'000'000'000;
  t.params.deadline_ns = core::MonoNanos() + 10'000'000;
  t.cookie = 1;
  ASSERT_TRUE(dispatcher_->Submit(*session_, t).ok());
  ASSERT_TRUE(rec.WaitFor(2));
  EXPECT_EQ(rec.state(1), OpState::kTimedOut);
}

TEST_F(UringBackendTest, PollReportsReadiness) {
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  auto h = session_->handles().Insert(fds[0]);
  ASSERT_TRUE(h.ok());
  Recorder rec(1);
  OpRequest p;
  p.kind = OpKind::kPoll;
  p.handle = *h;
  p.params.flags = POLLIN;
  p.sink = &rec;
  ASSERT_TRUE(dispatcher_->Submit(*session_, p).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(rec.done(), 0);
  ASSERT_EQ(write(fds[1], "x", 1), 1);
  ASSERT_TRUE(rec.WaitFor(1));
  EXPECT_EQ(rec.state(0), OpState::kCompleted);
  EXPECT_TRUE(rec.result(0) & POLLIN);
  close(fds[1]);
}

// Cancels race short timeouts: each op must end exactly once, as completed
// (it won) or cancelled (the cancel won), never both, never neither.
TEST_F(UringBackendTest, CancelRacingCompletionEndsEachOpExactlyOnce) {
  RunCancelRacingCompletion();
}

TEST_F(UringBackendTest, ShutdownEndsBlockedAndQueuedOps) {
  constexpr int kOps = 300;
  const uint32_t h = BlockingPipeHandle();
  Recorder rec(kOps + 1);
  std::vector<char> bufs;
  SubmitReads(h, rec, kOps, bufs);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  backend_->Shutdown();
  EXPECT_EQ(rec.done(), kOps);  // Shutdown returns after every completion
  for (int i = 0; i < kOps; ++i) {
    ASSERT_EQ(rec.count(i), 1);
    ASSERT_EQ(rec.state(i), OpState::kCancelled);
  }
  backend_->Shutdown();  // idempotent
  OpRequest nop;
  nop.kind = OpKind::kNop;
  nop.sink = &rec;
  nop.cookie = kOps;
  auto refused = dispatcher_->Submit(*session_, nop);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  ExpectLiveOpsReachZero();
}

// Shared memory backed by a memfd, as a local ring's buffer area is.
struct SharedMemory {
  explicit SharedMemory(size_t n) : bytes(n) {
    const int fd = memfd_create("uring-area", MFD_CLOEXEC);
    if (fd >= 0 && ftruncate(fd, static_cast<off_t>(n)) == 0) {
      void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      base = p == MAP_FAILED ? nullptr : static_cast<char*>(p);
    }
    if (fd >= 0) close(fd);
  }
  ~SharedMemory() {
    if (base != nullptr) munmap(base, bytes);
  }
  char* base = nullptr;
  size_t bytes;
};

// Registration runs on the ring thread (a SINGLE_ISSUER ring refuses
// io_uring_register from any other: EEXIST). Threads registering and
// unregistering their own areas while their reads run each get a number,
// see their reads go as fixed ones with the right data, and free it.
TEST_F(UringBackendTest, AreasComeAndGoFromManyThreadsWhileReadsRun) {
  constexpr int kThreads = 4;
  constexpr int kCycles = 100;
  constexpr size_t kPage = 4096;
  std::string content(kPage, '\0');
  for (size_t i = 0; i < kPage; ++i) content[i] = static_cast<char>(i * 7 + 1);
  const uint32_t h = FileHandle("shared", content);
  SharedMemory mem(kThreads * kPage);
  ASSERT_NE(mem.base, nullptr);
  Recorder rec(kThreads * kCycles);
  const uint64_t fixed_before = backend_->fixed_ops();
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      char* page = mem.base + t * kPage;
      for (int i = 0; i < kCycles; ++i) {
        const uint8_t area = dispatcher_->RegisterArea(page, kPage);
        std::memset(page, 0, kPage);
        const uint64_t cookie = static_cast<uint64_t>(t * kCycles + i);
        if (area == 0 || ReadInArea(h, page, kPage, area, rec, cookie) != int64_t{kPage} ||
            std::memcmp(page, content.data(), kPage) != 0) {
          failures.fetch_add(1);
        }
        dispatcher_->UnregisterArea(area);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(backend_->fixed_ops() - fixed_before, uint64_t{kThreads * kCycles});
  ExpectLiveOpsReachZero();
}

// A sink runs on the ring thread: registering from there is done in place,
// not handed to the thread that would wait for it.
class RegisteringSink final : public core::CompletionSink {
 public:
  RegisteringSink(UringBackend& backend, void* base, size_t bytes)
      : backend_(backend), base_(base), bytes_(bytes) {}
  void OnComplete(const core::Op&) noexcept override {
    area_.store(backend_.RegisterArea(base_, bytes_), std::memory_order_relaxed);
    done_.store(true, std::memory_order_release);
  }
  bool done() const { return done_.load(std::memory_order_acquire); }
  uint8_t area() const { return area_.load(std::memory_order_relaxed); }

 private:
  UringBackend& backend_;
  void* base_;
  size_t bytes_;
  std::atomic<uint8_t> area_{0};
  std::atomic<bool> done_{false};
};

TEST_F(UringBackendTest, ASinkOnTheRingThreadCanRegisterAnArea) {
  SharedMemory mem(8192);
  ASSERT_NE(mem.base, nullptr);
  RegisteringSink sink(*backend_, mem.base, mem.bytes);
  OpRequest nop;
  nop.kind = OpKind::kNop;
  nop.sink = &sink;
  ASSERT_TRUE(dispatcher_->Submit(*session_, nop).ok());
  for (int i = 0; i < 10000 && !sink.done(); ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  ASSERT_TRUE(sink.done()) << "the sink never returned";
  ASSERT_NE(sink.area(), 0);
  const std::string content = "registered from the ring thread";
  const uint32_t h = FileHandle("f", content);
  Recorder rec(1);
  const uint64_t fixed_before = backend_->fixed_ops();
  EXPECT_EQ(ReadInArea(h, mem.base + 10, 100, sink.area(), rec, 0),
            static_cast<int64_t>(content.size()));
  EXPECT_EQ(std::string(mem.base + 10, content.size()), content);
  EXPECT_EQ(backend_->fixed_ops() - fixed_before, 1u);
  dispatcher_->UnregisterArea(sink.area());
  ExpectLiveOpsReachZero();
}

// Once shut down, nothing registers, and unregistering returns at once.
TEST_F(UringBackendTest, NoAreaAfterShutdown) {
  SharedMemory mem(4096);
  ASSERT_NE(mem.base, nullptr);
  const uint8_t area = dispatcher_->RegisterArea(mem.base, mem.bytes);
  ASSERT_NE(area, 0);
  backend_->Shutdown();
  EXPECT_EQ(dispatcher_->RegisterArea(mem.base, mem.bytes), 0);
  dispatcher_->UnregisterArea(area);
  EXPECT_EQ(backend_->RegisterArea(nullptr, 4096), 0);
}

// A small shard_ops spreads a few hundred blocked ops over several rings:
// what holds 100,000 ops in production, at a test's scale. Each ring's
// completions must be heard, and each cancel must reach the op's own ring.
class ShardedUringBackendTest : public UringBackendTest {
 protected:
  static constexpr uint32_t kShardOps = 64;
  UringOptions BackendOptions() const override {
    return UringOptions{.entries = 64, .max_ops = 2048, .shard_ops = kShardOps};
  }
};

// Reads spread over 8 shards; a random third is cancelled: each of those
// ends cancelled once, the rest keep waiting, and data written reaches as
// many of them as it can fill; closing the session ends the others.
TEST_F(ShardedUringBackendTest, CancelOfASubsetEndsOnlyThoseOnEveryShard) {
  constexpr int kOps = 8 * kShardOps;
  const uint32_t h = BlockingPipeHandle();
  Recorder rec(kOps);
  std::vector<char> bufs;
  const std::vector<core::OpId> ids = SubmitReads(h, rec, kOps, bufs);
  ExpectRunning(kOps);
  EXPECT_EQ(backend_->Stats().threads, 1u);
  std::mt19937 rng(7);
  std::vector<bool> cancelled(kOps);
  int n_cancelled = 0;
  for (int i = 0; i < kOps; ++i) {
    if (rng() % 3 != 0) continue;
    cancelled[i] = true;
    ++n_cancelled;
    EXPECT_EQ(dispatcher_->Cancel(ids[i], core::EndReason::kClientRequest),
              core::CancelResult::kCancelled);
  }
  ASSERT_TRUE(rec.WaitFor(n_cancelled));
  ExpectRunning(kOps - n_cancelled);
  for (int i = 0; i < kOps; ++i) {
    ASSERT_EQ(rec.count(i), cancelled[i] ? 1 : 0) << i;
    if (cancelled[i]) ASSERT_EQ(rec.state(i), OpState::kCancelled) << i;
  }
  // 8 bytes per read, one write under PIPE_BUF: exactly kFed reads get data.
  constexpr int kFed = 100;
  const std::string data(8 * kFed, 'x');
  ASSERT_EQ(write(pipe_writers_.back(), data.data(), data.size()),
            static_cast<ssize_t>(data.size()));
  ASSERT_TRUE(rec.WaitFor(n_cancelled + kFed));
  ExpectRunning(kOps - n_cancelled - kFed);
  auto counts = dispatcher_->CloseSession(session_->id(), core::EndReason::kSessionClosed);
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->cancelled, static_cast<uint32_t>(kOps - n_cancelled - kFed));
  ASSERT_TRUE(rec.WaitFor(kOps));
  int fed = 0;
  for (int i = 0; i < kOps; ++i) {
    ASSERT_EQ(rec.count(i), 1) << i;
    if (rec.state(i) == OpState::kCompleted) {
      ASSERT_FALSE(cancelled[i]) << i;
      ASSERT_EQ(rec.result(i), 8) << i;
      ++fed;
    } else {
      ASSERT_EQ(rec.state(i), OpState::kCancelled) << i;
    }
  }
  EXPECT_EQ(fed, kFed);
  ExpectLiveOpsReachZero();
  EXPECT_EQ(backend_->Stats().running, 0u);
}

// An op on a later shard finishes; a new op takes both its registry slot and
// its ring entry; an Interrupt of the finished op's generation, arriving
// late, leaves the new op running.
TEST_F(ShardedUringBackendTest, LateInterruptLeavesTheOpThatReusedTheEntry) {
  constexpr int kFill = 3 * kShardOps + 8;  // shards 0-2 full, shard 3 in use
  Recorder rec(kFill + 2);
  std::vector<char> bufs;
  SubmitReads(BlockingPipeHandle(), rec, kFill, bufs);
  ExpectRunning(kFill);
  const uint32_t h = BlockingPipeHandle();
  const int writer = pipe_writers_.back();
  char buf[2][8];
  auto first = dispatcher_->Submit(*session_, ReadReq(h, rec, kFill, buf[0], 8));
  ASSERT_TRUE(first.ok());
  ExpectRunning(kFill + 1);
  core::Registry::Found found = registry_->Find(*first);
  ASSERT_TRUE(found);
  core::Op& op = *found.op;
  const uint32_t old_gen = op.generation();
  ASSERT_EQ(write(writer, "12345678", 8), 8);
  ASSERT_TRUE(rec.WaitFor(1));
  EXPECT_EQ(rec.result(kFill), 8);
  ExpectRunning(kFill);
  auto second = dispatcher_->Submit(*session_, ReadReq(h, rec, kFill + 1, buf[1], 8));
  ASSERT_TRUE(second.ok());
  ExpectRunning(kFill + 1);
  ASSERT_EQ(registry_->Find(*second).op, &op) << "the registry did not reuse the slot";
  ASSERT_NE(op.generation(), old_gen);
  backend_->Interrupt(op, old_gen);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(rec.count(kFill + 1), 0);
  ASSERT_EQ(write(writer, "abcdefgh", 8), 8);
  ASSERT_TRUE(rec.WaitFor(2));
  EXPECT_EQ(rec.state(kFill + 1), OpState::kCompleted);
  EXPECT_EQ(rec.result(kFill + 1), 8);
  EXPECT_EQ(std::string(buf[1], 8), "abcdefgh");
  ASSERT_TRUE(dispatcher_->CloseSession(session_->id(), core::EndReason::kSessionClosed).ok());
  ASSERT_TRUE(rec.WaitFor(kFill + 2));
  ExpectLiveOpsReachZero();
}

// A linked timeout on a later shard fires there; the thread hears of it
// through the shards' eventfd, with the first ring idle.
TEST_F(ShardedUringBackendTest, DeadlineOnALaterShardEndsTimedOut) {
  constexpr int kFill = 2 * kShardOps;
  Recorder rec(kFill + 1);
  std::vector<char> bufs;
  SubmitReads(BlockingPipeHandle(), rec, kFill, bufs);
  ExpectRunning(kFill);
  char buf[8];
  OpRequest r = ReadReq(BlockingPipeHandle(), rec, kFill, buf, sizeof(buf));
  r.params.deadline_ns = core::MonoNanos() + 30'000'000;
  ASSERT_TRUE(dispatcher_->Submit(*session_, r).ok());
  ASSERT_TRUE(rec.WaitFor(1));
  EXPECT_EQ(rec.state(kFill), OpState::kTimedOut);
  EXPECT_EQ(rec.count(kFill), 1);
  ASSERT_TRUE(dispatcher_->CloseSession(session_->id(), core::EndReason::kSessionClosed).ok());
  ASSERT_TRUE(rec.WaitFor(kFill + 1));
  ExpectLiveOpsReachZero();
}

// The kernel runs a bounded batch of a ring's deferred completions per
// entry. Data for one reader wakes all 60 readers of a pipe on a further
// shard; a read of another pipe, woken just after, must not stay behind the
// batches of readers that find nothing and post no completion.
TEST_F(ShardedUringBackendTest, CompletionBehindManyEmptyWakeupsOnALaterShardArrives) {
  constexpr int kCrowd = 60;
  Recorder rec(kShardOps + kCrowd + 1);
  std::vector<char> fill_bufs;
  SubmitReads(BlockingPipeHandle(), rec, kShardOps, fill_bufs);  // shard 0
  ExpectRunning(kShardOps);
  const uint32_t crowd = BlockingPipeHandle();
  const int crowd_writer = pipe_writers_.back();
  const uint32_t lone = BlockingPipeHandle();
  const int lone_writer = pipe_writers_.back();
  std::vector<char> bufs((kCrowd + 1) * 8);
  std::vector<OpRequest> reqs;
  for (int i = 0; i < kCrowd; ++i) {
    reqs.push_back(ReadReq(crowd, rec, kShardOps + i, &bufs[i * 8], 8));
  }
  reqs.push_back(ReadReq(lone, rec, kShardOps + kCrowd, &bufs[kCrowd * 8], 8));
  SubmitAll(std::move(reqs));
  ExpectRunning(kShardOps + kCrowd + 1);
  ASSERT_EQ(write(crowd_writer, "crowd..!", 8), 8);
  ASSERT_EQ(write(lone_writer, "lone...!", 8), 8);
  ASSERT_TRUE(rec.WaitFor(2));
  EXPECT_EQ(rec.count(kShardOps + kCrowd), 1);
  EXPECT_EQ(rec.result(kShardOps + kCrowd), 8);
  ASSERT_TRUE(dispatcher_->CloseSession(session_->id(), core::EndReason::kSessionClosed).ok());
  ASSERT_TRUE(rec.WaitFor(kShardOps + kCrowd + 1));
  ExpectLiveOpsReachZero();
}

// Every ring has its own buffer table: an area registered while only the
// first ring exists is put in a further one as it is made, and one
// registered later goes into both; reads there go as fixed ones.
TEST_F(ShardedUringBackendTest, AreasReachRingsMadeLater) {
  SharedMemory mem(2 * 4096);
  ASSERT_NE(mem.base, nullptr);
  const uint8_t early = dispatcher_->RegisterArea(mem.base, 4096);
  ASSERT_NE(early, 0);
  const std::string content = "read on a further ring";
  const uint32_t h = FileHandle("f", content);
  Recorder rec(kShardOps + 2);
  std::vector<char> bufs;
  SubmitReads(BlockingPipeHandle(), rec, kShardOps, bufs);  // the first ring is full
  ExpectRunning(kShardOps);
  const uint64_t fixed_before = backend_->fixed_ops();
  EXPECT_EQ(ReadInArea(h, mem.base, 4096, early, rec, kShardOps),
            static_cast<int64_t>(content.size()));
  EXPECT_EQ(std::string(mem.base, content.size()), content);
  const uint8_t late = dispatcher_->RegisterArea(mem.base + 4096, 4096);
  ASSERT_NE(late, 0);
  EXPECT_EQ(ReadInArea(h, mem.base + 4096, 4096, late, rec, kShardOps + 1),
            static_cast<int64_t>(content.size()));
  EXPECT_EQ(std::string(mem.base + 4096, content.size()), content);
  EXPECT_EQ(backend_->fixed_ops() - fixed_before, 2u);
  ASSERT_TRUE(dispatcher_->CloseSession(session_->id(), core::EndReason::kSessionClosed).ok());
  ASSERT_TRUE(rec.WaitFor(kShardOps + 2));
  dispatcher_->UnregisterArea(early);
  dispatcher_->UnregisterArea(late);
  ExpectLiveOpsReachZero();
}

// The same race with the ops spread over shards whenever the first fills.
TEST_F(ShardedUringBackendTest, CancelRacingCompletionEndsEachOpExactlyOnce) {
  RunCancelRacingCompletion();
}

// Shutdown drains every shard: it returns after each op's one completion.
TEST_F(ShardedUringBackendTest, ShutdownEndsOpsOnEveryShard) {
  constexpr int kOps = 5 * kShardOps + 3;
  Recorder rec(kOps);
  std::vector<char> bufs;
  SubmitReads(BlockingPipeHandle(), rec, kOps, bufs);
  ExpectRunning(kOps);
  backend_->Shutdown();
  EXPECT_EQ(rec.done(), kOps);
  for (int i = 0; i < kOps; ++i) {
    ASSERT_EQ(rec.count(i), 1) << i;
    ASSERT_EQ(rec.state(i), OpState::kCancelled) << i;
  }
  ExpectLiveOpsReachZero();
}

// What the RLIMIT_MEMLOCK child reports through its exit status.
enum MemlockResult {
  kMemlockOk = 0,
  kNoCapDrop = 20,
  kNoLimit,
  kNoBackend,
  kRegisteredOverLimit,
  kReadFailed,
  kNotRegisteredUnderLimit,
  kFixedReadFailed,
};

// Registered buffers are pinned and charged to RLIMIT_MEMLOCK unless the
// daemon has CAP_IPC_LOCK. An area over the limit is not registered (0),
// and reads into it, naming that 0 or a number nobody holds, still work;
// raised to the hard limit, the same area registers. In a child: it drops
// CAP_IPC_LOCK and lowers its own limit.
TEST(UringAreaLimitTest, AreaOverRlimitMemlockIsNotRegisteredAndReadsStillWork) {
  constexpr size_t kAreaBytes = 1 << 20;
  rlimit hard{};
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &hard), 0);
  if (hard.rlim_max != RLIM_INFINITY && hard.rlim_max < 2 * kAreaBytes) {
    GTEST_SKIP() << "RLIMIT_MEMLOCK's hard limit (" << hard.rlim_max
                 << " bytes) leaves no room to register the area once raised";
  }
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Rings created without CAP_IPC_LOCK charge what they pin to the limit.
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3] = {};
    if (syscall(SYS_capget, &header, caps) != 0) _exit(kNoCapDrop);
    caps[CAP_TO_INDEX(CAP_IPC_LOCK)].effective &= ~CAP_TO_MASK(CAP_IPC_LOCK);
    if (syscall(SYS_capset, &header, caps) != 0) _exit(kNoCapDrop);
    rlimit low = hard;
    low.rlim_cur = 64 << 10;
    if (setrlimit(RLIMIT_MEMLOCK, &low) != 0) _exit(kNoLimit);

    char tmpl[] = "/tmp/asyncd-memlock-XXXXXX";
    const int file = mkstemp(tmpl);
    if (file < 0) _exit(kReadFailed);
    unlink(tmpl);
    const std::string content = "still read without a registered area";
    if (write(file, content.data(), content.size()) != static_cast<ssize_t>(content.size())) {
      _exit(kReadFailed);
    }
    core::Registry registry;
    core::Dispatcher dispatcher(registry, AT_FDCWD);
    mocks::FakeBackend fallback(dispatcher, mocks::FakeBackend::Options{.result = -ENOSYS});
    auto backend = UringBackend::Create(dispatcher, UringOptions{.entries = 64});
    if (!backend.ok()) _exit(kNoBackend);
    dispatcher.SetBackends({backend->get(), &fallback});
    auto session = registry.OpenSession(core::ClientInfo{.name = "memlock"});
    if (!session.ok()) _exit(kNoBackend);
    const uint32_t h = *(*session)->handles().Insert(file);
    SharedMemory mem(kAreaBytes);
    Recorder rec(3);
    auto read = [&](uint8_t area, uint64_t cookie) {
      std::memset(mem.base, 0, content.size());
      OpRequest r;
      r.kind = OpKind::kRead;
      r.handle = h;
      r.params.buf = mem.base;
      r.params.len = 4096;
      r.params.offset = 0;
      r.params.area = area;
      r.sink = &rec;
      r.cookie = cookie;
      return dispatcher.Submit(**session, r).ok() && rec.WaitFor(static_cast<int>(cookie) + 1) &&
             rec.result(cookie) == static_cast<int64_t>(content.size()) &&
             std::memcmp(mem.base, content.data(), content.size()) == 0;
    };

    const uint8_t over = dispatcher.RegisterArea(mem.base, kAreaBytes);
    if (over != 0) _exit(kRegisteredOverLimit);
    if (!read(0, 0) || !read(1, 1)) _exit(kReadFailed);
    if ((*backend)->fixed_ops() != 0) _exit(kReadFailed);

    if (setrlimit(RLIMIT_MEMLOCK, &hard) != 0) _exit(kNoLimit);
    const uint8_t under = dispatcher.RegisterArea(mem.base, kAreaBytes);
    if (under == 0) _exit(kNotRegisteredUnderLimit);
    if (!read(under, 2) || (*backend)->fixed_ops() != 1) _exit(kFixedReadFailed);
    dispatcher.UnregisterArea(under);
    (*backend)->Shutdown();
    _exit(kMemlockOk);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died: " << status;
  if (WEXITSTATUS(status) == kNoBackend) GTEST_SKIP() << "io_uring unavailable in the child";
  EXPECT_EQ(WEXITSTATUS(status), kMemlockOk)
      << "see MemlockResult (" << kNoCapDrop << ": no capset, " << kRegisteredOverLimit
      << ": registered over the limit)";
}

TEST(UringProbeTest, EnvironmentVariableDisablesIoUring) {
  setenv("ASYNCD_DISABLE_IO_URING", "1", 1);
  const UringProbe probe = ProbeUring();
  unsetenv("ASYNCD_DISABLE_IO_URING");
  EXPECT_FALSE(probe.usable);
  EXPECT_EQ(probe.reason, "disabled by ASYNCD_DISABLE_IO_URING");
  for (bool s : probe.supported) EXPECT_FALSE(s);
}

// What the child reports through its exit status.
enum ChildResult { kOk = 0, kProbeUsable = 10, kWrongReason, kCreateNotUnavailable, kNoFilter };

int InstallIoUringSetupEperm() {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {static_cast<unsigned short>(std::size(filter)), filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

class NullCompleter final : public core::OpCompleter {
 public:
  void Complete(core::Op&, int64_t) noexcept override {}
  core::CancelResult Expire(core::Op&, uint32_t, int64_t) noexcept override {
    return core::CancelResult::kNotFound;
  }
};

TEST(UringProbeTest, SeccompEpermMakesIoUringUnavailable) {
#if !defined(__x86_64__)
  GTEST_SKIP() << "the seccomp filter in this test is written for x86-64";
#endif
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (InstallIoUringSetupEperm() != 0) _exit(kNoFilter);
    const UringProbe probe = ProbeUring();
    if (probe.usable) _exit(kProbeUsable);
    if (probe.reason.find("EPERM") == std::string::npos) _exit(kWrongReason);
    NullCompleter completer;
    auto backend = UringBackend::Create(completer, {});
    if (backend.ok() || backend.status().code() != absl::StatusCode::kUnavailable ||
        backend.status().message().find("EPERM") == std::string_view::npos) {
      _exit(kCreateNotUnavailable);
    }
    _exit(kOk);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), kOk);
}

}  // namespace
}  // namespace asyncd::backends
