// The contract's promises at their edges, against the real daemon on both
// backends, one promise per test: how long a finished op and an ended
// session stay known, what a session's end does to its streams, leases
// under an attached stream, what a cancel (refused or not) and a deadline
// leave in the timeline and tell watchers, the states listings show, call
// deadlines, validation of every field that has a rule, and requests that
// do not decode. The storms (tests/stress) check the same under races.
#include <sys/stat.h>

#include <functional>
#include <future>

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>

#include "absl/strings/str_cat.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/security_util.h"

namespace asyncd::testing {
namespace {

using client::Client;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;

using StreamRw = grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>;

class ContractTest : public ::testing::TestWithParam<BackendMode> {
 protected:
  ContractTest() : daemon_(GetParam()), client_(daemon_.channel()) {}

  uint64_t NewSession(uint32_t lease_ms = 0) {
    auto s = client_.OpenSession("contract", lease_ms);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : 0;
  }
  uint32_t OpenFifo(uint64_t session, const std::string& name) {
    EXPECT_EQ(mkfifo((daemon_.root() + "/" + name).c_str(), 0600), 0);
    auto h = client_.Open(session, name, v1::OPEN_MODE_READ_WRITE);
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *h : 0;
  }
  // A raw stream with its context, for sending exactly what a test needs.
  struct RawStream {
    grpc::ClientContext ctx;
    std::unique_ptr<StreamRw> rw;
  };
  // Sends `open`; *opened is the first answer (empty if the stream ended).
  std::unique_ptr<RawStream> OpenStream(const v1::StreamOpen& open, v1::StreamResponse* opened) {
    auto s = std::make_unique<RawStream>();
    s->ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
    s->rw = v1::Asyncd::NewStub(daemon_.channel())->Stream(&s->ctx);
    v1::StreamRequest req;
    *req.mutable_open() = open;
    s->rw->Write(req);
    if (!s->rw->Read(opened)) opened->Clear();
    return s;
  }
  // A stream attached to session `s` with one read of `fifo` (tag 1)
  // accepted on it: the read blocks until the FIFO has data.
  std::unique_ptr<RawStream> AttachWithBlockedRead(uint64_t s, uint32_t fifo, uint64_t* op_id) {
    v1::StreamOpen open;
    open.set_session_id(s);
    v1::StreamResponse opened;
    auto stream = OpenStream(open, &opened);
    EXPECT_TRUE(opened.has_opened());
    v1::StreamRequest batch;
    batch.mutable_submit()->set_batch_tag(7);
    *batch.mutable_submit()->add_ops() = ReadOp(fifo, -1, 1, 1);
    EXPECT_TRUE(stream->rw->Write(batch));
    v1::StreamResponse accepted;
    EXPECT_TRUE(stream->rw->Read(&accepted));
    *op_id = accepted.accepted().ops_size() == 1 ? accepted.accepted().ops(0).op_id() : 0;
    return stream;
  }
  v1::OperationInfo Find(uint64_t op_id) {
    auto ops = client_.ListAll(v1::OpSelector());
    EXPECT_TRUE(ops.ok()) << ops.status();
    if (ops.ok()) {
      for (const auto& op : *ops) {
        if (op.op_id() == op_id) return op;
      }
    }
    return {};
  }
  v1::SessionInfo SessionInfoOf(uint64_t id) {
    auto sessions = client_.ListSessions();
    EXPECT_TRUE(sessions.ok());
    if (sessions.ok()) {
      for (const auto& s : *sessions) {
        if (s.session_id() == id) return s;
      }
    }
    return {};
  }

  Daemon daemon_;
  Client client_;
};

INSTANTIATE_TEST_SUITE_P(Backends, ContractTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

// A finished op's id answers ALREADY_DONE while GetOperation still finds it
// in the history, and an id never issued NOT_FOUND.
TEST_P(ContractTest, FinishedOpIsAlreadyDoneWhileInTheHistory) {
  const uint64_t s = NewSession();
  auto done = client_.Submit(s, NopOp());
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_TRUE(client_.GetOperation(done->op_id()).ok());
  auto cancel = client_.Cancel(done->op_id());
  ASSERT_TRUE(cancel.ok()) << cancel.status();
  EXPECT_EQ(cancel->outcomes(0).result(), v1::CANCEL_RESULT_ALREADY_DONE);
  EXPECT_EQ(cancel->counts().already_done(), 1u);
  auto never = client_.Cancel(uint64_t{0xdead0000beef});
  ASSERT_TRUE(never.ok());
  EXPECT_EQ(never->outcomes(0).result(), v1::CANCEL_RESULT_NOT_FOUND);
}

// An ended session answers FAILED_PRECONDITION to Submit, KeepAlive and a
// second CloseSession, and to a stream attaching to it; an id never issued
// answers NOT_FOUND.
TEST_P(ContractTest, EndedSessionIsFailedPreconditionForever) {
  const uint64_t s = NewSession();
  ASSERT_TRUE(client_.CloseSession(s).ok());
  EXPECT_EQ(client_.Submit(s, NopOp()).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client_.KeepAlive(s).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client_.CloseSession(s).status().code(), absl::StatusCode::kFailedPrecondition);
  v1::StreamOpen open;
  open.set_session_id(s);
  v1::StreamResponse opened;
  auto stream = OpenStream(open, &opened);
  EXPECT_EQ(stream->rw->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  const uint64_t never = s + (uint64_t{1} << 40);
  EXPECT_EQ(client_.Submit(never, NopOp()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_.KeepAlive(never).status().code(), absl::StatusCode::kNotFound);
}

// CloseSession ends the streams attached to the session: their ops'
// completions are delivered (cancelled), then the stream ends
// FAILED_PRECONDITION, with no read or write pending from the client.
TEST_P(ContractTest, CloseSessionEndsItsStreamsAfterTheirCompletions) {
  const uint64_t s = NewSession();
  const uint32_t fifo = OpenFifo(s, "fifo");
  uint64_t id = 0;
  auto stream = AttachWithBlockedRead(s, fifo, &id);
  ASSERT_NE(id, 0u);
  ASSERT_TRUE(client_.CloseSession(s).ok());
  v1::StreamRequest batch;
  batch.mutable_submit()->set_batch_tag(8);  // sent after the close: never accepted
  *batch.mutable_submit()->add_ops() = ReadOp(fifo, -1, 1, 1);
  (void)stream->rw->Write(batch);
  v1::StreamResponse msg;
  int completions = 0;
  while (stream->rw->Read(&msg)) {
    for (const v1::AcceptedOp& a : msg.accepted().ops()) {
      EXPECT_EQ(a.op_id(), 0u) << "accepted after the close: " << msg.ShortDebugString();
    }
    for (const v1::Completion& c : msg.completions().completions()) {
      if (c.outcome() == v1::OUTCOME_REJECTED) {  // the batch was on its way
        EXPECT_EQ(c.status_code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION))
            << c.ShortDebugString();
        continue;
      }
      ++completions;
      EXPECT_EQ(c.outcome(), v1::OUTCOME_CANCELLED);
      EXPECT_EQ(c.end_reason(), v1::END_REASON_SESSION_CLOSED);
      EXPECT_EQ(c.message(), "session closed");
    }
  }
  EXPECT_EQ(completions, 1);
  const grpc::Status end = stream->rw->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << end.error_message();
}

// While a stream is attached the lease does not run: KeepAlive answers 0,
// the listing shows no lease left, and the session outlives its lease;
// StreamOpen.lease_ms replaces the lease length and is validated.
TEST_P(ContractTest, AttachedStreamPausesTheLease) {
  const uint64_t s = NewSession(/*lease_ms=*/300);
  v1::StreamOpen open;
  open.set_session_id(s);
  open.set_lease_ms(400);
  v1::StreamResponse opened;
  auto stream = OpenStream(open, &opened);
  ASSERT_TRUE(opened.has_opened());
  EXPECT_EQ(opened.opened().lease_ms(), 400u);
  auto kept = client_.KeepAlive(s);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, 0u);
  const v1::SessionInfo info = SessionInfoOf(s);
  EXPECT_EQ(info.lease_remaining_ms(), 0u);
  EXPECT_FALSE(info.bound_to_stream());  // attached, not created by the stream
  std::this_thread::sleep_for(milliseconds(700));  // past the old and new lease
  EXPECT_EQ(SessionInfoOf(s).session_id(), s) << "the lease ran under a stream";
  stream->rw->WritesDone();
  const grpc::Status ended = stream->rw->Finish();
  EXPECT_TRUE(ended.ok()) << ended.error_message();
  // Detached: the lease runs again, at its new length.
  auto renewed = client_.KeepAlive(s);
  ASSERT_TRUE(renewed.ok());
  EXPECT_EQ(*renewed, 400u);
  // Out of range when attaching: INVALID_ARGUMENT ends the stream.
  open.set_lease_ms(5);
  auto bad = OpenStream(open, &opened);
  const grpc::Status refused = bad->rw->Finish();
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(refused.error_message(), HasSubstr("open.lease_ms"));
}

// A cancel refused because the op passed its cancel point still shows:
// cancel_requested, and CANCEL_REQUESTED in the timeline; a deadline that
// came too late shows DEADLINE_EXPIRED; then the op's own completion. The
// op: an open that may create (not cancel-safe once started) of a FIFO,
// which waits for a reader.
TEST_P(ContractTest, RefusedCancelAndLateDeadlineAreInTheTimeline) {
  const uint64_t s = NewSession();
  const std::string fifo = daemon_.root() + "/late";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  v1::Operation open;
  open.set_deadline_ms(30);
  open.mutable_open()->set_path("late");
  open.mutable_open()->set_access(v1::OPEN_MODE_WRITE_ONLY);
  open.mutable_open()->set_create(true);
  auto stream = client::StreamClient::Create(daemon_.channel(), "late", s);
  ASSERT_TRUE(stream.ok());
  Completions done;
  std::atomic<uint64_t> id{0};
  ASSERT_TRUE((*stream)
                  ->Submit({open}, done.Callback(),
                           [&](const client::StreamClient::AcceptedOp& a) { id = a.op_id; })
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return id != 0 && Find(id).state() != v1::OP_STATE_QUEUED; }));
  auto cancel = client_.Cancel(id);
  ASSERT_TRUE(cancel.ok());
  EXPECT_EQ(cancel->outcomes(0).result(), v1::CANCEL_RESULT_NOT_CANCELLABLE);
  EXPECT_TRUE(Find(id).cancel_requested());
  std::this_thread::sleep_for(milliseconds(60));  // past its deadline: it goes on
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(reader, 0);
  auto c = done.Wait(0);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->outcome(), v1::OUTCOME_COMPLETED);
  auto info = client_.GetOperation(id);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->cancel_requested());
  std::vector<v1::EventType> types;
  for (const v1::Event& e : info->timeline()) {
    types.push_back(e.type());
    if (e.type() == v1::EVENT_TYPE_CANCEL_REQUESTED) {
      EXPECT_EQ(e.detail(), "refused: past its cancel point");
    }
    if (e.type() == v1::EVENT_TYPE_DEADLINE_EXPIRED) EXPECT_EQ(e.detail(), "too late: it went on");
  }
  EXPECT_THAT(types, ::testing::Contains(v1::EVENT_TYPE_CANCEL_REQUESTED));
  EXPECT_THAT(types, ::testing::Contains(v1::EVENT_TYPE_DEADLINE_EXPIRED));
  EXPECT_EQ(types.back(), v1::EVENT_TYPE_COMPLETED);
  ::close(reader);
  (void)(*stream)->Finish();
}

// Watchers hear of every end request: a session closed, a deadline, the
// Cancel RPC.
TEST_P(ContractTest, WatchersSeeEveryEndRequest) {
  grpc::ClientContext wctx;
  v1::WatchRequest wreq;
  wreq.add_types(v1::EVENT_TYPE_CANCEL_REQUESTED);
  wreq.add_types(v1::EVENT_TYPE_DEADLINE_EXPIRED);
  auto watch = v1::Asyncd::NewStub(daemon_.channel())->Watch(&wctx, wreq);
  std::this_thread::sleep_for(milliseconds(100));  // the watcher is registered
  const uint64_t a = NewSession();
  auto stream = client::StreamClient::Create(daemon_.channel(), "w", a);
  ASSERT_TRUE(stream.ok());
  Completions done;
  v1::Operation timed = TimeoutOp(seconds(30), 2);
  timed.set_deadline_ms(20);
  ASSERT_TRUE((*stream)->Submit({TimeoutOp(seconds(30), 1), timed}, done.Callback()).ok());
  ASSERT_TRUE(done.Wait(2).has_value());
  ASSERT_TRUE(client_.CloseSession(a).ok());
  std::set<std::pair<int, int>> seen;  // (type, end reason)
  v1::WatchEvent e;
  while (seen.size() < 2 && watch->Read(&e)) seen.insert({e.type(), e.end_reason()});
  EXPECT_TRUE(seen.count({v1::EVENT_TYPE_DEADLINE_EXPIRED, v1::END_REASON_DEADLINE}));
  EXPECT_TRUE(seen.count({v1::EVENT_TYPE_CANCEL_REQUESTED, v1::END_REASON_SESSION_CLOSED}));
  wctx.TryCancel();
  (void)(*stream)->Finish();
}

// A blocked read listed as the proto defines its state: RUNNING on a pool
// worker, DISPATCHED once io_uring has it; a cancelled one reports result
// -ECANCELED (result = -error_number).
TEST_P(ContractTest, StatesAndResultsFollowTheProto) {
  const uint64_t s = NewSession();
  const uint32_t fifo = OpenFifo(s, "fifo");
  auto pending = std::async(std::launch::async, [&] { return client_.Submit(s, ReadOp(fifo, -1, 4)); });
  uint64_t id = 0;
  ASSERT_TRUE(WaitFor([&] {
    auto ops = client_.ListAll(v1::OpSelector());
    for (const auto& op : *ops) {
      if (op.kind() == v1::OP_KIND_READ) id = op.op_id();
    }
    return id != 0 && Find(id).state() != v1::OP_STATE_QUEUED;
  }));
  EXPECT_EQ(Find(id).state(), GetParam() == BackendMode::kIoUring ? v1::OP_STATE_DISPATCHED
                                                                  : v1::OP_STATE_RUNNING);
  ASSERT_TRUE(client_.Cancel(id).ok());
  auto c = pending.get();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_EQ(c->error_number(), ECANCELED);
  EXPECT_EQ(c->result(), -ECANCELED);
}

// A unary call whose deadline passed by the time its op ended ends
// DEADLINE_EXCEEDED; one that arrives with its deadline passed is refused
// and runs nothing.
TEST_P(ContractTest, PassedCallDeadlineIsDeadlineExceeded) {
  const uint64_t s = NewSession();
  const uint32_t fifo = OpenFifo(s, "fifo");
  auto stub = v1::Asyncd::NewStub(daemon_.channel());
  v1::SubmitRequest req;
  req.set_session_id(s);
  *req.mutable_op() = ReadOp(fifo, -1, 1);
  for (auto budget : {std::chrono::microseconds(1), std::chrono::microseconds(300'000)}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + budget);
    v1::Completion resp;
    EXPECT_EQ(stub->Submit(&ctx, req, &resp).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
}

// Every field with a rule refuses what breaks it with INVALID_ARGUMENT,
// naming the field, and changes nothing.
TEST_P(ContractTest, ValidationRefusesEveryBrokenRule) {
  const uint64_t s = NewSession();
  auto h = client_.Open(s, "f", v1::OPEN_MODE_READ_WRITE, {.create = true});
  ASSERT_TRUE(h.ok());
  auto invalid = [&](const v1::Operation& op, const std::string& field) {
    auto r = client_.Submit(s, op);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << op.DebugString();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(field));
  };
  v1::Operation fa;
  fa.mutable_fallocate()->set_handle(*h);
  fa.mutable_fallocate()->set_length(4096);
  fa.mutable_fallocate()->set_mode(v1::FALLOCATE_MODE_PUNCH_HOLE);
  invalid(fa, "fallocate.mode");
  fa.mutable_fallocate()->set_mode(v1::FALLOCATE_MODE_PUNCH_HOLE | v1::FALLOCATE_MODE_KEEP_SIZE |
                                   v1::FALLOCATE_MODE_ZERO_RANGE);
  invalid(fa, "fallocate.mode");
  v1::Operation open;
  open.mutable_open()->set_path("d");
  open.mutable_open()->set_directory(true);
  open.mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
  open.mutable_open()->set_create(true);
  invalid(open, "open.directory");
  open.mutable_open()->set_create(false);
  open.mutable_open()->set_access(v1::OPEN_MODE_WRITE_ONLY);
  invalid(open, "open.directory");
  EXPECT_FALSE(std::filesystem::exists(daemon_.root() + "/d"));
  EXPECT_EQ(client_.OpenSession(std::string(129, 'n')).status().code(),
            absl::StatusCode::kInvalidArgument);
  v1::CancelRequest all_and_kind;
  all_and_kind.mutable_selector()->set_all(true);
  all_and_kind.mutable_selector()->add_kinds(v1::OP_KIND_READ);
  grpc::ClientContext cctx;
  v1::CancelResponse cresp;
  EXPECT_EQ(v1::Asyncd::NewStub(daemon_.channel())->Cancel(&cctx, all_and_kind, &cresp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // A page token reused with another filter.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client_.Submit(s, NopOp()).ok());
  auto blocked_fifo = OpenFifo(s, "fifo");
  auto stream = client::StreamClient::Create(daemon_.channel(), "pages", s);
  ASSERT_TRUE(stream.ok());
  Completions done;
  ASSERT_TRUE((*stream)->Submit({ReadOp(blocked_fifo, -1, 1, 1), ReadOp(blocked_fifo, -1, 1, 2),
                                 ReadOp(blocked_fifo, -1, 1, 3)},
                                done.Callback())
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return client_.ListAll(v1::OpSelector())->size() == 3; }));
  v1::ListOperationsRequest lreq;
  lreq.set_page_size(1);
  grpc::ClientContext l1;
  v1::ListOperationsResponse first;
  auto lstub = v1::Asyncd::NewStub(daemon_.channel());
  ASSERT_TRUE(lstub->ListOperations(&l1, lreq, &first).ok());
  ASSERT_FALSE(first.next_page_token().empty());
  lreq.set_page_token(first.next_page_token());
  lreq.mutable_filter()->add_kinds(v1::OP_KIND_READ);
  grpc::ClientContext l2;
  v1::ListOperationsResponse second;
  EXPECT_EQ(lstub->ListOperations(&l2, lreq, &second).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(client_.CloseSession(s).ok());
  (void)(*stream)->Finish();
}

// Each documented bad operation is INVALID_ARGUMENT naming its field, and
// changes nothing: no file appears, nothing is listed or in the history.
TEST_P(ContractTest, EveryDocumentedBadOperationIsInvalidArgument) {
  const uint64_t s = NewSession();
  auto h = client_.Open(s, "f", v1::OPEN_MODE_READ_WRITE, {.create = true});
  ASSERT_TRUE(h.ok());
  struct Case {
    std::string field;
    std::function<void(v1::Operation&)> make;
  };
  const std::vector<Case> cases = {
      {"path", [](v1::Operation& o) { o.mutable_open()->set_path(""); }},
      {"path", [](v1::Operation& o) { o.mutable_open()->set_path(std::string(4096, 'p')); }},
      {"path", [](v1::Operation& o) { o.mutable_open()->set_path(std::string("a\0b", 3)); }},
      {"path", [](v1::Operation& o) { o.mutable_open()->set_path("../escape"); }},
      {"open.truncate",
       [](v1::Operation& o) {
         o.mutable_open()->set_path("t");
         o.mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
         o.mutable_open()->set_truncate(true);
       }},
      {"read.length", [&](v1::Operation& o) { o.mutable_read()->set_handle(*h); }},
      {"read.offset",
       [&](v1::Operation& o) {
         o.mutable_read()->set_handle(*h);
         o.mutable_read()->set_length(1);
         o.mutable_read()->set_offset(-2);
       }},
      {"write.offset",
       [&](v1::Operation& o) {
         o.mutable_write()->set_handle(*h);
         o.mutable_write()->set_data("x");
         o.mutable_write()->set_offset(-2);
       }},
      {"fallocate.mode",
       [&](v1::Operation& o) {
         o.mutable_fallocate()->set_handle(*h);
         o.mutable_fallocate()->set_length(1);
         o.mutable_fallocate()->set_mode(1u << 20);
       }},
      {"fallocate.offset",
       [&](v1::Operation& o) {
         o.mutable_fallocate()->set_handle(*h);
         o.mutable_fallocate()->set_length(1);
         o.mutable_fallocate()->set_offset(-1);
       }},
      {"fallocate.length",
       [&](v1::Operation& o) { o.mutable_fallocate()->set_handle(*h); }},
      {"ftruncate.length",
       [&](v1::Operation& o) {
         o.mutable_ftruncate()->set_handle(*h);
         o.mutable_ftruncate()->set_length(-1);
       }},
      {"statx", [](v1::Operation& o) { o.mutable_statx(); }},
      {"poll.events", [&](v1::Operation& o) { o.mutable_poll()->set_handle(*h); }},
      {"timeout.duration_us",
       [](v1::Operation& o) { o.mutable_timeout()->set_duration_us(24ull * 3600 * 1000000 + 1); }},
      {"handle", [](v1::Operation& o) { o.mutable_read()->set_length(1); }},
  };
  for (const Case& c : cases) {
    v1::Operation op;
    c.make(op);
    auto r = client_.Submit(s, op);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << op.ShortDebugString();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.field)) << op.ShortDebugString();
  }
  EXPECT_FALSE(std::filesystem::exists(daemon_.root() + "/t"));
  EXPECT_TRUE(client_.ListAll(v1::OpSelector())->empty());
  auto stats = client_.GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->inflight(), 0u);
  // The mode of an open without create is ignored, as documented.
  v1::Operation open;
  open.mutable_open()->set_path("f");
  open.mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
  open.mutable_open()->set_mode(04755);
  auto opened = client_.Submit(s, open);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->outcome(), v1::OUTCOME_COMPLETED);
}

// On a stream: a message with nothing set ends it INVALID_ARGUMENT; a
// cancel with no target is answered, in band, with the status it earned.
TEST_P(ContractTest, StreamAnswersBadCancelsAndEndsOnEmptyMessages) {
  v1::StreamResponse opened;
  auto stream = OpenStream(v1::StreamOpen(), &opened);
  ASSERT_TRUE(opened.has_opened());
  v1::StreamRequest cancel;
  cancel.mutable_cancel()->set_request_tag(99);
  ASSERT_TRUE(stream->rw->Write(cancel));
  v1::StreamResponse answer;
  ASSERT_TRUE(stream->rw->Read(&answer));
  ASSERT_TRUE(answer.has_cancel_result());
  EXPECT_EQ(answer.cancel_result().request_tag(), 99u);
  EXPECT_EQ(answer.cancel_result().status_code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_THAT(answer.cancel_result().message(), HasSubstr("target"));
  ASSERT_TRUE(stream->rw->Write(v1::StreamRequest()));
  const grpc::Status end = stream->rw->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(end.error_message(), HasSubstr("none of open, submit, cancel or ack"));
}

// Bytes that are not the method's message, and a path that is not UTF-8
// (proto3 strings must be), are INVALID_ARGUMENT, not UNIMPLEMENTED.
TEST_P(ContractTest, UndecodableRequestsAreInvalidArgument) {
  grpc::GenericStub generic(daemon_.channel());
  auto call = [&](const std::string& bytes) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(5));
    grpc::Slice slice(bytes);
    grpc::ByteBuffer req(&slice, 1), resp;
    std::promise<grpc::Status> result;
    generic.UnaryCall(&ctx, "/asyncd.v1.Asyncd/Submit", grpc::StubOptions(), &req, &resp,
                      [&](grpc::Status s) { result.set_value(s); });
    return result.get_future().get();
  };
  const grpc::Status garbage = call(std::string("\xff\xff\xff\xff\xff", 5));
  EXPECT_EQ(garbage.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << garbage.error_message();
  EXPECT_THAT(garbage.error_message(), HasSubstr("Submit"));
  v1::SubmitRequest bad_path;
  bad_path.set_session_id(NewSession());
  bad_path.mutable_op()->mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
  std::string bytes = bad_path.SerializeAsString();
  // Field 2 (op) holding field 11 (open) holding field 1 (path): "\xc3\x28", not UTF-8.
  v1::Open open;
  open.set_access(v1::OPEN_MODE_READ_ONLY);
  std::string open_bytes = open.SerializeAsString() + std::string("\x0a\x02\xc3\x28", 4);
  std::string op_bytes = std::string("\x5a") + static_cast<char>(open_bytes.size()) + open_bytes;
  v1::SubmitRequest only_session;
  only_session.set_session_id(bad_path.session_id());
  bytes = only_session.SerializeAsString() + std::string("\x12") +
          static_cast<char>(op_bytes.size()) + op_bytes;
  const grpc::Status not_utf8 = call(bytes);
  EXPECT_EQ(not_utf8.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << not_utf8.error_message();
}

// Stats.inflight and SessionInfo.inflight count QUEUED..RUNNING ops only:
// once a Submit is answered, its op is not in flight any more, though the
// daemon may not have let go of its slot yet.
TEST_P(ContractTest, AnsweredOpIsNoLongerInFlight) {
  const uint64_t s = NewSession();
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(client_.Submit(s, i % 2 == 0 ? NopOp() : TimeoutOp(std::chrono::microseconds(0))).ok());
    auto stats = client_.GetStats();
    ASSERT_TRUE(stats.ok());
    ASSERT_EQ(stats->inflight(), 0u) << "after answer " << i;
    auto sessions = client_.ListSessions();
    ASSERT_TRUE(sessions.ok());
    for (const v1::SessionInfo& info : *sessions) {
      if (info.session_id() == s) ASSERT_EQ(info.inflight(), 0u) << "after answer " << i;
    }
  }
}

// A unary op that ends later on the very thread that started it (a cancel
// of a queued op completes it on the cancelling thread) still finishes its
// call and gives back its budget. Runs many times: which gRPC thread takes
// which call is not ours to choose.
TEST_P(ContractTest, UnaryOpCompletedByACancelFinishesItsCall) {
  const uint64_t s = NewSession();
  const uint32_t fifo = OpenFifo(s, "fifo");
  for (int i = 0; i < 30; ++i) {
    auto pending =
        std::async(std::launch::async, [&] { return client_.Submit(s, ReadOp(fifo, -1, 64)); });
    uint64_t id = 0;
    ASSERT_TRUE(WaitFor([&] {
      auto ops = client_.ListAll(v1::OpSelector());
      if (ops.ok() && !ops->empty()) id = ops->front().op_id();
      return id != 0;
    }));
    ASSERT_TRUE(client_.Cancel(id).ok());
    ASSERT_EQ(pending.wait_for(seconds(10)), std::future_status::ready) << "call " << i;
    auto c = pending.get();
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->outcome(), v1::OUTCOME_CANCELLED);
  }
  ASSERT_TRUE(WaitFor([&] {
    auto st = client_.GetStats();
    return st.ok() && st->buffered_bytes() == 0 && st->inflight() == 0;
  })) << "budget not given back";
}

// Once a drain starts, every attached stream ends UNAVAILABLE as soon as
// its ops are done and delivered, without waiting for the client to
// half-close: an idle one at once, a busy one after its (drained) op.
TEST_P(ContractTest, DrainEndsAttachedStreamsUnavailable) {
  const uint64_t s = NewSession();
  const uint32_t fifo = OpenFifo(s, "fifo");
  uint64_t id = 0;
  auto busy = AttachWithBlockedRead(s, fifo, &id);
  ASSERT_NE(id, 0u);
  v1::StreamResponse opened;
  auto idle = OpenStream(v1::StreamOpen(), &opened);
  ASSERT_TRUE(opened.has_opened());
  ASSERT_TRUE(WaitFor([&] { return Find(id).op_id() != 0; }));

  auto drained = client_.Drain(1000);
  ASSERT_TRUE(drained.ok()) << drained.status();
  v1::StreamResponse r;
  ASSERT_TRUE(busy->rw->Read(&r));
  ASSERT_EQ(r.completions().completions_size(), 1);
  EXPECT_EQ(r.completions().completions(0).tag(), 1u);
  EXPECT_EQ(r.completions().completions(0).end_reason(), v1::END_REASON_DRAIN);
  for (RawStream* stream : {busy.get(), idle.get()}) {
    EXPECT_FALSE(stream->rw->Read(&r)) << r.DebugString();
    const grpc::Status end = stream->rw->Finish();
    EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
    EXPECT_THAT(end.error_message(), HasSubstr("draining"));
  }
  // A stream opened now is refused: UNAVAILABLE, or CANCELLED when it meets
  // the stop that follows the drain's answer.
  auto late = OpenStream(v1::StreamOpen(), &opened);
  EXPECT_FALSE(opened.has_opened());
  EXPECT_THAT(late->rw->Finish().error_code(),
              ::testing::AnyOf(grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::CANCELLED));
}

// A grace over the maximum is INVALID_ARGUMENT and starts no drain.
TEST_P(ContractTest, DrainGraceOverTheMaxIsRefused) {
  auto drained = client_.Drain(3'600'001);
  EXPECT_EQ(drained.status().code(), absl::StatusCode::kInvalidArgument) << drained.status();
  EXPECT_THAT(std::string(drained.status().message()), HasSubstr("grace_ms"));
  auto stats = client_.GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_FALSE(stats->draining());
  EXPECT_TRUE(client_.OpenSession("after").ok());
}

// Watch refuses unknown types and the timeline-only DISPATCHED and
// STARTED, naming them; a states filter matches the state an event finds
// the op in, so a terminal state selects that terminal event alone.
TEST_P(ContractTest, WatchTypesAndStatesFollowTheProto) {
  auto stub = v1::Asyncd::NewStub(daemon_.channel());
  for (int type : {int{v1::EVENT_TYPE_DISPATCHED}, int{v1::EVENT_TYPE_STARTED}, 99}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    v1::WatchRequest req;
    req.add_types(static_cast<v1::EventType>(type));
    auto watch = stub->Watch(&ctx, req);
    v1::WatchEvent e;
    EXPECT_FALSE(watch->Read(&e));
    const grpc::Status end = watch->Finish();
    EXPECT_EQ(end.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << type;
    EXPECT_THAT(end.error_message(), HasSubstr("types"));
  }
  grpc::ClientContext wctx;
  v1::WatchRequest wreq;
  wreq.mutable_filter()->add_states(v1::OP_STATE_COMPLETED);
  auto watch = stub->Watch(&wctx, wreq);
  std::this_thread::sleep_for(milliseconds(100));  // the watcher is registered
  const uint64_t s = NewSession();
  ASSERT_TRUE(client_.Submit(s, NopOp(5)).ok());
  v1::WatchEvent e;
  ASSERT_TRUE(watch->Read(&e));
  EXPECT_EQ(e.type(), v1::EVENT_TYPE_COMPLETED);  // not SUBMITTED: that found it QUEUED
  EXPECT_EQ(e.outcome(), v1::OUTCOME_COMPLETED);
  wctx.TryCancel();
}

// A watcher opened before a drain goes on through it and sees the drain's
// cancels; a new one is refused (UNAVAILABLE while draining; CANCELLED when
// it meets the stop that follows the drain's answer); at shutdown the old
// one ends UNAVAILABLE.
TEST_P(ContractTest, WatchOutlivesTheDrainAndEndsAtShutdown) {
  auto stub = v1::Asyncd::NewStub(daemon_.channel());
  grpc::ClientContext wctx;
  v1::WatchRequest wreq;
  wreq.add_types(v1::EVENT_TYPE_CANCEL_REQUESTED);
  auto watch = stub->Watch(&wctx, wreq);
  std::this_thread::sleep_for(milliseconds(100));
  const uint64_t s = NewSession();
  auto pending =
      std::async(std::launch::async, [&] { return client_.Submit(s, TimeoutOp(seconds(60))); });
  ASSERT_TRUE(WaitFor([&] { return !client_.ListAll(v1::OpSelector())->empty(); }));
  ASSERT_TRUE(client_.Drain(1000).ok());
  v1::WatchEvent e;
  ASSERT_TRUE(watch->Read(&e));
  EXPECT_EQ(e.end_reason(), v1::END_REASON_DRAIN);
  EXPECT_EQ(pending.get()->end_reason(), v1::END_REASON_DRAIN);
  {
    grpc::ClientContext ctx;
    auto late = stub->Watch(&ctx, v1::WatchRequest());
    EXPECT_FALSE(late->Read(&e));
    EXPECT_THAT(late->Finish().error_code(),
                ::testing::AnyOf(grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::CANCELLED));
  }
  EXPECT_EQ(daemon_.Stop(), 0);
  EXPECT_FALSE(watch->Read(&e));
  EXPECT_EQ(watch->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

// A client that cancels its unary Submit cancels the op: it ends CANCELLED
// with end_reason RPC_CANCELLED, as its history entry shows.
TEST_P(ContractTest, CancelledUnaryCallCancelsItsOp) {
  const uint64_t s = NewSession();
  const uint32_t fifo = OpenFifo(s, "fifo");
  auto stub = v1::Asyncd::NewStub(daemon_.channel());
  grpc::ClientContext ctx;
  v1::SubmitRequest req;
  req.set_session_id(s);
  *req.mutable_op() = ReadOp(fifo, -1, 4);
  v1::Completion resp;
  auto call = std::async(std::launch::async, [&] { return stub->Submit(&ctx, req, &resp); });
  uint64_t id = 0;
  ASSERT_TRUE(WaitFor([&] {
    auto ops = client_.ListAll(v1::OpSelector());
    if (ops.ok() && !ops->empty()) id = ops->front().op_id();
    return id != 0;
  }));
  ctx.TryCancel();
  EXPECT_EQ(call.get().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(WaitFor([&] {
    auto info = client_.GetOperation(id);
    return info.ok() && info->state() == v1::OP_STATE_CANCELLED;
  }));
  EXPECT_EQ(client_.GetOperation(id)->end_reason(), v1::END_REASON_RPC_CANCELLED);
}

// A lease that runs out without a KeepAlive or a Submit ends the session:
// its ops are cancelled (SESSION_CLOSED) and it answers
// FAILED_PRECONDITION from then on; KeepAlives keep another alive.
TEST_P(ContractTest, LeaseExpiryEndsTheSession) {
  const uint64_t lapsed = NewSession(100);
  const uint64_t kept = NewSession(100);
  auto pending = std::async(std::launch::async,
                            [&] { return client_.Submit(lapsed, TimeoutOp(seconds(60))); });
  const auto until = std::chrono::steady_clock::now() + milliseconds(600);
  while (std::chrono::steady_clock::now() < until) {
    ASSERT_TRUE(client_.KeepAlive(kept).ok());
    std::this_thread::sleep_for(milliseconds(20));
  }
  ASSERT_EQ(pending.wait_for(seconds(10)), std::future_status::ready);
  auto c = pending.get();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_EQ(c->end_reason(), v1::END_REASON_SESSION_CLOSED);
  EXPECT_EQ(client_.KeepAlive(lapsed).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(client_.Submit(kept, NopOp()).ok());
}

// CloseSession returns once the cancels are issued: a non-cancellable op
// (a creating open of a FIFO, waiting for a reader) is counted so, goes on,
// and still delivers its completion to its waiting call.
TEST_P(ContractTest, CloseSessionLeavesANonCancellableOpToFinish) {
  const uint64_t s = NewSession();
  const std::string fifo = daemon_.root() + "/peer";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  v1::Operation open;
  open.mutable_open()->set_path("peer");
  open.mutable_open()->set_access(v1::OPEN_MODE_WRITE_ONLY);
  open.mutable_open()->set_create(true);
  auto pending = std::async(std::launch::async, [&] { return client_.Submit(s, open); });
  ASSERT_TRUE(WaitFor([&] {
    auto ops = client_.ListAll(v1::OpSelector());
    return ops.ok() && !ops->empty() && ops->front().state() != v1::OP_STATE_QUEUED;
  }));
  auto closed = client_.CloseSession(s);
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->not_cancellable(), 1u);
  EXPECT_EQ(closed->cancelled(), 0u);
  EXPECT_EQ(pending.wait_for(milliseconds(200)), std::future_status::timeout);
  const int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(reader, 0);
  ASSERT_EQ(pending.wait_for(seconds(10)), std::future_status::ready);
  auto c = pending.get();
  ::close(reader);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_TRUE(WaitFor([&] { return client_.ListAll(v1::OpSelector())->empty(); }));
}

// A stream's first message must be `open`, and only the first.
TEST_P(ContractTest, StreamMustOpenExactlyOnce) {
  v1::StreamResponse opened;
  auto twice = OpenStream(v1::StreamOpen(), &opened);
  ASSERT_TRUE(opened.has_opened());
  v1::StreamRequest again;
  again.mutable_open();
  ASSERT_TRUE(twice->rw->Write(again));
  grpc::Status end = twice->rw->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(end.error_message(), HasSubstr("open"));

  RawStream first;
  first.ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
  first.rw = v1::Asyncd::NewStub(daemon_.channel())->Stream(&first.ctx);
  v1::StreamRequest submit;
  *submit.mutable_submit()->add_ops() = NopOp();
  ASSERT_TRUE(first.rw->Write(submit));
  end = first.rw->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(end.error_message(), HasSubstr("open"));
}

// A resumable stream numbers every message after `opened` 1, 2, 3... and
// keeps numbering where the session's last resumable stream stopped.
TEST_P(ContractTest, AResumableStreamNumbersItsMessagesPerSession) {
  const uint64_t s = NewSession();
  v1::StreamOpen open;
  open.set_session_id(s);
  open.set_resumable(true);
  uint64_t last = 0;
  for (int stream_no = 0; stream_no < 2; ++stream_no) {
    v1::StreamResponse opened;
    auto stream = OpenStream(open, &opened);
    ASSERT_TRUE(opened.has_opened());
    EXPECT_EQ(opened.seq(), 0u);
    v1::StreamRequest batch;
    *batch.mutable_submit()->add_ops() = NopOp(1);
    ASSERT_TRUE(stream->rw->Write(batch));
    v1::StreamRequest cancel;
    cancel.mutable_cancel()->set_op_id(1);  // never issued: NOT_FOUND, answered in-band
    ASSERT_TRUE(stream->rw->Write(cancel));
    int seen = 0;
    for (v1::StreamResponse m; seen < 3 && stream->rw->Read(&m); ++seen) {
      EXPECT_EQ(m.seq(), last + 1) << m.ShortDebugString();
      last = m.seq();
    }
    EXPECT_EQ(seen, 3);
    stream->rw->WritesDone();
    EXPECT_TRUE(stream->rw->Finish().ok());
  }
  EXPECT_EQ(last, 6u);
}

// Acks are for resumable streams, and only for what was sent.
TEST_P(ContractTest, AnAckOnAPlainStreamOrPastTheLastMessageEndsTheStream) {
  const uint64_t s = NewSession();
  v1::StreamOpen plain;
  plain.set_session_id(s);
  v1::StreamResponse opened;
  auto stream = OpenStream(plain, &opened);
  ASSERT_TRUE(opened.has_opened());
  v1::StreamRequest ack;
  ack.set_ack(1);
  ASSERT_TRUE(stream->rw->Write(ack));
  grpc::Status end = stream->rw->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(end.error_message(), HasSubstr("ack: the stream is not resumable"));

  v1::StreamOpen resumable = plain;
  resumable.set_resumable(true);
  stream = OpenStream(resumable, &opened);
  ASSERT_TRUE(opened.has_opened());
  v1::StreamRequest batch;
  *batch.mutable_submit()->add_ops() = NopOp();
  ASSERT_TRUE(stream->rw->Write(batch));
  v1::StreamResponse m;
  ASSERT_TRUE(stream->rw->Read(&m));  // accepted, 1
  ASSERT_TRUE(stream->rw->Read(&m));  // its completion, 2
  ASSERT_EQ(m.seq(), 2u);
  ack.set_ack(2);
  ASSERT_TRUE(stream->rw->Write(ack));  // everything: fine
  ASSERT_TRUE(stream->rw->Write(batch));
  ASSERT_TRUE(stream->rw->Read(&m));
  EXPECT_EQ(m.seq(), 3u);
  ASSERT_TRUE(stream->rw->Read(&m));
  EXPECT_EQ(m.seq(), 4u);
  ack.set_ack(5);
  ASSERT_TRUE(stream->rw->Write(ack));
  end = stream->rw->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(end.error_message(), HasSubstr("ack: 5 is past the last message sent, 4"));
}

// Acks share the request stream with submits, so unacknowledged messages
// never stop the daemon reading; a client that keeps more than twice
// max_inflight_per_session completions unacknowledged is ended at its next
// submit, and one that acks goes on as long as it likes.
TEST_P(ContractTest, ASubmitPastTwiceTheWindowUnacknowledgedEndsAResumableStream) {
  ConfigFile config("[limits]\nmax_inflight_per_session = 8\n");
  Daemon small(GetParam(), config.Args());
  Client c(small.channel());
  const uint64_t s = *c.OpenSession("window");
  for (const bool acks : {true, false}) {
    RawStream stream;
    stream.ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
    stream.rw = v1::Asyncd::NewStub(small.channel())->Stream(&stream.ctx);
    v1::StreamRequest req;
    req.mutable_open()->set_session_id(s);
    req.mutable_open()->set_resumable(true);
    ASSERT_TRUE(stream.rw->Write(req));
    v1::StreamResponse m;
    ASSERT_TRUE(stream.rw->Read(&m));
    ASSERT_TRUE(m.has_opened());
    uint64_t completed = 0;
    bool ended = false;
    for (int i = 0; i < 40 && !ended; ++i) {
      v1::StreamRequest batch;
      *batch.mutable_submit()->add_ops() = NopOp();
      ASSERT_TRUE(stream.rw->Write(batch));
      while (completed < static_cast<uint64_t>(i + 1)) {
        if (!stream.rw->Read(&m)) {
          ended = true;
          break;
        }
        if (m.has_completions()) completed += m.completions().completions_size();
      }
      if (acks && !ended) {
        v1::StreamRequest ack;
        ack.set_ack(m.seq());
        ASSERT_TRUE(stream.rw->Write(ack));
      }
    }
    if (acks) {
      EXPECT_FALSE(ended);
      EXPECT_EQ(completed, 40u);
      stream.rw->WritesDone();
      while (stream.rw->Read(&m)) {
      }
      EXPECT_TRUE(stream.rw->Finish().ok());
    } else {
      // Each NOP leaves two messages (accepted, completions): past 16 of
      // them (a message may still be on its way when a submit is read), a
      // submit ends it.
      EXPECT_TRUE(ended);
      EXPECT_GE(completed, 8u);
      EXPECT_LE(completed, 17u);
      const grpc::Status end = stream.rw->Finish();
      EXPECT_EQ(end.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
      EXPECT_THAT(end.error_message(),
                  HasSubstr("messages not acknowledged (StreamRequest.ack), over twice "
                            "limits.max_inflight_per_session"));
    }
  }
}

TEST_P(ContractTest, ResumeAfterNeedsAResumableStreamOfASessionAndNothingPastItsMessages) {
  const uint64_t s = NewSession();
  struct Case {
    uint64_t session;
    bool resumable;
    grpc::StatusCode code;
    std::string message;
  } cases[] = {
      {0, true, grpc::StatusCode::INVALID_ARGUMENT, "open.resume_after: only to resume a session"},
      {s, false, grpc::StatusCode::INVALID_ARGUMENT, "open.resume_after: only to resume a session"},
      // No restart left anything of the session waiting.
      {s, true, grpc::StatusCode::FAILED_PRECONDITION, "open.resume_after: nothing to resume"},
  };
  for (const Case& c : cases) {
    v1::StreamOpen open;
    open.set_session_id(c.session);
    open.set_resumable(c.resumable);
    open.set_resume_after(3);
    v1::StreamResponse opened;
    auto stream = OpenStream(open, &opened);
    EXPECT_FALSE(opened.has_opened());
    const grpc::Status end = stream->rw->Finish();
    EXPECT_EQ(end.error_code(), c.code) << c.message;
    EXPECT_THAT(end.error_message(), HasSubstr(c.message));
  }
  // Nothing changed: the session takes a resumable stream from seq 1.
  v1::StreamOpen open;
  open.set_session_id(s);
  open.set_resumable(true);
  v1::StreamResponse opened;
  auto stream = OpenStream(open, &opened);
  ASSERT_TRUE(opened.has_opened());
  v1::StreamRequest batch;
  *batch.mutable_submit()->add_ops() = NopOp();
  ASSERT_TRUE(stream->rw->Write(batch));
  v1::StreamResponse m;
  ASSERT_TRUE(stream->rw->Read(&m));
  EXPECT_EQ(m.seq(), 1u);
  ASSERT_TRUE(stream->rw->Read(&m));
  EXPECT_EQ(m.seq(), 2u);
  stream->rw->WritesDone();
  EXPECT_TRUE(stream->rw->Finish().ok());
  // A stream that ended without a restart left nothing to resume: its ops
  // ended with it.
  open.set_resume_after(1);
  stream = OpenStream(open, &opened);
  EXPECT_FALSE(opened.has_opened());
  const grpc::Status end = stream->rw->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(end.error_message(), HasSubstr("nothing to resume"));
}

// One resumable stream per session, and none on a session bound to another
// stream (it may only resume such a session after a restart).
TEST_P(ContractTest, ASessionTakesOneResumableStreamAndNoneOfAnotherStreamsSession) {
  const uint64_t s = NewSession();
  v1::StreamOpen open;
  open.set_session_id(s);
  open.set_resumable(true);
  v1::StreamResponse opened;
  auto first = OpenStream(open, &opened);
  ASSERT_TRUE(opened.has_opened());
  auto second = OpenStream(open, &opened);
  EXPECT_FALSE(opened.has_opened());
  grpc::Status end = second->rw->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(end.error_message(), HasSubstr("has a resumable stream attached already"));
  // A plain stream may still attach beside it.
  v1::StreamOpen plain;
  plain.set_session_id(s);
  auto beside = OpenStream(plain, &opened);
  EXPECT_TRUE(opened.has_opened());

  v1::StreamOpen create;
  create.set_client_name("bound");
  auto owner = OpenStream(create, &opened);
  ASSERT_TRUE(opened.has_opened());
  v1::StreamOpen take = open;
  take.set_session_id(opened.opened().session_id());
  auto taker = OpenStream(take, &opened);
  EXPECT_FALSE(opened.has_opened());
  end = taker->rw->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(end.error_message(), HasSubstr("is bound to the stream that opened it"));
}

}  // namespace
}  // namespace asyncd::testing
