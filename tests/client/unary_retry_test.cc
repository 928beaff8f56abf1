// Client with ClientOptions::retry against an in-process fake daemon (a sync
// gRPC service on a temporary unix socket) answering from a script: a call
// the daemon refused while draining, or that found no daemon, is made again
// and succeeds; one whose connection was lost mid-call is repeated only when
// it changes nothing; a Submit cancelled by a restart before it did anything
// (CANCELLED, end_reason RESTART, bytes_done 0) is submitted again, with
// what was left of its deadline and Timeout, and one that had done
// something is not; the budget and a canceller end the retries; without a
// policy nothing is repeated.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "asyncd/client.h"

namespace asyncd::client {
namespace {

using namespace std::chrono_literals;

const grpc::Status kDraining(grpc::StatusCode::UNAVAILABLE,
                             "asyncd is draining: it accepts no new work; retry elsewhere");
const grpc::Status kConnectionLost(grpc::StatusCode::UNAVAILABLE, "Socket closed");

// A Submit answer: a status, else this completion.
struct Answer {
  grpc::Status status = grpc::Status::OK;
  v1::Completion completion;
};

class FakeAsyncd final : public v1::Asyncd::Service {
 public:
  std::mutex mu;
  std::deque<Answer> submit_script;       // then COMPLETED
  std::deque<grpc::Status> stats_script;  // then OK
  std::vector<v1::Operation> submitted;
  int stats_calls = 0;

  grpc::Status Submit(grpc::ServerContext*, const v1::SubmitRequest* request,
                      v1::Completion* completion) override {
    std::lock_guard lock(mu);
    submitted.push_back(request->op());
    Answer answer;
    answer.completion.set_outcome(v1::OUTCOME_COMPLETED);
    if (!submit_script.empty()) {
      answer = std::move(submit_script.front());
      submit_script.pop_front();
    }
    answer.completion.set_tag(request->op().tag());
    *completion = answer.completion;
    return answer.status;
  }

  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest*, v1::Stats*) override {
    std::lock_guard lock(mu);
    ++stats_calls;
    if (stats_script.empty()) return grpc::Status::OK;
    grpc::Status status = stats_script.front();
    stats_script.pop_front();
    return status;
  }
};

v1::Completion CancelledByRestart(uint64_t bytes_done, uint64_t duration_us) {
  v1::Completion c;
  c.set_outcome(v1::OUTCOME_CANCELLED);
  c.set_end_reason(v1::END_REASON_RESTART);
  c.set_error_number(ECANCELED);
  c.set_bytes_done(bytes_done);
  c.set_duration_us(duration_us);
  return c;
}

v1::Operation TimeoutOp(uint64_t duration_us, uint32_t deadline_ms) {
  v1::Operation op;
  op.set_tag(7);
  op.set_deadline_ms(deadline_ms);
  op.mutable_timeout()->set_duration_us(duration_us);
  return op;
}

class ClientRetryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    path_ = "/tmp/asyncd-client-retry-test-" + std::to_string(::getpid()) + "-" +
            std::to_string(counter++) + ".sock";
    ::unlink(path_.c_str());
    channel_ = Connect(path_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 1s);
    ::unlink(path_.c_str());
  }

  void StartServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + path_, grpc::InsecureServerCredentials());
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }

  Client Retrying(RetryPolicy policy = {}) { return Client(channel_, {.retry = policy}); }

  std::string path_;
  FakeAsyncd fake_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ClientRetryTest, SubmitRefusedWhileDrainingIsMadeAgain) {
  StartServer();
  fake_.submit_script = {{.status = kDraining}, {.status = kDraining}};
  Client client = Retrying();
  absl::StatusOr<v1::Completion> c = client.Submit(1, TimeoutOp(0, 0));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->outcome(), v1::OUTCOME_COMPLETED);
  std::lock_guard lock(fake_.mu);
  EXPECT_EQ(fake_.submitted.size(), 3u);
}

TEST_F(ClientRetryTest, WithoutAPolicyNothingIsRepeated) {
  StartServer();
  fake_.submit_script = {{.status = kDraining}, {.completion = CancelledByRestart(0, 10)}};
  Client client(channel_);
  EXPECT_EQ(client.Submit(1, TimeoutOp(0, 0)).status().code(), absl::StatusCode::kUnavailable);
  absl::StatusOr<v1::Completion> c = client.Submit(1, TimeoutOp(0, 0));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->end_reason(), v1::END_REASON_RESTART);
  std::lock_guard lock(fake_.mu);
  EXPECT_EQ(fake_.submitted.size(), 2u);
}

// A connection lost mid-call may have run the call: a Submit is not
// repeated, a GetStats (it changes nothing) is.
TEST_F(ClientRetryTest, ConnectionLostMidCallRepeatsOnlyWhatChangesNothing) {
  StartServer();
  fake_.submit_script = {{.status = kConnectionLost}};
  fake_.stats_script = {kConnectionLost};
  Client client = Retrying();
  EXPECT_EQ(client.Submit(1, TimeoutOp(0, 0)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(client.GetStats().ok());
  std::lock_guard lock(fake_.mu);
  EXPECT_EQ(fake_.submitted.size(), 1u);
  EXPECT_EQ(fake_.stats_calls, 2);
}

// Cancelled by a restart before it did anything: submitted again, its
// deadline and Timeout lowered by the time it had been accepted.
TEST_F(ClientRetryTest, SubmitCancelledByARestartBeforeDoingAnythingIsSubmittedAgain) {
  StartServer();
  fake_.submit_script = {{.completion = CancelledByRestart(0, 3000)}};
  Client client = Retrying();
  absl::StatusOr<v1::Completion> c = client.Submit(1, TimeoutOp(1000000, 100));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_EQ(c->tag(), 7u);
  std::lock_guard lock(fake_.mu);
  ASSERT_EQ(fake_.submitted.size(), 2u);
  EXPECT_EQ(fake_.submitted[1].timeout().duration_us(), 997000u);
  EXPECT_EQ(fake_.submitted[1].deadline_ms(), 97u);
  EXPECT_EQ(fake_.submitted[1].tag(), 7u);
}

TEST_F(ClientRetryTest, SubmitThatHadDoneSomethingReturnsAsItEnded) {
  StartServer();
  fake_.submit_script = {{.completion = CancelledByRestart(5, 3000)}};
  Client client = Retrying();
  absl::StatusOr<v1::Completion> c = client.Submit(1, TimeoutOp(0, 0));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_EQ(c->end_reason(), v1::END_REASON_RESTART);
  EXPECT_EQ(c->bytes_done(), 5u);
  std::lock_guard lock(fake_.mu);
  EXPECT_EQ(fake_.submitted.size(), 1u);
}

// A Close the restart cancelled had let go of its handle: made again, it
// would find none.
TEST_F(ClientRetryTest, ACloseCancelledByARestartReturnsAsItEnded) {
  StartServer();
  v1::Completion cancelled = CancelledByRestart(0, 3000);
  cancelled.set_kind(v1::OP_KIND_CLOSE);
  fake_.submit_script = {{.completion = cancelled}};
  Client client = Retrying();
  v1::Operation close;
  close.mutable_close()->set_handle(3);
  absl::StatusOr<v1::Completion> c = client.Submit(1, close);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->end_reason(), v1::END_REASON_RESTART);
  std::lock_guard lock(fake_.mu);
  EXPECT_EQ(fake_.submitted.size(), 1u);
}

// No daemon listens yet (between two daemons): the call is made again until
// one does.
TEST_F(ClientRetryTest, CallsAgainUntilADaemonListens) {
  Client client = Retrying();
  std::thread later([&] {
    std::this_thread::sleep_for(300ms);
    StartServer();
  });
  absl::StatusOr<v1::Completion> c = client.Submit(1, TimeoutOp(0, 0));
  later.join();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->outcome(), v1::OUTCOME_COMPLETED);
}

TEST_F(ClientRetryTest, GivesUpWhenTheBudgetPasses) {
  Client client = Retrying({.budget = 100ms});
  absl::StatusOr<v1::Completion> c = client.Submit(1, TimeoutOp(0, 0));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
}

TEST_F(ClientRetryTest, CancellerEndsTheRetries) {
  Client client = Retrying();
  CallCanceller canceller;
  std::thread later([&] {
    std::this_thread::sleep_for(100ms);
    canceller.Cancel();
  });
  absl::StatusOr<v1::Completion> c =
      client.Submit(1, TimeoutOp(0, 0), CallOptions{.canceller = &canceller});
  later.join();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kCancelled) << c.status();
}

}  // namespace
}  // namespace asyncd::client
