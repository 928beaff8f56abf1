// Races submit, complete, cancel, listing and session teardown against each
// other. Invariant (liburing's cancel-race.c, for our registry): every
// accepted op reaches exactly one terminal state, and afterwards no slot and
// no session is left behind.
#include <fcntl.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "src/core/dispatcher.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::core {
namespace {

constexpr int kSubmitters = 3;
constexpr int kOpsPerSubmitter = 40000;
constexpr int kCookies = kSubmitters * kOpsPerSubmitter;

class CountingSink : public CompletionSink {
 public:
  void OnComplete(const Op& op) noexcept override {
    const OpState s = op.state();
    if (!IsTerminal(s)) bad_state.fetch_add(1);
    counts[op.cookie].fetch_add(1, std::memory_order_relaxed);
  }
  std::vector<std::atomic<uint32_t>> counts = std::vector<std::atomic<uint32_t>>(kCookies);
  std::atomic<uint64_t> bad_state{0};
};

TEST(RegistryStressTest, EveryOpEndsExactlyOnceAndNothingLeaks) {
  Registry registry(Registry::Options{.max_sessions = 64, .max_ops_per_session = 4096});
  Dispatcher dispatcher(registry, AT_FDCWD);
  // Completes ops on its own threads, in a shuffled order.
  mocks::FakeBackend backend(
      dispatcher, {.completion = mocks::FakeBackend::Completion::kOnWorkers, .result = 1,
                   .workers = 2});
  dispatcher.SetBackends({&backend});
  CountingSink sink;
  std::vector<std::atomic<bool>> accepted(kCookies);
  std::atomic<uint64_t> recent_ids[64] = {};
  std::atomic<bool> done{false};
  std::atomic<uint64_t> listed{0}, cancels{0}, closes{0};

  std::vector<std::thread> threads;
  for (int t = 0; t < kSubmitters; ++t) {
    threads.emplace_back([&, t] {
      std::minstd_rand rng(100 + t);
      std::shared_ptr<Session> session;
      for (int i = 0; i < kOpsPerSubmitter; ++i) {
        if (session == nullptr) session = *registry.OpenSession({"stress", 0, 0, 0});
        const uint64_t cookie = uint64_t(t) * kOpsPerSubmitter + i;
        const OpKind kind = (rng() % 2) ? OpKind::kWrite : OpKind::kRead;
        // Ops without handles keep the test about the registry, not descriptors.
        OpRequest req{.kind = kind == OpKind::kWrite ? OpKind::kMkdir : OpKind::kTimeout,
                      .sink = &sink, .cookie = cookie};
        auto id = dispatcher.Submit(*session, req);
        if (id.ok()) {
          accepted[cookie] = true;
          recent_ids[rng() % 64].store(id->value, std::memory_order_relaxed);
        }
        if (rng() % 2000 == 0) {  // tear the session down with its ops in flight
          (void)dispatcher.CloseSession(session->id(), EndReason::kSessionClosed);
          closes.fetch_add(1);
          session.reset();
        }
      }
      if (session) (void)dispatcher.CloseSession(session->id(), EndReason::kSessionClosed);
    });
  }
  threads.emplace_back([&] {  // canceller
    std::minstd_rand rng(7);
    while (!done) {
      const uint64_t id = recent_ids[rng() % 64].load(std::memory_order_relaxed);
      if (id != 0) dispatcher.Cancel(OpId{id}, EndReason::kOperatorRequest);
      cancels.fetch_add(1);
    }
  });
  threads.emplace_back([&] {  // operator listing everything
    while (!done) {
      registry.ForEach([&](const OpSnapshot& s, const auto&) {
        EXPECT_NE(s.state, OpState::kFree);
        EXPECT_TRUE(s.kind == OpKind::kMkdir || s.kind == OpKind::kTimeout);
        listed.fetch_add(1, std::memory_order_relaxed);
        return true;
      });
    }
  });
  for (int t = 0; t < kSubmitters; ++t) threads[t].join();
  // Everything submitted is closed: wait for the backend to drain.
  for (int i = 0; i < 20000 && registry.session_count() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  done = true;
  for (size_t t = kSubmitters; t < threads.size(); ++t) threads[t].join();

  uint64_t n_accepted = 0;
  for (int c = 0; c < kCookies; ++c) {
    const uint32_t n = sink.counts[c].load();
    if (accepted[c]) {
      ++n_accepted;
      ASSERT_EQ(n, 1u) << "op " << c << " completed " << n << " times";
    } else {
      ASSERT_EQ(n, 0u) << "refused op " << c << " completed";
    }
  }
  EXPECT_EQ(sink.bad_state.load(), 0u);
  EXPECT_EQ(registry.session_count(), 0u);
  EXPECT_EQ(registry.live_ops(), 0u);
  EXPECT_GT(n_accepted, uint64_t{kCookies} / 2);
  EXPECT_GT(listed.load(), 0u);
  EXPECT_GT(closes.load(), 0u);
  RecordProperty("accepted", std::to_string(n_accepted));
}

}  // namespace
}  // namespace asyncd::core
