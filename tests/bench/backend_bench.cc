// Per-op cost of the two backends through the Dispatcher, side by side in one
// run (the machines are noisy: compare ratios, not absolute figures):
//   - NOP and 4 KiB pread from a 64 MiB file on /dev/shm, 128 ops in flight;
//   - cancel latency of one blocked FIFO (pipe) read, p50/p99;
//   - bulk cancel (CloseSession) of blocked reads: a full pool plus a full
//     queue (8 + 4096) on both backends (arg 0), and 100,000 on io_uring.
// Run: build/ur/tests/bench/backend_bench

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "benchmark/benchmark.h"
#include "src/backends/thread_pool_backend.h"
#include "src/backends/uring_backend.h"
#include "src/core/clock.h"
#include "src/core/dispatcher.h"
#include "src/core/registry.h"

namespace asyncd::backends {
namespace {

using core::OpKind;
using core::OpRequest;

constexpr int kQueueDepth = 128;
constexpr int kBatch = 32;
constexpr uint32_t kBulkOps = 100000;
constexpr size_t kFileBytes = 64 << 20;

class CountingSink final : public core::CompletionSink {
 public:
  void OnComplete(const core::Op& op) noexcept override {
    last_ns_.store(core::MonoNanos(), std::memory_order_relaxed);
    done_.fetch_add(1, std::memory_order_release);
  }
  uint64_t done() const { return done_.load(std::memory_order_acquire); }
  int64_t last_ns() const { return last_ns_.load(std::memory_order_relaxed); }
  void WaitFor(uint64_t n) const {
    while (done() < n) std::this_thread::yield();
  }

 private:
  std::atomic<uint64_t> done_{0};
  std::atomic<int64_t> last_ns_{0};
};

/// One registry + dispatcher + backend stack. For io_uring the thread pool
/// is the fallback behind it (the dispatcher needs one that runs everything).
struct Env {
  std::unique_ptr<core::Registry> registry;
  std::unique_ptr<core::Dispatcher> dispatcher;
  std::unique_ptr<UringBackend> uring;
  std::unique_ptr<ThreadPoolBackend> pool;
  core::Backend* backend = nullptr;  // the one being measured
  std::string error;
  int root_fd = -1;

  ~Env() {
    if (uring) uring->Shutdown();
    if (pool) pool->Shutdown();
    if (root_fd >= 0) close(root_fd);
  }
};

enum class Which { kUring, kPool };

std::unique_ptr<Env> MakeEnv(Which which, ThreadPoolOptions pool_options = {}) {
  auto env = std::make_unique<Env>();
  core::Registry::Options ropts;
  ropts.max_ops_per_session = 2 * kBulkOps;
  env->registry = std::make_unique<core::Registry>(ropts);
  env->root_fd = open("/dev/shm", O_PATH | O_DIRECTORY | O_CLOEXEC);
  env->dispatcher = std::make_unique<core::Dispatcher>(*env->registry, env->root_fd);
  env->pool = std::make_unique<ThreadPoolBackend>(*env->dispatcher, pool_options);
  if (which == Which::kUring) {
    auto u = UringBackend::Create(*env->dispatcher,
                                  UringOptions{.entries = 4096, .max_ops = 2 * kBulkOps});
    if (!u.ok()) {
      env->error = std::string(u.status().message());
      return env;
    }
    env->uring = std::move(*u);
    env->backend = env->uring.get();
    env->dispatcher->SetBackends({env->uring.get(), env->pool.get()});
  } else {
    env->backend = env->pool.get();
    env->dispatcher->SetBackends({env->pool.get()});
  }
  return env;
}

std::shared_ptr<core::Session> Open(Env& env) {
  auto s = env.registry->OpenSession(core::ClientInfo{.name = "bench"});
  return s.ok() ? *s : nullptr;
}

const char* ShmFile() {
  static const std::string path = [] {
    std::string p = "/dev/shm/asyncd-bench-" + std::to_string(getpid());
    int fd = open(p.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    std::vector<char> chunk(1 << 20, 'a');
    for (size_t off = 0; off < kFileBytes; off += chunk.size()) {
      if (write(fd, chunk.data(), chunk.size()) < 0) std::abort();
    }
    close(fd);
    std::atexit([] { unlink(("/dev/shm/asyncd-bench-" + std::to_string(getpid())).c_str()); });
    return p;
  }();
  return path.c_str();
}

// Keeps kQueueDepth ops in flight; each iteration submits one batch of kBatch.
void RunPipelined(benchmark::State& state, Which which, OpKind kind) {
  auto env = MakeEnv(which);
  if (env->backend == nullptr) {
    state.SkipWithError(("io_uring unavailable: " + env->error).c_str());
    return;
  }
  auto session = Open(*env);
  CountingSink sink;
  uint32_t handle = 0;
  std::vector<char> bufs;
  if (kind == OpKind::kRead) {
    auto h = session->handles().Insert(open(ShmFile(), O_RDONLY | O_CLOEXEC));
    handle = *h;
    bufs.resize(size_t{kQueueDepth} * 4096);
  }
  std::mt19937_64 rng(1);
  std::vector<OpRequest> reqs(kBatch);
  std::vector<absl::StatusOr<core::OpId>> out(kBatch);
  uint64_t submitted = 0;
  uint64_t refused = 0;
  for (auto _ : state) {
    while (submitted - sink.done() > kQueueDepth - kBatch) std::this_thread::yield();
    for (int i = 0; i < kBatch; ++i) {
      OpRequest& r = reqs[i];
      r = OpRequest{};
      r.kind = kind;
      r.sink = &sink;
      if (kind == OpKind::kRead) {
        r.handle = handle;
        // Buffers are shared round-robin: the content is not looked at.
        r.params.buf = &bufs[((submitted + i) % kQueueDepth) * 4096];
        r.params.len = 4096;
        r.params.offset = static_cast<int64_t>((rng() % (kFileBytes / 4096)) * 4096);
      }
    }
    env->dispatcher->SubmitBatch(*session, reqs, out);
    for (auto& id : out) {
      if (id.ok()) {
        ++submitted;
      } else {
        ++refused;
      }
    }
  }
  sink.WaitFor(submitted);
  state.SetItemsProcessed(static_cast<int64_t>(submitted));
  state.counters["refused"] = static_cast<double>(refused);
}

void BM_Nop_IoUring(benchmark::State& s) { RunPipelined(s, Which::kUring, OpKind::kNop); }
void BM_Nop_ThreadPool(benchmark::State& s) { RunPipelined(s, Which::kPool, OpKind::kNop); }
void BM_Pread4K_IoUring(benchmark::State& s) { RunPipelined(s, Which::kUring, OpKind::kRead); }
void BM_Pread4K_ThreadPool(benchmark::State& s) { RunPipelined(s, Which::kPool, OpKind::kRead); }
BENCHMARK(BM_Nop_IoUring)->MinTime(1.0)->UseRealTime();
BENCHMARK(BM_Nop_ThreadPool)->MinTime(1.0)->UseRealTime();
BENCHMARK(BM_Pread4K_IoUring)->MinTime(1.0)->UseRealTime();
BENCHMARK(BM_Pread4K_ThreadPool)->MinTime(1.0)->UseRealTime();

// Session B's statx latency (submit to completion), one at a time, while
// session A keeps kQueueDepth 4 KiB reads in flight (Arg 1) or is idle (Arg
// 0). On the pool A's reads fill its share of the workers and a deep queue
// in its lane; B's statx waits for one worker, not for A's queue.
void RunStatxUnderLoad(benchmark::State& state, Which which) {
  auto env = MakeEnv(which, ThreadPoolOptions{.threads = 4});
  if (env->backend == nullptr) {
    state.SkipWithError(("io_uring unavailable: " + env->error).c_str());
    return;
  }
  auto a = Open(*env);
  auto b = Open(*env);
  const std::string name = std::string(ShmFile()).substr(std::string("/dev/shm/").size());
  std::atomic<bool> stop{false};
  CountingSink a_sink;
  uint64_t a_submitted = 0;
  std::thread loader;
  if (state.range(0) != 0) {
    const uint32_t handle = *a->handles().Insert(open(ShmFile(), O_RDONLY | O_CLOEXEC));
    loader = std::thread([&, handle] {
      std::vector<char> bufs(size_t{kQueueDepth} * 4096);
      std::mt19937_64 rng(2);
      std::vector<OpRequest> reqs(kBatch);
      std::vector<absl::StatusOr<core::OpId>> out(kBatch);
      while (!stop.load(std::memory_order_relaxed)) {
        while (a_submitted - a_sink.done() > kQueueDepth - kBatch) std::this_thread::yield();
        for (int i = 0; i < kBatch; ++i) {
          OpRequest& r = reqs[i];
          r = OpRequest{};
          r.kind = OpKind::kRead;
          r.sink = &a_sink;
          r.handle = handle;
          r.params.buf = &bufs[((a_submitted + i) % kQueueDepth) * 4096];
          r.params.len = 4096;
          r.params.offset = static_cast<int64_t>((rng() % (kFileBytes / 4096)) * 4096);
        }
        env->dispatcher->SubmitBatch(*a, reqs, out);
        for (auto& id : out) a_submitted += id.ok();
      }
    });
    while (a_sink.done() < 10 * kQueueDepth) std::this_thread::yield();  // at full load
  }
  CountingSink b_sink;
  struct statx stx;
  std::vector<double> lat_ns;
  uint64_t n = 0;
  for (auto _ : state) {
    OpRequest r;
    r.kind = OpKind::kStatx;
    r.params.path = name.c_str();
    r.params.buf = &stx;
    r.sink = &b_sink;
    const int64_t t0 = core::MonoNanos();
    if (!env->dispatcher->Submit(*b, r).ok()) {
      state.SkipWithError("statx refused");
      break;
    }
    b_sink.WaitFor(++n);
    const double ns = static_cast<double>(b_sink.last_ns() - t0);
    lat_ns.push_back(ns);
    state.SetIterationTime(ns * 1e-9);
  }
  stop.store(true);
  if (loader.joinable()) loader.join();
  a_sink.WaitFor(a_submitted);
  if (lat_ns.empty()) return;
  std::sort(lat_ns.begin(), lat_ns.end());
  state.counters["p50_us"] = lat_ns[lat_ns.size() / 2] / 1000;
  state.counters["p99_us"] = lat_ns[std::min(lat_ns.size() - 1, lat_ns.size() * 99 / 100)] / 1000;
  state.counters["a_reads"] = static_cast<double>(a_submitted);
}

void BM_StatxUnderLoad_IoUring(benchmark::State& s) { RunStatxUnderLoad(s, Which::kUring); }
void BM_StatxUnderLoad_ThreadPool(benchmark::State& s) { RunStatxUnderLoad(s, Which::kPool); }
BENCHMARK(BM_StatxUnderLoad_IoUring)->Arg(0)->Arg(1)->Iterations(5000)->UseManualTime();
BENCHMARK(BM_StatxUnderLoad_ThreadPool)->Arg(0)->Arg(1)->Iterations(5000)->UseManualTime();

bool WaitRunning(Env& env, core::OpId id) {
  for (int i = 0; i < 1000000; ++i) {
    auto snap = env.registry->Snapshot(id);
    if (!snap) return false;
    if (snap->state == core::OpState::kRunning) return true;
    std::this_thread::yield();
  }
  return false;
}

// Latency from Cancel() to the op's completion reaching its sink, for one
// read blocked on an empty pipe.
void RunCancelLatency(benchmark::State& state, Which which) {
  auto env = MakeEnv(which);
  if (env->backend == nullptr) {
    state.SkipWithError(("io_uring unavailable: " + env->error).c_str());
    return;
  }
  auto session = Open(*env);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) std::abort();
  const uint32_t handle = *session->handles().Insert(fds[0]);
  CountingSink sink;
  char buf[64];
  std::vector<double> lat_ns;
  uint64_t n = 0;
  for (auto _ : state) {
    OpRequest r;
    r.kind = OpKind::kRead;
    r.handle = handle;
    r.params.buf = buf;
    r.params.len = sizeof(buf);
    r.sink = &sink;
    auto id = env->dispatcher->Submit(*session, r);
    if (!id.ok() || !WaitRunning(*env, *id)) {
      state.SkipWithError("read did not start");
      break;
    }
    // The thread pool worker marks the op running just before it blocks in
    // ppoll; give both backends a moment to really be blocked.
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    const int64_t t0 = core::MonoNanos();
    env->dispatcher->Cancel(*id, core::EndReason::kClientRequest);
    sink.WaitFor(++n);
    const double ns = static_cast<double>(sink.last_ns() - t0);
    lat_ns.push_back(ns);
    state.SetIterationTime(ns * 1e-9);
  }
  close(fds[1]);
  if (lat_ns.empty()) return;
  std::sort(lat_ns.begin(), lat_ns.end());
  state.counters["p50_us"] = lat_ns[lat_ns.size() / 2] / 1000;
  state.counters["p99_us"] = lat_ns[std::min(lat_ns.size() - 1, lat_ns.size() * 99 / 100)] / 1000;
}

void BM_CancelLatency_IoUring(benchmark::State& s) { RunCancelLatency(s, Which::kUring); }
void BM_CancelLatency_ThreadPool(benchmark::State& s) { RunCancelLatency(s, Which::kPool); }
BENCHMARK(BM_CancelLatency_IoUring)->Iterations(2000)->UseManualTime();
BENCHMARK(BM_CancelLatency_ThreadPool)->Iterations(2000)->UseManualTime();

// Resident memory of this process, in bytes, and its thread count.
uint64_t RssBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}
size_t ThreadCount() {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) n += !e.path().empty();
  return n;
}

// Blocks `count` reads on one empty pipe, waits until the backend holds them
// all, then times CloseSession (a bulk cancel) until the last completion.
// Reports what holding them cost: resident bytes per op (the buffers' 8
// bytes included; run one benchmark per process, or it reuses memory an
// earlier one grew) and the process's threads while they were held.
void RunBulkCancel(benchmark::State& state, Which which) {
  ThreadPoolOptions popts;
  popts.threads = 8;
  popts.queue_capacity = 4096;
  auto env = MakeEnv(which, popts);
  if (env->backend == nullptr) {
    state.SkipWithError(("io_uring unavailable: " + env->error).c_str());
    return;
  }
  // Arg 0: as many as the pool's workers and queue hold (what the pool held
  // before blocked reads waited on the reactor).
  const uint32_t count = state.range(0) != 0 ? static_cast<uint32_t>(state.range(0))
                                             : popts.threads + popts.queue_capacity;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) std::abort();
  std::vector<char> bufs(size_t{count} * 8);
  uint64_t rss_growth = 0;
  for (auto _ : state) {
    auto session = Open(*env);
    const uint32_t handle = *session->handles().Insert(dup(fds[0]));
    CountingSink sink;
    std::vector<OpRequest> reqs(count);
    for (uint32_t i = 0; i < count; ++i) {
      reqs[i].kind = OpKind::kRead;
      reqs[i].handle = handle;
      reqs[i].params.buf = &bufs[size_t{i} * 8];
      reqs[i].params.len = 8;
      reqs[i].sink = &sink;
    }
    std::vector<absl::StatusOr<core::OpId>> out(count);
    const uint64_t rss_before = RssBytes();
    env->dispatcher->SubmitBatch(*session, reqs, out);
    uint64_t accepted = 0;
    for (auto& id : out) accepted += id.ok();
    // Held = everything accepted is queued or running (and not yet done).
    for (int i = 0; i < 20000; ++i) {
      const core::BackendStats st = env->backend->Stats();
      if (st.queued + st.running >= accepted &&
          (which == Which::kPool || st.running >= accepted)) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    const uint64_t rss_held = RssBytes();
    const size_t threads = ThreadCount();
    const int64_t t0 = core::MonoNanos();
    auto counts = env->dispatcher->CloseSession(session->id(), core::EndReason::kSessionClosed);
    sink.WaitFor(accepted);
    const double secs = static_cast<double>(sink.last_ns() - t0) * 1e-9;
    state.SetIterationTime(secs);
    state.counters["ops"] = static_cast<double>(accepted);
    state.counters["cancelled"] = counts.ok() ? counts->cancelled : 0;
    state.counters["us_per_op"] = secs * 1e6 / static_cast<double>(accepted);
    // The first iteration's: later ones reuse the memory it grew.
    if (rss_growth == 0) rss_growth = rss_held > rss_before ? rss_held - rss_before : 0;
    state.counters["bytes_per_op"] = static_cast<double>(rss_growth) / static_cast<double>(accepted);
    state.counters["threads"] = static_cast<double>(threads);
  }
  close(fds[0]);
  close(fds[1]);
}

void BM_BulkCancel_IoUring(benchmark::State& s) { RunBulkCancel(s, Which::kUring); }
void BM_BulkCancel_ThreadPool(benchmark::State& s) { RunBulkCancel(s, Which::kPool); }
BENCHMARK(BM_BulkCancel_IoUring)->Arg(0)->Arg(kBulkOps)->Iterations(3)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_BulkCancel_ThreadPool)->Arg(0)->Arg(kBulkOps)->Iterations(3)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace asyncd::backends

BENCHMARK_MAIN();
