// The Drainer (daemon/drain.h) over a real core::Registry and Dispatcher with
// the fake backend (an interrupt ends a held op at once, as a real backend
// does): ops that may block are cancelled at once, bounded ones get the
// grace and are cancelled when it ends, a started non-cancellable op runs to
// completion; the result counts them and a manifest lists what was
// cancelled; every later drain gets the first one's result; health turns
// NOT_SERVING; the drain thread is joined, never left running.
#include "daemon/drain.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "src/core/clock.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::daemon {
namespace {

using mocks::FakeBackend;
using std::chrono::milliseconds;

constexpr uint32_t kLongGraceMs = 60'000;

int ThreadCount() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

// Polls `done` for up to 10 s.
template <typename F>
bool Eventually(F done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

// What the Drain RPC would have answered, and on which thread.
struct Answer {
  std::atomic<int> calls{0};
  v1::DrainResponse result;
  std::thread::id thread;
  Drainer::Done Callback() {
    return [this](const v1::DrainResponse& r) {
      result = r;
      thread = std::this_thread::get_id();
      calls.fetch_add(1, std::memory_order_release);
    };
  }
  bool answered() const { return calls.load(std::memory_order_acquire) > 0; }
};

class RecordingHealth final : public grpc::HealthCheckServiceInterface {
 public:
  void SetServingStatus(const std::string&, bool) override {}
  void SetServingStatus(bool serving) override { serving_.store(serving ? 1 : 0); }
  int serving() const { return serving_.load(); }  // -1 = never set

 private:
  std::atomic<int> serving_{-1};
};

class DrainTest : public ::testing::Test {
 protected:
  DrainTest() {
    char tmpl[] = "/tmp/asyncd-drain-XXXXXX";
    state_dir_ = mkdtemp(tmpl);
    dispatcher_.SetBackends({&backend_});
    session_ = *registry_.OpenSession({"db", 1000, 1000, 1});
    drainer_ = std::make_unique<Drainer>(registry_, dispatcher_, state_dir_);
  }
  ~DrainTest() override {
    backend_.CompleteAll(0);
    drainer_.reset();
    std::filesystem::remove_all(state_dir_);
  }

  core::OpId Submit(core::OpKind kind) {
    absl::StatusOr<core::OpId> id = dispatcher_.Submit(*session_, {.kind = kind});
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : core::OpId{};
  }

  std::string state_dir_;
  core::Registry registry_;
  core::Dispatcher dispatcher_{registry_, -1};
  FakeBackend backend_{dispatcher_,
                       {.completion = FakeBackend::Completion::kHeld,
                        .on_interrupt = FakeBackend::OnInterrupt::kCompleteCancelled}};
  std::shared_ptr<core::Session> session_;
  std::unique_ptr<Drainer> drainer_;
};

TEST_F(DrainTest, BlockingOpsAreCancelledAtOnceAndBoundedOnesGetTheGrace) {
  Submit(core::OpKind::kTimeout);  // may block forever
  Submit(core::OpKind::kTimeout);
  const core::OpId bounded = Submit(core::OpKind::kNop);
  Answer answer;
  drainer_->Start(kLongGraceMs, answer.Callback());
  ASSERT_TRUE(Eventually([&] { return backend_.held_count() == 1; }));
  EXPECT_FALSE(registry_.Snapshot(bounded)->end_requested);  // within its grace
  EXPECT_FALSE(answer.answered());
  backend_.CompleteAll(0);  // it finishes during the grace
  ASSERT_TRUE(Eventually([&] { return answer.answered(); }));
  EXPECT_EQ(answer.result.inflight_at_start(), 3u);
  EXPECT_EQ(answer.result.cancelled(), 2u);
  EXPECT_EQ(answer.result.completed_during_grace(), 1u);
}

TEST_F(DrainTest, BoundedOpsAreCancelledWhenTheGraceEnds) {
  Submit(core::OpKind::kNop);
  const auto start = std::chrono::steady_clock::now();
  const v1::DrainResponse result = drainer_->DrainAndWait(100);
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(100));
  EXPECT_EQ(result.inflight_at_start(), 1u);
  EXPECT_EQ(result.cancelled(), 1u);
  EXPECT_EQ(result.completed_during_grace(), 0u);
  EXPECT_EQ(registry_.live_ops(), 0u);
}

TEST_F(DrainTest, StartedNonCancellableOpRunsToCompletion) {
  Submit(core::OpKind::kMkdir);
  ASSERT_TRUE(backend_.held().front()->TryStart(core::MonoNanos()));
  Answer answer;
  drainer_->Start(10, answer.Callback());
  std::this_thread::sleep_for(milliseconds(200));  // well past the grace
  EXPECT_FALSE(answer.answered());
  EXPECT_EQ(backend_.interrupts(), 0u);
  backend_.CompleteAll(0);
  ASSERT_TRUE(Eventually([&] { return answer.answered(); }));
  EXPECT_EQ(answer.result.inflight_at_start(), 1u);
  EXPECT_EQ(answer.result.cancelled(), 0u);
}

TEST_F(DrainTest, ManifestListsWhatWasCancelled) {
  const core::OpId blocking = Submit(core::OpKind::kTimeout);
  const v1::DrainResponse result = drainer_->DrainAndWait(0);
  ASSERT_FALSE(result.manifest_path().empty());
  EXPECT_EQ(result.manifest_path().rfind(state_dir_ + "/drain-manifest-", 0), 0u);
  std::ifstream in(result.manifest_path());
  std::stringstream json;
  json << in.rdbuf();
  EXPECT_NE(json.str().find(std::to_string(blocking.value)), std::string::npos) << json.str();
}

TEST_F(DrainTest, UnwritableStateDirLeavesNoManifestPath) {
  Drainer drainer(registry_, dispatcher_, "/proc/asyncd-no-such-dir");
  const v1::DrainResponse result = drainer.DrainAndWait(0);
  EXPECT_TRUE(result.manifest_path().empty());
}

TEST_F(DrainTest, EveryLaterDrainGetsTheFirstResult) {
  Submit(core::OpKind::kTimeout);
  Submit(core::OpKind::kNop);
  Answer first, second;
  drainer_->Start(kLongGraceMs, first.Callback());
  drainer_->Start(1, second.Callback());  // its grace is not used: the first drain's is
  ASSERT_TRUE(Eventually([&] { return drainer_->draining(); }));  // the first drain runs
  v1::DrainResponse at_shutdown;
  std::thread shutdown([&] { at_shutdown = drainer_->DrainAndWait(1); });
  ASSERT_TRUE(Eventually([&] { return backend_.held_count() == 1; }));
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_FALSE(first.answered());
  EXPECT_FALSE(second.answered());
  backend_.CompleteAll(0);
  shutdown.join();
  ASSERT_TRUE(Eventually([&] { return first.answered() && second.answered(); }));
  EXPECT_EQ(first.result.completed_during_grace(), 1u);
  EXPECT_EQ(second.result.SerializeAsString(), first.result.SerializeAsString());
  EXPECT_EQ(at_shutdown.SerializeAsString(), first.result.SerializeAsString());
  // Once it is over, a drain is answered at once, on the caller's thread.
  Answer late;
  drainer_->Start(kLongGraceMs, late.Callback());
  ASSERT_TRUE(late.answered());
  EXPECT_EQ(late.thread, std::this_thread::get_id());
  EXPECT_EQ(late.result.SerializeAsString(), first.result.SerializeAsString());
  EXPECT_EQ(first.calls.load() + second.calls.load() + late.calls.load(), 3);
}

TEST_F(DrainTest, DrainingStartsWithTheDrainAndHealthTurnsNotServing) {
  RecordingHealth health;
  drainer_->SetHealth(&health);
  EXPECT_FALSE(drainer_->draining());
  Submit(core::OpKind::kNop);
  Answer answer;
  drainer_->Start(kLongGraceMs, answer.Callback());
  ASSERT_TRUE(Eventually([&] { return drainer_->draining(); }));
  EXPECT_EQ(health.serving(), 0);
  backend_.CompleteAll(0);
  drainer_->Join();
  EXPECT_TRUE(drainer_->draining());  // for good
}

TEST_F(DrainTest, JoinWaitsForTheDrainThreadAndItsAnswers) {
  const int threads_before = ThreadCount();
  Submit(core::OpKind::kNop);
  Answer answer;
  drainer_->Start(kLongGraceMs, answer.Callback());
  EXPECT_EQ(ThreadCount(), threads_before + 1);
  std::thread finisher([&] {
    std::this_thread::sleep_for(milliseconds(100));
    backend_.CompleteAll(0);
  });
  drainer_->Join();
  EXPECT_TRUE(answer.answered());  // before Join returned
  EXPECT_NE(answer.thread, std::this_thread::get_id());
  finisher.join();
  // A joined thread may linger in /proc for a moment; one left running stays.
  EXPECT_TRUE(Eventually([&] { return ThreadCount() == threads_before; }));
}

TEST_F(DrainTest, DestructionJoinsTheDrainThread) {
  const int threads_before = ThreadCount();
  Submit(core::OpKind::kNop);
  Answer answer;
  drainer_->Start(kLongGraceMs, answer.Callback());
  std::thread finisher([&] {
    std::this_thread::sleep_for(milliseconds(100));
    backend_.CompleteAll(0);
  });
  drainer_.reset();
  EXPECT_TRUE(answer.answered());
  finisher.join();
  EXPECT_TRUE(Eventually([&] { return ThreadCount() == threads_before; }));
}

}  // namespace
}  // namespace asyncd::daemon
