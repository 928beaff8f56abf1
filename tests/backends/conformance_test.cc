// Backend conformance: one suite that every backend configuration must pass.
//
// Each test states one behaviour of the observable contract (DESIGN.md) and
// runs against every configuration in kConfigs:
//   IoUring                      the io_uring backend, with the thread pool as
//                                the fallback for the kinds the ring lacks;
//   ThreadPool                   the thread pool alone;
//   IoUringBuildForcedThreadPool the IoUring construction path with io_uring
//                                forced off (ASYNCD_DISABLE_IO_URING=1), so
//                                every kind lands on the thread pool.
// When io_uring cannot be used here, IoUring skips with the probe's reason.
// Each configuration runs twice: with paths confined by openat2, and by the
// userspace resolver that replaces it where a seccomp filter refuses it
// (on io_uring the resolver serves the kinds the ring leaves to the pool).
//
// Nothing asserts on timing: every wait is for a condition, with a generous
// timeout that fails the test instead of hanging it.

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "src/backends/probe.h"
#include "src/backends/thread_pool_backend.h"
#include "src/backends/uring_backend.h"
#include "src/core/clock.h"
#include "src/core/dispatcher.h"
#include "src/core/op.h"
#include "src/core/registry.h"

namespace asyncd {
namespace {

using core::BackendKind;
using core::CancelResult;
using core::EndReason;
using core::OpId;
using core::OpKind;
using core::OpRequest;
using core::OpState;

constexpr auto kWaitTimeout = std::chrono::seconds(10);
constexpr uint32_t kPoolThreads = 4;
constexpr uint32_t kPoolQueue = 4096;
// Most pool ops one session runs at once: one worker is always left to others.
constexpr uint32_t kPoolSessionRunning = kPoolThreads - 1;
constexpr uint32_t kPoolSessionQueue = 2048;

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kRaceIterations = 150;
#else
constexpr int kRaceIterations = 400;
#endif

enum class Config { kIoUring, kThreadPool, kIoUringBuildForcedThreadPool };

struct Setup {
  Config config;
  backends::PathResolver resolver;
};

std::string SetupName(const testing::TestParamInfo<Setup>& info) {
  std::string name;
  switch (info.param.config) {
    case Config::kIoUring:
      name = "IoUring";
      break;
    case Config::kThreadPool:
      name = "ThreadPool";
      break;
    case Config::kIoUringBuildForcedThreadPool:
      name = "IoUringBuildForcedThreadPool";
      break;
  }
  return name + (info.param.resolver == backends::PathResolver::kOpenat2 ? "" : "_Userspace");
}

// Every backend configuration with each resolver.
const auto kSetups = testing::Values(
    Setup{Config::kIoUring, backends::PathResolver::kOpenat2},
    Setup{Config::kThreadPool, backends::PathResolver::kOpenat2},
    Setup{Config::kIoUringBuildForcedThreadPool, backends::PathResolver::kOpenat2},
    Setup{Config::kIoUring, backends::PathResolver::kUserspace},
    Setup{Config::kThreadPool, backends::PathResolver::kUserspace},
    Setup{Config::kIoUringBuildForcedThreadPool, backends::PathResolver::kUserspace});

// What the sink saw of one op's completion.
struct Completion {
  absl::Status submit = absl::OkStatus();  // why Submit refused it, if it did
  OpId id;
  int times = 0;  // completions delivered for this cookie; must end at 1
  OpKind kind = OpKind::kNop;
  OpState state = OpState::kFree;
  int64_t result = 0;
  uint64_t bytes_done = 0;
  BackendKind backend = BackendKind::kNone;
  std::string data;  // read: the bytes read; statx: the struct statx
  std::thread::id thread;  // where the sink was called

  bool arrived() const { return times > 0; }
  const struct statx& stx() const {
    static const struct statx kEmpty = {};
    return data.size() == sizeof(struct statx) ? *reinterpret_cast<const struct statx*>(data.data())
                                               : kEmpty;
  }
};

// Records every completion by cookie and copies out what the op's borrowed
// buffer holds, as a real sink must (the slot is retired right after).
class RecordingSink final : public core::CompletionSink {
 public:
  void OnComplete(const core::Op& op) noexcept override {
    Completion c;
    c.id = op.id();
    c.kind = op.head->kind.load(std::memory_order_relaxed);
    c.state = op.state();
    c.result = op.result.load(std::memory_order_relaxed);
    c.bytes_done = op.bytes_done.load(std::memory_order_relaxed);
    c.backend = op.head->backend.load(std::memory_order_relaxed);
    c.thread = std::this_thread::get_id();
    if (c.kind == OpKind::kRead && op.params.buf != nullptr) {
      const uint64_t n = std::max<uint64_t>(c.result > 0 ? c.result : 0, c.bytes_done);
      c.data.assign(static_cast<const char*>(op.params.buf), std::min<uint64_t>(n, op.params.len));
    } else if (c.kind == OpKind::kStatx && c.result == 0 && op.params.buf != nullptr) {
      c.data.assign(static_cast<const char*>(op.params.buf), sizeof(struct statx));
    }
    std::function<void(const core::Op&)> hook;
    {
      std::lock_guard lock(mu_);
      hook = hook_;
    }
    if (hook) hook(op);  // runs before the op is retired, like a real sink's work
    std::lock_guard lock(mu_);
    Completion& r = records_[op.cookie];
    if (r.times > 0) {
      ++duplicates_;
      ++r.times;
    } else {
      c.times = 1;
      r = std::move(c);
    }
    cv_.notify_all();
  }

  void SetHook(std::function<void(const core::Op&)> hook) {
    std::lock_guard lock(mu_);
    hook_ = std::move(hook);
  }

  // Waits for the completion of `cookie`; nullopt on timeout.
  std::optional<Completion> Wait(uint64_t cookie) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, kWaitTimeout, [&] { return records_.count(cookie) > 0; })) {
      return std::nullopt;
    }
    return records_[cookie];
  }

  // Waits until every cookie completed; false on timeout.
  bool WaitAll(const std::vector<uint64_t>& cookies) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kWaitTimeout, [&] {
      return std::all_of(cookies.begin(), cookies.end(),
                         [&](uint64_t c) { return records_.count(c) > 0; });
    });
  }

  std::optional<Completion> Get(uint64_t cookie) {
    std::lock_guard lock(mu_);
    auto it = records_.find(cookie);
    if (it == records_.end()) return std::nullopt;
    return it->second;
  }

  size_t count() {
    std::lock_guard lock(mu_);
    return records_.size();
  }
  int duplicates() {
    std::lock_guard lock(mu_);
    return duplicates_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Completion> records_;
  int duplicates_ = 0;
  std::function<void(const core::Op&)> hook_;
};

// Polls `pred` until it holds; false after kWaitTimeout.
bool WaitUntil(const std::function<bool()>& pred) {
  const auto end = std::chrono::steady_clock::now() + kWaitTimeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// --- request builders -------------------------------------------------------

OpRequest Req(OpKind kind, uint32_t handle = 0) {
  OpRequest r;
  r.kind = kind;
  r.handle = handle;
  return r;
}
OpRequest Nop() { return Req(OpKind::kNop); }
OpRequest Open(const char* path, uint32_t flags, uint32_t mode = 0644) {
  OpRequest r = Req(OpKind::kOpen);
  r.params.path = path;
  r.params.flags = flags;
  r.params.mode = mode;
  return r;
}
OpRequest Close(uint32_t h) { return Req(OpKind::kClose, h); }
OpRequest Read(uint32_t h, void* buf, uint32_t len, int64_t offset) {
  OpRequest r = Req(OpKind::kRead, h);
  r.params.buf = buf;
  r.params.len = len;
  r.params.offset = offset;
  return r;
}
OpRequest Write(uint32_t h, const void* buf, uint32_t len, int64_t offset) {
  OpRequest r = Req(OpKind::kWrite, h);
  r.params.buf = const_cast<void*>(buf);
  r.params.len = len;
  r.params.offset = offset;
  return r;
}
enum class SyncKind { kFsync, kDatasync };
OpRequest Fsync(uint32_t h, SyncKind kind) {
  OpRequest r = Req(OpKind::kFsync, h);
  r.params.flags = kind == SyncKind::kDatasync ? 1 : 0;
  return r;
}
OpRequest Fallocate(uint32_t h, int64_t offset, int64_t length) {
  OpRequest r = Req(OpKind::kFallocate, h);
  r.params.offset = offset;
  r.params.length = length;
  return r;
}
OpRequest Ftruncate(uint32_t h, int64_t length) {
  OpRequest r = Req(OpKind::kFtruncate, h);
  r.params.length = length;
  return r;
}
OpRequest StatxPath(const char* path, struct statx* out, uint32_t flags = 0) {
  OpRequest r = Req(OpKind::kStatx);
  r.params.path = path;
  r.params.buf = out;
  r.params.len = sizeof(struct statx);
  r.params.flags = flags;
  return r;
}
OpRequest StatxHandle(uint32_t h, struct statx* out) {
  OpRequest r = Req(OpKind::kStatx, h);
  r.params.buf = out;
  r.params.len = sizeof(struct statx);
  return r;
}
OpRequest Unlink(const char* path, uint32_t flags = 0) {
  OpRequest r = Req(OpKind::kUnlink);
  r.params.path = path;
  r.params.flags = flags;
  return r;
}
OpRequest Rename(const char* from, const char* to, uint32_t flags = 0) {
  OpRequest r = Req(OpKind::kRename);
  r.params.path = from;
  r.params.path2 = to;
  r.params.flags = flags;
  return r;
}
OpRequest Mkdir(const char* path, uint32_t mode) {
  OpRequest r = Req(OpKind::kMkdir);
  r.params.path = path;
  r.params.mode = mode;
  return r;
}
OpRequest Poll(uint32_t h, uint32_t events) {
  OpRequest r = Req(OpKind::kPoll, h);
  r.params.flags = events;
  return r;
}
OpRequest Timeout(int64_t ns) {
  OpRequest r = Req(OpKind::kTimeout);
  r.params.timeout_ns = ns;
  return r;
}

// --- raw file helpers (the test's own view of the file system) ---------------

std::string Slurp(const std::string& path) {
  std::string out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "<missing>";
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  ::close(fd);
  return out;
}

bool Spit(const std::string& path, const std::string& content, mode_t mode = 0644) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return false;
  const bool ok =
      ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ::close(fd);
  return ok;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

std::set<std::string> ListDir(const std::string& path) {
  std::set<std::string> out;
  if (DIR* d = ::opendir(path.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
        out.insert(e->d_name);
      }
    }
    ::closedir(d);
  }
  return out;
}

// How many of this process's descriptors refer to `path`.
int CountFdsTo(const std::string& path) {
  int n = 0;
  for (const std::string& fd : ListDir("/proc/self/fd")) {
    char target[4096];
    const std::string link = "/proc/self/fd/" + fd;
    const ssize_t len = ::readlink(link.c_str(), target, sizeof(target) - 1);
    if (len > 0 && std::string(target, len) == path) ++n;
  }
  return n;
}

int BytesInPipe(int fd) {
  int n = -1;
  if (::ioctl(fd, FIONREAD, &n) != 0) return -1;
  return n;
}

// A FIFO inside the root: `handle` is the session's end (opened by an op),
// `raw` the test's own O_RDWR|O_NONBLOCK end of the same pipe (it keeps a
// writer and a reader around so opens do not block and reads see no EOF).
struct Fifo {
  uint32_t handle = 0;
  int raw = -1;
};

// --- the fixture -------------------------------------------------------------

class ConformanceTest : public testing::TestWithParam<Setup> {
 protected:
  void SetUp() override {
    ::signal(SIGPIPE, SIG_IGN);
    ::umask(022);
    char tmpl[] = "/tmp/asyncd-conformance-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    base_ = tmpl;
    root_ = base_ + "/root";
    outside_ = base_ + "/outside";
    ASSERT_EQ(::mkdir(root_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(outside_.c_str(), 0755), 0);
    sentinel_ = outside_ + "/sentinel";
    ASSERT_TRUE(Spit(sentinel_, kSentinelContent));
    root_fd_ = ::open(root_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(root_fd_, 0) << std::strerror(errno);

    dispatcher_ = std::make_unique<core::Dispatcher>(registry_, root_fd_);
    ASSERT_NO_FATAL_FAILURE(BuildBackends());
    if (IsSkipped()) return;

    auto session = registry_.OpenSession(core::ClientInfo{"conformance", 0, 0, 0});
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = *session;
  }

  // The construction path the daemon takes: io_uring first when it can be
  // used, the thread pool last (it runs every kind).
  void BuildBackends() {
    const Config config = GetParam().config;
    std::vector<core::Backend*> chain;
    if (config != Config::kThreadPool) {
      const bool force_off = config == Config::kIoUringBuildForcedThreadPool;
      const char* old = std::getenv("ASYNCD_DISABLE_IO_URING");
      const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
      if (force_off) ::setenv("ASYNCD_DISABLE_IO_URING", "1", 1);
      auto uring = backends::UringBackend::Create(*dispatcher_, backends::UringOptions{});
      if (force_off) {
        const backends::UringProbe probe = backends::ProbeUring();
        EXPECT_FALSE(probe.usable) << "the probe ignores ASYNCD_DISABLE_IO_URING=1";
        EXPECT_FALSE(probe.reason.empty()) << "an unusable probe must say why";
        if (saved) {
          ::setenv("ASYNCD_DISABLE_IO_URING", saved->c_str(), 1);
        } else {
          ::unsetenv("ASYNCD_DISABLE_IO_URING");
        }
        ASSERT_FALSE(uring.ok()) << "ASYNCD_DISABLE_IO_URING=1 did not force io_uring off";
        EXPECT_EQ(uring.status().code(), absl::StatusCode::kUnavailable) << uring.status();
      } else if (!uring.ok()) {
        GTEST_SKIP() << "io_uring cannot be used on this machine: " << uring.status()
                     << " (probe: " << ProbeReason() << ")";
      } else {
        uring_ = std::move(*uring);
        chain.push_back(uring_.get());
      }
    }
    pool_ = std::make_unique<backends::ThreadPoolBackend>(
        *dispatcher_, backends::ThreadPoolOptions{.threads = kPoolThreads,
                                                  .queue_capacity = kPoolQueue,
                                                  .session_queue = kPoolSessionQueue,
                                                  .session_running = kPoolSessionRunning,
                                                  .resolver = GetParam().resolver});
    chain.push_back(pool_.get());
    dispatcher_->SetBackends(chain);

    // The configuration must be what its name says.
    bool any_ring = false;
    for (int k = 1; k <= core::kOpKindCount; ++k) {
      const BackendKind b = dispatcher_->RouteFor(static_cast<OpKind>(k));
      any_ring |= b == BackendKind::kIoUring;
      if (config != Config::kIoUring) {
        EXPECT_EQ(b, BackendKind::kThreadPool) << core::Name(static_cast<OpKind>(k));
      }
    }
    if (config == Config::kIoUring) {
      EXPECT_TRUE(any_ring) << "io_uring is usable but no kind is routed to it";
    }
  }

  static std::string ProbeReason() {
    const backends::UringProbe probe = backends::ProbeUring();
    return probe.usable ? "usable" : probe.reason;
  }

  void TearDown() override {
    if (pool_ != nullptr) {
      // End whatever a failed test left blocked, then check nothing leaked.
      std::vector<std::shared_ptr<core::Session>> all = extra_sessions_;
      if (session_) all.push_back(session_);
      for (auto& s : all) {
        (void)dispatcher_->CloseSession(s->id(), EndReason::kDrain);
      }
      EXPECT_TRUE(WaitUntil([&] {
        return std::all_of(all.begin(), all.end(), [](auto& s) { return s->live_ops() == 0; });
      })) << "ops still live after their sessions were closed";
      EXPECT_TRUE(WaitUntil([&] { return registry_.session_count() == 0; }));
    }
    if (uring_) uring_->Shutdown();
    if (pool_) pool_->Shutdown();
    uring_.reset();
    pool_.reset();
    dispatcher_.reset();
    for (const auto& [base, bytes] : mappings_) ::munmap(base, bytes);
    EXPECT_EQ(sink_.duplicates(), 0) << "some op completed more than once";
    session_.reset();
    extra_sessions_.clear();
    for (int fd : owned_fds_) ::close(fd);
    if (root_fd_ >= 0) ::close(root_fd_);
    if (!base_.empty()) {
      ::nftw(
          base_.c_str(),
          [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }, 16,
          FTW_DEPTH | FTW_PHYS);
    }
  }

  // --- submitting and waiting ---

  // Submits on `session` (default: the fixture's) with a fresh cookie.
  absl::StatusOr<OpId> Start(OpRequest r, uint64_t* cookie, core::Session* session = nullptr) {
    *cookie = ++next_cookie_;
    r.sink = &sink_;
    r.cookie = *cookie;
    return dispatcher_->Submit(session ? *session : *session_, r);
  }

  // Start through RunOrSubmit, as a unary Submit does.
  absl::StatusOr<OpId> StartOrRun(OpRequest r, uint64_t* cookie) {
    *cookie = ++next_cookie_;
    r.sink = &sink_;
    r.cookie = *cookie;
    return dispatcher_->RunOrSubmit(*session_, r);
  }

  // RunOrSubmit and wait; `must_run_inline`: whether the backend must have
  // run it inline (completed on this thread before RunOrSubmit returned).
  Completion RunOrSubmit(OpRequest r, bool must_run_inline) {
    uint64_t cookie;
    absl::StatusOr<OpId> id = StartOrRun(r, &cookie);
    if (!id.ok()) {
      ADD_FAILURE() << core::Name(r.kind) << " refused at submit: " << id.status();
      return Completion{};
    }
    const bool done_at_return = sink_.Get(cookie).has_value();
    Completion c = Await(cookie);
    EXPECT_EQ(c.backend, dispatcher_->RouteFor(r.kind));
    if (must_run_inline) {
      EXPECT_TRUE(done_at_return) << "not run inline";
      EXPECT_EQ(c.thread, std::this_thread::get_id());
    }
    return c;
  }

  // Cancels op `id` and returns its completion.
  Completion RunCancelled(OpId id, uint64_t cookie) {
    EXPECT_EQ(dispatcher_->Cancel(id, EndReason::kClientRequest), CancelResult::kCancelled);
    return Await(cookie);
  }

  Completion Await(uint64_t cookie) {
    std::optional<Completion> c = sink_.Wait(cookie);
    if (!c) {
      ADD_FAILURE() << "no completion for cookie " << cookie << " within the timeout";
      return Completion{};
    }
    return *c;
  }

  // Submits and waits for the completion; checks it ran where it was routed.
  Completion Run(OpRequest r, core::Session* session = nullptr) {
    uint64_t cookie;
    absl::StatusOr<OpId> id = Start(r, &cookie, session);
    if (!id.ok()) {
      ADD_FAILURE() << core::Name(r.kind) << " refused at submit: " << id.status();
      Completion c;
      c.submit = id.status();
      return c;
    }
    Completion c = Await(cookie);
    if (c.arrived()) {
      EXPECT_EQ(c.id, *id);
      const BackendKind routed = dispatcher_->RouteFor(r.kind);
      if (!(r.kind == OpKind::kClose && c.backend == BackendKind::kInline)) {
        EXPECT_EQ(c.backend, routed) << core::Name(r.kind);
      }
    }
    return c;
  }

  // Waits until the op reaches `state` (or later); false on timeout or if it
  // was retired first.
  bool WaitForState(OpId id, OpState state) {
    const bool reached = WaitUntil([&] {
      auto snap = registry_.Snapshot(id);
      return !snap || snap->state >= state;
    });
    return reached && registry_.Snapshot(id).has_value();
  }

  bool WaitRetired() {
    return WaitUntil([&] { return session_->live_ops() == 0; });
  }

  // --- the root and its files ---

  std::string InRoot(const std::string& rel) const { return root_ + "/" + rel; }

  // A path whose memory outlives every op that borrows it.
  const char* Keep(std::string s) {
    kept_.push_back(std::move(s));
    return kept_.back().c_str();
  }

  // A buffer that outlives every op that borrows it (even one a failed test left blocked).
  char* Buffer(size_t n) {
    buffers_.push_back(std::make_unique<char[]>(n));
    std::memset(buffers_.back().get(), 0, n);
    return buffers_.back().get();
  }

  // `bytes` of shared memory backed by a memfd, as a local ring's buffer
  // area is; unmapped once the backends are gone.
  char* SharedArea(size_t bytes) {
    const int fd = ::memfd_create("conformance-area", MFD_CLOEXEC);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0) << std::strerror(errno);
    void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    EXPECT_NE(base, MAP_FAILED) << std::strerror(errno);
    if (base == MAP_FAILED) return nullptr;
    mappings_.emplace_back(base, bytes);
    return static_cast<char*>(base);
  }

  // Registers an area; io_uring must take it, the thread pool never does.
  uint8_t RegisterArea(void* base, size_t bytes) {
    const uint8_t area = dispatcher_->RegisterArea(base, bytes);
    if (uring_ != nullptr) {
      EXPECT_NE(area, 0) << "io_uring did not register the area (see the log for why)";
    } else {
      EXPECT_EQ(area, 0) << "the thread pool registers no area";
    }
    return area;
  }

  // Reads and writes io_uring sent as fixed-buffer ops so far (0 without it).
  uint64_t FixedOps() const { return uring_ != nullptr ? uring_->fixed_ops() : 0; }

  uint32_t OpenOk(const char* path, uint32_t flags, uint32_t mode = 0644) {
    Completion c = Run(Open(path, flags, mode));
    EXPECT_EQ(c.state, OpState::kCompleted) << path;
    EXPECT_GT(c.result, 0) << path << ": " << std::strerror(static_cast<int>(-c.result));
    return c.result > 0 ? static_cast<uint32_t>(c.result) : 0;
  }

  // Creates `rel` in the root with `content` (through the test's own calls).
  void MakeFile(const std::string& rel, const std::string& content, mode_t mode = 0644) {
    ASSERT_TRUE(Spit(InRoot(rel), content, mode)) << rel;
  }

  Fifo MakeFifo(const std::string& rel, uint32_t session_flags = O_RDONLY) {
    Fifo f;
    const std::string path = InRoot(rel);
    EXPECT_EQ(::mkfifo(path.c_str(), 0600), 0) << std::strerror(errno);
    f.raw = ::open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    EXPECT_GE(f.raw, 0) << std::strerror(errno);
    owned_fds_.push_back(f.raw);
    f.handle = OpenOk(Keep(rel), session_flags);
    return f;
  }

  // The read end of a new pipe as a session handle; *writer is its write end.
  uint32_t PipeHandle(int* writer) {
    int fds[2];
    EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0) << std::strerror(errno);
    owned_fds_.push_back(fds[1]);
    *writer = fds[1];
    absl::StatusOr<uint32_t> h = session_->handles().Insert(fds[0]);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *h : 0;
  }

  // Submits a read of `len` bytes at the current position of `fifo` that will
  // block (the FIFO is empty), and waits until it has started.
  OpId StartBlockedRead(const Fifo& fifo, uint64_t* cookie, uint32_t len = 1) {
    absl::StatusOr<OpId> id = Start(Read(fifo.handle, Buffer(len), len, -1), cookie);
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return OpId{};
    EXPECT_TRUE(WaitForState(*id, OpState::kRunning)) << "the read never started";
    return *id;
  }

  // Holds every pool worker the session may use, so that its next pool op
  // stays queued: blocking opens of a FIFO nobody has open for writing each
  // wait for a peer on a worker (an open cannot wait on the reactor, where
  // blocked reads wait). ReleaseWorkers lets them finish.
  std::vector<uint64_t> HoldWorkers(const std::string& rel) {
    EXPECT_EQ(::mkfifo(InRoot(rel).c_str(), 0600), 0) << std::strerror(errno);
    std::vector<uint64_t> cookies(kPoolSessionRunning);
    for (auto& cookie : cookies) {
      absl::StatusOr<OpId> id = Start(Open(Keep(rel), O_RDONLY), &cookie);
      EXPECT_TRUE(id.ok()) << id.status();
      if (id.ok()) EXPECT_TRUE(WaitForState(*id, OpState::kRunning)) << "the open never started";
    }
    return cookies;
  }
  void ReleaseWorkers(const std::string& rel) {
    const int writer = ::open(InRoot(rel).c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    EXPECT_GE(writer, 0) << std::strerror(errno);
    owned_fds_.push_back(writer);
  }

  static constexpr const char* kSentinelContent = "SENTINEL: outside the root, must stay intact\n";

  core::Registry registry_;
  RecordingSink sink_;
  std::unique_ptr<core::Dispatcher> dispatcher_;
  std::unique_ptr<backends::UringBackend> uring_;
  std::unique_ptr<backends::ThreadPoolBackend> pool_;
  std::shared_ptr<core::Session> session_;
  std::vector<std::shared_ptr<core::Session>> extra_sessions_;
  std::string base_, root_, outside_, sentinel_;
  int root_fd_ = -1;
  uint64_t next_cookie_ = 0;
  std::vector<int> owned_fds_;
  std::deque<std::string> kept_;
  std::vector<std::unique_ptr<char[]>> buffers_;
  std::vector<std::pair<void*, size_t>> mappings_;
};

INSTANTIATE_TEST_SUITE_P(Backends, ConformanceTest, kSetups, SetupName);

// =============================================================================
// Success paths, one per kind
// =============================================================================

// A nop completes with 0 on the backend its kind is routed to.
TEST_P(ConformanceTest, NopCompletesWithZero) {
  Completion c = Run(Nop());
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, 0);
  EXPECT_EQ(c.bytes_done, 0u);
}

// An open with O_CREAT creates the file with the requested mode and returns a
// session handle (not a descriptor); reopening read-only gives another handle.
TEST_P(ConformanceTest, OpenCreatesThenReopensReadOnly) {
  const uint32_t w = OpenOk("created", O_WRONLY | O_CREAT | O_EXCL, 0640);
  ASSERT_NE(w, 0u);
  struct stat st;
  ASSERT_EQ(::stat(InRoot("created").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(session_->handles().open_count(), 1u);

  const uint32_t r = OpenOk("created", O_RDONLY);
  EXPECT_NE(r, 0u);
  EXPECT_NE(r, w);
  EXPECT_EQ(session_->handles().open_count(), 2u);
  // The read-only handle really is read-only.
  EXPECT_EQ(Run(Write(r, "x", 1, 0)).result, -EBADF);
}

// Positional writes land at their offsets, and positional reads return them.
TEST_P(ConformanceTest, WriteAndReadAtOffsets) {
  const uint32_t h = OpenOk("data", O_RDWR | O_CREAT);
  Completion w1 = Run(Write(h, "hello", 5, 0));
  EXPECT_EQ(w1.state, OpState::kCompleted);
  EXPECT_EQ(w1.result, 5);
  EXPECT_EQ(w1.bytes_done, 5u);
  EXPECT_EQ(Run(Write(h, "world", 5, 100)).result, 5);

  const std::string on_disk = Slurp(InRoot("data"));
  ASSERT_EQ(on_disk.size(), 105u);
  EXPECT_EQ(on_disk.substr(0, 5), "hello");
  EXPECT_EQ(on_disk.substr(100), "world");

  Completion r1 = Run(Read(h, Buffer(5), 5, 100));
  EXPECT_EQ(r1.state, OpState::kCompleted);
  EXPECT_EQ(r1.result, 5);
  EXPECT_EQ(r1.data, "world");
  Completion r2 = Run(Read(h, Buffer(5), 5, 0));
  EXPECT_EQ(r2.data, "hello");
  Completion hole = Run(Read(h, Buffer(4), 4, 50));
  EXPECT_EQ(hole.result, 4);
  EXPECT_EQ(hole.data, std::string(4, '\0'));
}

// A read that crosses end-of-file is short; a read at end-of-file returns 0.
TEST_P(ConformanceTest, ShortReadAtEof) {
  MakeFile("ten", "0123456789");
  const uint32_t h = OpenOk("ten", O_RDONLY);
  Completion part = Run(Read(h, Buffer(100), 100, 6));
  EXPECT_EQ(part.state, OpState::kCompleted);
  EXPECT_EQ(part.result, 4);
  EXPECT_EQ(part.data, "6789");
  Completion eof = Run(Read(h, Buffer(100), 100, 10));
  EXPECT_EQ(eof.state, OpState::kCompleted);
  EXPECT_EQ(eof.result, 0);
  EXPECT_EQ(eof.bytes_done, 0u);
  Completion beyond = Run(Read(h, Buffer(8), 8, 4096));
  EXPECT_EQ(beyond.result, 0);
}

// offset -1 reads at the current position: a FIFO delivers its bytes in order.
TEST_P(ConformanceTest, ReadAtCurrentPositionOnFifo) {
  Fifo f = MakeFifo("fifo");
  ASSERT_NE(f.handle, 0u);
  ASSERT_EQ(::write(f.raw, "abc", 3), 3);
  Completion r1 = Run(Read(f.handle, Buffer(16), 16, -1));
  EXPECT_EQ(r1.state, OpState::kCompleted);
  EXPECT_EQ(r1.result, 3);
  EXPECT_EQ(r1.data, "abc");
  ASSERT_EQ(::write(f.raw, "de", 2), 2);
  Completion r2 = Run(Read(f.handle, Buffer(16), 16, -1));
  EXPECT_EQ(r2.data, "de");
}

// offset -1 on a regular file reads from, and advances, the file position.
TEST_P(ConformanceTest, ReadAtCurrentPositionAdvancesOnFile) {
  MakeFile("seq", "abcdef");
  const uint32_t h = OpenOk("seq", O_RDONLY);
  EXPECT_EQ(Run(Read(h, Buffer(3), 3, -1)).data, "abc");
  EXPECT_EQ(Run(Read(h, Buffer(3), 3, -1)).data, "def");
  EXPECT_EQ(Run(Read(h, Buffer(3), 3, -1)).result, 0);
}

// A close completes with 0, and afterwards the handle names nothing: the next
// op on it is refused at submit with NOT_FOUND and nothing is registered.
TEST_P(ConformanceTest, CloseRetiresTheHandle) {
  MakeFile("f", "x");
  const uint32_t h = OpenOk("f", O_RDONLY);
  Completion c = Run(Close(h));
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, 0);
  EXPECT_EQ(session_->handles().open_count(), 0u);
  ASSERT_TRUE(WaitRetired());

  uint64_t cookie;
  absl::StatusOr<OpId> again = Start(Read(h, Buffer(1), 1, 0), &cookie);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kNotFound) << again.status();
  absl::StatusOr<OpId> twice = Start(Close(h), &cookie);
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kNotFound) << twice.status();
  EXPECT_EQ(session_->live_ops(), 0u);
}

// fsync (flags 0) and fdatasync (flags 1) both complete with 0.
TEST_P(ConformanceTest, FsyncAndFdatasync) {
  const uint32_t h = OpenOk("synced", O_WRONLY | O_CREAT);
  ASSERT_EQ(Run(Write(h, "payload", 7, 0)).result, 7);
  Completion full = Run(Fsync(h, SyncKind::kFsync));
  EXPECT_EQ(full.state, OpState::kCompleted);
  EXPECT_EQ(full.result, 0);
  Completion data = Run(Fsync(h, SyncKind::kDatasync));
  EXPECT_EQ(data.state, OpState::kCompleted);
  EXPECT_EQ(data.result, 0);
}

// fallocate (mode 0) extends the file to offset + length.
TEST_P(ConformanceTest, FallocateGrowsTheFile) {
  const uint32_t h = OpenOk("prealloc", O_RDWR | O_CREAT);
  Completion c = Run(Fallocate(h, 0, 8192));
  if (c.result == -EOPNOTSUPP) GTEST_SKIP() << "the file system under /tmp lacks fallocate";
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, 0);
  struct stat st;
  ASSERT_EQ(::stat(InRoot("prealloc").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 8192);
  EXPECT_EQ(Run(Fallocate(h, 8192, 4096)).result, 0);
  ASSERT_EQ(::stat(InRoot("prealloc").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 8192 + 4096);
}

// ftruncate sets the size, growing and shrinking.
TEST_P(ConformanceTest, FtruncateSetsTheSize) {
  MakeFile("trunc", "0123456789");
  const uint32_t h = OpenOk("trunc", O_RDWR);
  Completion grow = Run(Ftruncate(h, 123));
  EXPECT_EQ(grow.state, OpState::kCompleted);
  EXPECT_EQ(grow.result, 0);
  struct stat st;
  ASSERT_EQ(::stat(InRoot("trunc").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 123);
  EXPECT_EQ(Run(Ftruncate(h, 4)).result, 0);
  EXPECT_EQ(Slurp(InRoot("trunc")), "0123");
}

// statx by path fills the struct statx in params.buf with size and mode.
TEST_P(ConformanceTest, StatxByPath) {
  MakeFile("s", std::string(42, 'z'));
  ASSERT_EQ(::chmod(InRoot("s").c_str(), 0604), 0);
  auto* stx = reinterpret_cast<struct statx*>(Buffer(sizeof(struct statx)));
  Completion c = Run(StatxPath("s", stx));
  EXPECT_EQ(c.state, OpState::kCompleted);
  ASSERT_EQ(c.result, 0) << std::strerror(static_cast<int>(-c.result));
  EXPECT_TRUE(c.stx().stx_mask & STATX_SIZE);
  EXPECT_EQ(c.stx().stx_size, 42u);
  EXPECT_TRUE(S_ISREG(c.stx().stx_mode));
  EXPECT_EQ(c.stx().stx_mode & 07777, 0604);

  Completion dir = Run(StatxPath("/", stx));  // the root itself
  ASSERT_EQ(dir.result, 0);
  EXPECT_TRUE(S_ISDIR(dir.stx().stx_mode));
}

// statx by handle (path == nullptr) describes the open file.
TEST_P(ConformanceTest, StatxByHandle) {
  MakeFile("sh", std::string(1000, 'q'), 0600);
  const uint32_t h = OpenOk("sh", O_RDONLY);
  auto* stx = reinterpret_cast<struct statx*>(Buffer(sizeof(struct statx)));
  Completion c = Run(StatxHandle(h, stx));
  EXPECT_EQ(c.state, OpState::kCompleted);
  ASSERT_EQ(c.result, 0) << std::strerror(static_cast<int>(-c.result));
  EXPECT_EQ(c.stx().stx_size, 1000u);
  EXPECT_TRUE(S_ISREG(c.stx().stx_mode));
  EXPECT_EQ(c.stx().stx_mode & 07777, 0600);
}

// unlink removes a file; with AT_REMOVEDIR it removes an empty directory.
TEST_P(ConformanceTest, UnlinkFileAndRmdir) {
  MakeFile("gone", "x");
  ASSERT_EQ(::mkdir(InRoot("emptydir").c_str(), 0755), 0);
  Completion f = Run(Unlink("gone"));
  EXPECT_EQ(f.state, OpState::kCompleted);
  EXPECT_EQ(f.result, 0);
  EXPECT_FALSE(Exists(InRoot("gone")));
  Completion d = Run(Unlink("emptydir", AT_REMOVEDIR));
  EXPECT_EQ(d.result, 0);
  EXPECT_FALSE(Exists(InRoot("emptydir")));
}

// rename moves a file; RENAME_NOREPLACE onto an existing name fails with
// -EEXIST and changes neither file.
TEST_P(ConformanceTest, RenameAndNoReplace) {
  MakeFile("a", "AAA");
  ASSERT_EQ(::mkdir(InRoot("sub").c_str(), 0755), 0);
  Completion mv = Run(Rename("a", "sub/b"));
  EXPECT_EQ(mv.state, OpState::kCompleted);
  EXPECT_EQ(mv.result, 0);
  EXPECT_FALSE(Exists(InRoot("a")));
  EXPECT_EQ(Slurp(InRoot("sub/b")), "AAA");

  MakeFile("c", "CCC");
  Completion clash = Run(Rename("c", "sub/b", RENAME_NOREPLACE));
  EXPECT_EQ(clash.state, OpState::kCompleted);
  EXPECT_EQ(clash.result, -EEXIST);
  EXPECT_EQ(Slurp(InRoot("c")), "CCC");
  EXPECT_EQ(Slurp(InRoot("sub/b")), "AAA");
}

// mkdir creates a directory with the requested mode.
TEST_P(ConformanceTest, MkdirWithMode) {
  Completion c = Run(Mkdir("newdir", 0710));
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, 0);
  struct stat st;
  ASSERT_EQ(::stat(InRoot("newdir").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0710u);
}

// Set-id and sticky bits are never created, whatever mode a caller asks
// for: the unit's seccomp filter (RestrictSUIDSGID=) cannot see io_uring's
// openat2, so the daemon holds the line itself on every backend.
TEST_P(ConformanceTest, CreateNeverMakesSetIdOrStickyBits) {
  const uint32_t h = OpenOk("setid-file", O_WRONLY | O_CREAT | O_EXCL, 07755);
  ASSERT_NE(h, 0u);
  Completion d = Run(Mkdir("setid-dir", 07755));
  EXPECT_EQ(d.result, 0);
  for (const char* name : {"setid-file", "setid-dir"}) {
    struct stat st;
    ASSERT_EQ(::stat(InRoot(name).c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_mode & 07777, 0755u) << name;
  }
}

// poll on a FIFO holding data reports POLLIN as its result (revents).
TEST_P(ConformanceTest, PollReportsReadable) {
  Fifo f = MakeFifo("pollfifo");
  ASSERT_EQ(::write(f.raw, "!", 1), 1);
  Completion c = Run(Poll(f.handle, POLLIN));
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_TRUE(c.result & POLLIN) << c.result;
  EXPECT_GE(c.result, 0);
  EXPECT_EQ(BytesInPipe(f.raw), 1) << "poll must not consume data";
}

// poll for POLLOUT on a writable FIFO reports POLLOUT.
TEST_P(ConformanceTest, PollReportsWritable) {
  Fifo f = MakeFifo("pollout", O_WRONLY);
  Completion c = Run(Poll(f.handle, POLLOUT));
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_TRUE(c.result & POLLOUT) << c.result;
}

// A 10 ms timeout completes normally with 0 (not -ETIME, not timed out).
TEST_P(ConformanceTest, TimeoutCompletesWithZero) {
  Completion c = Run(Timeout(10'000'000));
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, 0);
}

// =============================================================================
// Registered areas: the same results through memory registered with the
// backend (io_uring's fixed buffers), plain I/O wherever it does not apply
// =============================================================================

// `n` bytes of a pattern that differs at every offset within a page.
std::string Pattern(size_t n, int seed) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>((i * 31 + seed) % 251);
  return out;
}

OpRequest InArea(OpRequest r, uint8_t area) {
  r.params.area = area;
  return r;
}

// Reads and writes whose buffers lie in a registered area (shared memfd
// memory, like a local ring's) give the results, bytes done and data plain
// buffers give, for files and pipes: io_uring sends each as a fixed-buffer
// op; the thread pool registers nothing and uses the buffers as they are.
TEST_P(ConformanceTest, RegisteredAreaMovesTheSameBytesAsPlainBuffers) {
  constexpr size_t kAreaBytes = 64 << 10;
  char* mem = SharedArea(kAreaBytes);
  ASSERT_NE(mem, nullptr);
  const uint8_t area = RegisterArea(mem, kAreaBytes);
  const uint64_t fixed_before = FixedOps();
  const uint32_t h = OpenOk("data", O_RDWR | O_CREAT);
  const std::string pattern = Pattern(8192, 1);

  std::memcpy(mem + 4096, pattern.data(), pattern.size());
  Completion from_area = Run(InArea(Write(h, mem + 4096, 8192, 0), area));
  Completion from_plain = Run(Write(h, pattern.data(), 8192, 16384));
  EXPECT_EQ(from_area.state, OpState::kCompleted);
  EXPECT_EQ(from_area.result, 8192);
  EXPECT_EQ(from_area.result, from_plain.result);
  EXPECT_EQ(from_area.bytes_done, from_plain.bytes_done);
  const std::string on_disk = Slurp(InRoot("data"));
  ASSERT_EQ(on_disk.size(), 24576u);
  EXPECT_EQ(on_disk.substr(0, 8192), pattern);
  EXPECT_EQ(on_disk.substr(16384), pattern);

  // Whole, short (across end-of-file) and empty (past it) reads.
  for (const int64_t offset : {int64_t{0}, int64_t{16384}, int64_t{20000}, int64_t{1} << 20}) {
    Completion into_area = Run(InArea(Read(h, mem + 32768, 8192, offset), area));
    Completion into_plain = Run(Read(h, Buffer(8192), 8192, offset));
    EXPECT_EQ(into_area.state, OpState::kCompleted) << offset;
    EXPECT_EQ(into_area.result, into_plain.result) << offset;
    EXPECT_EQ(into_area.bytes_done, into_plain.bytes_done) << offset;
    EXPECT_EQ(into_area.data, into_plain.data) << offset;
    EXPECT_EQ(into_area.data, on_disk.substr(std::min<size_t>(offset, on_disk.size()), 8192));
  }

  // A pipe: no file position, so read and written at the current one.
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0) << std::strerror(errno);
  owned_fds_.push_back(fds[0]);
  absl::StatusOr<uint32_t> pipe_writer = session_->handles().Insert(fds[1]);
  ASSERT_TRUE(pipe_writer.ok()) << pipe_writer.status();
  std::memcpy(mem + 100, "through the area", 16);
  Completion to_pipe = Run(InArea(Write(*pipe_writer, mem + 100, 16, -1), area));
  EXPECT_EQ(to_pipe.result, 16);
  char got[16];
  ASSERT_EQ(::read(fds[0], got, sizeof(got)), 16);
  EXPECT_EQ(std::string(got, 16), "through the area");
  int writer;
  const uint32_t reader = PipeHandle(&writer);
  ASSERT_EQ(::write(writer, "and back", 8), 8);
  Completion from_pipe = Run(InArea(Read(reader, mem + 60000, 64, -1), area));
  EXPECT_EQ(from_pipe.result, 8);
  EXPECT_EQ(from_pipe.data, "and back");
  EXPECT_EQ(std::string(mem + 60000, 8), "and back");

  if (uring_ != nullptr) {
    EXPECT_EQ(FixedOps() - fixed_before, 7u) << "not every op in the area went as a fixed one";
  }
  dispatcher_->UnregisterArea(area);
}

// Areas come and go: more than the 255 an io_uring table holds over time,
// each number back in use once unregistered; with 255 held a 256th is not
// registered (0) and its ops run as plain ones; one freed, the next
// registration gets its number. On the thread pool every one is 0.
TEST_P(ConformanceTest, AreaNumbersAreReusedAfterUnregister) {
  constexpr int kCycles = 300;
  constexpr int kHeld = 255;
  constexpr size_t kPage = 4096;
  MakeFile("cycle", Pattern(kPage, 2));
  const std::string content = Pattern(kPage, 2);
  const uint32_t h = OpenOk("cycle", O_RDONLY);
  char* mem = SharedArea((kHeld + 1) * kPage);
  ASSERT_NE(mem, nullptr);
  const uint64_t fixed_before = FixedOps();

  std::set<int> numbers;
  for (int i = 0; i < kCycles; ++i) {
    char* page = mem + (i % (kHeld + 1)) * kPage;
    const uint8_t area = RegisterArea(page, kPage);
    numbers.insert(area);
    Completion c = Run(InArea(Read(h, page, kPage, 0), area));
    ASSERT_EQ(c.result, static_cast<int64_t>(kPage)) << "cycle " << i;
    ASSERT_EQ(c.data, content) << "cycle " << i;
    dispatcher_->UnregisterArea(area);
  }
  EXPECT_EQ(numbers.size(), 1u) << "an unregistered number was not handed out again";

  std::vector<uint8_t> held;
  for (int i = 0; i < kHeld; ++i) held.push_back(RegisterArea(mem + i * kPage, kPage));
  if (uring_ != nullptr) {
    EXPECT_EQ(std::set<uint8_t>(held.begin(), held.end()).size(), size_t{kHeld});
  }
  char* last = mem + kHeld * kPage;
  const uint8_t over = dispatcher_->RegisterArea(last, kPage);
  EXPECT_EQ(over, 0) << "a 256th area was registered";
  Completion plain = Run(InArea(Read(h, last, kPage, 0), over));
  EXPECT_EQ(plain.data, content);

  dispatcher_->UnregisterArea(held[100]);
  const uint8_t again = RegisterArea(last, kPage);
  EXPECT_EQ(again, held[100]);
  Completion reused = Run(InArea(Read(h, last, kPage, 0), again));
  EXPECT_EQ(reused.data, content);
  held[100] = again;
  for (const int i : {0, 50, 150, 200, 250}) {
    Completion c = Run(InArea(Read(h, mem + i * kPage, kPage, 0), held[i]));
    EXPECT_EQ(c.data, content) << i;
  }
  for (const uint8_t area : held) dispatcher_->UnregisterArea(area);
  if (uring_ != nullptr) {
    // Every read but the one over the limit went as a fixed one.
    EXPECT_EQ(FixedOps() - fixed_before, uint64_t{kCycles} + 1 + 5);
  }
}

// An op whose buffer is not wholly inside the area it names (elsewhere,
// straddling the area's end, just past it), or that names an area never
// registered, runs as a plain read or write with the same results: a fixed
// op must never reach beyond its registered memory.
TEST_P(ConformanceTest, BufferOutsideItsAreaRunsAsPlainIo) {
  constexpr size_t kPage = 4096;
  char* mem = SharedArea(2 * kPage);
  ASSERT_NE(mem, nullptr);
  const uint8_t area = RegisterArea(mem, kPage);  // the first page only
  const std::string content = Pattern(2 * kPage, 3);
  MakeFile("f", content);
  const uint32_t h = OpenOk("f", O_RDWR);
  const uint64_t fixed_before = FixedOps();

  struct Case {
    const char* what;
    char* buf;
    uint32_t len;
    uint8_t area;
  };
  const Case cases[] = {
      {"a buffer elsewhere", Buffer(kPage), kPage, area},
      {"straddling the area's end", mem + kPage - 100, 200, area},
      {"just past the area", mem + kPage, kPage, area},
      {"an area never registered", mem, kPage, static_cast<uint8_t>(area + 100)},
  };
  for (const Case& c : cases) {
    std::memset(c.buf, 0, c.len);
    Completion r = Run(InArea(Read(h, c.buf, c.len, 10), c.area));
    EXPECT_EQ(r.state, OpState::kCompleted) << c.what;
    EXPECT_EQ(r.result, c.len) << c.what;
    EXPECT_EQ(r.data, content.substr(10, c.len)) << c.what;
    EXPECT_EQ(std::string(c.buf, c.len), content.substr(10, c.len)) << c.what;
  }
  const std::string update = Pattern(200, 4);
  std::memcpy(mem + kPage - 100, update.data(), update.size());
  Completion w = Run(InArea(Write(h, mem + kPage - 100, 200, 0), area));
  EXPECT_EQ(w.result, 200);
  EXPECT_EQ(Slurp(InRoot("f")).substr(0, 200), update);
  EXPECT_EQ(FixedOps(), fixed_before) << "a buffer outside its area went as a fixed op";
  dispatcher_->UnregisterArea(area);
}

// =============================================================================
// errno paths: a failed system call is state kCompleted with -errno
// =============================================================================

// Opening a missing file without O_CREAT fails with -ENOENT.
TEST_P(ConformanceTest, OpenMissingIsEnoent) {
  Completion c = Run(Open("missing", O_RDONLY));
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, -ENOENT);
  EXPECT_EQ(session_->handles().open_count(), 0u);
}

// Reading a write-only handle fails with -EBADF.
TEST_P(ConformanceTest, ReadOnWriteOnlyHandleIsEbadf) {
  const uint32_t h = OpenOk("wo", O_WRONLY | O_CREAT);
  Completion c = Run(Read(h, Buffer(4), 4, 0));
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, -EBADF);
  EXPECT_EQ(c.bytes_done, 0u);
}

// Opening a directory for writing fails with -EISDIR.
TEST_P(ConformanceTest, OpenDirectoryForWritingIsEisdir) {
  ASSERT_EQ(::mkdir(InRoot("d").c_str(), 0755), 0);
  Completion c = Run(Open("d", O_WRONLY));
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, -EISDIR);
}

// Opening a file without permission fails with -EACCES. Root bypasses file
// permissions, so as root the check runs in a re-executed child (gtest's
// threadsafe death-test style: a fresh fixture) that first drops its
// effective uid to nobody in every thread (the backends' threads included;
// io_uring runs the op with its submitter's credentials).
TEST_P(ConformanceTest, OpenWithoutPermissionIsEacces) {
  MakeFile("locked", "secret", 0000);
  ASSERT_EQ(::chmod(InRoot("locked").c_str(), 0), 0);
  if (::geteuid() != 0) {
    Completion c = Run(Open("locked", O_RDONLY));
    EXPECT_EQ(c.state, OpState::kCompleted);
    EXPECT_EQ(c.result, -EACCES);
    return;
  }
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        constexpr uid_t kNobody = 65534;
        if (::setresuid(kNobody, kNobody, 0) != 0) _exit(2);  // saved uid 0: can come back
        Completion c = Run(Open("locked", O_RDONLY));
        if (::seteuid(0) != 0) _exit(3);
        std::fprintf(stderr, "state=%s result=%lld\n", std::string(core::Name(c.state)).c_str(),
                     static_cast<long long>(c.result));
        const bool ok = c.state == OpState::kCompleted && c.result == -EACCES;
        TearDown();
        _exit(ok ? 0 : 1);
      },
      testing::ExitedWithCode(0), "state=completed result=-13");
}

// mkdir of an existing name fails with -EEXIST.
TEST_P(ConformanceTest, MkdirExistingIsEexist) {
  ASSERT_EQ(::mkdir(InRoot("there").c_str(), 0755), 0);
  Completion c = Run(Mkdir("there", 0755));
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, -EEXIST);
}

// unlink of a missing name fails with -ENOENT.
TEST_P(ConformanceTest, UnlinkMissingIsEnoent) {
  Completion c = Run(Unlink("nothing-here"));
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, -ENOENT);
}

// rmdir of a non-empty directory fails with -ENOTEMPTY and removes nothing.
TEST_P(ConformanceTest, RmdirNonEmptyIsEnotempty) {
  ASSERT_EQ(::mkdir(InRoot("full").c_str(), 0755), 0);
  MakeFile("full/f", "x");
  Completion c = Run(Unlink("full", AT_REMOVEDIR));
  EXPECT_EQ(c.result, -ENOTEMPTY);
  EXPECT_TRUE(Exists(InRoot("full/f")));
}

// =============================================================================
// Confinement: no path reaches outside the root, on any backend
// =============================================================================

// "../etc/passwd" and "/etc/passwd" resolve inside the root, where no
// etc/passwd exists: -ENOENT, never the host's file.
TEST_P(ConformanceTest, ConfinementEscapesResolveInsideRoot) {
  for (const char* p : {"../etc/passwd", "/etc/passwd", "../../../../etc/passwd",
                        "sub/../../etc/passwd", "/../etc/passwd"}) {
    Completion c = Run(Open(p, O_RDONLY));
    EXPECT_EQ(c.result, -ENOENT) << p;
  }
}

// With a decoy root/etc/passwd, "/etc/passwd" and "../etc/passwd" open the
// decoy: absolute paths and ".." are taken relative to the root.
TEST_P(ConformanceTest, ConfinementAbsolutePathMeansTheRoot) {
  ASSERT_EQ(::mkdir(InRoot("etc").c_str(), 0755), 0);
  MakeFile("etc/passwd", "decoy\n");
  for (const char* p : {"/etc/passwd", "../etc/passwd"}) {
    const uint32_t h = OpenOk(p, O_RDONLY);
    Completion r = Run(Read(h, Buffer(64), 64, 0));
    EXPECT_EQ(r.data, "decoy\n") << p;
  }
}

// A request that names its own directory (the daemon's per-user areas)
// resolves every path beneath it, not beneath the dispatcher's root.
TEST_P(ConformanceTest, ARequestsOwnDirfdIsItsRoot) {
  ASSERT_EQ(::mkdir(InRoot("area").c_str(), 0700), 0);
  MakeFile("outside-area", "root's\n");
  const int area = ::open(InRoot("area").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(area, 0);
  auto in_area = [area](OpRequest r) {
    r.params.dirfd = area;
    return r;
  };
  Completion created = Run(in_area(Open("/f", O_WRONLY | O_CREAT, 0600)));
  ASSERT_GT(created.result, 0);
  EXPECT_EQ(::access(InRoot("area/f").c_str(), F_OK), 0);
  EXPECT_EQ(Run(in_area(Open("../outside-area", O_RDONLY))).result, -ENOENT);
  struct statx stx;
  EXPECT_EQ(Run(in_area(StatxPath("/outside-area", &stx))).result, -ENOENT);
  EXPECT_EQ(Run(in_area(StatxPath("f", &stx))).result, 0);
  EXPECT_EQ(Run(in_area(Rename("f", "../g"))).result, 0);
  EXPECT_EQ(::access(InRoot("area/g").c_str(), F_OK), 0);
  EXPECT_EQ(Run(in_area(Unlink("/outside-area"))).result, -ENOENT);
  EXPECT_EQ(::access(InRoot("outside-area").c_str(), F_OK), 0);
  EXPECT_EQ(Run(in_area(Unlink("g"))).result, 0);
  ::close(area);
}

class ConfinementTest : public ConformanceTest {
 protected:
  void SetUp() override {
    ConformanceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    const std::string outside_rel = outside_.substr(1);  // without the leading '/'
    ASSERT_EQ(::mkdir(InRoot("sub").c_str(), 0755), 0);
    ASSERT_EQ(::symlink(outside_.c_str(), InRoot("to_outside").c_str()), 0);
    ASSERT_EQ(::symlink("../outside", InRoot("rel_outside").c_str()), 0);
    ASSERT_EQ(::symlink("/", InRoot("to_slash").c_str()), 0);
    ASSERT_EQ(::symlink("../../../../../../../..", InRoot("dotdots").c_str()), 0);
    ASSERT_EQ(::symlink("../../outside", InRoot("sub/up").c_str()), 0);
    ASSERT_EQ(::symlink(sentinel_.c_str(), InRoot("sentinel_link").c_str()), 0);
    ASSERT_EQ(::symlink("../outside/sentinel", InRoot("rel_sentinel_link").c_str()), 0);
    // Every way we know to name the outside directory from inside the root.
    outside_dirs_ = {"..",
                     "../outside",
                     "sub/../../outside",
                     Keep(outside_),
                     "to_outside",
                     "rel_outside",
                     Keep("to_slash/" + outside_rel),
                     Keep("dotdots/" + outside_rel),
                     Keep("dotdots/../../" + outside_rel),
                     "sub/up",
                     Keep("/../../" + outside_rel)};
    struct stat st;
    ASSERT_EQ(::stat(sentinel_.c_str(), &st), 0);
    sentinel_ino_ = st.st_ino;
  }

  // The sentinel and its directory are exactly as SetUp left them.
  void ExpectOutsideUntouched() {
    EXPECT_EQ(ListDir(base_), (std::set<std::string>{"root", "outside"}));
    EXPECT_EQ(Slurp(sentinel_), kSentinelContent);
    EXPECT_EQ(ListDir(outside_), std::set<std::string>{"sentinel"});
    struct stat st;
    ASSERT_EQ(::stat(sentinel_.c_str(), &st), 0);
    EXPECT_EQ(st.st_ino, sentinel_ino_) << "the sentinel was replaced";
  }

  std::vector<std::string> SentinelPaths() {
    std::vector<std::string> out = {"sentinel_link", "rel_sentinel_link"};
    for (const std::string& d : outside_dirs_) out.push_back(d + "/sentinel");
    return out;
  }

  std::vector<std::string> outside_dirs_;
  ino_t sentinel_ino_ = 0;
};

INSTANTIATE_TEST_SUITE_P(Backends, ConfinementTest, kSetups, SetupName);

// No open for reading, through "..", absolute paths or symlinks (to "/", to
// ".." chains, to an absolute path outside), ever yields the sentinel's bytes.
TEST_P(ConfinementTest, OpenCannotReadOutside) {
  for (const std::string& p : SentinelPaths()) {
    Completion c = Run(Open(Keep(p), O_RDONLY));
    if (c.result > 0) {
      Completion r = Run(Read(static_cast<uint32_t>(c.result), Buffer(256), 256, 0));
      EXPECT_NE(r.data, kSentinelContent) << p << " read the sentinel outside the root";
      Run(Close(static_cast<uint32_t>(c.result)));
    } else {
      EXPECT_LT(c.result, 0) << p;
    }
  }
  ExpectOutsideUntouched();
}

// No open for writing (O_TRUNC, O_APPEND) or creating (O_CREAT) through the
// same paths changes or adds anything outside the root.
TEST_P(ConfinementTest, OpenCannotWriteOrCreateOutside) {
  for (const std::string& p : SentinelPaths()) {
    for (uint32_t flags : {O_WRONLY | O_TRUNC, O_WRONLY | O_APPEND, O_WRONLY | O_CREAT}) {
      Completion c = Run(Open(Keep(p), flags));
      if (c.result > 0) {
        Run(Write(static_cast<uint32_t>(c.result), "PWNED", 5, 0));
        Run(Close(static_cast<uint32_t>(c.result)));
      }
    }
  }
  for (const std::string& d : outside_dirs_) {
    Completion c = Run(Open(Keep(d + "/created"), O_WRONLY | O_CREAT | O_EXCL));
    if (c.result > 0) Run(Close(static_cast<uint32_t>(c.result)));
  }
  ExpectOutsideUntouched();
}

// statx through the same paths never describes the sentinel.
TEST_P(ConfinementTest, StatxCannotSeeOutside) {
  auto* stx = reinterpret_cast<struct statx*>(Buffer(sizeof(struct statx)));
  for (const std::string& p : SentinelPaths()) {
    for (uint32_t flags : {0, AT_SYMLINK_NOFOLLOW}) {
      Completion c = Run(StatxPath(Keep(p), stx, flags));
      if (c.result == 0) {
        EXPECT_NE(c.stx().stx_ino, sentinel_ino_) << p << " statx saw the sentinel";
      }
    }
  }
}

// unlink through symlinked parents, ".." and absolute paths never removes the
// sentinel (unlinking a symlink removes only the link, inside the root).
TEST_P(ConfinementTest, UnlinkCannotRemoveOutside) {
  for (const std::string& p : SentinelPaths()) {
    Run(Unlink(Keep(p)));
  }
  Run(Unlink("to_outside", AT_REMOVEDIR));
  Run(Unlink("..", AT_REMOVEDIR));
  for (const std::string& d : outside_dirs_) Run(Unlink(Keep(d), AT_REMOVEDIR));
  ExpectOutsideUntouched();
}

// rename can neither move the sentinel away nor overwrite it, through any of
// the paths, in either direction.
TEST_P(ConfinementTest, RenameCannotTouchOutside) {
  MakeFile("decoy", "decoy");
  for (const std::string& p : SentinelPaths()) {
    Run(Rename(Keep(p), "stolen"));
    struct stat st;
    if (::lstat(InRoot("stolen").c_str(), &st) == 0) {
      // Renaming a symlink moves the link (inside the root), never its target.
      EXPECT_TRUE(S_ISLNK(st.st_mode) || st.st_ino != sentinel_ino_)
          << p << " moved the sentinel into the root";
      ASSERT_EQ(::unlink(InRoot("stolen").c_str()), 0);
    }
    if (!Exists(InRoot("decoy"))) MakeFile("decoy", "decoy");
    Run(Rename("decoy", Keep(p)));
    Run(Rename("decoy", Keep(p), RENAME_EXCHANGE));
    ExpectOutsideUntouched();
  }
  ExpectOutsideUntouched();
}

// mkdir through symlinked parents, ".." and absolute paths creates nothing
// outside the root.
TEST_P(ConfinementTest, MkdirCannotCreateOutside) {
  for (const std::string& d : outside_dirs_) {
    Run(Mkdir(Keep(d + "/evil"), 0755));
  }
  ExpectOutsideUntouched();
  EXPECT_FALSE(Exists(base_ + "/evil"));
  EXPECT_FALSE(Exists("/evil"));
}

// The kernel fails a lookup through ".." with EAGAIN when any rename in the
// system races with it (a few percent of lookups under a busy renamer):
// every backend looks again, so an unrelated rename never fails an op.
TEST_P(ConformanceTest, LookupThroughDotDotSurvivesUnrelatedRenames) {
  ASSERT_EQ(::mkdir(InRoot("a").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(InRoot("busy").c_str(), 0755), 0);
  MakeFile("f", "f");
  MakeFile("busy/x", "x");
  std::atomic<bool> stop{false};
  std::thread renamer([&] {
    const std::string x = InRoot("busy/x"), y = InRoot("busy/y");
    while (!stop.load()) {
      ::rename(x.c_str(), y.c_str());
      ::rename(y.c_str(), x.c_str());
    }
  });
  auto* stx = reinterpret_cast<struct statx*>(Buffer(sizeof(struct statx)));
  int failed = 0;
  for (int i = 0; i < 5 * kRaceIterations; ++i) {
    Completion c = Run(Open("a/../f", O_RDONLY));
    if (c.result > 0) {
      Run(Close(static_cast<uint32_t>(c.result)));
    } else {
      ++failed;
    }
    if (Run(StatxPath("a/../f", stx)).result != 0) ++failed;
  }
  stop = true;
  renamer.join();
  EXPECT_EQ(failed, 0);
}

// A directory swapped for a symlink to the outside (renameat2
// RENAME_EXCHANGE, over and over) while ops walk through it: every op sees
// the directory or the link resolved inside the root, never the outside.
TEST_P(ConfinementTest, DirectorySwappedForASymlinkMidWalkNeverEscapes) {
  ASSERT_EQ(::mkdir(InRoot("d").c_str(), 0755), 0);
  MakeFile("d/sentinel", "decoy\n");
  ASSERT_EQ(::symlink(outside_.c_str(), InRoot("l_abs").c_str()), 0);
  ASSERT_EQ(::symlink("../outside", InRoot("l_rel").c_str()), 0);
  auto* stx = reinterpret_cast<struct statx*>(Buffer(sizeof(struct statx)));
  for (const char* link : {"l_abs", "l_rel"}) {
    std::atomic<bool> stop{false};
    std::thread swapper([&] {
      while (!stop.load()) {
        ::renameat2(AT_FDCWD, InRoot("d").c_str(), AT_FDCWD, InRoot(link).c_str(),
                    RENAME_EXCHANGE);
      }
    });
    int opened = 0;
    // Until an open got through (a loaded machine may take longer to let
    // one pass the swaps), within bounds.
    for (int i = 0; i < kRaceIterations || (opened == 0 && i < 20 * kRaceIterations); ++i) {
      Completion c = Run(Open("d/sentinel", O_RDONLY));
      if (c.result > 0) {
        ++opened;
        Completion r = Run(Read(static_cast<uint32_t>(c.result), Buffer(64), 64, 0));
        EXPECT_NE(r.data, kSentinelContent) << "read the sentinel outside the root";
        Run(Close(static_cast<uint32_t>(c.result)));
      }
      Completion st = Run(StatxPath("d/sentinel", stx));
      if (st.result == 0) {
        EXPECT_NE(st.stx().stx_ino, sentinel_ino_) << "statx saw the sentinel";
      }
      Run(Mkdir("d/evil", 0755));
      Run(Unlink("d/evil", AT_REMOVEDIR));
    }
    stop = true;
    swapper.join();
    // Put the directory back where it started (an odd number of swaps).
    struct stat st;
    if (::lstat(InRoot("d").c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      ASSERT_EQ(::renameat2(AT_FDCWD, InRoot("d").c_str(), AT_FDCWD, InRoot(link).c_str(),
                            RENAME_EXCHANGE),
                0);
    }
    EXPECT_GT(opened, 0) << "the race never let an open through: the test saw nothing";
    ExpectOutsideUntouched();
  }
}

// A directory moved out of the root and back (rename, over and over) while
// ops walk "a/b/../sentinel": ".." must never lead to where b went.
TEST_P(ConfinementTest, DotDotNeverFollowsADirectoryMovedOutOfTheRoot) {
  ASSERT_EQ(::mkdir(InRoot("a").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(InRoot("a/b").c_str(), 0755), 0);
  const std::string inside = InRoot("a/b");
  const std::string away = base_ + "/away";
  ASSERT_EQ(::mkdir(away.c_str(), 0755), 0);
  // Where ".." of the moved b leads: a sentinel that must stay unseen.
  ASSERT_TRUE(Spit(away + "/sentinel", kSentinelContent));
  struct stat away_st;
  ASSERT_EQ(::stat((away + "/sentinel").c_str(), &away_st), 0);
  std::atomic<bool> stop{false};
  std::thread mover([&] {
    while (!stop.load()) {
      ::rename(inside.c_str(), (away + "/b").c_str());
      ::rename((away + "/b").c_str(), inside.c_str());
    }
  });
  auto* stx = reinterpret_cast<struct statx*>(Buffer(sizeof(struct statx)));
  for (int i = 0; i < kRaceIterations; ++i) {
    Completion c = Run(Open("a/b/../sentinel", O_RDONLY));
    if (c.result > 0) {
      Completion r = Run(Read(static_cast<uint32_t>(c.result), Buffer(64), 64, 0));
      EXPECT_NE(r.data, kSentinelContent) << "\"..\" followed the moved directory out";
      Run(Close(static_cast<uint32_t>(c.result)));
    }
    Completion st = Run(StatxPath("a/b/../sentinel", stx));
    if (st.result == 0) {
      EXPECT_NE(st.stx().stx_ino, away_st.st_ino) << "statx saw outside";
    }
    Run(Mkdir("a/b/../evil", 0755));
  }
  stop = true;
  mover.join();
  if (!Exists(inside)) {
    ASSERT_EQ(::rename((away + "/b").c_str(), inside.c_str()), 0);
  }
  EXPECT_EQ(ListDir(away), std::set<std::string>{"sentinel"});
  ASSERT_EQ(::unlink((away + "/sentinel").c_str()), 0);
  ASSERT_EQ(::rmdir(away.c_str()), 0);
  ExpectOutsideUntouched();
}

// =============================================================================
// Handles: bad input is refused at submit and changes nothing
// =============================================================================

// A handle that was never issued is NOT_FOUND at submit, for every kind that
// takes one, and nothing is registered or completed.
TEST_P(ConformanceTest, UnknownHandleIsNotFoundAndChangesNothing) {
  const uint32_t bogus = (7u << 16) | 3;
  auto* stx = reinterpret_cast<struct statx*>(Buffer(sizeof(struct statx)));
  for (const OpRequest& r : {Read(bogus, Buffer(1), 1, 0), Write(bogus, "x", 1, 0), Close(bogus),
                             Fsync(bogus, SyncKind::kFsync), Fallocate(bogus, 0, 1),
                             Ftruncate(bogus, 0), StatxHandle(bogus, stx), Poll(bogus, POLLIN)}) {
    uint64_t cookie;
    absl::StatusOr<OpId> id = Start(r, &cookie);
    EXPECT_EQ(id.status().code(), absl::StatusCode::kNotFound) << core::Name(r.kind);
  }
  EXPECT_EQ(session_->live_ops(), 0u);
  EXPECT_EQ(registry_.live_ops(), 0u);
  EXPECT_EQ(sink_.count(), 0u);
}

// A handle issued to another session is NOT_FOUND in this one.
TEST_P(ConformanceTest, HandleOfAnotherSessionIsNotFound) {
  auto other = registry_.OpenSession(core::ClientInfo{"other", 0, 0, 0});
  ASSERT_TRUE(other.ok()) << other.status();
  extra_sessions_.push_back(*other);
  MakeFile("theirs", "theirs");
  Completion c = Run(Open("theirs", O_RDONLY), other->get());
  ASSERT_GT(c.result, 0);
  ASSERT_EQ(session_->handles().open_count(), 0u);

  uint64_t cookie;
  absl::StatusOr<OpId> id = Start(Read(static_cast<uint32_t>(c.result), Buffer(8), 8, 0), &cookie);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kNotFound) << id.status();
  EXPECT_EQ(session_->live_ops(), 0u);
  // ...and it still works where it belongs.
  Completion r = Run(Read(static_cast<uint32_t>(c.result), Buffer(8), 8, 0), other->get());
  EXPECT_EQ(r.data, "theirs");
}

// =============================================================================
// Cancellation
// =============================================================================

// A pending timeout is cancel-safe: cancel answers kCancelled and the op ends
// kCancelled, once, without waiting for its duration.
TEST_P(ConformanceTest, CancelPendingTimeout) {
  uint64_t cookie;
  absl::StatusOr<OpId> id = Start(Timeout(int64_t{3600} * 1'000'000'000), &cookie);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(dispatcher_->Cancel(*id, EndReason::kClientRequest), CancelResult::kCancelled);
  Completion c = Await(cookie);
  EXPECT_EQ(c.state, OpState::kCancelled);
  EXPECT_EQ(c.times, 1);
}

// An op cancelled while still queued (every pool thread busy) never runs: a
// queued write answered kCancelled leaves the file untouched.
TEST_P(ConformanceTest, CancelQueuedOpNeverRuns) {
  if (dispatcher_->RouteFor(OpKind::kRead) != BackendKind::kThreadPool ||
      dispatcher_->RouteFor(OpKind::kWrite) != BackendKind::kThreadPool) {
    GTEST_SKIP() << "reads and writes run on io_uring here, which starts ops as it takes "
                    "them: no queued state to cancel (see CancelledWriteNeverRan)";
  }
  const uint32_t h = OpenOk("untouched", O_WRONLY | O_CREAT);
  const std::vector<uint64_t> blockers = HoldWorkers("busy");
  uint64_t wcookie;
  absl::StatusOr<OpId> wid = Start(Write(h, "queued!", 7, 0), &wcookie);
  ASSERT_TRUE(wid.ok()) << wid.status();
  auto snap = registry_.Snapshot(*wid);
  ASSERT_TRUE(snap.has_value());
  ASSERT_EQ(snap->state, OpState::kDispatched) << "the write started with every worker its session may use held";
  EXPECT_EQ(dispatcher_->Cancel(*wid, EndReason::kClientRequest), CancelResult::kCancelled);
  ReleaseWorkers("busy");
  Completion w = Await(wcookie);
  EXPECT_EQ(w.state, OpState::kCancelled);
  EXPECT_EQ(w.bytes_done, 0u);
  EXPECT_EQ(Slurp(InRoot("untouched")), "") << "a write cancelled before it started ran";
  ASSERT_TRUE(sink_.WaitAll(blockers));
}

// Cancel racing the start of a non-cancel-safe write: whenever the answer is
// kCancelled the write never ran; when it is kNotCancellable or kAlreadyDone
// the write completed in full.
TEST_P(ConformanceTest, CancelledWriteNeverRan) {
  const uint32_t h = OpenOk("racy", O_RDWR | O_CREAT);
  int cancelled = 0;
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(::truncate(InRoot("racy").c_str(), 0), 0);
    uint64_t cookie;
    absl::StatusOr<OpId> id = Start(Write(h, "w", 1, 0), &cookie);
    ASSERT_TRUE(id.ok()) << id.status();
    const CancelResult answer = dispatcher_->Cancel(*id, EndReason::kClientRequest);
    Completion c = Await(cookie);
    ASSERT_TRUE(c.arrived());
    EXPECT_EQ(c.times, 1);
    const std::string content = Slurp(InRoot("racy"));
    switch (answer) {
      case CancelResult::kCancelled:
        ++cancelled;
        EXPECT_EQ(c.state, OpState::kCancelled);
        EXPECT_EQ(content, "") << "a write answered kCancelled still wrote";
        break;
      case CancelResult::kNotCancellable:
      case CancelResult::kAlreadyDone:
      case CancelResult::kNotFound:
        EXPECT_EQ(c.state, OpState::kCompleted) << core::Name(answer);
        EXPECT_EQ(c.result, 1);
        EXPECT_EQ(content, "w");
        break;
    }
  }
  RecordProperty("cancelled_before_start", cancelled);
}

// A read blocked on an empty FIFO is interrupted by a cancel: kCancelled with
// no bytes, and data written afterwards is still in the FIFO (the cancelled
// read did not consume it).
TEST_P(ConformanceTest, CancelBlockedFifoRead) {
  Fifo f = MakeFifo("blocked");
  uint64_t cookie;
  const OpId id = StartBlockedRead(f, &cookie, 16);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it block in the kernel
  EXPECT_EQ(dispatcher_->Cancel(id, EndReason::kClientRequest), CancelResult::kCancelled);
  Completion c = Await(cookie);
  EXPECT_EQ(c.state, OpState::kCancelled);
  EXPECT_EQ(c.bytes_done, 0u);
  EXPECT_LE(c.result, 0);
  ASSERT_EQ(::write(f.raw, "late", 4), 4);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a zombie read would take it now
  EXPECT_EQ(BytesInPipe(f.raw), 4);
  char buf[8];
  EXPECT_EQ(::read(f.raw, buf, sizeof(buf)), 4);
  // The handle still works after the cancel.
  ASSERT_EQ(::write(f.raw, "ok", 2), 2);
  EXPECT_EQ(Run(Read(f.handle, Buffer(8), 8, -1)).data, "ok");
}

// A poll waiting for an event that never comes ends cancelled at once,
// exactly once, and the handle still polls afterwards.
TEST_P(ConformanceTest, CancelBlockedPoll) {
  Fifo f = MakeFifo("poll-blocked");
  uint64_t cookie;
  absl::StatusOr<OpId> id = Start(Poll(f.handle, POLLIN), &cookie);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(WaitForState(*id, OpState::kRunning));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it wait
  EXPECT_EQ(dispatcher_->Cancel(*id, EndReason::kClientRequest), CancelResult::kCancelled);
  Completion c = Await(cookie);
  EXPECT_EQ(c.state, OpState::kCancelled);
  EXPECT_EQ(c.times, 1);
  ASSERT_EQ(::write(f.raw, "!", 1), 1);
  Completion again = Run(Poll(f.handle, POLLIN));
  EXPECT_EQ(again.state, OpState::kCompleted);
  EXPECT_TRUE(again.result & POLLIN) << again.result;
}

// One session flooding the backend cannot stall another. Session A holds
// 10,000 blocked FIFO reads (all accepted and live), more blocking FIFO
// opens than the pool has workers (a hung filesystem's stand-in: each holds
// a worker until its peer comes) and a queue of fsyncs behind them. Session
// B's statx still completes. Then every op of A's ends exactly once: the
// opens and fsyncs when the FIFO gets a writer, each read with one byte of
// the 10,000 written.
TEST_P(ConformanceTest, AFloodedBackendLeavesAnotherSessionRoomToRun) {
  auto flooder = registry_.OpenSession(core::ClientInfo{"flooder", 0, 0, 0});
  ASSERT_TRUE(flooder.ok()) << flooder.status();
  extra_sessions_.push_back(*flooder);
  core::Session* a = flooder->get();

  ASSERT_EQ(::mkfifo(InRoot("flood-fifo").c_str(), 0600), 0) << std::strerror(errno);
  const int raw = ::open(InRoot("flood-fifo").c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(raw, 0) << std::strerror(errno);
  owned_fds_.push_back(raw);
  const Completion fifo = Run(Open(Keep("flood-fifo"), O_RDONLY), a);
  ASSERT_GT(fifo.result, 0);
  constexpr int kReads = 10'000;
  char* bytes = Buffer(kReads);
  std::vector<uint64_t> reads(kReads);
  for (int i = 0; i < kReads; ++i) {
    absl::StatusOr<OpId> id =
        Start(Read(static_cast<uint32_t>(fifo.result), bytes + i, 1, -1), &reads[i], a);
    ASSERT_TRUE(id.ok()) << "read " << i << ": " << id.status();
  }
  EXPECT_EQ(a->live_ops(), static_cast<uint32_t>(kReads));

  MakeFile("flood-file", "data");
  const Completion file = Run(Open(Keep("flood-file"), O_RDWR), a);
  ASSERT_GT(file.result, 0);
  ASSERT_EQ(::mkfifo(InRoot("hung").c_str(), 0600), 0) << std::strerror(errno);
  std::vector<uint64_t> held(kPoolThreads + 1);
  for (auto& cookie : held) ASSERT_TRUE(Start(Open(Keep("hung"), O_RDONLY), &cookie, a).ok());
  constexpr int kFsyncs = 1000;
  std::vector<uint64_t> fsyncs(kFsyncs);
  for (auto& cookie : fsyncs) {
    absl::StatusOr<OpId> id =
        Start(Fsync(static_cast<uint32_t>(file.result), SyncKind::kFsync), &cookie, a);
    ASSERT_TRUE(id.ok()) << id.status();
  }

  struct statx stx;
  const Completion st = Run(StatxPath("flood-file", &stx));
  EXPECT_EQ(st.state, OpState::kCompleted);
  EXPECT_EQ(st.result, 0);
  if (dispatcher_->RouteFor(OpKind::kOpen) == BackendKind::kThreadPool &&
      dispatcher_->RouteFor(OpKind::kFsync) == BackendKind::kThreadPool) {
    // A's hung opens hold all the workers it may use: its fsyncs wait.
    for (uint64_t cookie : fsyncs) EXPECT_FALSE(sink_.Get(cookie).has_value());
  }

  ReleaseWorkers("hung");
  ASSERT_TRUE(sink_.WaitAll(held));
  ASSERT_TRUE(sink_.WaitAll(fsyncs));
  for (uint64_t cookie : fsyncs) EXPECT_EQ(sink_.Get(cookie)->result, 0);
  std::string written(kReads, '\0');
  for (int i = 0; i < kReads; ++i) written[i] = static_cast<char>('a' + i % 26);
  ASSERT_EQ(::write(raw, written.data(), written.size()), kReads) << std::strerror(errno);
  ASSERT_TRUE(sink_.WaitAll(reads));
  std::string got;
  for (uint64_t cookie : reads) {
    const Completion r = *sink_.Get(cookie);
    EXPECT_EQ(r.times, 1);
    EXPECT_EQ(r.result, 1);
    got += r.data;
  }
  std::sort(got.begin(), got.end());
  std::sort(written.begin(), written.end());
  EXPECT_EQ(got, written);
  EXPECT_TRUE(WaitUntil([&] { return a->live_ops() == 0; }));
}

// =============================================================================
// RunOrSubmit (a unary Submit): the same results, inline where the backend
// can finish an op without blocking
// =============================================================================

TEST_P(ConformanceTest, RunOrSubmitRunsANopInline) {
  Completion c = RunOrSubmit(Nop(), true);
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, 0);
}

// An anonymous pipe reads with RWF_NOWAIT (a FIFO does not: -EOPNOTSUPP).
// Both backends run this inline.
TEST_P(ConformanceTest, RunOrSubmitReadsWhatAPipeHoldsInline) {
  int writer;
  const uint32_t h = PipeHandle(&writer);
  ASSERT_EQ(::write(writer, "abc", 3), 3);
  Completion c = RunOrSubmit(Read(h, Buffer(16), 16, -1), true);
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, 3);
  EXPECT_EQ(c.data, "abc");
}

// An empty pipe: the inline attempt takes nothing (-EAGAIN) and the read
// waits, started, for data like a submitted one.
TEST_P(ConformanceTest, RunOrSubmitReadOfAnEmptyPipeWaitsForData) {
  int writer;
  const uint32_t h = PipeHandle(&writer);
  uint64_t cookie;
  absl::StatusOr<OpId> id = StartOrRun(Read(h, Buffer(16), 16, -1), &cookie);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(WaitForState(*id, OpState::kRunning));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(sink_.Get(cookie).has_value()) << "completed with an empty pipe";
  ASSERT_EQ(::write(writer, "xyz", 3), 3);
  Completion c = Await(cookie);
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.data, "xyz");
  EXPECT_EQ(c.backend, dispatcher_->RouteFor(OpKind::kRead));
}

TEST_P(ConformanceTest, RunOrSubmitReadOfAnEmptyPipeMeetsItsDeadline) {
  int writer;
  const uint32_t h = PipeHandle(&writer);
  OpRequest r = Read(h, Buffer(16), 16, -1);
  r.params.deadline_ns = core::MonoNanos() + 50'000'000;
  Completion c = RunOrSubmit(r, false);
  EXPECT_EQ(c.state, OpState::kTimedOut);
  EXPECT_EQ(c.bytes_done, 0u);
}

// A FIFO's inline attempt fails with -EOPNOTSUPP; the read still waits and
// cancels like a submitted one, taking nothing.
TEST_P(ConformanceTest, RunOrSubmitReadOfAnEmptyFifoCancels) {
  Fifo f = MakeFifo("inline-cancel");
  uint64_t cookie;
  absl::StatusOr<OpId> id = StartOrRun(Read(f.handle, Buffer(16), 16, -1), &cookie);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(WaitForState(*id, OpState::kRunning));
  EXPECT_EQ(dispatcher_->Cancel(*id, EndReason::kClientRequest), CancelResult::kCancelled);
  Completion c = Await(cookie);
  EXPECT_EQ(c.state, OpState::kCancelled);
  EXPECT_EQ(c.bytes_done, 0u);
  ASSERT_EQ(::write(f.raw, "late", 4), 4);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a zombie read would take it now
  EXPECT_EQ(BytesInPipe(f.raw), 4);
}

// File reads give what Submit gives, whichever way each is run: positional
// ones may run inline (if the file system reads without blocking), a read
// across end-of-file is redone on the backend, and reads at the file
// position are never run inline (an attempt would move the position).
TEST_P(ConformanceTest, RunOrSubmitFileReadsMatchSubmit) {
  MakeFile("inline-ten", "0123456789");
  const uint32_t h = OpenOk("inline-ten", O_RDONLY);
  Completion whole = RunOrSubmit(Read(h, Buffer(4), 4, 2), false);
  EXPECT_EQ(whole.result, 4);
  EXPECT_EQ(whole.data, "2345");
  Completion part = RunOrSubmit(Read(h, Buffer(100), 100, 6), false);
  EXPECT_EQ(part.result, 4);
  EXPECT_EQ(part.data, "6789");
  EXPECT_EQ(RunOrSubmit(Read(h, Buffer(100), 100, 10), false).result, 0);
  EXPECT_EQ(RunOrSubmit(Read(h, Buffer(3), 3, -1), false).data, "012");
  EXPECT_EQ(RunOrSubmit(Read(h, Buffer(3), 3, -1), false).data, "345");
}

// Cancel after completion: from within the completion (finished, not yet
// retired) the answer is kAlreadyDone; once the slot is retired, kNotFound.
TEST_P(ConformanceTest, CancelAfterCompletion) {
  std::atomic<int> in_callback{-1};
  sink_.SetHook([&](const core::Op& op) {
    in_callback = static_cast<int>(dispatcher_->Cancel(op.id(), EndReason::kClientRequest));
  });
  uint64_t cookie;
  absl::StatusOr<OpId> id = Start(Nop(), &cookie);
  ASSERT_TRUE(id.ok());
  Completion c = Await(cookie);
  sink_.SetHook(nullptr);
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(in_callback.load(), static_cast<int>(CancelResult::kAlreadyDone));
  ASSERT_TRUE(WaitRetired());
  EXPECT_EQ(dispatcher_->Cancel(*id, EndReason::kClientRequest), CancelResult::kNotFound);
}

// Cancelling twice: the first answer is kCancelled, the second kCancelled (an
// end is already pending) or, if the op ended in between, kAlreadyDone or
// kNotFound; either way the op completes exactly once, cancelled.
TEST_P(ConformanceTest, CancelTwiceCompletesOnce) {
  Fifo f = MakeFifo("twice");
  uint64_t cookie;
  const OpId id = StartBlockedRead(f, &cookie);
  EXPECT_EQ(dispatcher_->Cancel(id, EndReason::kClientRequest), CancelResult::kCancelled);
  const CancelResult second = dispatcher_->Cancel(id, EndReason::kOperatorRequest);
  EXPECT_TRUE(second == CancelResult::kCancelled || second == CancelResult::kAlreadyDone ||
              second == CancelResult::kNotFound)
      << core::Name(second);
  Completion c = Await(cookie);
  EXPECT_EQ(c.state, OpState::kCancelled);
  ASSERT_TRUE(WaitRetired());
  EXPECT_EQ(sink_.Get(cookie)->times, 1);
}

// A stale id (its op finished and the slot was reused) is kNotFound, and the
// op now in that slot is unaffected.
TEST_P(ConformanceTest, CancelStaleIdIsNotFound) {
  Fifo f = MakeFifo("stale");
  ASSERT_TRUE(WaitRetired());  // the FIFO's open: its slot must not be the one reused below
  uint64_t c1;
  absl::StatusOr<OpId> old_id = Start(Nop(), &c1);
  ASSERT_TRUE(old_id.ok());
  Await(c1);
  ASSERT_TRUE(WaitRetired());
  uint64_t c2;
  const OpId new_id = StartBlockedRead(f, &c2);
  EXPECT_EQ(new_id.slot(), old_id->slot()) << "precondition: the slot was reused";
  EXPECT_NE(new_id.generation(), old_id->generation());

  EXPECT_EQ(dispatcher_->Cancel(*old_id, EndReason::kClientRequest), CancelResult::kNotFound);
  auto snap = registry_.Snapshot(new_id);
  ASSERT_TRUE(snap.has_value());
  EXPECT_FALSE(snap->end_requested);
  EXPECT_EQ(snap->state, OpState::kRunning);

  ASSERT_EQ(::write(f.raw, "n", 1), 1);
  Completion c = Await(c2);
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.data, "n");
}

// Bulk cancel of 500 reads blocked on one FIFO, by walking the session's slots:
// every answer is kCancelled, every op ends kCancelled exactly once, no byte
// written afterwards is consumed, and no slot is leaked.
TEST_P(ConformanceTest, BulkCancelOfBlockedReads) {
  constexpr int kOps = 500;
  Fifo f = MakeFifo("bulk");
  ASSERT_TRUE(WaitRetired());  // the FIFO's open
  std::vector<uint64_t> cookies(kOps);
  for (auto& cookie : cookies) {
    absl::StatusOr<OpId> id = Start(Read(f.handle, Buffer(1), 1, -1), &cookie);
    ASSERT_TRUE(id.ok()) << id.status();
  }
  ASSERT_EQ(session_->live_ops(), static_cast<uint32_t>(kOps));
  core::CancelCounts counts;
  session_->ForEachSlot([&](core::Op& op) {
    counts.Add(dispatcher_->Cancel(op, op.generation(), EndReason::kOperatorRequest));
  });
  EXPECT_EQ(counts.cancelled, static_cast<uint32_t>(kOps));
  EXPECT_EQ(counts.not_cancellable + counts.already_done + counts.not_found, 0u);
  ASSERT_TRUE(sink_.WaitAll(cookies));
  for (uint64_t cookie : cookies) {
    Completion c = *sink_.Get(cookie);
    EXPECT_EQ(c.state, OpState::kCancelled);
    EXPECT_EQ(c.bytes_done, 0u);
  }
  ASSERT_TRUE(WaitRetired());
  ASSERT_EQ(::write(f.raw, "xyz", 3), 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a zombie read would take it now
  EXPECT_EQ(BytesInPipe(f.raw), 3);
}

// A running open that may create (O_CREAT) is not cancel-safe: while it is
// blocked (the FIFO it opens for writing has no reader), cancel answers
// kNotCancellable, and once a reader arrives it completes normally.
TEST_P(ConformanceTest, RunningCreatingOpenIsNotCancellable) {
  ASSERT_EQ(::mkfifo(InRoot("noreader").c_str(), 0600), 0);
  uint64_t cookie;
  absl::StatusOr<OpId> id = Start(Open("noreader", O_WRONLY | O_CREAT), &cookie);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(WaitForState(*id, OpState::kRunning));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it block in the kernel
  EXPECT_EQ(dispatcher_->Cancel(*id, EndReason::kClientRequest), CancelResult::kNotCancellable);
  EXPECT_FALSE(sink_.Get(cookie).has_value()) << "the open ended without a reader";

  const int reader = ::open(InRoot("noreader").c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(reader, 0) << std::strerror(errno);
  owned_fds_.push_back(reader);
  Completion c = Await(cookie);
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_GT(c.result, 0) << "a completed open yields a handle";
  EXPECT_EQ(session_->handles().open_count(), 1u);
}

// Pipe and FIFO writes are cancel-safe (they may wait forever and leave
// nothing half-done beyond the bytes reported): a write blocked on a full
// FIFO is interrupted by a cancel without anyone draining the FIFO, reports
// no bytes, and its payload never reaches the FIFO.
TEST_P(ConformanceTest, CancelBlockedFifoWrite) {
  Fifo f = MakeFifo("full", O_WRONLY);
  // Fill the pipe through the test's non-blocking end.
  const std::string chunk(4096, 'f');
  size_t filled = 0;
  for (;;) {
    const ssize_t n = ::write(f.raw, chunk.data(), chunk.size());
    if (n < 0) {
      ASSERT_EQ(errno, EAGAIN);
      break;
    }
    filled += n;
  }
  char* payload = Buffer(4096);
  std::memset(payload, 'P', 4096);
  uint64_t cookie;
  absl::StatusOr<OpId> id = Start(Write(f.handle, payload, 4096, -1), &cookie);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(WaitForState(*id, OpState::kRunning));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it block in the kernel
  EXPECT_EQ(dispatcher_->Cancel(*id, EndReason::kClientRequest), CancelResult::kCancelled);
  Completion c = Await(cookie);  // nobody drains: the cancel itself must end it
  EXPECT_EQ(c.state, OpState::kCancelled);
  EXPECT_EQ(c.bytes_done, 0u) << "a PIPE_BUF-sized pipe write is all or nothing";
  EXPECT_LE(c.result, 0) << "reported as bytes written, but it was cancelled with none";

  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a zombie write would land now
  std::vector<char> buf(65536);
  size_t drained = 0, payload_bytes = 0;
  for (ssize_t n; (n = ::read(f.raw, buf.data(), buf.size())) > 0;) {
    for (ssize_t i = 0; i < n; ++i) payload_bytes += buf[i] == 'P';
    drained += n;
  }
  EXPECT_EQ(drained, filled);
  EXPECT_EQ(payload_bytes, 0u) << "the cancelled write still wrote";
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(BytesInPipe(f.raw), 0) << "the cancelled write still wrote once there was room";
}

// =============================================================================
// Deadlines
// =============================================================================

// A FIFO read whose deadline passes ends kTimedOut (not cancelled, not
// completed), without consuming data written later.
TEST_P(ConformanceTest, DeadlineEndsBlockedReadAsTimedOut) {
  Fifo f = MakeFifo("deadline");
  OpRequest r = Read(f.handle, Buffer(8), 8, -1);
  r.params.deadline_ns = core::MonoNanos() + 50'000'000;
  uint64_t cookie;
  absl::StatusOr<OpId> id = Start(r, &cookie);
  ASSERT_TRUE(id.ok()) << id.status();
  Completion c = Await(cookie);
  EXPECT_EQ(c.state, OpState::kTimedOut);
  EXPECT_EQ(c.bytes_done, 0u);
  ASSERT_EQ(::write(f.raw, "d", 1), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(BytesInPipe(f.raw), 1);
}

// A pending timeout op also honours its deadline: kTimedOut.
TEST_P(ConformanceTest, DeadlineEndsLongTimeout) {
  OpRequest r = Timeout(int64_t{3600} * 1'000'000'000);
  r.params.deadline_ns = core::MonoNanos() + 50'000'000;
  Completion c = Run(r);
  EXPECT_EQ(c.state, OpState::kTimedOut);
}

// A deadline that passes while a non-cancel-safe op is running does not end
// it: the blocked O_CREAT open of a reader-less FIFO completes once a reader
// arrives.
TEST_P(ConformanceTest, DeadlineDoesNotEndRunningNonCancelSafeOp) {
  ASSERT_EQ(::mkfifo(InRoot("late-reader").c_str(), 0600), 0);
  OpRequest r = Open("late-reader", O_WRONLY | O_CREAT);
  r.params.deadline_ns = core::MonoNanos() + 200'000'000;
  uint64_t cookie;
  absl::StatusOr<OpId> id = Start(r, &cookie);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(WaitForState(*id, OpState::kRunning));
  if (auto snap = registry_.Snapshot(*id); !snap || snap->end_requested) {
    GTEST_SKIP() << "the deadline passed before the open started (a very slow machine)";
  }
  ASSERT_TRUE(WaitUntil([&] { return core::MonoNanos() > r.params.deadline_ns + 50'000'000; }));
  EXPECT_FALSE(sink_.Get(cookie).has_value()) << "the deadline ended a running O_CREAT open";
  const int reader = ::open(InRoot("late-reader").c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(reader, 0) << std::strerror(errno);
  owned_fds_.push_back(reader);
  Completion c = Await(cookie);
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_GT(c.result, 0);
}

// A deadline that passes while an op waits in the thread pool's queue ends it
// kTimedOut without running it.
TEST_P(ConformanceTest, DeadlineEndsQueuedOp) {
  if (dispatcher_->RouteFor(OpKind::kRead) != BackendKind::kThreadPool ||
      dispatcher_->RouteFor(OpKind::kWrite) != BackendKind::kThreadPool) {
    GTEST_SKIP() << "reads and writes run on io_uring here, which starts ops as it takes "
                    "them: no queued state for a deadline to end";
  }
  const uint32_t h = OpenOk("never-written", O_WRONLY | O_CREAT);
  const std::vector<uint64_t> blockers = HoldWorkers("queue-deadline");
  OpRequest w = Write(h, "late", 4, 0);
  w.params.deadline_ns = core::MonoNanos() + 50'000'000;
  uint64_t wcookie;
  absl::StatusOr<OpId> wid = Start(w, &wcookie);
  ASSERT_TRUE(wid.ok()) << wid.status();
  auto snap = registry_.Snapshot(*wid);
  ASSERT_TRUE(snap.has_value());
  ASSERT_EQ(snap->state, OpState::kDispatched) << "the write started with every worker its session may use held";
  Completion c = Await(wcookie);  // the workers are still held
  EXPECT_EQ(c.state, OpState::kTimedOut);
  EXPECT_EQ(Slurp(InRoot("never-written")), "");
  ReleaseWorkers("queue-deadline");
  ASSERT_TRUE(sink_.WaitAll(blockers));
}

// An op whose deadline has passed when the backend takes it ends kTimedOut
// without running, however idle the backend (the pool's timer thread may
// not have reached it; a pool worker may take it first).
TEST_P(ConformanceTest, DeadlinePassedBeforeStartNeverRuns) {
  constexpr int kOps = 100;
  std::vector<std::string> paths(kOps);
  std::vector<uint64_t> cookies(kOps);
  for (int i = 0; i < kOps; ++i) {
    paths[i] = "late" + std::to_string(i);
    OpRequest r = Mkdir(paths[i].c_str(), 0700);
    r.params.deadline_ns = core::MonoNanos() - 1;
    absl::StatusOr<OpId> id = Start(r, &cookies[i]);
    ASSERT_TRUE(id.ok()) << id.status();
  }
  for (int i = 0; i < kOps; ++i) {
    EXPECT_EQ(Await(cookies[i]).state, OpState::kTimedOut) << i;
    EXPECT_FALSE(Exists(InRoot(paths[i]))) << i;
  }
}

// Fast ops with a far deadline complete normally.
TEST_P(ConformanceTest, FarDeadlineDoesNotAffectFastOps) {
  MakeFile("fast", "fast");
  const int64_t far = core::MonoNanos() + int64_t{3600} * 1'000'000'000;
  OpRequest nop = Nop();
  nop.params.deadline_ns = far;
  EXPECT_EQ(Run(nop).state, OpState::kCompleted);
  OpRequest open = Open("fast", O_RDONLY);
  open.params.deadline_ns = far;
  Completion o = Run(open);
  EXPECT_EQ(o.state, OpState::kCompleted);
  ASSERT_GT(o.result, 0);
  OpRequest read = Read(static_cast<uint32_t>(o.result), Buffer(8), 8, 0);
  read.params.deadline_ns = far;
  Completion r = Run(read);
  EXPECT_EQ(r.state, OpState::kCompleted);
  EXPECT_EQ(r.data, "fast");
}

// =============================================================================
// Session teardown
// =============================================================================

// Closing a session with blocked reads cancels them all (each exactly once),
// closes its handles, retires every slot, and the session leaves the registry.
TEST_P(ConformanceTest, CloseSessionCancelsBlockedOps) {
  constexpr int kReads = 8;
  Fifo f = MakeFifo("teardown");
  MakeFile("open-file", "x");
  OpenOk("open-file", O_RDONLY);
  // The opens' slots retire just after their completions are delivered: let
  // them, or the close may count one as already done.
  ASSERT_TRUE(WaitRetired());
  // More reads than pool threads: some block in the kernel, some wait queued.
  std::vector<uint64_t> cookies(kReads);
  std::vector<OpId> ids;
  for (auto& cookie : cookies) {
    absl::StatusOr<OpId> id = Start(Read(f.handle, Buffer(1), 1, -1), &cookie);
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  ASSERT_TRUE(WaitForState(ids.front(), OpState::kRunning));
  const uint32_t sessions_before = registry_.session_count();

  absl::StatusOr<core::CancelCounts> counts =
      dispatcher_->CloseSession(session_->id(), EndReason::kSessionClosed);
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(counts->cancelled, static_cast<uint32_t>(kReads));
  EXPECT_EQ(counts->not_cancellable + counts->already_done, 0u);
  ASSERT_TRUE(sink_.WaitAll(cookies));
  for (uint64_t cookie : cookies) {
    Completion c = *sink_.Get(cookie);
    EXPECT_EQ(c.state, OpState::kCancelled);
    EXPECT_EQ(c.times, 1);
  }
  ASSERT_TRUE(WaitRetired());
  EXPECT_EQ(session_->handles().open_count(), 0u);
  EXPECT_TRUE(WaitUntil([&] { return registry_.session_count() == sessions_before - 1; }));
  EXPECT_EQ(registry_.FindSession(session_->id()), nullptr);
  // The session's descriptors are closed: only the test's own FIFO end remains.
  EXPECT_EQ(CountFdsTo(InRoot("teardown")), 1);
  EXPECT_EQ(CountFdsTo(InRoot("open-file")), 0);
  // A closed session takes no more ops.
  uint64_t cookie;
  EXPECT_EQ(Start(Nop(), &cookie).status().code(), absl::StatusCode::kFailedPrecondition);
}

// A session ended while cancels of its ops are still queued in a backend,
// and then dropped by everyone: the session's memory (op slots included)
// must outlive the backend's look at those cancels. ASan finds a miss (the
// soak test first did).
TEST_P(ConformanceTest, SessionGoneWhileItsCancelsAreQueuedIsSafe) {
  constexpr int kRounds = 300;
  constexpr int kOps = 8;
  for (int round = 0; round < kRounds; ++round) {
    auto session = registry_.OpenSession(core::ClientInfo{"short-lived", 0, 0, 0});
    ASSERT_TRUE(session.ok()) << session.status();
    std::vector<uint64_t> cookies(kOps);
    for (int i = 0; i < kOps; ++i) {
      OpRequest r = i % 2 == 0 ? Nop() : Timeout(int64_t{3600} * 1'000'000'000);
      ASSERT_TRUE(Start(r, &cookies[i], session->get()).ok());
    }
    ASSERT_TRUE(dispatcher_->CloseSession((*session)->id(), EndReason::kSessionClosed).ok());
    session->reset();  // the backend may hold the only reference now
    ASSERT_TRUE(sink_.WaitAll(cookies));
  }
  EXPECT_TRUE(WaitUntil([&] { return registry_.session_count() == 1; }));  // the fixture's
}

// =============================================================================
// Exactly once under a cancel / complete race
// =============================================================================

// Many times: a 1-byte FIFO read, then concurrently a 1-byte write and a
// cancel. Each op completes exactly once, either kCompleted with the byte or
// kCancelled with 0 or 1 byte done; no byte is lost or duplicated (the byte is
// in the op or still in the FIFO); no slot leaks.
// Ops that nobody cancels end only as their kind and deadline allow: a
// read with a deadline completes with its data or ends TIMED_OUT; a timeout
// without one completes. Never CANCELLED, and never COMPLETED with
// ECANCELED. On io_uring a link timeout that fires as its read completes
// cancels by user_data, later, as task work: it once reached the op that
// reused the read's slot (a timeout came back COMPLETED with -ECANCELED).
TEST_P(ConformanceTest, NothingEndsEarlyWithoutACancelOrItsDeadline) {
  Fifo f = MakeFifo("storm");
  std::mt19937 rng(1204);
  constexpr int kOps = 4000;
  constexpr int kBatch = 25;
  constexpr size_t kInFlight = 400;
  std::vector<uint64_t> cookies;
  std::vector<bool> has_deadline;
  std::deque<uint64_t> waiting;
  char* bufs = Buffer(kOps);
  for (int i = 0; i < kOps;) {
    for (int b = 0; b < kBatch && i < kOps; ++b, ++i) {
      OpRequest r;
      const bool read = rng() % 2 == 0;
      if (read) {
        r = Read(f.handle, bufs + i, 1, -1);
        r.params.deadline_ns = core::MonoNanos() + (1 + rng() % 10) * 1'000'000;
      } else {
        r = Timeout(static_cast<int64_t>(rng() % 3'000'000));
      }
      uint64_t cookie;
      ASSERT_TRUE(Start(r, &cookie).ok());
      cookies.push_back(cookie);
      has_deadline.push_back(read);
      waiting.push_back(cookie);
    }
    // Fewer bytes than reads: about half the reads meet their deadline.
    const std::string data(rng() % 13, 'x');
    if (!data.empty()) {
      ASSERT_EQ(::write(f.raw, data.data(), data.size()), ssize_t(data.size()));
    }
    while (waiting.size() > kInFlight) {
      ASSERT_TRUE(sink_.Wait(waiting.front()).has_value());
      waiting.pop_front();
    }
  }
  ASSERT_TRUE(sink_.WaitAll(cookies));
  int timed_out = 0, read_data = 0;
  for (size_t i = 0; i < cookies.size(); ++i) {
    const Completion c = *sink_.Get(cookies[i]);
    EXPECT_NE(c.state, OpState::kCancelled) << "op " << i << " was never cancelled";
    if (c.state == OpState::kCompleted) {
      EXPECT_NE(c.result, -ECANCELED) << "op " << i << " " << core::Name(c.kind);
    }
    if (has_deadline[i]) {
      EXPECT_TRUE(c.state == OpState::kTimedOut || (c.state == OpState::kCompleted && c.result == 1))
          << "read " << i << ": " << core::Name(c.state) << " " << c.result;
      if (c.state == OpState::kTimedOut) {
        ++timed_out;
      } else {
        ++read_data;
      }
    } else {
      EXPECT_EQ(c.state, OpState::kCompleted) << "timeout " << i;
      EXPECT_EQ(c.result, 0) << "timeout " << i;
    }
  }
  EXPECT_GT(timed_out, 0);
  EXPECT_GT(read_data, 0);
}

// A cancel that comes after the deadline ended the op is answered
// ALREADY_DONE, and one that comes first is answered CANCELLED: the answer
// agrees with the outcome every time, around the deadline.
TEST_P(ConformanceTest, CancelNearTheDeadlineAgreesWithTheOutcome) {
  Fifo f = MakeFifo("neardeadline");
  constexpr int kOps = 300;
  int cancelled = 0, timed_out = 0;
  for (int i = 0; i < kOps; ++i) {
    OpRequest r = Read(f.handle, Buffer(1), 1, -1);
    const int64_t deadline = core::MonoNanos() + 2'000'000;
    r.params.deadline_ns = deadline;
    uint64_t cookie;
    absl::StatusOr<OpId> id = Start(r, &cookie);
    ASSERT_TRUE(id.ok());
    // Land the cancel within +-150 us of the deadline.
    const int64_t at = deadline - 150'000 + (i * 7919) % 300'000;
    while (core::MonoNanos() < at) {
    }
    const CancelResult answer = dispatcher_->Cancel(*id, EndReason::kClientRequest);
    Completion c = Await(cookie);
    if (c.state == OpState::kCancelled) {
      ++cancelled;
      EXPECT_EQ(answer, CancelResult::kCancelled) << "op " << i;
    } else {
      ++timed_out;
      EXPECT_EQ(c.state, OpState::kTimedOut) << "op " << i;
      EXPECT_TRUE(answer == CancelResult::kAlreadyDone || answer == CancelResult::kNotFound)
          << "op " << i << " answered " << core::Name(answer) << " but timed out";
    }
  }
  EXPECT_GT(cancelled + timed_out, 0);
}

// A blocking open of a FIFO waits for its peer, on every backend (the
// ring's inline attempt would answer ENXIO to a writer at once, and let a
// reader through), completes when the peer arrives, and a cancel ends the
// wait.
TEST_P(ConformanceTest, BlockingOpenOfAFifoWaitsForItsPeer) {
  const std::string path = InRoot("lonely");
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  for (uint32_t access : {uint32_t{O_WRONLY}, uint32_t{O_RDONLY}}) {
    uint64_t cookie;
    absl::StatusOr<OpId> id = Start(Open("lonely", access), &cookie);
    ASSERT_TRUE(id.ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_FALSE(sink_.Get(cookie).has_value()) << "opened without a peer";
    // The peer arrives (without waiting itself: ours is there already).
    const int peer = ::open(path.c_str(), (access == O_WRONLY ? O_RDONLY : O_WRONLY) | O_NONBLOCK |
                                              O_CLOEXEC);
    ASSERT_GE(peer, 0) << std::strerror(errno);
    owned_fds_.push_back(peer);
    const Completion c = Await(cookie);
    EXPECT_EQ(c.state, OpState::kCompleted);
    EXPECT_GT(c.result, 0) << std::strerror(static_cast<int>(-c.result));
    if (c.result > 0) Run(Close(static_cast<uint32_t>(c.result)));
    ::close(owned_fds_.back());
    owned_fds_.pop_back();
  }
  uint64_t cookie;
  absl::StatusOr<OpId> id = Start(Open("lonely", O_WRONLY), &cookie);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(WaitForState(*id, OpState::kRunning));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(RunCancelled(*id, cookie).state, OpState::kCancelled);
}

// A 1 MiB write to a blocking pipe returns once all of it is written (the
// reader drains it meanwhile), as write(2) does, on every backend.
TEST_P(ConformanceTest, WriteToABlockingPipeWritesEverything) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  owned_fds_.push_back(fds[0]);
  absl::StatusOr<uint32_t> h = session_->handles().Insert(fds[1]);
  ASSERT_TRUE(h.ok());
  constexpr uint32_t kLen = 1 << 20;
  char* data = Buffer(kLen);
  std::memset(data, 'w', kLen);
  uint64_t cookie;
  ASSERT_TRUE(Start(Write(*h, data, kLen, -1), &cookie).ok());
  std::atomic<size_t> drained{0};
  std::atomic<bool> done{false};
  std::thread reader([&] {
    char buf[65536];
    pollfd p{fds[0], POLLIN, 0};
    while (!done.load() || ::poll(&p, 1, 0) > 0) {
      if (::poll(&p, 1, 10) <= 0) continue;
      const ssize_t n = ::read(fds[0], buf, sizeof(buf));
      if (n > 0) drained += static_cast<size_t>(n);
    }
  });
  const Completion c = Await(cookie);
  done = true;
  reader.join();
  EXPECT_EQ(c.state, OpState::kCompleted);
  EXPECT_EQ(c.result, kLen);
  EXPECT_EQ(c.bytes_done, kLen);
  EXPECT_EQ(drained, kLen);
}

TEST_P(ConformanceTest, CancelCompleteRaceIsExactlyOnce) {
  Fifo f = MakeFifo("race");
  // One writer thread for the whole run, released by `round`, so the write and
  // the cancel really start together; per-round delays on either side move
  // the winner around.
  std::atomic<int> round{-1};
  std::atomic<int> written{0};
  std::atomic<bool> stop{false};
  // Busy-waits about `ns` (no sleep: the point is to land inside a window).
  auto spin = [](int64_t ns) {
    const int64_t end = core::MonoNanos() + ns;
    while (core::MonoNanos() < end) {
    }
  };
  std::thread writer([&] {
    int seen = -1;
    for (;;) {
      int r;
      while ((r = round.load(std::memory_order_acquire)) == seen) {
        if (stop.load(std::memory_order_acquire)) return;
      }
      seen = r;
      spin((r * 7919) % 20'000);
      EXPECT_EQ(::write(f.raw, "b", 1), 1);
      written.fetch_add(1, std::memory_order_release);
    }
  });
  int completed = 0, cancelled_empty = 0, cancelled_with_byte = 0;
  for (int i = 0; i < kRaceIterations; ++i) {
    uint64_t cookie;
    absl::StatusOr<OpId> id = Start(Read(f.handle, Buffer(1), 1, -1), &cookie);
    ASSERT_TRUE(id.ok()) << id.status();
    if (i % 2 == 0) WaitForState(*id, OpState::kRunning);
    round.store(i, std::memory_order_release);
    spin((i * 104729) % 150'000);  // 0-150 us: cancel before, during or after the read
    const CancelResult answer = dispatcher_->Cancel(*id, EndReason::kClientRequest);
    Completion c = Await(cookie);
    ASSERT_TRUE(c.arrived()) << "iteration " << i;
    ASSERT_TRUE(WaitUntil([&] { return written.load(std::memory_order_acquire) == i + 1; }));
    EXPECT_NE(answer, CancelResult::kNotCancellable) << "reads are always cancel-safe";
    const int left = BytesInPipe(f.raw);
    if (c.state == OpState::kCompleted) {
      ++completed;
      EXPECT_NE(answer, CancelResult::kCancelled) << "answered cancelled, ended completed";
      EXPECT_EQ(c.result, 1);
      EXPECT_EQ(c.bytes_done, 1u);
      EXPECT_EQ(c.data, "b");
      EXPECT_EQ(left, 0) << "iteration " << i;
    } else {
      ASSERT_EQ(c.state, OpState::kCancelled) << "iteration " << i;
      EXPECT_EQ(answer, CancelResult::kCancelled);
      EXPECT_LE(c.bytes_done, 1u);
      EXPECT_EQ(left + c.bytes_done, 1u) << "iteration " << i << ": a byte was lost or doubled";
      ++(c.bytes_done ? cancelled_with_byte : cancelled_empty);
    }
    // Empty the FIFO for the next round.
    char b;
    while (::read(f.raw, &b, 1) == 1) {
    }
    if (HasFailure()) break;
  }
  stop.store(true, std::memory_order_release);
  writer.join();
  ASSERT_TRUE(WaitRetired()) << "a slot leaked";
  EXPECT_EQ(sink_.duplicates(), 0);
  RecordProperty("completed", completed);
  RecordProperty("cancelled_empty", cancelled_empty);
  RecordProperty("cancelled_with_byte", cancelled_with_byte);
  std::printf("[ race     ] completed=%d cancelled=%d cancelled_with_byte=%d\n", completed,
              cancelled_empty, cancelled_with_byte);
}

}  // namespace
}  // namespace asyncd
