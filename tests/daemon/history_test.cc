// The history of finished ops (daemon/history.h): Recent is newest first and
// bounded by the capacity, the last `capacity` ops exactly;
// the slowest set keeps the longest ops, slowest first; FindFinished finds an
// op in the ring, else in the slowest set; filters apply to both lists.
#include "daemon/history.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace asyncd::daemon {
namespace {

// Op `id` of `uid`, finished at `finished_ns` after running `duration_ns`.
FinishedOp Op(uint64_t id, int64_t finished_ns, int64_t duration_ns = 1000, uint32_t uid = 1,
              core::OpKind kind = core::OpKind::kNop) {
  FinishedOp f;
  f.snap.id = core::OpId{id};
  f.snap.kind = kind;
  f.snap.state = core::OpState::kCompleted;
  f.snap.finished_ns = finished_ns;
  f.snap.submitted_ns = finished_ns - duration_ns;
  f.uid = uid;
  return f;
}

std::vector<uint64_t> Ids(const std::vector<FinishedOp>& ops) {
  std::vector<uint64_t> ids;
  for (const FinishedOp& f : ops) ids.push_back(f.snap.id.value);
  return ids;
}

const Filter kAll;

TEST(HistoryTest, RecentIsNewestFirst) {
  History h(80, 0);
  for (uint64_t i = 1; i <= 5; ++i) h.Record(Op(i, int64_t(i) * 1000));
  EXPECT_EQ(Ids(h.Recent(kAll, 100)), (std::vector<uint64_t>{5, 4, 3, 2, 1}));
}

TEST(HistoryTest, RecentReturnsAtMostLimit) {
  History h(80, 0);
  for (uint64_t i = 1; i <= 5; ++i) h.Record(Op(i, int64_t(i) * 1000));
  EXPECT_EQ(Ids(h.Recent(kAll, 2)), (std::vector<uint64_t>{5, 4}));
}

// A client submitting one op at a time reuses one slot: its ops, one
// generation after another, keep the whole capacity, the last `capacity`
// of them exactly (ALREADY_DONE depends on it).
TEST(HistoryTest, OneSlotReusedKeepsTheWholeCapacity) {
  History h(800, 0);
  constexpr uint32_t kOps = 2000;
  for (uint32_t gen = 1; gen <= kOps; ++gen) {
    h.Record(Op(core::OpId::Make(0, 0, gen).value, gen));
  }
  EXPECT_EQ(h.Recent(kAll, 10000).size(), 800u);
  for (uint32_t gen = 1; gen <= kOps; ++gen) {
    EXPECT_EQ(h.FindFinished(core::OpId::Make(0, 0, gen).value).has_value(), gen > kOps - 800)
        << gen;
  }
}

// One completing thread (an io_uring ring thread finishes every op) keeps
// the whole capacity when its ops use many slots, and each is found by id.
TEST(HistoryTest, OneThreadKeepsTheWholeCapacityOverManySlots) {
  History h(80, 0);
  for (uint32_t slot = 0; slot < 80; ++slot) {
    h.Record(Op(core::OpId::Make(0, slot, 1).value, slot + 1));
  }
  EXPECT_EQ(h.Recent(kAll, 1000).size(), 80u);
  for (uint32_t slot = 0; slot < 80; ++slot) {
    EXPECT_TRUE(h.FindFinished(core::OpId::Make(0, slot, 1).value).has_value()) << slot;
  }
}

TEST(HistoryTest, ManyThreadsNeverKeepMoreThanTheCapacity) {
  History h(80, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&h, t] {
      for (int i = 0; i < 50; ++i) h.Record(Op(uint64_t(t) * 1000 + i + 1, i + 1));
    });
  }
  for (std::thread& t : threads) t.join();
  const size_t kept = h.Recent(kAll, 1000).size();
  EXPECT_EQ(kept, 80u);
}

TEST(HistoryTest, ZeroCapacityKeepsNothing) {
  History h(0, 0);
  h.Record(Op(1, 1000));
  EXPECT_TRUE(h.Recent(kAll, 10).empty());
  EXPECT_TRUE(h.Slowest(kAll, 10).empty());
  EXPECT_FALSE(h.FindFinished(1).has_value());
}

TEST(HistoryTest, RecentAppliesTheFilter) {
  History h(80, 0);
  h.Record(Op(1, 1000, 10, /*uid=*/1));
  h.Record(Op(2, 2000, 10, /*uid=*/2));
  h.Record(Op(3, 3000, 10, /*uid=*/1));
  Filter mine;
  mine.uid = 1;
  EXPECT_EQ(Ids(h.Recent(mine, 10)), (std::vector<uint64_t>{3, 1}));
}

TEST(HistoryTest, SlowestKeepsTheLongestSlowestFirst) {
  History h(80, 3);
  const int64_t durations[] = {5000, 1000, 9000, 3000, 7000};
  for (uint64_t i = 0; i < 5; ++i) h.Record(Op(i + 1, 100000, durations[i]));
  EXPECT_EQ(Ids(h.Slowest(kAll, 10)), (std::vector<uint64_t>{3, 5, 1}));  // 9, 7, 5 us
  EXPECT_EQ(Ids(h.Slowest(kAll, 1)), (std::vector<uint64_t>{3}));
}

TEST(HistoryTest, SlowestAppliesTheFilter) {
  History h(80, 10);
  h.Record(Op(1, 100000, 9000, 1, core::OpKind::kRead));
  h.Record(Op(2, 100000, 8000, 1, core::OpKind::kFsync));
  Filter fsyncs;
  fsyncs.kinds = 1u << static_cast<int>(core::OpKind::kFsync);
  EXPECT_EQ(Ids(h.Slowest(fsyncs, 10)), (std::vector<uint64_t>{2}));
}

TEST(HistoryTest, FindFinishedFindsAnOpInTheRing) {
  History h(80, 0);
  h.Record(Op(7, 1000));
  h.Record(Op(8, 2000));
  std::optional<FinishedOp> f = h.FindFinished(7);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->snap.finished_ns, 1000);
  EXPECT_FALSE(h.FindFinished(9).has_value());
}

TEST(HistoryTest, FindFinishedPrefersTheLatestUnderOneId) {
  History h(80, 0);
  h.Record(Op(7, 1000));
  h.Record(Op(7, 3000));
  h.Record(Op(7, 2000));
  ASSERT_TRUE(h.FindFinished(7).has_value());
  EXPECT_EQ(h.FindFinished(7)->snap.finished_ns, 3000);
}

TEST(HistoryTest, FindFinishedFallsBackToTheSlowestSet) {
  History h(1, 4);  // the next op overwrites the ring's only entry
  h.Record(Op(1, 1000, 900000));
  h.Record(Op(2, 2000, 10));
  EXPECT_EQ(Ids(h.Recent(kAll, 10)), (std::vector<uint64_t>{2}));
  std::optional<FinishedOp> f = h.FindFinished(1);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->duration_ns(), 900000);
}

}  // namespace
}  // namespace asyncd::daemon
