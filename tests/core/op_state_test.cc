// The op state word: exactly one terminal transition per generation, cancels
// answer like aio_cancel, and a stale id never reaches a reused slot.
#include <cerrno>
#include <cstring>

#include <gtest/gtest.h>

#include "src/core/registry.h"

namespace asyncd::core {
namespace {

class OpStateTest : public ::testing::Test {
 protected:
  Op& NewOp(OpKind kind = OpKind::kRead, CancelSafety safety = CancelSafety::kAlways) {
    auto op = session_->Register(kind, safety, 0, "t", 1);
    EXPECT_TRUE(op.ok()) << op.status();
    return **op;
  }
  Registry registry_;
  std::shared_ptr<Session> session_ = *registry_.OpenSession({"test", 1, 1, 1});
};

TEST(OpIdTest, RoundTripsEveryField) {
  const OpId id = OpId::Make(0xbeef, 0xabcde, 0x0fedcba);
  EXPECT_EQ(id.session_index(), 0xbeefu);
  EXPECT_EQ(id.slot(), 0xabcdeu);
  EXPECT_EQ(id.generation(), 0x0fedcbau);
  EXPECT_EQ(OpId::Make(0xffff, OpId::kMaxSlots - 1, OpId::kGenMask).value, ~uint64_t{0});
}

TEST_F(OpStateTest, RegisteredOpIsQueuedAndFindable) {
  Op& op = NewOp();
  EXPECT_EQ(op.state(), OpState::kQueued);
  EXPECT_NE(op.id().value, 0u);
  Registry::Found found = registry_.Find(op.id());
  ASSERT_TRUE(found);
  EXPECT_EQ(found.op, &op);
}

TEST_F(OpStateTest, CompletesOnceThroughTheNormalPath) {
  Op& op = NewOp();
  op.MarkDispatched(BackendKind::kThreadPool, 2);
  EXPECT_EQ(op.state(), OpState::kDispatched);
  ASSERT_TRUE(op.TryStart(3));
  EXPECT_EQ(op.state(), OpState::kRunning);
  EXPECT_EQ(op.Finish(7, 4), OpState::kCompleted);
  EXPECT_EQ(op.bytes_done.load(), 7u);
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kClientRequest, 5),
            CancelResult::kAlreadyDone);
}

TEST_F(OpStateTest, SecondFinishIsABrokenInvariant) {
  Op& op = NewOp();
  ASSERT_TRUE(op.TryStart(1));
  op.Finish(0, 2);
  EXPECT_DEATH(op.Finish(0, 3), "exactly one terminal|ASYNCD_CHECK");
}

TEST_F(OpStateTest, CancelBeforeStartPreventsTheStart) {
  Op& op = NewOp(OpKind::kWrite, CancelSafety::kOnlyBeforeStart);
  op.MarkDispatched(BackendKind::kThreadPool, 2);
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kClientRequest, 3),
            CancelResult::kCancelled);
  EXPECT_FALSE(op.TryStart(4));
  EXPECT_EQ(op.Finish(-ECANCELED, 5), OpState::kCancelled);
  EXPECT_EQ(op.cancel_requested_ns.load(), 3);
}

TEST_F(OpStateTest, RunningUnsafeOpRefusesCancel) {
  Op& op = NewOp(OpKind::kWrite, CancelSafety::kOnlyBeforeStart);
  ASSERT_TRUE(op.TryStart(1));
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kClientRequest, 2),
            CancelResult::kNotCancellable);
  EXPECT_EQ(op.Finish(4096, 3), OpState::kCompleted);
}

TEST_F(OpStateTest, RunningSafeOpEndsCancelledWithBytesDone) {
  Op& op = NewOp(OpKind::kRead, CancelSafety::kAlways);
  ASSERT_TRUE(op.TryStart(1));
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kOperatorRequest, 2),
            CancelResult::kCancelled);
  // A repeated cancel is answered the same and changes nothing.
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kClientRequest, 3),
            CancelResult::kCancelled);
  EXPECT_EQ(OpWord::Reason(op.head->word.load()), EndReason::kOperatorRequest);
  EXPECT_EQ(op.Finish(100, 4), OpState::kCancelled);
  EXPECT_EQ(op.bytes_done.load(), 100u);
}

TEST_F(OpStateTest, DeadlineEndsTimedOut) {
  Op& op = NewOp(OpKind::kPoll);
  ASSERT_TRUE(op.TryStart(1));
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kDeadline, 2), CancelResult::kCancelled);
  EXPECT_EQ(op.Finish(-ECANCELED, 3), OpState::kTimedOut);
}

// A cancel that comes after the deadline asked for the end is told
// ALREADY_DONE: the op ends TIMED_OUT, not CANCELLED. The cancel is still
// recorded, for the timeline.
TEST_F(OpStateTest, CancelAfterTheDeadlineEndedItIsAlreadyDone) {
  Op& op = NewOp(OpKind::kRead);
  ASSERT_TRUE(op.TryStart(1));
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kDeadline, 2), CancelResult::kCancelled);
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kClientRequest, 3),
            CancelResult::kAlreadyDone);
  EXPECT_TRUE(OpWord::CancelAsked(op.head->word.load()));
  EXPECT_EQ(op.cancel_requested_ns.load(), 3);
  EXPECT_EQ(op.Finish(-ECANCELED, 4), OpState::kTimedOut);
}

// The other way round the cancel wins: the deadline changes nothing.
TEST_F(OpStateTest, DeadlineAfterACancelKeepsItCancelled) {
  Op& op = NewOp(OpKind::kRead);
  ASSERT_TRUE(op.TryStart(1));
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kClientRequest, 2),
            CancelResult::kCancelled);
  op.RequestEnd(op.generation(), EndReason::kDeadline, 3);
  EXPECT_TRUE(OpWord::DeadlineWasPassed(op.head->word.load()));
  EXPECT_EQ(op.Finish(-ECANCELED, 4), OpState::kCancelled);
}

// A refused cancel and a deadline that came too late are both recorded.
TEST_F(OpStateTest, RefusedCancelAndLateDeadlineAreRecorded) {
  Op& op = NewOp(OpKind::kWrite, CancelSafety::kOnlyBeforeStart);
  ASSERT_TRUE(op.TryStart(1));
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kOperatorRequest, 2),
            CancelResult::kNotCancellable);
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kDeadline, 3),
            CancelResult::kNotCancellable);
  const uint64_t w = op.head->word.load();
  EXPECT_TRUE(OpWord::CancelAsked(w));
  EXPECT_TRUE(OpWord::DeadlineWasPassed(w));
  EXPECT_FALSE(OpWord::EndRequested(w));
  EXPECT_EQ(op.cancel_requested_ns.load(), 2);
  EXPECT_EQ(op.Finish(4096, 4), OpState::kCompleted);
}

TEST_F(OpStateTest, FailIsTerminal) {
  Op& op = NewOp();
  EXPECT_EQ(op.Fail(EAGAIN, 2), OpState::kFailed);
  EXPECT_EQ(op.result.load(), -EAGAIN);
  EXPECT_EQ(op.RequestEnd(op.generation(), EndReason::kClientRequest, 3),
            CancelResult::kAlreadyDone);
}

TEST_F(OpStateTest, StaleIdNeverReachesReusedSlot) {
  Op& op = NewOp();
  const OpId old_id = op.id();
  ASSERT_TRUE(op.TryStart(1));
  op.Finish(0, 2);
  session_->Retire(op);
  Op& reused = NewOp();
  ASSERT_EQ(&reused, &op);  // the free list hands the same slot back
  EXPECT_NE(reused.id(), old_id);
  EXPECT_FALSE(registry_.Find(old_id));
  EXPECT_EQ(reused.RequestEnd(old_id.generation(), EndReason::kClientRequest, 3),
            CancelResult::kNotFound);
  EXPECT_EQ(reused.state(), OpState::kQueued);
  EXPECT_FALSE(registry_.Snapshot(old_id).has_value());
}

TEST_F(OpStateTest, SafetyFollowsTheSeed) {
  EXPECT_EQ(SafetyOf(OpKind::kRead), CancelSafety::kAlways);
  EXPECT_EQ(SafetyOf(OpKind::kPoll), CancelSafety::kAlways);
  EXPECT_EQ(SafetyOf(OpKind::kTimeout), CancelSafety::kAlways);
  EXPECT_EQ(SafetyOf(OpKind::kOpen), CancelSafety::kAlways);
  EXPECT_EQ(SafetyOf(OpKind::kOpen, /*creates=*/true), CancelSafety::kOnlyBeforeStart);
  for (OpKind k : {OpKind::kWrite, OpKind::kFsync, OpKind::kFallocate, OpKind::kFtruncate,
                   OpKind::kRename, OpKind::kUnlink, OpKind::kMkdir, OpKind::kClose}) {
    EXPECT_EQ(SafetyOf(k), CancelSafety::kOnlyBeforeStart) << Name(k);
  }
  // On a pipe, FIFO, socket or character device a write may wait forever and
  // interrupting it leaves only the bytes it reports written.
  EXPECT_EQ(SafetyOf(OpKind::kWrite, false, /*stream=*/true), CancelSafety::kAlways);
  EXPECT_EQ(SafetyOf(OpKind::kFsync, false, /*stream=*/true), CancelSafety::kOnlyBeforeStart);
}

TEST_F(OpStateTest, MayBlockIsWaitsAndBlockingStreamIo) {
  EXPECT_TRUE(MayBlock(OpKind::kPoll, false));
  EXPECT_TRUE(MayBlock(OpKind::kTimeout, false));
  EXPECT_TRUE(MayBlock(OpKind::kRead, /*blocking_stream=*/true));
  EXPECT_TRUE(MayBlock(OpKind::kWrite, /*blocking_stream=*/true));
  EXPECT_FALSE(MayBlock(OpKind::kRead, false));  // a file, or a stream opened O_NONBLOCK
  EXPECT_FALSE(MayBlock(OpKind::kFsync, true));
  EXPECT_FALSE(MayBlock(OpKind::kOpen, false));
}

TEST_F(OpStateTest, AnOpWithoutTargetReadsAsNone) {
  auto op = session_->Register(OpKind::kNop, CancelSafety::kAlways, 0, "", 1);
  ASSERT_TRUE(op.ok());
  char out[Op::kTargetBytes + 1];
  std::memset(out, 'x', sizeof out);
  EXPECT_FALSE((*op)->ReadTarget(out));
  EXPECT_STREQ(out, "");
}

TEST_F(OpStateTest, LongTargetKeepsItsTail) {
  std::string path(100, 'd');
  path += "/file.txt";
  auto op = session_->Register(OpKind::kOpen, CancelSafety::kAlways, 0, path, 1);
  ASSERT_TRUE(op.ok());
  char out[Op::kTargetBytes + 1];
  ASSERT_TRUE((*op)->ReadTarget(out));
  const size_t n = std::strlen(out);
  EXPECT_EQ(n, Op::kTargetBytes);
  EXPECT_EQ(std::string_view(out, 3), "...");
  EXPECT_TRUE(std::string_view(out, n).ends_with("/file.txt"));
}

}  // namespace
}  // namespace asyncd::core
