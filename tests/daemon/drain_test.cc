// The Drainer (daemon/drain.h) over a real core::Registry and Dispatcher with
// the fake backend (an interrupt ends a held op at once, as a real backend
// does): ops that may block are cancelled at once, bounded ones get the
// grace and are cancelled when it ends, a started non-cancellable op runs to
// completion; the result counts them. A drain that found ops in flight
// writes one manifest (a v1::DrainManifest in asyncctl's JSON: snake_case
// proto field names) listing each with its outcome, and keeps only the
// newest manifests_keep; a drain with nothing in flight, or keep 0, writes
// none. Every later drain gets the first one's result; health turns
// NOT_SERVING; on_end runs once, after the answers; the drain thread is
// joined, never left running.
#include "daemon/drain.h"

#include <dirent.h>
#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "daemon/observer.h"
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
    dispatcher_.SetObserver(&observer_);
    session_ = *registry_.OpenSession({"db", 1000, 1000, 1});
    drainer_ = std::make_unique<Drainer>(registry_, dispatcher_, Options());
  }
  ~DrainTest() override {
    backend_.CompleteAll(0);
    drainer_.reset();
    std::filesystem::remove_all(state_dir_);
  }

  Drainer::Options Options(uint32_t keep = 10) {
    return {.state_dir = state_dir_, .manifests_keep = keep, .history = &observer_.history()};
  }

  // The files in the state directory, sorted.
  std::vector<std::string> StateFiles() const {
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(state_dir_)) {
      files.push_back(e.path().filename().string());
    }
    std::sort(files.begin(), files.end());
    return files;
  }

  core::OpId Submit(core::OpKind kind) {
    absl::StatusOr<core::OpId> id = dispatcher_.Submit(*session_, {.kind = kind});
    EXPECT_TRUE(id.ok()) << id.status();
    return id.ok() ? *id : core::OpId{};
  }

  std::string state_dir_;
  Observer observer_{100, 10};
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

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST_F(DrainTest, ManifestListsEveryOpInFlightWithItsOutcomeInAsyncctlsJson) {
  const core::OpId blocking = Submit(core::OpKind::kTimeout);
  const core::OpId bounded = Submit(core::OpKind::kNop);
  Answer answer;
  drainer_->Start(kLongGraceMs, answer.Callback());
  ASSERT_TRUE(Eventually([&] { return backend_.held_count() == 1; }));
  backend_.CompleteAll(0);  // the bounded op completes during the grace
  ASSERT_TRUE(Eventually([&] { return answer.answered(); }));
  const v1::DrainResponse& result = answer.result;
  ASSERT_THAT(StateFiles(), ::testing::ElementsAre(::testing::MatchesRegex(
                                "drain-manifest-[0-9]{8}T[0-9]{6}\\.[0-9]{6}Z\\.json")));
  EXPECT_EQ(result.manifest_path(), state_dir_ + "/" + StateFiles()[0]);
  const std::string json = ReadFile(result.manifest_path());
  // asyncctl -o json's names: proto field names, never lowerCamelCase.
  for (const char* field :
       {"\"op_id\"", "\"session_id\"", "\"inflight_at_start\"", "\"completed_during_grace\"",
        "\"end_reason\"", "\"started_unix_nanos\""}) {
    EXPECT_THAT(json, ::testing::HasSubstr(field));
  }
  EXPECT_THAT(json, ::testing::Not(::testing::HasSubstr("opId")));
  v1::DrainManifest manifest;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &manifest).ok()) << json;
  EXPECT_EQ(manifest.inflight_at_start(), 2u);
  EXPECT_EQ(manifest.cancelled(), 1u);
  EXPECT_EQ(manifest.completed_during_grace(), 1u);
  EXPECT_EQ(manifest.grace_ms(), kLongGraceMs);
  EXPECT_GT(manifest.started_unix_nanos(), 0);
  EXPECT_GE(manifest.finished_unix_nanos(), manifest.started_unix_nanos());
  ASSERT_EQ(manifest.ops_size(), 2);
  for (const v1::OperationInfo& op : manifest.ops()) {
    EXPECT_EQ(op.client(), "db");
    EXPECT_EQ(op.uid(), 1000u);
    if (op.op_id() == blocking.value) {
      EXPECT_EQ(op.outcome(), v1::OUTCOME_CANCELLED);
      EXPECT_EQ(op.end_reason(), v1::END_REASON_DRAIN);
    } else {
      EXPECT_EQ(op.op_id(), bounded.value);
      EXPECT_EQ(op.outcome(), v1::OUTCOME_COMPLETED);
    }
  }
}

TEST_F(DrainTest, WithoutTheHistoryOpsAppearAsTheDrainFoundThem) {
  Drainer drainer(registry_, dispatcher_, {.state_dir = state_dir_});
  const core::OpId blocking = Submit(core::OpKind::kTimeout);
  const v1::DrainResponse result = drainer.DrainAndWait(0);
  v1::DrainManifest manifest;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(ReadFile(result.manifest_path()), &manifest)
          .ok());
  ASSERT_EQ(manifest.ops_size(), 1);
  EXPECT_EQ(manifest.ops(0).op_id(), blocking.value);
  EXPECT_EQ(manifest.ops(0).outcome(), v1::OUTCOME_UNSPECIFIED);
  EXPECT_EQ(manifest.ops(0).finished_unix_nanos(), 0);
}

TEST_F(DrainTest, NothingInFlightWritesNoManifest) {
  const v1::DrainResponse result = drainer_->DrainAndWait(0);
  EXPECT_EQ(result.inflight_at_start(), 0u);
  EXPECT_TRUE(result.manifest_path().empty());
  EXPECT_THAT(StateFiles(), ::testing::IsEmpty());
}

TEST_F(DrainTest, KeepZeroWritesNoManifest) {
  Drainer drainer(registry_, dispatcher_, Options(/*keep=*/0));
  Submit(core::OpKind::kTimeout);
  const v1::DrainResponse result = drainer.DrainAndWait(0);
  EXPECT_EQ(result.cancelled(), 1u);
  EXPECT_TRUE(result.manifest_path().empty());
  EXPECT_THAT(StateFiles(), ::testing::IsEmpty());
}

TEST_F(DrainTest, OnlyTheNewestManifestsAreKept) {
  for (const char* name :
       {"drain-manifest-1700000000.json",  // the old naming, older than any new name
        "drain-manifest-20250101T000000.000000Z.json",
        "drain-manifest-20250102T000000.000000Z.json", "drain-manifest-notes.txt",
        "unrelated.json"}) {
    std::ofstream(state_dir_ + "/" + name) << "{}";
  }
  Drainer drainer(registry_, dispatcher_, Options(/*keep=*/2));
  Submit(core::OpKind::kTimeout);
  const v1::DrainResponse result = drainer.DrainAndWait(0);
  const std::string written = std::filesystem::path(result.manifest_path()).filename();
  EXPECT_THAT(StateFiles(),
              ::testing::ElementsAre("drain-manifest-20250102T000000.000000Z.json", written,
                                     "drain-manifest-notes.txt", "unrelated.json"));
}

TEST_F(DrainTest, UnwritableStateDirLeavesNoManifestPath) {
  Drainer drainer(registry_, dispatcher_, {.state_dir = "/proc/asyncd-no-such-dir"});
  Submit(core::OpKind::kTimeout);
  const v1::DrainResponse result = drainer.DrainAndWait(0);
  EXPECT_EQ(result.cancelled(), 1u);
  EXPECT_TRUE(result.manifest_path().empty());
}

TEST_F(DrainTest, OnEndRunsOnceAfterTheAnswers) {
  Answer answer;
  std::atomic<int> ended{0};
  bool answered_first = false;
  Drainer drainer(registry_, dispatcher_, {.state_dir = state_dir_, .on_end = [&] {
                                             answered_first = answer.answered();
                                             ended.fetch_add(1);
                                           }});
  drainer.Start(kLongGraceMs, answer.Callback());
  drainer.Join();
  EXPECT_EQ(ended.load(), 1);
  EXPECT_TRUE(answered_first);
  (void)drainer.DrainAndWait(0);  // over already: no second end
  Answer late;
  drainer.Start(0, late.Callback());
  EXPECT_EQ(ended.load(), 1);
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
