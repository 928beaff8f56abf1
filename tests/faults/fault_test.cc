// Faults, against the real daemon binary: each test names the fault and the
// behaviour it pins.
//   EMFILE        opens past the daemon's RLIMIT_NOFILE complete with errno
//                 EMFILE (not a crash, not an RPC error); after closes it
//                 serves again, new connections included.
//   ENOSPC        writes beyond a 1 MiB tmpfs root complete with ENOSPC;
//                 freeing space makes writes work again (root only; skipped
//                 visibly otherwise).
//   vanished      a client process SIGKILLed with blocked ops: they end
//                 CANCELLED (RPC_CANCELLED), its session ends, the history
//                 shows them.
//   never reads   a stream that never reads its completions does not stop the
//                 daemon serving other clients.
//   SIGKILL       a daemon killed with SIGKILL leaves its socket file; a new
//                 one on the same path starts and serves.
//   no io_uring   the same workload works after a restart with io_uring
//                 disabled (ASYNCD_DISABLE_IO_URING=1, --no-io-uring), and
//                 GetStats shows the fallback.
#include <sys/mount.h>
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <set>

#include "tests/faults/victim_client.h"
#include "tests/integration/daemon_fixture.h"

namespace asyncd::testing {
namespace {

using client::Client;
using client::StreamClient;
using std::chrono::milliseconds;
using std::chrono::seconds;

class FaultTest : public ::testing::TestWithParam<BackendMode> {};

v1::Operation OpenOp(const std::string& path, bool create = false) {
  v1::Operation op;
  op.mutable_open()->set_path(path);
  op.mutable_open()->set_access(v1::OPEN_MODE_READ_WRITE);
  op.mutable_open()->set_create(create);
  return op;
}

v1::Operation WriteOp(uint32_t handle, int64_t offset, std::string data) {
  v1::Operation op;
  op.mutable_write()->set_handle(handle);
  op.mutable_write()->set_offset(offset);
  op.mutable_write()->set_data(std::move(data));
  return op;
}


// --- EMFILE -----------------------------------------------------------------

TEST_P(FaultTest, EmfileCompletesOpensWithErrnoAndServingResumesAfterCloses) {
  constexpr rlim_t kNoFile = 128;
  Daemon daemon(GetParam(), DaemonOptions{.nofile_limit = kNoFile});
  ASSERT_TRUE(daemon.Alive()) << daemon.Log();
  Client c(daemon.channel());
  auto s = c.OpenSession("emfile");
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<uint32_t> handles;
  int emfile = 0;
  for (int i = 0; i < 2 * static_cast<int>(kNoFile) && emfile < 5; ++i) {
    auto r = c.Submit(*s, OpenOp("f" + std::to_string(i), /*create=*/true));
    ASSERT_TRUE(r.ok()) << "open " << i << ": an RPC error, not a completion: " << r.status();
    if (r->error_number() == 0) {
      handles.push_back(r->handle());
      continue;
    }
    EXPECT_EQ(r->outcome(), v1::OUTCOME_COMPLETED) << r->ShortDebugString();
    EXPECT_EQ(r->error_number(), EMFILE) << r->ShortDebugString();
    EXPECT_EQ(r->error_name(), "EMFILE");
    ++emfile;
  }
  EXPECT_EQ(emfile, 5) << "opened " << handles.size() << " files under RLIMIT_NOFILE " << kNoFile;
  EXPECT_LT(handles.size(), kNoFile);
  // Still serving this connection at the limit.
  EXPECT_EQ(c.Submit(*s, NopOp())->outcome(), v1::OUTCOME_COMPLETED);
  for (uint32_t h : handles) ASSERT_TRUE(c.Close(*s, h).ok()) << h;
  // Descriptors are back: opens work, and so do new connections.
  auto again = c.Open(*s, "f0", v1::OPEN_MODE_READ_WRITE);
  EXPECT_TRUE(again.ok()) << again.status();
  Client fresh(daemon.NewChannel());
  auto s2 = fresh.OpenSession("after-emfile");
  ASSERT_TRUE(s2.ok()) << s2.status();
  EXPECT_TRUE(fresh.Open(*s2, "f1", v1::OPEN_MODE_READ_ONLY).ok());
  EXPECT_TRUE(c.CloseSession(*s).ok());
  EXPECT_TRUE(fresh.CloseSession(*s2).ok());
  auto st = fresh.GetStats();
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->inflight(), 0u);
  EXPECT_TRUE(daemon.Alive()) << daemon.Log();
}

// Connections beyond the descriptor limit: the daemon must not spin or die
// when accept() fails with EMFILE; once descriptors free up it accepts again.
TEST_P(FaultTest, EmfileOnAcceptDoesNotKillTheDaemon) {
  constexpr rlim_t kNoFile = 128;
  Daemon daemon(GetParam(), DaemonOptions{.nofile_limit = kNoFile});
  ASSERT_TRUE(daemon.Alive()) << daemon.Log();
  Client c(daemon.channel());
  auto s = c.OpenSession("hog");
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<uint32_t> handles;
  for (int i = 0; i < 2 * static_cast<int>(kNoFile); ++i) {
    auto r = c.Submit(*s, OpenOp("g" + std::to_string(i), /*create=*/true));
    ASSERT_TRUE(r.ok()) << r.status();
    if (r->error_number() != 0) break;
    handles.push_back(r->handle());
  }
  // Every descriptor is taken: a new connection cannot be accepted now.
  {
    Client late(daemon.NewChannel(), {.default_timeout = seconds(2)});
    auto st = late.GetStats();  // may fail (UNAVAILABLE/DEADLINE); must not crash anything
    (void)st;
  }
  EXPECT_TRUE(daemon.Alive()) << daemon.Log();
  ASSERT_TRUE(c.CloseSession(*s).ok());  // closes every handle
  Client later(daemon.NewChannel(), {.default_timeout = seconds(2)});
  EXPECT_TRUE(WaitFor([&] { return later.GetStats().ok(); }, seconds(20)))
      << "the daemon does not accept connections after EMFILE; log:\n"
      << daemon.Log();
}

// --- ENOSPC -----------------------------------------------------------------

TEST_P(FaultTest, EnospcOnASmallTmpfsRootCompletesWritesWithErrno) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
  char tmpl[] = "/tmp/asyncd-enospc.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string root = dir + "/root";
  ASSERT_EQ(mkdir(root.c_str(), 0755), 0);
  if (mount("asyncd-test", root.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=1m") != 0) {
    const int err = errno;
    std::filesystem::remove_all(dir);
    GTEST_SKIP() << "cannot mount a tmpfs: " << strerror(err);
  }
  {
    Daemon daemon(GetParam(), DaemonOptions{.dir = dir});
    ASSERT_TRUE(daemon.Alive()) << daemon.Log();
    Client c(daemon.channel());
    auto s = c.OpenSession("enospc");
    ASSERT_TRUE(s.ok()) << s.status();
    auto h = c.Open(*s, "big", v1::OPEN_MODE_READ_WRITE, {.create = true});
    ASSERT_TRUE(h.ok()) << h.status();
    const std::string chunk(64 * 1024, 'x');
    int64_t offset = 0;
    v1::Completion last;
    for (int i = 0; i < 64; ++i) {  // 4 MiB at most into 1 MiB
      auto r = c.Submit(*s, WriteOp(*h, offset, chunk));
      ASSERT_TRUE(r.ok()) << r.status();
      last = *r;
      if (r->error_number() != 0) break;
      offset += r->result();
      ASSERT_GT(r->result(), 0);
    }
    EXPECT_EQ(last.outcome(), v1::OUTCOME_COMPLETED) << last.ShortDebugString();
    EXPECT_EQ(last.error_number(), ENOSPC) << last.ShortDebugString();
    EXPECT_EQ(last.error_name(), "ENOSPC");
    EXPECT_LE(offset, 1 << 20);
    // Free the space: writes work again.
    v1::Operation trunc;
    trunc.mutable_ftruncate()->set_handle(*h);
    trunc.mutable_ftruncate()->set_length(0);
    auto t = c.Submit(*s, trunc);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->error_number(), 0);
    auto w = c.Write(*s, *h, 0, chunk);
    EXPECT_TRUE(w.ok()) << w.status();
    EXPECT_TRUE(c.CloseSession(*s).ok());
    EXPECT_TRUE(daemon.Alive()) << daemon.Log();
  }
  EXPECT_EQ(umount2(root.c_str(), MNT_DETACH), 0) << strerror(errno);
  std::filesystem::remove_all(dir);
}

// --- a vanished client --------------------------------------------------------

TEST_P(FaultTest, VanishedClientsOpsEndCancelledAndItsSessionEnds) {
  Daemon daemon(GetParam());
  ASSERT_EQ(mkfifo((daemon.root() + "/fifo").c_str(), 0600), 0);
  Client op(daemon.channel());
  auto v = SpawnVictim(daemon.socket(), "fifo", 8, 8);
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->blocked_ops, 16);
  v1::OpSelector mine;
  mine.set_session_id(v->session_id);
  auto listed = op.ListAll(mine);
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->size(), 16u);
  v->Kill();
  EXPECT_TRUE(WaitFor(
      [&] {
        auto st = op.GetStats();
        return st.ok() && st->inflight() == 0 && st->sessions() == 0;
      },
      seconds(15)))
      << "the killed client's ops or session are still there: " << [&] {
           std::string out;
           auto ops = op.ListAll(v1::OpSelector());
           if (ops.ok()) {
             for (const auto& o : *ops) out += "\n  " + o.ShortDebugString();
           }
           auto sessions = op.ListSessions();
           if (sessions.ok()) {
             for (const auto& s : *sessions) out += "\n  session " + s.ShortDebugString();
           }
           return out;
         }();
  auto sessions = op.ListSessions();
  ASSERT_TRUE(sessions.ok());
  for (const auto& s : *sessions) EXPECT_NE(s.session_id(), v->session_id);
  auto hist = op.ListHistory(mine, 100);
  ASSERT_TRUE(hist.ok()) << hist.status();
  std::map<std::pair<int, int>, int> seen;  // (outcome, end reason) -> count
  for (const auto& h : *hist) {
    if (h.kind() == v1::OP_KIND_OPEN) continue;  // the victim's FIFO open completed
    ++seen[{h.outcome(), h.end_reason()}];
    EXPECT_EQ(h.outcome(), v1::OUTCOME_CANCELLED) << h.ShortDebugString();
    EXPECT_EQ(h.end_reason(), v1::END_REASON_RPC_CANCELLED) << h.ShortDebugString();
  }
  int total = 0;
  for (const auto& [k, n] : seen) total += n;
  EXPECT_EQ(total, 16);
  EXPECT_TRUE(daemon.Alive()) << daemon.Log();
}

// --- a client that never reads ----------------------------------------------

TEST_P(FaultTest, AClientThatNeverReadsDoesNotStopOthers) {
  Daemon daemon(GetParam());
  {
    std::ofstream f(daemon.root() + "/data");
    f << std::string(1 << 20, 'd');
  }
  Client c(daemon.channel());
  auto s = c.OpenSession("never-reads");
  ASSERT_TRUE(s.ok()) << s.status();
  auto h = c.Open(*s, "data", v1::OPEN_MODE_READ_ONLY);
  ASSERT_TRUE(h.ok()) << h.status();
  const int64_t rss_before = RssBytes(daemon.pid());
  // A raw stream on its own connection: writes batches of 16 KiB reads
  // (completions carry the data) and never reads a single response.
  auto rude_channel = daemon.NewChannel();
  auto rude_stub = v1::Asyncd::NewStub(rude_channel);
  grpc::ClientContext rude_ctx;
  auto rude = rude_stub->Stream(&rude_ctx);
  v1::StreamRequest open;
  open.mutable_open()->set_session_id(*s);
  ASSERT_TRUE(rude->Write(open));
  std::atomic<int> batches_written{0};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int b = 0; b < 40 && !stop; ++b) {
      v1::StreamRequest req;
      req.mutable_submit()->set_batch_tag(b);
      for (int i = 0; i < 256; ++i) {
        *req.mutable_submit()->add_ops() = ReadOp(*h, (i * 16384) % (1 << 20), 16384, i);
      }
      if (!rude->Write(req)) break;  // blocks once flow control pushes back
      ++batches_written;
    }
  });
  ASSERT_TRUE(WaitFor([&] { return batches_written >= 4; }, seconds(20)));
  std::this_thread::sleep_for(milliseconds(500));
  // Everyone else is served, unary and streaming, on other connections.
  Client other(daemon.NewChannel());
  auto os = other.OpenSession("polite");
  ASSERT_TRUE(os.ok()) << os.status();
  const auto deadline = std::chrono::system_clock::now() + seconds(20);
  for (int i = 0; i < 200; ++i) {
    auto r = other.Submit(*os, NopOp(i), deadline);
    ASSERT_TRUE(r.ok()) << i << ": " << r.status();
  }
  auto stream = StreamClient::Create(daemon.NewChannel(), "polite-stream");
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::atomic<int> done{0};
  std::vector<v1::Operation> ops;
  for (int i = 0; i < 1000; ++i) ops.push_back(NopOp(i));
  ASSERT_TRUE((*stream)->Submit(ops, [&](const v1::Completion& c) {
                            if (c.outcome() == v1::OUTCOME_COMPLETED) ++done;
                          }).ok());
  EXPECT_TRUE(WaitFor([&] { return done == 1000; }, seconds(20))) << done;
  EXPECT_TRUE((*stream)->Finish().ok());
  EXPECT_TRUE(other.CloseSession(*os).ok());
  const int64_t rss_during = RssBytes(daemon.pid());
  std::printf("never-reads: %d batches of 256 x 16 KiB reads written, daemon RSS %.1f -> %.1f MiB\n",
              batches_written.load(), rss_before / 1048576.0, rss_during / 1048576.0);
  RecordProperty("never_reads_batches_written", batches_written.load());
  RecordProperty("never_reads_rss_growth_kib", std::to_string((rss_during - rss_before) / 1024));
  // Cut it off: its ops end and its stream goes.
  stop = true;
  rude_ctx.TryCancel();
  writer.join();
  EXPECT_TRUE(c.CloseSession(*s).ok());
  EXPECT_TRUE(WaitFor(
      [&] {
        auto st = c.GetStats();
        return st.ok() && st->inflight() == 0 && st->sessions() == 0;
      },
      seconds(20)));
  EXPECT_TRUE(daemon.Alive()) << daemon.Log();
}

// --- a daemon killed and restarted on the same socket -------------------------

TEST_P(FaultTest, SigkilledDaemonRestartsOnTheSameSocketPath) {
  Daemon first(GetParam());
  {
    Client c(first.channel());
    auto s = c.OpenSession("before");
    ASSERT_TRUE(s.ok()) << s.status();
    auto h = c.Open(*s, "kept", v1::OPEN_MODE_READ_WRITE, {.create = true});
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_TRUE(c.Write(*s, *h, 0, "survives").ok());
    // In flight when it dies.
    auto stream = StreamClient::Create(first.NewChannel(), "dying");
    ASSERT_TRUE(stream.ok());
    ASSERT_TRUE((*stream)->Submit({TimeoutOp(seconds(600), 1)}, [](const v1::Completion&) {}).ok());
    first.Kill();
    (void)(*stream)->Finish();  // the stream ends with an error: the daemon is gone
  }
  struct stat st;
  ASSERT_EQ(lstat(first.socket().c_str(), &st), 0) << "SIGKILL leaves the socket file";
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  Daemon second(GetParam(), DaemonOptions{.dir = first.dir()});
  ASSERT_TRUE(second.Alive()) << second.Log();
  Client c(second.channel());
  auto s = c.OpenSession("after");
  ASSERT_TRUE(s.ok()) << s.status();
  auto h = c.Open(*s, "kept", v1::OPEN_MODE_READ_ONLY);
  ASSERT_TRUE(h.ok()) << h.status();
  auto r = c.Read(*s, *h, 0, 64);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "survives");
  auto stats = c.GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->inflight(), 0u);  // nothing of the old daemon came back
  EXPECT_EQ(stats->sessions(), 1u);
  EXPECT_TRUE(c.CloseSession(*s).ok());
}

// --- io_uring unavailable after a restart -------------------------------------

// The same workload on any deployment: files, a blocked FIFO read cancelled,
// a deadline, a timeout, statx, over a stream and unary calls. Returns the
// backends the completions reported.
std::set<int> Workload(Daemon& daemon, const std::string& tag) {
  std::set<int> backends;
  Client c(daemon.NewChannel());
  auto s = c.OpenSession("workload-" + tag);
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return backends;
  auto h = c.Open(*s, "w-" + tag, v1::OPEN_MODE_READ_WRITE, {.create = true});
  EXPECT_TRUE(h.ok()) << h.status();
  if (!h.ok()) return backends;
  EXPECT_EQ(*c.Write(*s, *h, 0, "payload-" + tag), 8 + tag.size());
  EXPECT_EQ(*c.Read(*s, *h, 0, 64), "payload-" + tag);
  EXPECT_EQ(c.Stat(*s, *h)->size_bytes(), 8 + tag.size());
  const std::string fifo_path = "fifo-" + tag;
  EXPECT_EQ(mkfifo((daemon.root() + "/" + fifo_path).c_str(), 0600), 0);
  auto fifo = c.Open(*s, fifo_path, v1::OPEN_MODE_READ_WRITE);
  EXPECT_TRUE(fifo.ok()) << fifo.status();
  auto stream = StreamClient::Create(daemon.NewChannel(), "workload-stream-" + tag, *s);
  EXPECT_TRUE(stream.ok()) << stream.status();
  if (!stream.ok() || !fifo.ok()) return backends;
  std::mutex mu;
  std::map<uint64_t, v1::Completion> done;
  std::atomic<uint64_t> blocked_id{0};
  v1::Operation deadline_read = ReadOp(*fifo, -1, 8, 3);
  deadline_read.set_deadline_ms(100);
  std::vector<v1::Operation> ops = {NopOp(1), ReadOp(*fifo, -1, 8, 2), deadline_read,
                                    TimeoutOp(milliseconds(20), 4), ReadOp(*h, 0, 4, 5)};
  EXPECT_TRUE((*stream)
                  ->Submit(ops,
                           [&](const v1::Completion& comp) {
                             std::lock_guard lock(mu);
                             done[comp.tag()] = comp;
                           },
                           [&](const StreamClient::AcceptedOp& a) {
                             if (a.tag == 2) blocked_id = a.op_id;
                           })
                  .ok());
  EXPECT_TRUE(WaitFor([&] { return blocked_id != 0; }));
  EXPECT_TRUE(WaitFor([&] {
    std::lock_guard lock(mu);
    return done.count(3) > 0 && done.count(1) > 0 && done.count(4) > 0 && done.count(5) > 0;
  }));
  auto cancel = c.Cancel(blocked_id.load());
  EXPECT_TRUE(cancel.ok()) << cancel.status();
  EXPECT_TRUE(WaitFor([&] {
    std::lock_guard lock(mu);
    return done.size() == 5;
  }));
  EXPECT_TRUE((*stream)->Finish().ok());
  std::lock_guard lock(mu);
  EXPECT_EQ(done[1].outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_EQ(done[2].outcome(), v1::OUTCOME_CANCELLED);
  EXPECT_EQ(done[3].outcome(), v1::OUTCOME_TIMED_OUT);
  EXPECT_EQ(done[4].outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_EQ(done[5].data(), "payl");
  for (const auto& [tag_, comp] : done) backends.insert(comp.backend());
  EXPECT_TRUE(c.Close(*s, *fifo).ok());
  EXPECT_TRUE(c.CloseSession(*s).ok());
  return backends;
}

TEST(FaultNoUring, IoUringUnavailableAfterRestartFallsBackToTheThreadPool) {
  Daemon with(BackendMode::kIoUring);
  auto st = Client(with.channel()).GetStats();
  ASSERT_TRUE(st.ok()) << st.status();
  const bool had_uring = st->io_uring_enabled();
  const std::set<int> b1 = Workload(with, "uring");
  if (had_uring) {
    EXPECT_TRUE(b1.count(v1::BACKEND_IO_URING)) << "io_uring was enabled but ran nothing";
  }
  const std::string dir = with.dir();
  EXPECT_EQ(with.Stop(), 0) << with.Log();

  // The kernel (or a seccomp policy) now refuses io_uring: emulated by the
  // probe's switch, as a deployment would meet it, then by configuration.
  for (const auto& how : {std::string("env"), std::string("flag")}) {
    SCOPED_TRACE(how);
    DaemonOptions o{.dir = dir};
    if (how == "env") o.env = {{"ASYNCD_DISABLE_IO_URING", "1"}};
    Daemon without(how == "env" ? BackendMode::kIoUring : BackendMode::kThreadPoolOnly, o);
    ASSERT_TRUE(without.Alive()) << without.Log();
    // gRPC shares subchannels between channels of the same target: the first
    // call may still meet the stopped daemon's connection (UNAVAILABLE,
    // "Broken pipe"). UNAVAILABLE means retry; a client of a restarted
    // daemon does just that.
    absl::StatusOr<v1::Stats> s2;
    EXPECT_TRUE(WaitFor([&] { return (s2 = Client(without.channel()).GetStats()).ok(); }));
    ASSERT_TRUE(s2.ok()) << s2.status() << "; log:\n" << without.Log();
    EXPECT_FALSE(s2->io_uring_enabled());
    EXPECT_EQ(s2->supported_uring_ops_size(), 0);
    EXPECT_GT(s2->thread_pool_size(), 0u);
    if (how == "env") {
      EXPECT_NE(s2->io_uring_unavailable_reason().find("ASYNCD_DISABLE_IO_URING"),
                std::string::npos)
          << s2->io_uring_unavailable_reason();
    } else {
      EXPECT_NE(s2->io_uring_unavailable_reason(), "");
    }
    const std::set<int> b2 = Workload(without, how);
    EXPECT_FALSE(b2.count(v1::BACKEND_IO_URING));
    EXPECT_TRUE(b2.count(v1::BACKEND_THREAD_POOL));
    EXPECT_EQ(without.Stop(), 0) << without.Log();
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, FaultTest,
                         ::testing::Values(BackendMode::kIoUring, BackendMode::kThreadPoolOnly),
                         [](const auto& info) { return Name(info.param); });

}  // namespace
}  // namespace asyncd::testing
