// CompletionBatch: what a sink defers inside a batch reaches it once, at the
// outermost batch's end, grouped per sink and in completion order; outside
// a batch nothing is deferred.
#include <gtest/gtest.h>

#include <functional>
#include <thread>
#include <vector>

#include "src/core/op.h"

namespace asyncd::core {
namespace {

struct RecordingSink : CompletionSink {
  void OnComplete(const Op&) noexcept override {}
  void OnDeferred(std::span<const uint64_t> cookies) noexcept override {
    calls.emplace_back(cookies.begin(), cookies.end());
    if (on_deferred) on_deferred();
  }
  std::vector<std::vector<uint64_t>> calls;
  std::function<void()> on_deferred;
};

TEST(CompletionBatchTest, OutsideABatchNothingIsDeferred) {
  RecordingSink sink;
  EXPECT_FALSE(CompletionBatch::Defer(&sink, 1));
  EXPECT_TRUE(sink.calls.empty());
}

TEST(CompletionBatchTest, EachSinkGetsItsCookiesOnceInOrderAtTheEnd) {
  RecordingSink a, b;
  {
    CompletionBatch batch;
    EXPECT_TRUE(CompletionBatch::Defer(&a, 1));
    EXPECT_TRUE(CompletionBatch::Defer(&b, 10));
    EXPECT_TRUE(CompletionBatch::Defer(&a, 2));
    EXPECT_TRUE(CompletionBatch::Defer(&b, 11));
    EXPECT_TRUE(CompletionBatch::Defer(&a, 3));
    EXPECT_TRUE(a.calls.empty()) << "delivered before the batch ended";
  }
  ASSERT_EQ(a.calls.size(), 1u);
  EXPECT_EQ(a.calls[0], (std::vector<uint64_t>{1, 2, 3}));
  ASSERT_EQ(b.calls.size(), 1u);
  EXPECT_EQ(b.calls[0], (std::vector<uint64_t>{10, 11}));
}

TEST(CompletionBatchTest, NestedBatchesDeliverAtTheOutermostEnd) {
  RecordingSink a;
  {
    CompletionBatch outer;
    {
      CompletionBatch inner;
      EXPECT_TRUE(CompletionBatch::Defer(&a, 1));
    }
    EXPECT_TRUE(a.calls.empty());
    EXPECT_TRUE(CompletionBatch::Defer(&a, 2));
  }
  ASSERT_EQ(a.calls.size(), 1u);
  EXPECT_EQ(a.calls[0], (std::vector<uint64_t>{1, 2}));
}

TEST(CompletionBatchTest, WorkCausedByDeliveryIsNotDeferred) {
  RecordingSink a;
  bool deferred_during_delivery = true;
  a.on_deferred = [&] { deferred_during_delivery = CompletionBatch::Defer(&a, 99); };
  {
    CompletionBatch batch;
    CompletionBatch::Defer(&a, 1);
  }
  EXPECT_FALSE(deferred_during_delivery);
  EXPECT_EQ(a.calls.size(), 1u);
  // And the next batch starts empty.
  {
    CompletionBatch batch;
  }
  EXPECT_EQ(a.calls.size(), 1u);
}

TEST(CompletionBatchTest, BatchesArePerThread) {
  RecordingSink a;
  CompletionBatch batch;
  bool deferred_elsewhere = true;
  std::thread([&] { deferred_elsewhere = CompletionBatch::Defer(&a, 1); }).join();
  EXPECT_FALSE(deferred_elsewhere);
}

}  // namespace
}  // namespace asyncd::core
