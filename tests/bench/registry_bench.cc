// Registry costs against a std::mutex + std::unordered_map baseline, in one
// binary so the ratio is measured side by side. Targets: register+retire
// <= 50 ns single-threaded; a walk over 1,000,000 live ops (a brief of each,
// as a filter needs) <= 10 ms; a listing page costs O(page), not
// O(registry); <= 256 bytes of registry memory per live op.
#include <benchmark/benchmark.h>

#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "src/core/registry.h"

namespace asyncd::core {
namespace {

void FinishAndRetire(Op& op) {
  (void)op.TryStart(0);
  op.Finish(0, 0);
  op.session->Retire(op);
}

void BM_RegisterRetire(benchmark::State& state) {
  Registry registry;
  auto session = *registry.OpenSession({"bench", 0, 0, 0});
  // Warm: the steady state has its slab already.
  FinishAndRetire(**session->Register(OpKind::kRead, CancelSafety::kAlways, 1, "", 1));
  for (auto _ : state) {
    Op* op = *session->Register(OpKind::kRead, CancelSafety::kAlways, 1, "", 1);
    benchmark::DoNotOptimize(op);
    FinishAndRetire(*op);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RegisterRetire);

// Baseline: what a registry built from a global lock and a hash map costs.
struct MapRecord {
  OpKind kind;
  OpState state;
  uint32_t handle;
  int64_t submitted_ns;
  char target[40];
};

void BM_MutexMapRegisterRetire(benchmark::State& state) {
  std::mutex mu;
  std::unordered_map<uint64_t, MapRecord> map;
  uint64_t next_id = 1;
  for (auto _ : state) {
    uint64_t id;
    {
      std::lock_guard lock(mu);
      id = next_id++;
      map.emplace(id, MapRecord{OpKind::kRead, OpState::kQueued, 1, 1, "h:1"});
    }
    benchmark::DoNotOptimize(id);
    {
      std::lock_guard lock(mu);
      map.erase(id);
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MutexMapRegisterRetire);

void BM_Lookup(benchmark::State& state) {
  Registry registry;
  auto session = *registry.OpenSession({"bench", 0, 0, 0});
  std::vector<OpId> ids;
  for (int i = 0; i < 10000; ++i) {
    ids.push_back((*session->Register(OpKind::kRead, CancelSafety::kAlways, 1, "", 1))->id());
  }
  size_t i = 0;
  for (auto _ : state) {
    auto found = registry.Find(ids[i++ % ids.size()]);
    benchmark::DoNotOptimize(found.op);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Lookup);

void BM_MutexMapLookup(benchmark::State& state) {
  std::mutex mu;
  std::unordered_map<uint64_t, MapRecord> map;
  for (uint64_t id = 1; id <= 10000; ++id) map.emplace(id, MapRecord{});
  uint64_t i = 0;
  for (auto _ : state) {
    std::lock_guard lock(mu);
    auto it = map.find(1 + (i++ % 10000));
    benchmark::DoNotOptimize(it);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MutexMapLookup);

// Iterating every live op: 1,000,000 of them spread over 16 sessions.
void BM_IterateLive(benchmark::State& state) {
  const int64_t live = state.range(0);
  constexpr int kSessions = 16;
  Registry registry(Registry::Options{.max_ops_per_session = OpId::kMaxSlots});
  std::vector<std::shared_ptr<Session>> sessions;
  for (int s = 0; s < kSessions; ++s) sessions.push_back(*registry.OpenSession({"b", 0, 0, 0}));
  for (int64_t i = 0; i < live; ++i) {
    (void)sessions[i % kSessions]->Register(OpKind::kRead, CancelSafety::kAlways, 1, "", 1);
  }
  for (auto _ : state) {
    int64_t n = 0;
    registry.ForEach([&](const OpSnapshot& s, const auto&) {
      n += s.handle;
      return true;
    });
    if (n != live) state.SkipWithError("listing missed ops");
  }
  state.SetItemsProcessed(state.iterations() * live);
  // Slot and head, plus each session's fixed share (its object and slab directory).
  const double per_session =
      sizeof(Session) + sizeof(std::atomic<void*>) * (OpId::kMaxSlots / Session::kSlabSlots);
  state.counters["bytes_per_op"] = sizeof(Op) + sizeof(OpHead) + per_session * kSessions / double(live);
}
BENCHMARK(BM_IterateLive)->Arg(1'000'000)->Unit(benchmark::kMillisecond);

// 1,000,000 live ops over 16 sessions, walked with a brief of each: what a
// listing's filter reads before it takes a full snapshot of a match.
void BM_WalkLive(benchmark::State& state) {
  const int64_t live = state.range(0);
  constexpr int kSessions = 16;
  Registry registry(Registry::Options{.max_ops_per_session = OpId::kMaxSlots});
  std::vector<std::shared_ptr<Session>> sessions;
  for (int s = 0; s < kSessions; ++s) sessions.push_back(*registry.OpenSession({"b", 0, 0, 0}));
  for (int64_t i = 0; i < live; ++i) {
    (void)sessions[i % kSessions]->Register(OpKind::kRead, CancelSafety::kAlways, 1, "", 1);
  }
  for (auto _ : state) {
    int64_t n = 0;
    registry.Walk(OpId{}, [&](const Op&, const OpBrief& b, const auto&) {
      n += b.handle;
      return true;
    });
    if (n != live) state.SkipWithError("the walk missed ops");
  }
  state.SetItemsProcessed(state.iterations() * live);
}
BENCHMARK(BM_WalkLive)->Arg(1'000'000)->Unit(benchmark::kMillisecond);

// The first page (100 ops, each fully snapshotted) of a registry holding
// range(0) live ops: a walk that stops at its page costs the same whatever
// the registry holds.
void BM_FirstPage(benchmark::State& state) {
  const int64_t live = state.range(0);
  Registry registry(Registry::Options{.max_ops_per_session = OpId::kMaxSlots});
  auto session = *registry.OpenSession({"b", 0, 0, 0});
  for (int64_t i = 0; i < live; ++i) {
    (void)session->Register(OpKind::kRead, CancelSafety::kAlways, 1, "", 1);
  }
  for (auto _ : state) {
    int rows = 0;
    registry.Walk(OpId{}, [&](const Op& op, const OpBrief& b, const auto& s) {
      auto snap = Registry::Snapshot(op, s->id(), b.id.generation());
      benchmark::DoNotOptimize(snap);
      return ++rows < 100;
    });
  }
}
BENCHMARK(BM_FirstPage)->Arg(10'000)->Arg(1'000'000)->Unit(benchmark::kMicrosecond);

void BM_MutexMapIterate(benchmark::State& state) {
  const int64_t live = state.range(0);
  std::mutex mu;
  std::unordered_map<uint64_t, MapRecord> map;
  map.reserve(live);
  for (int64_t i = 0; i < live; ++i) map.emplace(i, MapRecord{.handle = 1});
  for (auto _ : state) {
    std::lock_guard lock(mu);  // and every submit waits meanwhile
    int64_t n = 0;
    for (auto& [id, rec] : map) {
      MapRecord copy = rec;
      n += copy.handle;
    }
    benchmark::DoNotOptimize(n);
  }
  state.SetItemsProcessed(state.iterations() * live);
}
BENCHMARK(BM_MutexMapIterate)->Arg(1'000'000)->Unit(benchmark::kMillisecond);

// Register+retire from two threads on two sessions: no shared lock between them.
void BM_RegisterRetireParallel(benchmark::State& state) {
  static Registry registry;  // thread-safe initialization, shared by both threads
  auto session = *registry.OpenSession({"bench", 0, 0, 0});
  for (auto _ : state) {
    Op* op = *session->Register(OpKind::kRead, CancelSafety::kAlways, 1, "", 1);
    FinishAndRetire(*op);
  }
  registry.BeginClose(session->id());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RegisterRetireParallel)->Threads(2)->UseRealTime();

void BM_MutexMapRegisterRetireParallel(benchmark::State& state) {
  static std::mutex mu;
  static std::unordered_map<uint64_t, MapRecord> map;
  static std::atomic<uint64_t> next_id{1};
  for (auto _ : state) {
    const uint64_t id = next_id.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard lock(mu);
      map.emplace(id, MapRecord{OpKind::kRead, OpState::kQueued, 1, 1, "h:1"});
    }
    std::lock_guard lock(mu);
    map.erase(id);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MutexMapRegisterRetireParallel)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace asyncd::core

BENCHMARK_MAIN();
