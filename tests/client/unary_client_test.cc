// Client against an in-process fake daemon (a sync gRPC service on a
// temporary unix socket): ListAllPages gathers every page, asks for no more
// than it keeps and keeps the first page's total; Watch delivers events until
// its handler stops it, ends with the stream's status, and has no default
// deadline; extra_time extends the default deadline; a CallCanceller ends a
// blocked call and refuses later ones; CheckHealth reads the standard health
// service.
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "asyncd/client.h"

namespace asyncd::client {
namespace {

using namespace std::chrono_literals;

constexpr uint32_t kListed = 2500;

class FakeAsyncd final : public v1::Asyncd::Service {
 public:
  // ListOperations: kListed ops, paged by offset tokens; each page reports a
  // different total_matched (kListed on the first).
  std::atomic<bool> stuck_token{false};  // every page returns the same token
  // Watch: sends this many events, then ends with watch_end (OK: waits for
  // the client to cancel).
  std::atomic<int> watch_events{0};
  std::atomic<std::chrono::milliseconds> watch_delay{0ms};
  grpc::Status watch_end = grpc::Status::OK;
  // Submit: waits this long (or until cancelled) before completing.
  std::atomic<std::chrono::milliseconds> submit_delay{0ms};
  std::atomic<int> submits{0};
  std::atomic<bool> submit_saw_cancel{false};

  grpc::Status ListOperations(grpc::ServerContext*, const v1::ListOperationsRequest* request,
                              v1::ListOperationsResponse* response) override {
    uint32_t offset = request->page_token().empty() ? 0 : std::stoul(request->page_token());
    const uint32_t size = request->page_size() == 0 ? 100 : std::min(request->page_size(), 1000u);
    {
      std::lock_guard lock(mu_);
      page_sizes_.push_back(request->page_size());
    }
    response->set_total_matched(kListed + offset);
    for (uint32_t i = offset; i < std::min(kListed, offset + size); ++i) {
      response->add_ops()->set_op_id(i + 1);
    }
    if (offset + size < kListed) {
      response->set_next_page_token(std::to_string(stuck_token ? offset : offset + size));
    }
    return grpc::Status::OK;
  }

  grpc::Status Watch(grpc::ServerContext* context, const v1::WatchRequest* request,
                     grpc::ServerWriter<v1::WatchEvent>* writer) override {
    std::this_thread::sleep_for(watch_delay.load());
    for (int i = 0; i < watch_events; ++i) {
      v1::WatchEvent event;
      event.set_op_id(i + 1);
      event.set_type(request->types_size() > 0 ? request->types(0) : v1::EVENT_TYPE_UNSPECIFIED);
      if (!writer->Write(event)) return grpc::Status::CANCELLED;
    }
    if (!watch_end.ok()) return watch_end;
    while (!context->IsCancelled()) std::this_thread::sleep_for(1ms);
    return grpc::Status::CANCELLED;
  }

  grpc::Status Submit(grpc::ServerContext* context, const v1::SubmitRequest*,
                      v1::Completion* completion) override {
    ++submits;
    const auto until = std::chrono::steady_clock::now() + submit_delay.load();
    while (std::chrono::steady_clock::now() < until) {
      if (context->IsCancelled()) {
        submit_saw_cancel = true;
        return grpc::Status::CANCELLED;
      }
      std::this_thread::sleep_for(1ms);
    }
    completion->set_outcome(v1::OUTCOME_COMPLETED);
    return grpc::Status::OK;
  }

  std::vector<uint32_t> page_sizes() {
    std::lock_guard lock(mu_);
    return page_sizes_;
  }

 private:
  std::mutex mu_;
  std::vector<uint32_t> page_sizes_;
};

class UnaryClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    path_ = "/tmp/asyncd-unary-client-test-" + std::to_string(::getpid()) + "-" +
            std::to_string(counter++) + ".sock";
    ::unlink(path_.c_str());
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + path_, grpc::InsecureServerCredentials());
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 1s);
    ::unlink(path_.c_str());
  }

  Client NewClient(std::chrono::microseconds default_timeout = 5s) {
    return Client(Connect(path_, ConnectOptions{.initial_reconnect_backoff = 100ms}),
                  {.default_timeout = default_timeout});
  }

  static v1::Operation Nop() {
    v1::Operation op;
    op.mutable_nop();
    return op;
  }

  std::string path_;
  FakeAsyncd fake_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(UnaryClientTest, ListAllPagesGathersEveryPageAndKeepsTheFirstTotal) {
  Client client = NewClient();
  absl::StatusOr<v1::ListOperationsResponse> all = client.ListAllPages(v1::OpSelector());
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->ops_size(), static_cast<int>(kListed));
  for (int i = 0; i < all->ops_size(); ++i) EXPECT_EQ(all->ops(i).op_id(), i + 1u);
  EXPECT_EQ(all->total_matched(), kListed);
  EXPECT_TRUE(all->next_page_token().empty());
  EXPECT_EQ(fake_.page_sizes(), (std::vector<uint32_t>{1000, 1000, 1000}));

  absl::StatusOr<std::vector<v1::OperationInfo>> ops = client.ListAll(v1::OpSelector());
  ASSERT_TRUE(ops.ok()) << ops.status();
  EXPECT_EQ(ops->size(), kListed);
}

TEST_F(UnaryClientTest, ListAllPagesAsksForNoMoreThanMaxOps) {
  Client client = NewClient();
  absl::StatusOr<v1::ListOperationsResponse> some = client.ListAllPages(v1::OpSelector(), 1500);
  ASSERT_TRUE(some.ok()) << some.status();
  EXPECT_EQ(some->ops_size(), 1500);
  EXPECT_EQ(some->ops(1499).op_id(), 1500u);
  EXPECT_EQ(some->total_matched(), kListed);
  EXPECT_EQ(fake_.page_sizes(), (std::vector<uint32_t>{1000, 500}));
}

TEST_F(UnaryClientTest, ListAllPagesEndsWhenTheTokenDoesNotAdvance) {
  fake_.stuck_token = true;
  Client client = NewClient();
  absl::StatusOr<v1::ListOperationsResponse> all = client.ListAllPages(v1::OpSelector());
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->ops_size(), 2000);  // the first page, then the same page once more
}

TEST_F(UnaryClientTest, WatchDeliversEventsUntilTheHandlerStops) {
  fake_.watch_events = 5;
  Client client = NewClient();
  std::vector<uint64_t> seen;
  absl::Status s =
      client.Watch(v1::OpSelector(), {v1::EVENT_TYPE_SUBMITTED}, [&](const v1::WatchEvent& e) {
        EXPECT_EQ(e.type(), v1::EVENT_TYPE_SUBMITTED);
        seen.push_back(e.op_id());
        return seen.size() == 3 ? WatchNext::kStop : WatchNext::kContinue;
      });
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(seen, (std::vector<uint64_t>{1, 2, 3}));
}

TEST_F(UnaryClientTest, WatchEndsWithTheStreamStatus) {
  fake_.watch_events = 2;
  fake_.watch_end = grpc::Status(grpc::StatusCode::UNAVAILABLE, "shutting down");
  Client client = NewClient();
  int seen = 0;
  absl::Status s = client.Watch(v1::OpSelector(), {}, [&](const v1::WatchEvent&) {
    ++seen;
    return WatchNext::kContinue;
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_EQ(s.message(), "shutting down");
  EXPECT_EQ(seen, 2);
}

TEST_F(UnaryClientTest, WatchHandlerExceptionEndsTheWatchWithInternal) {
  fake_.watch_events = 3;
  Client client = NewClient();
  absl::Status s = client.Watch(v1::OpSelector(), {}, [](const v1::WatchEvent&) -> WatchNext {
    throw std::runtime_error("printer broke");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("printer broke"), absl::string_view::npos) << s;
}

TEST_F(UnaryClientTest, WatchHasNoDefaultDeadline) {
  fake_.watch_events = 1;
  fake_.watch_delay = 300ms;
  Client client = NewClient(/*default_timeout=*/100ms);
  absl::Status s =
      client.Watch(v1::OpSelector(), {}, [](const v1::WatchEvent&) { return WatchNext::kStop; });
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(UnaryClientTest, ExtraTimeExtendsTheDefaultDeadline) {
  fake_.submit_delay = 300ms;
  Client client = NewClient(/*default_timeout=*/100ms);
  EXPECT_EQ(client.Submit(1, Nop()).status().code(), absl::StatusCode::kDeadlineExceeded);
  absl::StatusOr<v1::Completion> c = client.Submit(1, Nop(), CallOptions{.extra_time = 2s});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->outcome(), v1::OUTCOME_COMPLETED);
}

TEST_F(UnaryClientTest, CancellerEndsABlockedCallAndRefusesLaterOnes) {
  fake_.submit_delay = 60s;
  Client client = NewClient(/*default_timeout=*/60s);
  CallCanceller canceller;
  auto pending = std::async(std::launch::async, [&] {
    return client.Submit(1, Nop(), CallOptions{.canceller = &canceller});
  });
  while (fake_.submits == 0) std::this_thread::sleep_for(1ms);
  canceller.Cancel();
  ASSERT_EQ(pending.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(pending.get().status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(canceller.cancelled());
  for (int i = 0; i < 1000 && !fake_.submit_saw_cancel; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(fake_.submit_saw_cancel);

  // Later calls given it are not sent; calls without it are unaffected.
  EXPECT_EQ(client.Submit(1, Nop(), CallOptions{.canceller = &canceller}).status().code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(client
                .Watch(
                    v1::OpSelector(), {}, [](const v1::WatchEvent&) { return WatchNext::kStop; },
                    CallOptions{.canceller = &canceller})
                .code(),
            absl::StatusCode::kCancelled);
  EXPECT_EQ(fake_.submits, 1);
  fake_.submit_delay = 0ms;
  EXPECT_TRUE(client.Submit(1, Nop()).ok());
}

TEST_F(UnaryClientTest, CheckHealthReadsTheHealthService) {
  Client client = NewClient();
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  ASSERT_NE(health, nullptr);
  health->SetServingStatus("asyncd.v1.Asyncd", true);
  absl::StatusOr<HealthStatus> server = client.CheckHealth();
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(*server, HealthStatus::kServing);
  EXPECT_EQ(client.CheckHealth("asyncd.v1.Asyncd").value_or(HealthStatus::kUnknown),
            HealthStatus::kServing);
  health->SetServingStatus("asyncd.v1.Asyncd", false);
  EXPECT_EQ(client.CheckHealth("asyncd.v1.Asyncd").value_or(HealthStatus::kUnknown),
            HealthStatus::kNotServing);
  EXPECT_EQ(client.CheckHealth("no.such.Service").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(HealthStatusName(HealthStatus::kNotServing), "NOT_SERVING");
}

TEST(UnaryClientNoServerTest, CheckHealthOfNobodyIsUnavailable) {
  Client client(Connect("/tmp/asyncd-unary-client-test-nobody-listens-" +
                        std::to_string(::getpid()) + ".sock"),
                {.default_timeout = 5s});
  EXPECT_EQ(client.CheckHealth().status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace asyncd::client
