// A restart that keeps every session and handle, through the protocol
// systemd speaks, with the test as the service manager: the daemon hands
// over on SIGUSR2 by pushing one descriptor (FDSTORE=1,
// FDNAME=asyncd-handover) to $NOTIFY_SOCKET and exiting 0; the next daemon
// gets it back as a passed descriptor (LISTEN_FDS, LISTEN_FDNAMES), and its
// clients carry on with the same session ids and handles, their files and
// offsets intact, while no session or op id is issued twice. A handover
// that does not unpack or load is refused: the daemon starts without it,
// and says so. A plain SIGTERM still drains and hands nothing over. A
// daemon killed mid-handover leaves the next one clean, or, once its package
// is in the store, restored. A ring ends with the restart; its session does
// not.
#include <gmock/gmock.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <fcntl.h>

#include <atomic>
#include <cstring>
#include <future>
#include <mutex>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "daemon/handover.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/ring_raw.h"
#include "tests/integration/service_manager.h"

namespace asyncd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class RestartTest : public ::testing::TestWithParam<BackendMode> {
 protected:
  RestartTest() {
    char tmpl[] = "/tmp/asyncd-restart-XXXXXX";
    dir_ = mkdtemp(tmpl);
    notify_ = std::make_unique<NotifySocket>(dir_ + "/notify.sock");
  }
  ~RestartTest() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // What systemd gives a service: its notify socket and an invocation id.
  std::vector<std::pair<std::string, std::string>> ServiceEnv() const {
    return {{"NOTIFY_SOCKET", notify_->path()}, {"INVOCATION_ID", "0123456789abcdef"}};
  }
  std::unique_ptr<Daemon> StartFirst() {
    return std::make_unique<Daemon>(GetParam(), DaemonOptions{.extra_args = {"--log-level", "info"},
                                                              .env = ServiceEnv(),
                                                              .dir = dir_});
  }
  std::unique_ptr<Daemon> StartNext(int handover_fd) {
    DaemonOptions options{.extra_args = {"--log-level", "info"}, .env = ServiceEnv(), .dir = dir_};
    if (handover_fd >= 0) options.passed_fds = {{handover_fd, "asyncd-handover"}};
    return std::make_unique<Daemon>(GetParam(), options);
  }
  // SIGUSR2 to `d`: returns the descriptor it pushed to the store once it
  // exited 0, or -1.
  int HandOver(Daemon& d) {
    kill(d.pid(), SIGUSR2);
    std::optional<NotifySocket::Message> m = notify_->WaitFor("FDSTORE=1", seconds(20));
    EXPECT_EQ(d.WaitExit(seconds(20)), 0) << d.Log();
    if (!m) return -1;
    EXPECT_NE(m->text.find("FDNAME=asyncd-handover"), std::string::npos) << m->text;
    // The package shows POLLHUP at once: systemd must not watch it.
    EXPECT_NE(m->text.find("FDPOLL=0"), std::string::npos) << m->text;
    EXPECT_EQ(m->fds.size(), 1u) << m->text;
    for (size_t i = 1; i < m->fds.size(); ++i) close(m->fds[i]);
    return m->fds.empty() ? -1 : m->fds[0];
  }

  std::string dir_;
  std::unique_ptr<NotifySocket> notify_;
};

TEST_P(RestartTest, SessionsAndHandlesSurviveAHandover) {
  auto first = StartFirst();
  client::Client c(first->NewChannel());
  const uint64_t one = *c.OpenSession("one");
  const uint64_t two = *c.OpenSession("two");
  const uint32_t closed = *c.Open(one, "gone", v1::OPEN_MODE_READ_WRITE, {.create = true});
  ASSERT_TRUE(c.Close(one, closed).ok());
  const uint32_t data = *c.Open(one, "data", v1::OPEN_MODE_READ_WRITE, {.create = true});
  ASSERT_TRUE(c.Write(one, data, -1, "hello ").ok());  // the offset moves to 6
  ASSERT_EQ(mkfifo((first->root() + "/fifo").c_str(), 0600), 0);
  const uint32_t fifo = *c.Open(two, "fifo", v1::OPEN_MODE_READ_WRITE);
  std::set<uint64_t> op_ids;
  for (int i = 0; i < 5; ++i) {
    auto done = c.Submit(one, NopOp());
    ASSERT_TRUE(done.ok());
    op_ids.insert(done->op_id());
  }
  auto before = c.GetCheckpoint();
  ASSERT_TRUE(before.ok()) << before.status();

  const int handover = HandOver(*first);
  ASSERT_GE(handover, 0);
  EXPECT_NE(first->Log().find("handed over 2 sessions and 2 handles"), std::string::npos)
      << first->Log();
  auto next = StartNext(handover);
  close(handover);
  EXPECT_NE(next->Log().find("restored the predecessor's 2 sessions and 2 handles"),
            std::string::npos)
      << next->Log();

  client::Client d(next->NewChannel());
  // The same sessions, leases running, under the same names.
  absl::StatusOr<uint32_t> kept = KeepAliveRetried(d, one);
  EXPECT_TRUE(kept.ok()) << kept.status();
  EXPECT_TRUE(d.KeepAlive(two).ok());
  auto sessions = d.ListSessions();
  ASSERT_TRUE(sessions.ok());
  std::map<uint64_t, std::string> names;
  for (const auto& s : *sessions) names[s.session_id()] = s.client_name();
  EXPECT_EQ(names, (std::map<uint64_t, std::string>{{one, "one"}, {two, "two"}}));
  // The same handles: the file's offset carried on, the FIFO works.
  ExpectHandlesCarryOn(d, one, data, two, fifo);
  // A closed handle stays closed; the next open does not reuse its number.
  EXPECT_EQ(d.Read(one, closed, 0, 1).status().code(), absl::StatusCode::kNotFound);
  const uint32_t reopened = *d.Open(one, "gone", v1::OPEN_MODE_READ_ONLY);
  EXPECT_NE(reopened, closed);
  EXPECT_NE(reopened, data);
  // No id is issued twice: sessions, ops.
  const uint64_t three = *d.OpenSession("three");
  EXPECT_NE(three, one);
  EXPECT_NE(three, two);
  for (uint64_t s : {one, three}) {
    for (int i = 0; i < 5; ++i) {
      auto done = d.Submit(s, NopOp());
      ASSERT_TRUE(done.ok());
      EXPECT_TRUE(op_ids.insert(done->op_id()).second) << "op id " << done->op_id() << " twice";
    }
  }
  // Stats tell the restart's figures, and so does asyncctl.
  auto stats = d.GetStats();
  ASSERT_TRUE(stats.ok());
  ASSERT_TRUE(stats->has_last_restart());
  EXPECT_EQ(stats->last_restart().sessions(), 2u);
  EXPECT_EQ(stats->last_restart().handles(), 2u);
  EXPECT_GT(stats->last_restart().checkpoint_bytes(), 0u);
  EXPECT_GT(stats->last_restart().checkpoint_unix_nanos(), 0);
  EXPECT_GT(stats->last_restart().handover_us(), 0u);
  EXPECT_EQ(stats->last_restart().error(), "");
  std::string shown;
  if (FILE* p = popen((std::string(ASYNCCTL_BINARY) + " --socket " + next->socket() + " stats").c_str(),
                      "r")) {
    char buf[4096];
    for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) shown.append(buf, n);
    pclose(p);
  }
  EXPECT_NE(shown.find("2 sessions, 2 handles restored from"), std::string::npos) << shown;
  // The history goes on: an op the old daemon finished is still there.
  auto finished = d.GetOperation(*op_ids.begin());
  ASSERT_TRUE(finished.ok()) << finished.status();
  EXPECT_EQ(finished->outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_EQ(finished->kind(), v1::OP_KIND_NOP);
  EXPECT_EQ(finished->session_id(), one);
  // What the checkpoint holds came back whole.
  auto after = d.GetCheckpoint();
  ASSERT_TRUE(after.ok());
  for (const auto& was : before->sessions()) {
    bool found = false;
    for (const auto& is : after->sessions()) {
      if (is.session_id() != was.session_id()) continue;
      found = true;
      EXPECT_EQ(is.client_name(), was.client_name());
      EXPECT_EQ(is.uid(), was.uid());
      std::vector<uint32_t> kept;
      for (const auto& h : is.handles()) kept.push_back(h.handle());
      for (const auto& h : was.handles()) {
        EXPECT_NE(std::find(kept.begin(), kept.end(), h.handle()), kept.end()) << h.handle();
      }
    }
    EXPECT_TRUE(found) << was.session_id();
  }
}

TEST_P(RestartTest, AHandoverThatDoesNotUnpackIsRefusedAndTheDaemonStartsWithoutIt) {
  auto first = StartFirst();
  client::Client c(first->NewChannel());
  const uint64_t one = *c.OpenSession("one");
  ASSERT_TRUE(first->Stop() == 0);
  // A handover cut short: a package with no end message.
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_EQ(send(pair[0], "junk", 4, 0), 4);
  close(pair[0]);
  auto next = StartNext(pair[1]);
  close(pair[1]);
  EXPECT_NE(next->Log().find("handover is refused, starting without its state"),
            std::string::npos)
      << next->Log();
  client::Client d(next->NewChannel());
  absl::StatusOr<uint32_t> kept = KeepAliveRetried(d, one);
  // Its id is not issued again, nor taken for one never issued, and says why.
  EXPECT_EQ(kept.status().code(), absl::StatusCode::kFailedPrecondition) << kept.status();
  EXPECT_THAT(std::string(kept.status().message()),
              ::testing::HasSubstr("was opened by an earlier daemon whose state did not reach "
                                   "this one (the handover is refused: "));
  auto stats = d.GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_THAT(stats->last_restart().error(), ::testing::HasSubstr("the handover is refused"));
  EXPECT_EQ(stats->last_restart().sessions(), 0u);
  EXPECT_TRUE(d.OpenSession("fresh").ok());
}

TEST_P(RestartTest, SigtermStillDrainsAndHandsNothingOver) {
  auto first = StartFirst();
  client::Client c(first->NewChannel());
  const uint64_t one = *c.OpenSession("one");
  EXPECT_EQ(first->Stop(), 0);
  EXPECT_FALSE(notify_->WaitFor("FDSTORE=1", milliseconds(300)).has_value());
  EXPECT_EQ(first->Log().find("handed over"), std::string::npos);
  // The stop ended the session: the next daemon has not got it.
  auto next = StartNext(-1);
  client::Client d(next->NewChannel());
  absl::StatusOr<uint32_t> kept = KeepAliveRetried(d, one);
  EXPECT_EQ(kept.status().code(), absl::StatusCode::kFailedPrecondition) << kept.status();
}

// A unary Submit in flight ends as in a drain, delivered to its caller,
// with end reason RESTART and nothing done (safe to submit again), and its
// session goes on.
TEST_P(RestartTest, AUnaryOpInFlightEndsRestartAndItsSessionGoesOn) {
  auto first = StartFirst();
  client::Client c(first->NewChannel());
  const uint64_t one = *c.OpenSession("one");
  ASSERT_EQ(mkfifo((first->root() + "/fifo").c_str(), 0600), 0);
  const uint32_t fifo = *c.Open(one, "fifo", v1::OPEN_MODE_READ_WRITE);
  auto blocked = std::async(std::launch::async, [&] { return c.Submit(one, ReadOp(fifo, -1, 8)); });
  ASSERT_TRUE(WaitFor([&] {
    auto st = c.GetStats();
    return st.ok() && st->inflight() == 1;
  }));
  const int handover = HandOver(*first);
  ASSERT_GE(handover, 0);
  absl::StatusOr<v1::Completion> ended = blocked.get();
  ASSERT_TRUE(ended.ok()) << ended.status();
  EXPECT_EQ(ended->outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_EQ(ended->end_reason(), v1::END_REASON_RESTART);
  EXPECT_EQ(ended->bytes_done(), 0u);
  EXPECT_THAT(ended->message(), ::testing::HasSubstr("submit it again"));
  auto next = StartNext(handover);
  close(handover);
  client::Client d(next->NewChannel());
  EXPECT_TRUE(KeepAliveRetried(d, one).ok());
  ASSERT_TRUE(d.Write(one, fifo, -1, "x").ok());
  EXPECT_EQ(*d.Read(one, fifo, -1, 8), "x");
}

// A ring ends with a restart (UNAVAILABLE, RESTART), its blocked read
// cancelled (RESTART); the session goes on, and the next daemon gives it a
// ring again.
TEST_P(RestartTest, ARingEndsRestartAndTheNextDaemonGivesItsSessionANewOne) {
  auto first = StartFirst();
  client::Client c(first->NewChannel());
  const uint64_t one = *c.OpenSession("one");
  ASSERT_EQ(mkfifo((first->root() + "/fifo").c_str(), 0600), 0);
  const uint32_t fifo = *c.Open(one, "fifo", v1::OPEN_MODE_READ_WRITE);
  RingSetupResult r = OpenRing(first->socket() + ".ring", RingSetup(one));
  ASSERT_NE(r.ring, nullptr) << r.reply.message;
  asyncd_ring_sqe* e = r.ring->Next();
  e->kind = ASYNCD_RING_OP_READ;
  e->handle = fifo;
  e->offset = -1;
  e->length = 8;
  e->user_data = 1;
  r.ring->Submit();
  ASSERT_TRUE(WaitFor([&] {
    auto st = c.GetStats();
    return st.ok() && st->inflight() == 1;
  }));
  const int handover = HandOver(*first);
  ASSERT_GE(handover, 0);
  auto cqes = r.ring->Wait(1);
  ASSERT_EQ(cqes.size(), 1u);
  EXPECT_EQ(cqes[0].outcome, v1::OUTCOME_CANCELLED);
  EXPECT_EQ(cqes[0].end_reason, v1::END_REASON_RESTART);
  EXPECT_NE(r.ring->flags() & ASYNCD_RING_CLOSED, 0u);
  EXPECT_EQ(r.ring->ctl()->closed_status, static_cast<uint32_t>(absl::StatusCode::kUnavailable));
  EXPECT_EQ(r.ring->ctl()->closed_reason, ASYNCD_RING_REASON_RESTART);
  EXPECT_TRUE(r.ring->WaitSocketClosed());
  auto next = StartNext(handover);
  close(handover);
  client::Client d(next->NewChannel());
  EXPECT_TRUE(KeepAliveRetried(d, one).ok());
  RingSetupResult again = OpenRing(next->socket() + ".ring", RingSetup(one));
  ASSERT_NE(again.ring, nullptr) << again.reply.message;
  e = again.ring->Next();
  e->kind = ASYNCD_RING_OP_NOP;
  e->user_data = 2;
  again.ring->Submit();
  EXPECT_EQ(again.ring->Wait(1).size(), 1u);
}

using StreamRw = grpc::ClientReaderWriter<v1::StreamRequest, v1::StreamResponse>;

// A raw resumable stream, read message by message, checking that what is
// numbered comes in order with no gap.
struct Resumable {
  grpc::ClientContext ctx;
  std::unique_ptr<v1::Asyncd::Stub> stub;
  std::unique_ptr<StreamRw> rw;
  uint64_t last_seq = 0;
  std::map<uint64_t, uint64_t> op_ids;               // tag -> op id, from `accepted`
  std::map<uint64_t, v1::Completion> completions;    // tag -> its completion
  std::vector<uint64_t> doubled;                     // tags completed twice

  // Opens it; false (and the stream's status in *end) if no `opened` came.
  bool Open(std::shared_ptr<grpc::Channel> channel, const v1::StreamOpen& open,
            v1::StreamResponse* opened, grpc::Status* end) {
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(60));
    stub = v1::Asyncd::NewStub(channel);
    rw = stub->Stream(&ctx);
    v1::StreamRequest req;
    *req.mutable_open() = open;
    rw->Write(req);
    if (rw->Read(opened) && opened->has_opened()) return true;
    *end = rw->Finish();
    return false;
  }
  // Reads one message and files it; false once the stream ended.
  bool Next(v1::StreamResponse* m) {
    if (!rw->Read(m)) return false;
    if (m->seq() != 0) {
      EXPECT_EQ(m->seq(), last_seq + 1) << m->ShortDebugString();
      last_seq = m->seq();
    }
    for (const auto& a : m->accepted().ops()) op_ids[a.tag()] = a.op_id();
    for (const auto& c : m->completions().completions()) {
      if (!completions.emplace(c.tag(), c).second) doubled.push_back(c.tag());
    }
    return true;
  }
  bool Send(const v1::StreamRequest& req) { return rw->Write(req); }
};

// A resumable stream carries on through a restart: its blocked reads run
// again in the next daemon under the same ids and complete with the data
// written after it, each exactly once; a timeout waits what was left of
// it; the messages the client had not acknowledged come again with their
// numbers; and the restart's cancel is no outcome in the history.
TEST_P(RestartTest, AResumableStreamCarriesOnThroughARestart) {
  auto first = StartFirst();
  client::Client c(first->NewChannel());
  const uint64_t s = *c.OpenSession("resumable");
  constexpr int kReads = 20;
  constexpr uint64_t kTimeoutTag = 100;
  constexpr uint64_t kNopTag = 200;
  std::vector<uint32_t> fifos;
  for (int i = 0; i < kReads; ++i) {
    const std::string name = absl::StrCat("fifo-", i);
    ASSERT_EQ(mkfifo((first->root() + "/" + name).c_str(), 0600), 0);
    fifos.push_back(*c.Open(s, name, v1::OPEN_MODE_READ_WRITE));
  }
  v1::StreamOpen open;
  open.set_session_id(s);
  open.set_resumable(true);
  Resumable before;
  v1::StreamResponse m;
  grpc::Status end;
  ASSERT_TRUE(before.Open(first->NewChannel(), open, &m, &end)) << end.error_message();
  v1::StreamRequest batch;
  for (int i = 0; i < kReads; ++i) {
    *batch.mutable_submit()->add_ops() = ReadOp(fifos[i], -1, 16, i + 1);
  }
  *batch.mutable_submit()->add_ops() = TimeoutOp(std::chrono::milliseconds(1500), kTimeoutTag);
  for (int i = 0; i < 10; ++i) *batch.mutable_submit()->add_ops() = NopOp(kNopTag + i);
  ASSERT_TRUE(before.Send(batch));
  uint64_t accepted_seq = 0;
  while (before.completions.size() < 10 && before.Next(&m)) {
    if (m.has_accepted()) accepted_seq = m.seq();
  }
  ASSERT_EQ(before.completions.size(), 10u);
  ASSERT_EQ(before.op_ids.size(), size_t{kReads} + 11);
  v1::StreamRequest ack;
  ack.set_ack(accepted_seq);  // as if the NOPs' completions had been lost
  ASSERT_TRUE(before.Send(ack));
  v1::OpSelector mine;
  mine.set_session_id(s);
  ASSERT_TRUE(WaitFor([&] {
    auto ops = c.ListAll(mine);
    return ops.ok() && ops->size() == kReads + 1;
  }));

  const int handover = HandOver(*first);
  ASSERT_GE(handover, 0);
  while (before.Next(&m)) {
  }
  end = before.rw->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(end.error_message(), ::testing::HasSubstr(absl::StrCat("resume session ", s)));
  for (int i = 1; i <= kReads; ++i) EXPECT_FALSE(before.completions.count(i)) << i;
  EXPECT_NE(first->Log().find("handed over 1 sessions"), std::string::npos) << first->Log();
  EXPECT_NE(first->Log().find(absl::StrCat(kReads + 1, " operations to run again")),
            std::string::npos)
      << first->Log();

  auto next = StartNext(handover);
  close(handover);
  EXPECT_NE(next->Log().find(absl::StrCat(kReads + 1, " operations run again")), std::string::npos)
      << next->Log();
  client::Client d(next->NewChannel());
  ASSERT_TRUE(KeepAliveRetried(d, s).ok());
  // The reads run again, under their ids.
  std::set<uint64_t> running;
  auto ops = d.ListAll(mine);
  ASSERT_TRUE(ops.ok());
  for (const auto& op : *ops) running.insert(op.op_id());
  for (int i = 1; i <= kReads; ++i) EXPECT_TRUE(running.count(before.op_ids[i])) << i;

  Resumable after;
  after.last_seq = accepted_seq;
  after.op_ids = before.op_ids;
  open.set_resume_after(accepted_seq);
  ASSERT_TRUE(after.Open(next->NewChannel(), open, &m, &end)) << end.error_message();
  EXPECT_EQ(m.opened().session_id(), s);
  // The NOPs' completions come again, numbered as before.
  while (after.completions.size() < 10 && after.Next(&m)) {
  }
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(after.completions.count(kNopTag + i)) << i;
    EXPECT_EQ(after.completions[kNopTag + i].op_id(), before.completions[kNopTag + i].op_id());
  }
  for (int i = 0; i < kReads; ++i) {
    ASSERT_TRUE(d.Write(s, fifos[i], -1, absl::StrCat("data-", i)).ok());
  }
  while (after.completions.size() < size_t{kReads} + 11 && after.Next(&m)) {
  }
  ASSERT_EQ(after.completions.size(), size_t{kReads} + 11);
  EXPECT_TRUE(after.doubled.empty());
  for (int i = 1; i <= kReads; ++i) {
    const v1::Completion& done = after.completions[i];
    EXPECT_EQ(done.outcome(), v1::OUTCOME_COMPLETED) << done.ShortDebugString();
    EXPECT_EQ(done.op_id(), before.op_ids[i]);
    EXPECT_EQ(done.data(), absl::StrCat("data-", i - 1));
  }
  const v1::Completion& waited = after.completions[kTimeoutTag];
  EXPECT_EQ(waited.outcome(), v1::OUTCOME_COMPLETED) << waited.ShortDebugString();
  EXPECT_EQ(waited.op_id(), before.op_ids[kTimeoutTag]);
  ack.set_ack(after.last_seq);
  ASSERT_TRUE(after.Send(ack));
  after.rw->WritesDone();
  while (after.Next(&m)) {
  }
  EXPECT_TRUE(after.rw->Finish().ok());
  EXPECT_TRUE(after.doubled.empty());
  // One outcome each in the history: the next daemon's.
  for (int i = 1; i <= kReads; ++i) {
    auto info = d.GetOperation(before.op_ids[i]);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->outcome(), v1::OUTCOME_COMPLETED);
  }
  auto finished = d.ListHistory(mine, 1000);
  ASSERT_TRUE(finished.ok()) << finished.status();
  std::map<uint64_t, int> outcomes;
  for (const auto& op : *finished) ++outcomes[op.op_id()];
  for (const auto& [id, n] : outcomes) EXPECT_EQ(n, 1) << "op " << id;
  for (int i = 1; i <= kReads; ++i) EXPECT_EQ(outcomes[before.op_ids[i]], 1) << i;
  // No op id is issued twice.
  auto fresh = d.Submit(s, NopOp());
  ASSERT_TRUE(fresh.ok());
  for (const auto& [tag, id] : before.op_ids) EXPECT_NE(fresh->op_id(), id);
}

// A stream that is not resumable ends as in a drain: its blocked read is
// cancelled (end reason RESTART, nothing done) and delivered, the stream
// ends UNAVAILABLE, and the session it opened ends with it.
TEST_P(RestartTest, APlainStreamsOpsEndRestartAndItsSessionEnds) {
  auto first = StartFirst();
  ASSERT_EQ(mkfifo((first->root() + "/fifo").c_str(), 0600), 0);
  client::Client c(first->NewChannel());
  const uint64_t leased = *c.OpenSession("leased");
  const uint32_t fifo = *c.Open(leased, "fifo", v1::OPEN_MODE_READ_WRITE);
  v1::StreamOpen open;
  open.set_session_id(leased);
  Resumable plain;  // used plainly: nothing is numbered
  v1::StreamResponse m;
  grpc::Status end;
  ASSERT_TRUE(plain.Open(first->NewChannel(), open, &m, &end)) << end.error_message();
  v1::StreamRequest reading;
  *reading.mutable_submit()->add_ops() = ReadOp(fifo, -1, 8, 1);
  ASSERT_TRUE(plain.Send(reading));
  while (!plain.op_ids.count(1) && plain.Next(&m)) {
  }
  v1::StreamOpen create;
  create.set_client_name("bound");
  Resumable owner;
  ASSERT_TRUE(owner.Open(first->NewChannel(), create, &m, &end)) << end.error_message();
  const uint64_t bound = m.opened().session_id();
  ASSERT_TRUE(WaitFor([&] {
    auto st = c.GetStats();
    return st.ok() && st->inflight() == 1;
  }));
  const int handover = HandOver(*first);
  ASSERT_GE(handover, 0);
  while (plain.Next(&m)) {
  }
  EXPECT_EQ(plain.rw->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(plain.completions.count(1));
  EXPECT_EQ(plain.completions[1].outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_EQ(plain.completions[1].end_reason(), v1::END_REASON_RESTART);
  EXPECT_EQ(plain.completions[1].bytes_done(), 0u);
  EXPECT_EQ(plain.last_seq, 0u);
  while (owner.Next(&m)) {
  }
  EXPECT_EQ(owner.rw->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  auto next = StartNext(handover);
  close(handover);
  client::Client d(next->NewChannel());
  EXPECT_TRUE(KeepAliveRetried(d, leased).ok());
  EXPECT_EQ(d.KeepAlive(bound).status().code(), absl::StatusCode::kFailedPrecondition);
}

// A session that a resumable stream opened waits for that stream after a
// restart, and another: the resumed stream finds its handle and its
// blocked read, which completes there, and the session ends with it.
TEST_P(RestartTest, ASessionOpenedByAResumableStreamWaitsForItToResume) {
  auto first = StartFirst();
  ASSERT_EQ(mkfifo((first->root() + "/fifo").c_str(), 0600), 0);
  v1::StreamOpen open;
  open.set_client_name("bound");
  open.set_resumable(true);
  Resumable before;
  v1::StreamResponse m;
  grpc::Status end;
  ASSERT_TRUE(before.Open(first->NewChannel(), open, &m, &end)) << end.error_message();
  const uint64_t s = m.opened().session_id();
  v1::StreamRequest opening;
  v1::Operation fifo_open;
  fifo_open.set_tag(1);
  fifo_open.mutable_open()->set_path("fifo");
  fifo_open.mutable_open()->set_access(v1::OPEN_MODE_READ_WRITE);
  *opening.mutable_submit()->add_ops() = fifo_open;
  ASSERT_TRUE(before.Send(opening));
  while (!before.completions.count(1) && before.Next(&m)) {
  }
  const uint32_t handle = before.completions[1].handle();
  ASSERT_NE(handle, 0u) << before.completions[1].ShortDebugString();
  v1::StreamRequest reading;
  *reading.mutable_submit()->add_ops() = ReadOp(handle, -1, 16, 2);
  ASSERT_TRUE(before.Send(reading));
  while (!before.op_ids.count(2) && before.Next(&m)) {
  }
  client::Client c(first->NewChannel());
  v1::OpSelector mine;
  mine.set_session_id(s);
  ASSERT_TRUE(WaitFor([&] {
    auto ops = c.ListAll(mine);
    return ops.ok() && ops->size() == 1;
  }));
  const int handover = HandOver(*first);
  ASSERT_GE(handover, 0);
  while (before.Next(&m)) {
  }
  EXPECT_EQ(before.rw->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);

  // Two restarts before the stream comes back: the session and its read
  // wait through both.
  auto second = StartNext(handover);
  close(handover);
  const int again = HandOver(*second);
  ASSERT_GE(again, 0);
  EXPECT_NE(second->Log().find("1 operations to run again"), std::string::npos) << second->Log();
  auto next = StartNext(again);
  close(again);
  client::Client d(next->NewChannel());
  absl::StatusOr<std::vector<v1::SessionInfo>> sessions;
  ASSERT_TRUE(WaitFor([&] {
    sessions = d.ListSessions();
    return sessions.status().code() != absl::StatusCode::kUnavailable;
  }));
  ASSERT_TRUE(sessions.ok()) << sessions.status();
  ASSERT_EQ(sessions->size(), 1u);
  EXPECT_EQ((*sessions)[0].session_id(), s);
  Resumable after;
  after.last_seq = before.last_seq;
  after.op_ids = before.op_ids;
  open.set_session_id(s);
  open.set_resume_after(before.last_seq);
  ASSERT_TRUE(after.Open(next->NewChannel(), open, &m, &end)) << end.error_message();
  EXPECT_EQ(m.opened().lease_ms(), 0u);  // bound to its stream again
  {
    const int w = ::open((next->root() + "/fifo").c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    ASSERT_GE(w, 0);
    ASSERT_EQ(write(w, "after", 5), 5);
    close(w);
  }
  while (!after.completions.count(2) && after.Next(&m)) {
  }
  ASSERT_TRUE(after.completions.count(2));
  EXPECT_EQ(after.completions[2].outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_EQ(after.completions[2].data(), "after");
  EXPECT_EQ(after.completions[2].op_id(), before.op_ids[2]);
  after.rw->WritesDone();
  while (after.Next(&m)) {
  }
  EXPECT_TRUE(after.rw->Finish().ok());
  EXPECT_TRUE(after.doubled.empty());
  // It ends with its stream.
  EXPECT_TRUE(WaitFor([&] {
    return d.KeepAlive(s).status().code() == absl::StatusCode::kFailedPrecondition;
  }));
}

// Through the client library an application sees a short delay, not an
// error: a resumable StreamClient's blocked reads complete after the
// restart, its NOPs go on throughout with one completion each and never an
// error, and a Client with retries reaches the next daemon by itself.
TEST_P(RestartTest, TheClientLibrarySeesADelayNotAnError) {
  auto first = StartFirst();
  client::Client c(first->NewChannel(), client::ClientOptions{.retry = client::RetryPolicy{}});
  const uint64_t s = *c.OpenSession("library");
  constexpr int kReads = 10;
  std::vector<uint32_t> fifos;
  for (int i = 0; i < kReads; ++i) {
    const std::string name = absl::StrCat("fifo-", i);
    ASSERT_EQ(mkfifo((first->root() + "/" + name).c_str(), 0600), 0);
    fifos.push_back(*c.Open(s, name, v1::OPEN_MODE_READ_WRITE));
  }
  auto stream = client::StreamClient::Create(
      first->NewChannel(), "library", s,
      client::StreamOptions{.max_outstanding = 256, .resume = client::RetryPolicy{}});
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::mutex mu;
  std::map<uint64_t, v1::Completion> reads;  // by tag
  std::map<uint64_t, int> nop_ids;           // op id -> completions
  std::map<uint64_t, std::string> first_seen;
  uint64_t nop_errors = 0;
  std::vector<v1::Operation> read_ops;
  for (int i = 0; i < kReads; ++i) read_ops.push_back(ReadOp(fifos[i], -1, 16, i + 1));
  ASSERT_TRUE((*stream)
                  ->Submit(std::move(read_ops),
                           [&](const v1::Completion& done) {
                             std::lock_guard lock(mu);
                             reads[done.tag()] = done;
                           })
                  .ok());
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> submitted{0};
  std::thread nops([&] {
    while (!stop) {
      std::vector<v1::Operation> batch(8, NopOp());
      if (!(*stream)
               ->Submit(std::move(batch),
                        [&](const v1::Completion& done) {
                          std::lock_guard lock(mu);
                          if (done.op_id() == 0) {
                            ADD_FAILURE() << done.ShortDebugString();
                          } else if (++nop_ids[done.op_id()] == 1) {
                            first_seen[done.op_id()] =
                                absl::StrCat("resumes ", (*stream)->resumes(), " ",
                                             done.ShortDebugString());
                          } else {
                            ADD_FAILURE() << "twice: " << first_seen[done.op_id()] << " / resumes "
                                          << (*stream)->resumes() << " "
                                          << done.ShortDebugString();
                          }
                          if (done.outcome() != v1::OUTCOME_COMPLETED && nop_errors++ == 0) {
                            ADD_FAILURE() << done.ShortDebugString();
                          }
                        })
               .ok()) {
        break;
      }
      submitted += 8;
    }
  });
  ASSERT_TRUE(WaitFor([&] { return submitted.load() > 1000; }));

  const int handover = HandOver(*first);
  ASSERT_GE(handover, 0);
  auto next = StartNext(handover);
  close(handover);
  for (int i = 0; i < kReads; ++i) {
    absl::StatusOr<uint64_t> wrote = c.Write(s, fifos[i], -1, absl::StrCat("data-", i));
    ASSERT_TRUE(wrote.ok()) << wrote.status();
  }
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard lock(mu);
    return reads.size() == kReads;
  }));
  const uint64_t at_restart = submitted.load();
  ASSERT_TRUE(WaitFor([&] { return submitted.load() > at_restart + 1000; }));
  stop = true;
  nops.join();
  EXPECT_TRUE((*stream)->Finish().ok());
  EXPECT_EQ((*stream)->resumes(), 1u);
  std::lock_guard lock(mu);
  for (int i = 1; i <= kReads; ++i) {
    EXPECT_EQ(reads[i].outcome(), v1::OUTCOME_COMPLETED) << reads[i].ShortDebugString();
    EXPECT_EQ(reads[i].data(), absl::StrCat("data-", i - 1));
  }
  EXPECT_EQ(nop_errors, 0u);
  uint64_t completions = 0;
  for (const auto& [id, n] : nop_ids) {
    EXPECT_NE(id, 0u);
    EXPECT_EQ(n, 1) << "op " << id;
    completions += n;
  }
  EXPECT_EQ(completions, submitted.load());
}

// What one old session id answers on every RPC that takes one, each call
// under a short deadline: an answer, not a hang.
struct OldIdAnswers {
  absl::Status keep_alive, submit, close, stream;
  std::chrono::milliseconds slowest{0};
};
OldIdAnswers AskAbout(const std::shared_ptr<grpc::Channel>& channel, uint64_t session) {
  constexpr auto kDeadline = seconds(2);
  client::Client c(channel, client::ClientOptions{.default_timeout = kDeadline});
  OldIdAnswers a;
  auto timed = [&](auto call) {
    const auto start = std::chrono::steady_clock::now();
    absl::Status st = call();
    a.slowest = std::max(a.slowest, std::chrono::duration_cast<milliseconds>(
                                        std::chrono::steady_clock::now() - start));
    return st;
  };
  a.keep_alive = timed([&] { return c.KeepAlive(session).status(); });
  a.submit = timed([&] {
    return c.Submit(session, NopOp(), std::chrono::system_clock::now() + kDeadline).status();
  });
  a.stream = timed([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kDeadline);
    auto rw = v1::Asyncd::NewStub(channel)->Stream(&ctx);
    v1::StreamRequest open;
    open.mutable_open()->set_session_id(session);
    rw->Write(open);
    rw->WritesDone();
    for (v1::StreamResponse ignored; rw->Read(&ignored);) {
    }
    const grpc::Status st = rw->Finish();
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
  });
  a.close = timed([&] { return c.CloseSession(session).status(); });  // last: it would end it
  return a;
}

// A package cut short, as a writer that stopped mid-way leaves one: a
// message of descriptors and no end message.
int CutShortPackage() {
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) return -1;
  const int fds[2] = {open("/dev/null", O_RDONLY | O_CLOEXEC),
                      open("/dev/null", O_RDONLY | O_CLOEXEC)};
  daemon::HandoverHeader header{.kind = daemon::HandoverKind::kDescriptors, .count = 2};
  iovec iov{&header, sizeof header};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof fds)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof fds);
  std::memcpy(CMSG_DATA(c), fds, sizeof fds);
  EXPECT_EQ(sendmsg(pair[0], &msg, 0), static_cast<ssize_t>(sizeof header)) << strerror(errno);
  for (int fd : fds) close(fd);
  close(pair[0]);
  return pair[1];
}

// SIGKILL at any point of a handover, from the SIGUSR2 on through the push
// into the store: the next daemon starts with whatever the store got. When
// the package reached the store, the sessions come back. When nothing did,
// or a package cut short (refused), it starts clean and serves, and every
// RPC naming an old session answers FAILED_PRECONDITION at once, saying the
// session's daemon did not hand it over: never NOT_FOUND, never a hang.
// The kill moves through the handover by fixed delays after the daemon says
// STOPPING=1 (its drain, the gRPC shutdown's 100 ms grace, the packing);
// the last one lands once the package is in the store.
TEST_P(RestartTest, AKillDuringTheHandoverLeavesOldIdsFailedPreconditionOrRestoresThem) {
  struct Step {
    std::string name;
    std::optional<milliseconds> after_stopping;  // nullopt: at once, no wait
    bool after_push = false;
    bool cut_short = false;  // hand the next daemon a package cut short instead
  };
  std::vector<Step> steps = {{"at once"}, {"at once, a package cut short", {}, false, true}};
  for (int ms : {0, 1, 2, 5, 10, 25, 50, 75, 90, 100, 105, 110, 120, 150}) {
    steps.push_back({absl::StrCat(ms, " ms after STOPPING=1"), milliseconds(ms)});
  }
  steps.push_back({"once the package is in the store", {}, true});
  int lost = 0, restored = 0;
  for (const Step& step : steps) {
    SCOPED_TRACE(step.name);
    // A notify socket per round: the last round's daemons' messages stay behind.
    unlink(notify_->path().c_str());
    notify_ = std::make_unique<NotifySocket>(dir_ + "/notify.sock");
    auto first = StartFirst();
    uint64_t held = 0, idle = 0;
    uint32_t last_handle = 0;
    {
      client::Client c(first->NewChannel());
      held = *c.OpenSession("held");
      idle = *c.OpenSession("idle");
      for (int i = 0; i < 300; ++i) {
        auto h = c.Open(held, absl::StrCat("f", i), v1::OPEN_MODE_READ_WRITE, {.create = true});
        ASSERT_TRUE(h.ok()) << h.status();
        last_handle = *h;
      }
    }
    kill(first->pid(), SIGUSR2);
    std::optional<NotifySocket::Message> pushed;
    if (step.after_push) {
      pushed = notify_->WaitFor("FDSTORE=1", seconds(20));
      ASSERT_TRUE(pushed.has_value()) << first->Log();
    } else if (step.after_stopping) {
      ASSERT_TRUE(notify_->WaitFor("STOPPING=1", seconds(20)).has_value()) << first->Log();
      std::this_thread::sleep_for(*step.after_stopping);
    }
    first->Kill();
    // What the store got: a push either came whole before the kill or not at all.
    if (!pushed) pushed = notify_->WaitFor("FDSTORE=1", milliseconds(200));
    int package = -1;
    if (pushed) {
      ASSERT_EQ(pushed->fds.size(), 1u) << pushed->text;
      package = pushed->fds[0];
    }
    if (step.cut_short) {
      ASSERT_LT(package, 0);  // killed at once: nothing came
      package = CutShortPackage();
      ASSERT_GE(package, 0);
    }
    std::printf("kill %s: %s\n", step.name.c_str(),
                step.cut_short ? "nothing stored, a package cut short given"
                : pushed       ? "the package was in the store"
                               : "nothing stored");
    auto next = StartNext(package);
    if (package >= 0) close(package);

    client::Client d(next->NewChannel());
    const absl::StatusOr<uint32_t> kept = KeepAliveRetried(d, held);
    if (pushed && !step.cut_short) {
      // The whole package reached the store: the sessions and handles came back.
      ++restored;
      EXPECT_TRUE(kept.ok()) << kept.status();
      EXPECT_NE(next->Log().find("restored the predecessor's 2 sessions and 300 handles"),
                std::string::npos)
          << next->Log();
      EXPECT_TRUE(d.KeepAlive(idle).ok());
      auto read = d.Submit(held, ReadOp(last_handle, 0, 1));
      EXPECT_TRUE(read.ok()) << read.status();
      continue;
    }
    ++lost;
    EXPECT_EQ(kept.status().code(), absl::StatusCode::kFailedPrecondition) << kept.status();
    // It serves.
    const absl::StatusOr<uint64_t> fresh = d.OpenSession("fresh");
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    EXPECT_TRUE(d.Submit(*fresh, NopOp()).ok());
    const std::string why = step.cut_short ? "(the handover is refused: " : "(none was handed over";
    for (uint64_t old : {held, idle}) {
      SCOPED_TRACE(absl::StrCat("session ", old));
      const OldIdAnswers a = AskAbout(next->NewChannel(), old);
      for (const absl::Status& st : {a.keep_alive, a.submit, a.stream, a.close}) {
        EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
        EXPECT_THAT(
            std::string(st.message()),
            ::testing::HasSubstr(absl::StrCat(
                "session ", old,
                " was opened by an earlier daemon whose state did not reach this one ", why)));
      }
      EXPECT_LT(a.slowest, milliseconds(1500));
    }
    // Its own sessions do not collide with the old ones.
    EXPECT_NE(*fresh, held);
    EXPECT_NE(*fresh, idle);
  }
  std::printf("killed during the handover: %d rounds started clean, %d restored\n", lost, restored);
  EXPECT_GE(lost, 2);      // at once (nothing stored), cut short (refused)
  EXPECT_GE(restored, 1);  // once the package is in the store
}

// Also where a container manager's notify socket is set (nspawn sets one),
// which keeps no descriptors.
TEST_P(RestartTest, SigusrTwoWithoutAServiceManagerIsIgnored) {
  Daemon alone(GetParam(), DaemonOptions{.env = {{"NOTIFY_SOCKET", notify_->path()},
                                                 {"INVOCATION_ID", ""}}});
  kill(alone.pid(), SIGUSR2);
  client::Client c(alone.channel());
  ASSERT_TRUE(WaitFor([&] { return alone.Log().find("SIGUSR2 ignored") != std::string::npos; }));
  EXPECT_TRUE(c.OpenSession("still serving").ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, RestartTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

}  // namespace
}  // namespace asyncd::testing
