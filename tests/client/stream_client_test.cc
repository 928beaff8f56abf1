// StreamClient against an in-process fake daemon (a sync gRPC service on a
// temporary unix socket): every submitted op gets exactly one callback with
// the caller's tag restored; batches respect max_batch_ops; the flow-control
// window blocks or fails fast; a broken stream synthesizes the missing
// completions; cancels travel over the stream; destruction never hangs, nor
// aborts when it happens inside a callback.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "asyncd/client.h"

namespace asyncd::client {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kSessionId = 42;
constexpr uint32_t kMaxBatchOps = 4;
constexpr uint32_t kMaxInflight = 8;

// A fake of the Stream RPC. Completions are sent right after Accepted unless
// `hold` is set; held ones go out on Release() or when the client half-closes.
class FakeAsyncd final : public v1::Asyncd::Service {
 public:
  std::atomic<bool> hold{false};
  // End the stream with UNAVAILABLE right after accepting the first batch.
  std::atomic<bool> fail_after_accept{false};

  grpc::Status Stream(grpc::ServerContext* context,
                      grpc::ServerReaderWriter<v1::StreamResponse, v1::StreamRequest>* stream)
      override {
    v1::StreamRequest req;
    if (!stream->Read(&req) || !req.has_open()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "open first");
    }
    {
      v1::StreamResponse resp;
      resp.mutable_opened()->set_session_id(req.open().session_id() != 0 ? req.open().session_id()
                                                                         : kSessionId);
      resp.mutable_opened()->mutable_limits()->set_max_batch_ops(kMaxBatchOps);
      resp.mutable_opened()->mutable_limits()->set_max_inflight_per_session(kMaxInflight);
      Write(stream, resp);
    }
    {
      std::lock_guard lock(mu_);
      stream_ = stream;
    }
    while (stream->Read(&req)) {
      if (req.has_submit()) {
        v1::StreamResponse accepted;
        accepted.mutable_accepted()->set_batch_tag(req.submit().batch_tag());
        v1::StreamResponse completions;
        {
          std::lock_guard lock(mu_);
          batch_sizes_.push_back(req.submit().ops_size());
          for (const v1::Operation& op : req.submit().ops()) {
            const uint64_t id = ++next_op_id_;
            v1::AcceptedOp* a = accepted.mutable_accepted()->add_ops();
            a->set_tag(op.tag());
            a->set_op_id(id);
            v1::Completion* c = completions.mutable_completions()->add_completions();
            c->set_tag(op.tag());
            c->set_op_id(id);
            c->set_outcome(v1::OUTCOME_COMPLETED);
            c->set_result(static_cast<int32_t>(id));
          }
        }
        Write(stream, accepted);
        if (fail_after_accept) {
          Detach();
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake daemon gone");
        }
        if (hold) {
          std::lock_guard lock(mu_);
          held_.push_back(std::move(completions));
        } else {
          Write(stream, completions);
        }
      } else if (req.has_cancel()) {
        v1::StreamResponse resp;
        v1::CancelResponse* r = resp.mutable_cancel_result();
        r->set_request_tag(req.cancel().request_tag());
        v1::CancelOutcome* o = r->add_outcomes();
        o->set_op_id(req.cancel().op_id());
        o->set_result(v1::CANCEL_RESULT_NOT_FOUND);
        r->mutable_counts()->set_not_found(1);
        Write(stream, resp);
      }
      if (context->IsCancelled()) break;
    }
    Release();
    Detach();
    return grpc::Status::OK;
  }

  // Sends the held completions.
  void Release() {
    std::vector<v1::StreamResponse> held;
    grpc::ServerReaderWriter<v1::StreamResponse, v1::StreamRequest>* stream;
    {
      std::lock_guard lock(mu_);
      held.swap(held_);
      stream = stream_;
    }
    if (stream == nullptr) return;
    for (const auto& r : held) Write(stream, r);
  }

  // Sends only the completions held last.
  void ReleaseNewest() {
    std::optional<v1::StreamResponse> newest;
    grpc::ServerReaderWriter<v1::StreamResponse, v1::StreamRequest>* stream;
    {
      std::lock_guard lock(mu_);
      if (held_.empty()) return;
      newest = std::move(held_.back());
      held_.pop_back();
      stream = stream_;
    }
    if (stream != nullptr) Write(stream, *newest);
  }

  std::vector<int> batch_sizes() {
    std::lock_guard lock(mu_);
    return batch_sizes_;
  }
  size_t held_batches() {
    std::lock_guard lock(mu_);
    return held_.size();
  }

 private:
  void Write(grpc::ServerReaderWriter<v1::StreamResponse, v1::StreamRequest>* stream,
             const v1::StreamResponse& resp) {
    std::lock_guard lock(write_mu_);
    stream->Write(resp);
  }
  void Detach() {
    std::lock_guard write_lock(write_mu_);
    std::lock_guard lock(mu_);
    stream_ = nullptr;
  }

  std::mutex write_mu_;  // one writer at a time; taken before mu_
  std::mutex mu_;
  grpc::ServerReaderWriter<v1::StreamResponse, v1::StreamRequest>* stream_ = nullptr;
  std::vector<v1::StreamResponse> held_;
  std::vector<int> batch_sizes_;
  uint64_t next_op_id_ = 1000;
};

class StreamClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    path_ = "/tmp/asyncd-stream-client-test-" + std::to_string(::getpid()) + "-" +
            std::to_string(counter++) + ".sock";
    ::unlink(path_.c_str());
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + path_, grpc::InsecureServerCredentials());
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = Connect(path_);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 1s);
    ::unlink(path_.c_str());
  }

  std::unique_ptr<StreamClient> Open(StreamOptions options = {}) {
    auto stream = StreamClient::Create(channel_, "test", 0, options);
    EXPECT_TRUE(stream.ok()) << stream.status();
    return stream.ok() ? std::move(*stream) : nullptr;
  }

  static std::vector<v1::Operation> Nops(int n, uint64_t first_tag) {
    std::vector<v1::Operation> ops(n);
    for (int i = 0; i < n; ++i) {
      ops[i].mutable_nop();
      ops[i].set_tag(first_tag + i);
    }
    return ops;
  }

  std::string path_;
  FakeAsyncd fake_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Collects completions; thread-safe.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::multiset<uint64_t> tags;
  std::vector<v1::Completion> completions;

  StreamClient::CompletionCallback Callback() {
    return [this](const v1::Completion& c) {
      std::lock_guard lock(mu);
      tags.insert(c.tag());
      completions.push_back(c);
      cv.notify_all();
    };
  }
  bool WaitFor(size_t n, std::chrono::milliseconds timeout = 5s) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return completions.size() >= n; });
  }
  size_t size() {
    std::lock_guard lock(mu);
    return completions.size();
  }
};

TEST_F(StreamClientTest, OpensAndReportsLimits) {
  auto stream = Open();
  ASSERT_NE(stream, nullptr);
  EXPECT_EQ(stream->session_id(), kSessionId);
  EXPECT_EQ(stream->limits().max_batch_ops(), kMaxBatchOps);
  EXPECT_EQ(stream->max_outstanding(), kMaxInflight);
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(stream->Finish().ok());  // idempotent
}

TEST_F(StreamClientTest, WindowIsTheSmallerOfOptionAndDaemonLimit) {
  auto stream = Open({.max_outstanding = 3});
  ASSERT_NE(stream, nullptr);
  EXPECT_EQ(stream->max_outstanding(), 3u);
  auto big = Open({.max_outstanding = 100000});
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(big->max_outstanding(), kMaxInflight);
}

TEST_F(StreamClientTest, OneCallbackPerOpWithCallerTagsAndSplitBatches) {
  auto stream = Open();
  ASSERT_NE(stream, nullptr);
  Collector collector;
  std::mutex mu;
  std::map<size_t, std::pair<uint64_t, uint64_t>> accepted;  // index -> (tag, op_id)
  // 6 ops, all tagged 7 (caller tags need not be unique), and 6 distinct.
  auto same_tag = Nops(6, 7);
  for (auto& op : same_tag) op.set_tag(7);
  ASSERT_TRUE(stream->Submit(std::move(same_tag), collector.Callback(),
                             [&](const StreamClient::AcceptedOp& a) {
                               std::lock_guard lock(mu);
                               EXPECT_TRUE(accepted.emplace(a.index, std::pair(a.tag, a.op_id))
                                               .second);
                             })
                  .ok());
  ASSERT_TRUE(collector.WaitFor(6));
  ASSERT_TRUE(stream->Submit(Nops(6, 100), collector.Callback()).ok());
  ASSERT_TRUE(collector.WaitFor(12));
  EXPECT_TRUE(stream->Finish().ok());

  EXPECT_EQ(collector.tags.count(7), 6u);
  for (uint64_t t = 100; t < 106; ++t) EXPECT_EQ(collector.tags.count(t), 1u) << t;
  std::set<uint64_t> ids;
  for (const auto& c : collector.completions) {
    EXPECT_EQ(c.outcome(), v1::OUTCOME_COMPLETED);
    EXPECT_TRUE(ids.insert(c.op_id()).second);
  }
  ASSERT_EQ(accepted.size(), 6u);
  for (const auto& [index, tag_id] : accepted) {
    EXPECT_LT(index, 6u);
    EXPECT_EQ(tag_id.first, 7u);
    EXPECT_EQ(ids.count(tag_id.second), 1u);
  }
  int total = 0;
  for (int n : fake_.batch_sizes()) {
    EXPECT_LE(n, static_cast<int>(kMaxBatchOps));
    total += n;
  }
  EXPECT_EQ(total, 12);
}

TEST_F(StreamClientTest, FailFastWhenWindowFull) {
  fake_.hold = true;
  auto stream = Open({.max_outstanding = 3, .when_full = WhenFull::kFailFast});
  ASSERT_NE(stream, nullptr);
  Collector collector;
  ASSERT_TRUE(stream->Submit(Nops(3, 1), collector.Callback()).ok());
  EXPECT_EQ(stream->outstanding(), 3u);
  absl::Status s = stream->Submit(Nops(1, 9), collector.Callback());
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  // Larger than the window can never fit in fail-fast mode.
  EXPECT_EQ(stream->Submit(Nops(4, 9), collector.Callback()).code(),
            absl::StatusCode::kResourceExhausted);
  // SubmitOne reports the refusal as a REJECTED completion.
  v1::Operation op;
  op.mutable_nop();
  op.set_tag(77);
  v1::Completion rejected = stream->SubmitOne(op).get();
  EXPECT_EQ(rejected.outcome(), v1::OUTCOME_REJECTED);
  EXPECT_EQ(rejected.status_code(), static_cast<int>(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(rejected.tag(), 77u);

  while (fake_.held_batches() == 0) std::this_thread::sleep_for(1ms);
  fake_.Release();
  ASSERT_TRUE(collector.WaitFor(3));
  EXPECT_TRUE(stream->Submit(Nops(1, 9), collector.Callback()).ok());
  EXPECT_TRUE(stream->Finish().ok());  // half-close releases the held one
  EXPECT_EQ(collector.size(), 4u);
  EXPECT_EQ(stream->outstanding(), 0u);
}

TEST_F(StreamClientTest, BlockingSubmitWaitsForRoom) {
  fake_.hold = true;
  auto stream = Open({.max_outstanding = 2});
  ASSERT_NE(stream, nullptr);
  Collector collector;
  ASSERT_TRUE(stream->Submit(Nops(2, 1), collector.Callback()).ok());
  std::atomic<bool> returned{false};
  std::thread submitter([&] {
    EXPECT_TRUE(stream->Submit(Nops(2, 3), collector.Callback()).ok());
    returned = true;
  });
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(returned);
  while (fake_.held_batches() == 0) std::this_thread::sleep_for(1ms);
  fake_.Release();
  submitter.join();
  EXPECT_TRUE(returned);
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(collector.size(), 4u);
}

TEST_F(StreamClientTest, SubmitFromCallbackNeverBlocks) {
  auto stream = Open({.max_outstanding = 2});
  ASSERT_NE(stream, nullptr);
  Collector chained;
  std::atomic<int> resubmits{0};
  std::promise<void> done;
  // Each completion submits the next op from the callback until 50 ran.
  std::function<void(const v1::Completion&)> again = [&](const v1::Completion& c) {
    if (c.tag() >= 50) {
      done.set_value();
      return;
    }
    std::vector<v1::Operation> next = Nops(1, c.tag() + 1);
    EXPECT_TRUE(stream->Submit(std::move(next), again).ok());
    ++resubmits;
  };
  ASSERT_TRUE(stream->Submit(Nops(1, 1), again).ok());
  ASSERT_EQ(done.get_future().wait_for(5s), std::future_status::ready);
  EXPECT_EQ(resubmits.load(), 49);
  EXPECT_EQ(stream->Finish().code(), absl::StatusCode::kOk);
}

TEST_F(StreamClientTest, BrokenStreamSynthesizesMissingCompletions) {
  fake_.fail_after_accept = true;
  auto stream = Open();
  ASSERT_NE(stream, nullptr);
  Collector collector;
  std::vector<uint64_t> op_ids;
  std::mutex mu;
  ASSERT_TRUE(stream->Submit(Nops(3, 10), collector.Callback(),
                             [&](const StreamClient::AcceptedOp& a) {
                               std::lock_guard lock(mu);
                               op_ids.push_back(a.op_id);
                             })
                  .ok());
  ASSERT_TRUE(collector.WaitFor(3));
  absl::Status s = stream->Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  for (const v1::Completion& c : collector.completions) {
    EXPECT_EQ(c.outcome(), v1::OUTCOME_UNSPECIFIED);
    EXPECT_EQ(c.status_code(), static_cast<int>(absl::StatusCode::kUnavailable));
    EXPECT_NE(c.op_id(), 0u);  // it was accepted: the caller can look it up
  }
  EXPECT_EQ(collector.tags, (std::multiset<uint64_t>{10, 11, 12}));
  // After the end, Submit fails with the stream's status and calls nothing.
  EXPECT_EQ(stream->Submit(Nops(1, 1), collector.Callback()).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(collector.size(), 3u);
}

TEST_F(StreamClientTest, CancelTravelsOverTheStream) {
  auto stream = Open();
  ASSERT_NE(stream, nullptr);
  v1::CancelRequest request;
  request.set_request_tag(555);
  request.set_op_id(123);
  auto future = stream->Cancel(request);
  ASSERT_EQ(future.wait_for(5s), std::future_status::ready);
  absl::StatusOr<v1::CancelResponse> r = future.get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request_tag(), 555u);
  ASSERT_EQ(r->outcomes_size(), 1);
  EXPECT_EQ(r->outcomes(0).op_id(), 123u);
  EXPECT_TRUE(stream->Finish().ok());
  // After the end, a cancel fails without throwing.
  EXPECT_FALSE(stream->Cancel(request).get().ok());
}

TEST_F(StreamClientTest, SubmitOneFuture) {
  auto stream = Open();
  ASSERT_NE(stream, nullptr);
  v1::Operation op;
  op.mutable_nop();
  op.set_tag(31337);
  v1::Completion c = stream->SubmitOne(op).get();
  EXPECT_EQ(c.outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_EQ(c.tag(), 31337u);
}

TEST_F(StreamClientTest, DestructorCancelsAndDeliversOutstanding) {
  fake_.hold = true;
  Collector collector;
  {
    auto stream = Open();
    ASSERT_NE(stream, nullptr);
    ASSERT_TRUE(stream->Submit(Nops(5, 1), collector.Callback()).ok());
    // Both messages (4 + 1 ops, kMaxBatchOps) reached the daemon: an op still
    // in the client's write queue would come back REJECTED ("not sent").
    while (fake_.held_batches() < 2) std::this_thread::sleep_for(1ms);
  }  // no Finish: the RPC is cancelled
  EXPECT_EQ(collector.size(), 5u);
  for (const v1::Completion& c : collector.completions) {
    EXPECT_EQ(c.outcome(), v1::OUTCOME_UNSPECIFIED);
    EXPECT_EQ(c.status_code(), static_cast<int>(absl::StatusCode::kCancelled));
  }
}

// Destroying a StreamClient inside its own callback cannot wait for the
// stream to end (that needs the callback's thread): it returns at once, and
// the op still outstanding gets its completion exactly once, afterwards.
TEST_F(StreamClientTest, DestroyedInsideItsCallbackReturnsAndStillDeliversEverything) {
  fake_.hold = true;
  // Not coalesced: the two ops travel, and are held, as two batches.
  std::unique_ptr<StreamClient> stream = Open({.coalesce = false});
  ASSERT_NE(stream, nullptr);
  Collector collector;
  std::mutex mu;
  std::condition_variable cv;
  std::unique_ptr<StreamClient> owned;  // destroyed by the callback
  bool destroyed = false;
  ASSERT_TRUE(stream->Submit(Nops(1, 1), collector.Callback()).ok());  // stays outstanding
  StreamClient::CompletionCallback destroy_then_collect = [&](const v1::Completion& c) {
    std::unique_ptr<StreamClient> doomed;
    {
      std::lock_guard lock(mu);
      doomed = std::move(owned);
    }
    doomed.reset();  // ~StreamClient on the reader thread
    collector.Callback()(c);
    std::lock_guard lock(mu);
    destroyed = true;
    cv.notify_all();
  };
  ASSERT_TRUE(stream->Submit(Nops(1, 2), destroy_then_collect).ok());
  while (fake_.held_batches() < 2) std::this_thread::sleep_for(1ms);
  {
    std::lock_guard lock(mu);
    owned = std::move(stream);
  }
  fake_.ReleaseNewest();  // completes tag 2 only
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return destroyed; }));
  }
  ASSERT_TRUE(collector.WaitFor(2));
  std::this_thread::sleep_for(50ms);  // a duplicate would show up here
  std::lock_guard lock(collector.mu);
  ASSERT_EQ(collector.completions.size(), 2u);
  for (const v1::Completion& c : collector.completions) {
    if (c.tag() == 2) {
      EXPECT_EQ(c.outcome(), v1::OUTCOME_COMPLETED);
    } else {
      EXPECT_EQ(c.tag(), 1u);
      EXPECT_EQ(c.outcome(), v1::OUTCOME_UNSPECIFIED);
      EXPECT_EQ(c.status_code(), static_cast<int>(absl::StatusCode::kCancelled));
    }
  }
}

TEST_F(StreamClientTest, FinishAfterSubmitWithoutWaiting) {
  // Finish must flush queued writes before half-closing and then deliver all.
  auto stream = Open();
  ASSERT_NE(stream, nullptr);
  Collector collector;
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(stream->Submit(Nops(3, 100 * i), collector.Callback()).ok());
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(collector.size(), 30u);
  EXPECT_EQ(stream->Submit(Nops(1, 1), collector.Callback()).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(StreamClientNoServerTest, CreateFailsUnavailable) {
  auto channel = Connect("/tmp/asyncd-client-test-nobody-listens-" +
                         std::to_string(::getpid()) + ".sock");
  auto stream = StreamClient::Create(channel, "test", 0, {.open_timeout = 5s});
  ASSERT_FALSE(stream.ok());
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kUnavailable) << stream.status();
}

}  // namespace
}  // namespace asyncd::client
