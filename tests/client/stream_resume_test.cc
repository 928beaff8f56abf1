// StreamClient with StreamOptions::resume against an in-process fake of the
// daemon's resumable Stream (a sync gRPC service on a temporary unix socket
// whose session state outlives the server, as a live restart's checkpoint
// does): a stream that ends UNAVAILABLE resumes after what it received,
// drops replayed messages it already had, delivers each completion exactly
// once, sends again a batch that got no `accepted`, and acknowledges what it
// received; a refused resume, or one whose budget passes, ends the stream
// with synthesized completions carrying that status; a stream resumes once
// the daemon's socket answers again after it was gone.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "asyncd/client.h"

namespace asyncd::client {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kSessionId = 42;
constexpr uint32_t kMaxInflight = 64;

// What the fake does with a non-empty batch it reads on the first stream.
enum class Then {
  kComplete,      // accepted and completions, both sent
  kAcceptHold,    // accepted sent; the ops run on, completing after the resume
  kAcceptUnsent,  // accepted numbered and kept, not sent; the ops run on
  kDropUnread,    // as if never read: no accepted, nothing runs
};

// The session's state, shared by the fake's servers: the numbering, every
// numbered message, the ops carried over, and what the client sent.
struct FakeSession {
  std::mutex mu;
  std::condition_variable cv;
  // Script of the first stream: one entry per non-empty batch read (then
  // kComplete), and the stream ends UNAVAILABLE after end_after of them.
  std::deque<Then> script;
  int end_after = -1;
  // Resumes answered UNAVAILABLE, as a stopping daemon refuses calls.
  bool refuse_draining = false;
  // Resumes refused so (not OK), once released if hold_resume.
  grpc::Status resume_refusal = grpc::Status::OK;
  bool hold_resume = false;
  // Also replay this many messages the client had already received.
  uint64_t replay_behind = 0;

  uint64_t next_seq = 1;
  std::vector<v1::StreamResponse> numbered;  // seq n at n - 1
  std::vector<v1::Completion> carried;       // ops running across the restart
  uint64_t next_op_id = 1000;
  bool first_ended = false;
  int resume_attempts = 0;
  std::vector<uint64_t> resume_afters;  // of the resumes answered
  uint64_t max_ack = 0;
  int bad_acks = 0;
  int empty_batches = 0;
  std::vector<std::vector<uint64_t>> batches_read;  // wire tags, non-empty batches run
  std::vector<uint64_t> dropped_tags;

  // Numbers `msg` and keeps it; returns it.
  const v1::StreamResponse& NumberLocked(v1::StreamResponse msg) {
    msg.set_seq(next_seq++);
    numbered.push_back(std::move(msg));
    return numbered.back();
  }
};

class FakeResumableAsyncd final : public v1::Asyncd::Service {
 public:
  explicit FakeResumableAsyncd(FakeSession& session) : s_(session) {}

  grpc::Status Stream(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::StreamResponse, v1::StreamRequest>* stream) override {
    v1::StreamRequest req;
    if (!stream->Read(&req) || !req.has_open()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "open first");
    }
    const v1::StreamOpen open = req.open();
    if (!open.resumable()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "resumable");
    const bool resuming = open.session_id() != 0;
    if (resuming && !Resume(context, stream, open)) return refusal_;
    if (!resuming) {
      v1::StreamResponse opened;
      opened.mutable_opened()->set_session_id(kSessionId);
      opened.mutable_opened()->mutable_limits()->set_max_inflight_per_session(kMaxInflight);
      stream->Write(opened);
    }
    int batches = 0;
    while (stream->Read(&req)) {
      std::vector<v1::StreamResponse> out;
      bool end = false;
      {
        std::lock_guard lock(s_.mu);
        if (req.has_ack()) {
          if (req.ack() >= s_.next_seq) ++s_.bad_acks;
          s_.max_ack = std::max(s_.max_ack, req.ack());
          s_.cv.notify_all();
          continue;
        }
        if (!req.has_submit()) continue;
        const v1::SubmitBatch& batch = req.submit();
        if (batch.ops().empty()) {
          ++s_.empty_batches;
          v1::StreamResponse accepted;
          accepted.mutable_accepted()->set_batch_tag(batch.batch_tag());
          out.push_back(s_.NumberLocked(std::move(accepted)));
        } else {
          Then then = Then::kComplete;
          if (!resuming && !s_.script.empty()) {
            then = s_.script.front();
            s_.script.pop_front();
          }
          if (then == Then::kDropUnread) {
            for (const v1::Operation& op : batch.ops()) s_.dropped_tags.push_back(op.tag());
          } else {
            Run(batch, then, out);
          }
          end = !resuming && ++batches == s_.end_after;
          if (end) {
            s_.first_ended = true;
            s_.cv.notify_all();
          }
        }
      }
      for (const v1::StreamResponse& msg : out) stream->Write(msg);
      if (end) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the daemon is restarting");
    }
    return grpc::Status::OK;
  }

 private:
  // Runs a batch's ops (mu held): the accepted, and the completions or
  // the ops carried over.
  void Run(const v1::SubmitBatch& batch, Then then, std::vector<v1::StreamResponse>& out) {
    std::vector<uint64_t> tags;
    v1::StreamResponse accepted;
    accepted.mutable_accepted()->set_batch_tag(batch.batch_tag());
    v1::StreamResponse completions;
    for (const v1::Operation& op : batch.ops()) {
      tags.push_back(op.tag());
      const uint64_t id = ++s_.next_op_id;
      v1::AcceptedOp* a = accepted.mutable_accepted()->add_ops();
      a->set_tag(op.tag());
      a->set_op_id(id);
      v1::Completion c;
      c.set_tag(op.tag());
      c.set_op_id(id);
      c.set_outcome(v1::OUTCOME_COMPLETED);
      if (then == Then::kComplete) {
        *completions.mutable_completions()->add_completions() = c;
      } else {
        s_.carried.push_back(c);
      }
    }
    s_.batches_read.push_back(std::move(tags));
    const v1::StreamResponse& numbered = s_.NumberLocked(std::move(accepted));
    if (then != Then::kAcceptUnsent) out.push_back(numbered);
    if (then == Then::kComplete) out.push_back(s_.NumberLocked(std::move(completions)));
  }

  // Answers a resume: the replay, then the carried ops' completions. False:
  // refused with refusal_.
  bool Resume(grpc::ServerContext* context,
              grpc::ServerReaderWriter<v1::StreamResponse, v1::StreamRequest>* stream,
              const v1::StreamOpen& open) {
    std::vector<v1::StreamResponse> out;
    {
      std::unique_lock lock(s_.mu);
      ++s_.resume_attempts;
      s_.cv.notify_all();
      s_.cv.wait(lock, [&] { return !s_.hold_resume || context->IsCancelled(); });
      if (s_.refuse_draining) {
        refusal_ = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                "asyncd is draining: it accepts no new work; retry elsewhere");
        return false;
      }
      if (!s_.resume_refusal.ok()) {
        refusal_ = s_.resume_refusal;
        return false;
      }
      if (open.session_id() != kSessionId || open.resume_after() >= s_.next_seq) {
        refusal_ = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad resume");
        return false;
      }
      s_.resume_afters.push_back(open.resume_after());
      v1::StreamResponse opened;
      opened.mutable_opened()->set_session_id(kSessionId);
      opened.mutable_opened()->mutable_limits()->set_max_inflight_per_session(kMaxInflight);
      out.push_back(opened);
      const uint64_t from =
          open.resume_after() >= s_.replay_behind ? open.resume_after() + 1 - s_.replay_behind : 1;
      for (uint64_t seq = from; seq < s_.next_seq; ++seq) out.push_back(s_.numbered[seq - 1]);
      if (!s_.carried.empty()) {
        v1::StreamResponse completions;
        for (const v1::Completion& c : s_.carried) {
          *completions.mutable_completions()->add_completions() = c;
        }
        s_.carried.clear();
        out.push_back(s_.NumberLocked(std::move(completions)));
      }
    }
    for (const v1::StreamResponse& msg : out) stream->Write(msg);
    return true;
  }

  FakeSession& s_;
  grpc::Status refusal_;
};

// Collects completions and accepted ops; thread-safe.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, int> completed;  // caller tag -> completions delivered
  std::map<uint64_t, int> accepted;   // caller tag -> accepted delivered
  std::vector<v1::Completion> completions;

  StreamClient::CompletionCallback OnCompletion() {
    return [this](const v1::Completion& c) {
      std::lock_guard lock(mu);
      ++completed[c.tag()];
      completions.push_back(c);
      cv.notify_all();
    };
  }
  StreamClient::AcceptedCallback OnAccepted() {
    return [this](const StreamClient::AcceptedOp& a) {
      std::lock_guard lock(mu);
      ++accepted[a.tag];
    };
  }
  bool WaitFor(size_t n, std::chrono::seconds timeout = 10s) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return completions.size() >= n; });
  }
  size_t size() {
    std::lock_guard lock(mu);
    return completions.size();
  }
};

std::vector<v1::Operation> Nops(std::initializer_list<uint64_t> tags) {
  std::vector<v1::Operation> ops;
  for (uint64_t tag : tags) {
    ops.emplace_back().mutable_nop();
    ops.back().set_tag(tag);
  }
  return ops;
}

class StreamResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    path_ = "/tmp/asyncd-stream-resume-test-" + std::to_string(::getpid()) + "-" +
            std::to_string(counter++) + ".sock";
    ::unlink(path_.c_str());
    StartServer();
    channel_ = Connect(path_);
  }
  void TearDown() override {
    {
      std::lock_guard lock(session_.mu);
      session_.hold_resume = false;
      session_.cv.notify_all();
    }
    StopServer();
    ::unlink(path_.c_str());
  }

  // A daemon on path_ (again, after StopServer: the next daemon).
  void StartServer() {
    services_.push_back(std::make_unique<FakeResumableAsyncd>(session_));
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + path_, grpc::InsecureServerCredentials());
    builder.RegisterService(services_.back().get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  void StopServer() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 1s);
    server_.reset();
  }

  std::unique_ptr<StreamClient> Open(RetryPolicy policy = {}) {
    // Not coalesced: each Submit call is one batch, as the script counts.
    auto stream = StreamClient::Create(channel_, "test", 0, {.coalesce = false, .resume = policy});
    EXPECT_TRUE(stream.ok()) << stream.status();
    return stream.ok() ? std::move(*stream) : nullptr;
  }

  template <typename Pred>
  bool WaitSession(Pred pred, std::chrono::seconds timeout = 10s) {
    std::unique_lock lock(session_.mu);
    return session_.cv.wait_for(lock, timeout, [&] { return pred(session_); });
  }

  std::string path_;
  FakeSession session_;
  std::vector<std::unique_ptr<FakeResumableAsyncd>> services_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Batch A completes; B is accepted and runs on; the restart comes after the
// daemon read C (its accepted numbered but not received) and while D was on
// its way (never read). The resume says what was received (seq 3, B's
// accepted); the replay repeats two messages the client had, B's accepted
// among them, which it drops; C is not sent again, D is, with its tags;
// each op is accepted once and completes once, for real; everything
// received is acknowledged.
TEST_F(StreamResumeTest, ResumesAfterWhatItReceivedAndResendsWhatWasNeverRead) {
  session_.script = {Then::kComplete, Then::kAcceptHold, Then::kAcceptUnsent, Then::kDropUnread};
  session_.end_after = 4;
  session_.replay_behind = 2;
  auto stream = Open();
  ASSERT_NE(stream, nullptr);
  Collector collector;
  ASSERT_TRUE(
      stream->Submit(Nops({1, 2, 3}), collector.OnCompletion(), collector.OnAccepted()).ok());
  ASSERT_TRUE(collector.WaitFor(3));  // seq 1 (accepted), 2 (completions)
  ASSERT_TRUE(stream->Submit(Nops({4}), collector.OnCompletion(), collector.OnAccepted()).ok());
  ASSERT_TRUE(stream->Submit(Nops({5, 6}), collector.OnCompletion(), collector.OnAccepted()).ok());
  ASSERT_TRUE(stream->Submit(Nops({7}), collector.OnCompletion(), collector.OnAccepted()).ok());

  ASSERT_TRUE(collector.WaitFor(7));
  // Everything received is acknowledged once the client has nothing else to
  // write: seq 4 (C's accepted, replayed), 5 (B's and C's completions), 6
  // (the marker's accepted), 7 and 8 (D's).
  ASSERT_TRUE(WaitSession([](FakeSession& s) { return s.max_ack == s.next_seq - 1; }));
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(stream->resumes(), 1u);

  std::lock_guard collected(collector.mu);
  for (uint64_t tag = 1; tag <= 7; ++tag) {
    EXPECT_EQ(collector.completed[tag], 1) << tag;
    EXPECT_EQ(collector.accepted[tag], 1) << tag;
  }
  for (const v1::Completion& c : collector.completions) {
    EXPECT_EQ(c.outcome(), v1::OUTCOME_COMPLETED) << c.tag();
  }
  std::lock_guard lock(session_.mu);
  EXPECT_EQ(session_.resume_afters, std::vector<uint64_t>{3});
  EXPECT_EQ(session_.next_seq, 9u);
  EXPECT_EQ(session_.bad_acks, 0);
  EXPECT_EQ(session_.empty_batches, 1);  // the replay's end marker
  // A, B, C, then D again with the library tags it had the first time.
  ASSERT_EQ(session_.batches_read.size(), 4u);
  EXPECT_EQ(session_.batches_read[0].size(), 3u);
  EXPECT_EQ(session_.batches_read[1].size(), 1u);
  EXPECT_EQ(session_.batches_read[2].size(), 2u);
  ASSERT_EQ(session_.dropped_tags.size(), 1u);
  EXPECT_EQ(session_.batches_read[3], session_.dropped_tags);
}

// Resuming is refused (the session was closed meanwhile): the stream ends
// with that status. Nothing is synthesized while it resumes; then the
// accepted ops get OUTCOME_UNSPECIFIED completions and the op submitted
// during the resume, never sent, a REJECTED one, all FAILED_PRECONDITION.
TEST_F(StreamResumeTest, RefusedResumeEndsTheStreamWithItsStatus) {
  session_.script = {Then::kAcceptHold};
  session_.end_after = 1;
  session_.hold_resume = true;
  session_.resume_refusal =
      grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "session 42 was closed");
  auto stream = Open();
  ASSERT_NE(stream, nullptr);
  Collector collector;
  ASSERT_TRUE(stream->Submit(Nops({1, 2}), collector.OnCompletion(), collector.OnAccepted()).ok());
  ASSERT_TRUE(WaitSession([](FakeSession& s) { return s.resume_attempts >= 1; }));
  ASSERT_TRUE(stream->Submit(Nops({3}), collector.OnCompletion()).ok());
  EXPECT_EQ(stream->outstanding(), 3u);
  EXPECT_EQ(collector.size(), 0u);
  {
    std::lock_guard lock(session_.mu);
    session_.hold_resume = false;
    session_.cv.notify_all();
  }
  absl::Status s = stream->Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(stream->resumes(), 0u);
  ASSERT_EQ(collector.size(), 3u);
  for (const v1::Completion& c : collector.completions) {
    EXPECT_EQ(c.status_code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
    if (c.tag() == 3) {
      EXPECT_EQ(c.outcome(), v1::OUTCOME_REJECTED);
    } else {
      EXPECT_EQ(c.outcome(), v1::OUTCOME_UNSPECIFIED);
      EXPECT_NE(c.op_id(), 0u);
    }
  }
  EXPECT_EQ(stream->Submit(Nops({9}), collector.OnCompletion()).code(),
            absl::StatusCode::kFailedPrecondition);
}

// The daemon refuses resumes while it stops, then is gone, then the next
// one listens on the same socket: the stream resumes, after the seq it had,
// and the carried ops complete once.
TEST_F(StreamResumeTest, ReconnectsWhileTheDaemonIsGoneThenResumes) {
  session_.script = {Then::kAcceptHold};
  session_.end_after = 1;
  session_.refuse_draining = true;
  auto stream = Open();
  ASSERT_NE(stream, nullptr);
  Collector collector;
  ASSERT_TRUE(stream->Submit(Nops({1, 2}), collector.OnCompletion(), collector.OnAccepted()).ok());
  ASSERT_TRUE(WaitSession([](FakeSession& s) { return s.resume_attempts >= 1; }));
  StopServer();
  std::this_thread::sleep_for(300ms);  // several attempts find no daemon
  {
    std::lock_guard lock(session_.mu);
    session_.refuse_draining = false;
  }
  StartServer();
  ASSERT_TRUE(collector.WaitFor(2));
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(stream->resumes(), 1u);
  std::lock_guard collected(collector.mu);
  EXPECT_EQ(collector.completed[1], 1);
  EXPECT_EQ(collector.completed[2], 1);
  for (const v1::Completion& c : collector.completions) {
    EXPECT_EQ(c.outcome(), v1::OUTCOME_COMPLETED);
  }
  std::lock_guard lock(session_.mu);
  EXPECT_EQ(session_.resume_afters, std::vector<uint64_t>{1});
}

// No daemon answers within the budget: the stream ends UNAVAILABLE, saying
// it stopped resuming, and synthesizes the completions it lacks.
TEST_F(StreamResumeTest, GivesUpWhenTheBudgetPasses) {
  session_.script = {Then::kAcceptHold};
  session_.end_after = 1;
  session_.refuse_draining = true;
  auto stream = Open({.budget = 200ms});
  ASSERT_NE(stream, nullptr);
  Collector collector;
  ASSERT_TRUE(stream->Submit(Nops({1}), collector.OnCompletion()).ok());
  absl::Status s = stream->Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("stopped resuming"), absl::string_view::npos) << s;
  ASSERT_EQ(collector.size(), 1u);
  EXPECT_EQ(collector.completions[0].outcome(), v1::OUTCOME_UNSPECIFIED);
  EXPECT_EQ(collector.completions[0].status_code(),
            static_cast<int>(absl::StatusCode::kUnavailable));
  std::lock_guard lock(session_.mu);
  EXPECT_GE(session_.resume_attempts, 2);  // it tried again after a backoff
}

// Destroying the client while it waits to resume ends the stream at once
// (CANCELLED), as for a running stream.
TEST_F(StreamResumeTest, DestroyedWhileResumingCancels) {
  session_.script = {Then::kAcceptHold};
  session_.end_after = 1;
  session_.refuse_draining = true;
  Collector collector;
  {
    auto stream = Open();
    ASSERT_NE(stream, nullptr);
    ASSERT_TRUE(stream->Submit(Nops({1}), collector.OnCompletion()).ok());
    ASSERT_TRUE(WaitSession([](FakeSession& s) { return s.resume_attempts >= 1; }));
  }
  ASSERT_EQ(collector.size(), 1u);
  EXPECT_EQ(collector.completions[0].status_code(), static_cast<int>(absl::StatusCode::kCancelled));
}

}  // namespace
}  // namespace asyncd::client
