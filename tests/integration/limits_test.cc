// Limits and back-pressure over gRPC against the real daemon: every
// configurable limit answers RESOURCE_EXHAUSTED naming the limit and changes
// nothing (limits.max_inflight_total, max_buffered_bytes, max_sessions,
// max_inflight_per_session, max_batch_ops, max_op_bytes, the thread pool's
// pool_queue_depth and max_pool_queued_per_session), and a stream client
// that submits but never reads its completions leaves the daemon's memory
// bounded while it keeps serving everyone else.
#include <gmock/gmock.h>
#include <sys/stat.h>

#include <cstring>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/security_util.h"

namespace asyncd::testing {
namespace {

using client::Client;
using client::StreamClient;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;


uint64_t Inflight(Client& c) {
  auto st = c.GetStats();
  EXPECT_TRUE(st.ok()) << st.status();
  return st.ok() ? st->inflight() : ~uint64_t{0};
}


v1::Operation WriteOp(uint32_t handle, std::string data, uint64_t tag = 0) {
  v1::Operation op;
  op.set_tag(tag);
  op.mutable_write()->set_handle(handle);
  op.mutable_write()->set_offset(0);
  op.mutable_write()->set_data(std::move(data));
  return op;
}

TEST(LimitsTest, MaxInflightTotalRefusesTheNextOpAcrossSessionsAndChangesNothing) {
  ConfigFile config("[limits]\nmax_inflight_total = 3\n");
  Daemon daemon(BackendMode::kIoUring, config.Args());
  Client client(daemon.channel());
  auto stream = StreamClient::Create(daemon.channel(), "holder");
  ASSERT_TRUE(stream.ok()) << stream.status();
  Completions done;
  ASSERT_TRUE((*stream)
                  ->Submit({TimeoutOp(seconds(30), 1), TimeoutOp(seconds(30), 2),
                            TimeoutOp(seconds(30), 3)},
                           done.Callback())
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return Inflight(client) == 3; }));

  // Another session, unary: refused, naming the limit.
  auto other = client.OpenSession("other");
  ASSERT_TRUE(other.ok()) << other.status();
  auto refused = client.Submit(*other, NopOp());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("limits.max_inflight_total 3"));
  // The same stream: the op is REJECTED in band with the same code.
  ASSERT_TRUE((*stream)->Submit({NopOp(4)}, done.Callback()).ok());
  auto rejected = done.Wait(4);
  ASSERT_TRUE(rejected);
  EXPECT_EQ(rejected->outcome(), v1::OUTCOME_REJECTED);
  EXPECT_EQ(rejected->status_code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_THAT(rejected->message(), HasSubstr("max_inflight_total"));
  // Nothing changed: still the same three in flight; the limit is in Stats.
  auto stats = client.GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->inflight(), 3u);
  EXPECT_EQ(stats->limits().max_inflight_total(), 3u);
  // The thread pool's limits at their defaults: one worker always left over.
  EXPECT_EQ(stats->limits().pool_queue_depth(), 8192u);
  EXPECT_EQ(stats->limits().max_pool_queued_per_session(), 1024u);
  EXPECT_EQ(stats->limits().max_pool_running_per_session(),
            std::max(4u, 2 * std::thread::hardware_concurrency()) - 1);
  auto listed = client.ListAll(v1::OpSelector());
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 3u);

  // One ends: room for exactly one more.
  v1::OpSelector sel;
  sel.set_all(true);
  auto one = client.Cancel(listed->front().op_id());
  ASSERT_TRUE(one.ok());
  ASSERT_TRUE(WaitFor([&] { return Inflight(client) == 2; }));
  EXPECT_TRUE(client.Submit(*other, NopOp()).ok());
  ASSERT_TRUE(client.Cancel(sel).ok());
  EXPECT_TRUE((*stream)->Finish().ok());
}

// io_uring is sized at start for max_inflight_total, so that its own
// capacity is no limit beyond that one: a reload may lower the limit, or
// raise it back, but not past that size (it needs a restart).
TEST(LimitsTest, ReloadRaisesMaxInflightTotalOnlyAsFarAsIoUringWasSized) {
  ConfigFile config("[limits]\nmax_inflight_total = 8\n");
  Daemon daemon(BackendMode::kIoUring, config.Args());
  Client client(daemon.channel());
  auto stats = client.GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  if (!stats->io_uring_enabled()) GTEST_SKIP() << "io_uring unavailable here";
  // Each reload also sets max_op_bytes to `marker`: seeing it says the
  // reload was done.
  auto reload = [&](uint32_t total, uint32_t marker) -> std::optional<v1::Limits> {
    std::ofstream(config.path()) << "[limits]\nmax_inflight_total = " << total
                                 << "\nmax_op_bytes = " << marker << "\n";
    if (::kill(daemon.pid(), SIGHUP) != 0) return std::nullopt;
    std::optional<v1::Limits> seen;
    WaitFor([&] {
      auto st = client.GetStats();
      if (st.ok() && st->limits().max_op_bytes() == marker) seen = st->limits();
      return seen.has_value();
    });
    return seen;
  };
  auto lowered = reload(4, 4001);
  ASSERT_TRUE(lowered.has_value());
  EXPECT_EQ(lowered->max_inflight_total(), 4u);
  auto raised = reload(8, 4002);  // back to what io_uring was sized for
  ASSERT_TRUE(raised.has_value());
  EXPECT_EQ(raised->max_inflight_total(), 8u);
  auto past = reload(1000, 4003);  // past it: not applied, the rest is
  ASSERT_TRUE(past.has_value());
  EXPECT_EQ(past->max_inflight_total(), 8u);
}

TEST(LimitsTest, MaxBufferedBytesCountsReadBuffersAndWriteDataAcrossSessions) {
  ConfigFile config("[limits]\nmax_buffered_bytes = 8192\n");
  Daemon daemon(BackendMode::kIoUring, config.Args());
  Client client(daemon.channel());
  auto s = client.OpenSession("bytes");
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(mkfifo((daemon.root() + "/fifo").c_str(), 0600), 0);
  auto fifo = client.Open(*s, "fifo", v1::OPEN_MODE_READ_WRITE);
  ASSERT_TRUE(fifo.ok()) << fifo.status();
  auto file = client.Open(*s, "f", v1::OPEN_MODE_READ_WRITE, {.create = true});
  ASSERT_TRUE(file.ok());
  // A blocked read holds a 6000-byte buffer.
  auto stream = StreamClient::Create(daemon.channel(), "holder", *s);
  ASSERT_TRUE(stream.ok());
  Completions done;
  ASSERT_TRUE((*stream)->Submit({ReadOp(*fifo, -1, 6000, 1)}, done.Callback()).ok());
  ASSERT_TRUE(WaitFor([&] { return Inflight(client) == 1; }));

  auto other = client.OpenSession("other");
  ASSERT_TRUE(other.ok());
  auto read = client.Submit(*s, ReadOp(*file, 0, 4096));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(read.status().message()), HasSubstr("limits.max_buffered_bytes 8192"));
  auto write = client.Submit(*s, WriteOp(*file, std::string(3000, 'w')));
  EXPECT_EQ(write.status().code(), absl::StatusCode::kResourceExhausted);
  // Nothing changed: the file is still empty, one op in flight.
  EXPECT_EQ(std::filesystem::file_size(daemon.root() + "/f"), 0u);
  EXPECT_EQ(Inflight(client), 1u);
  // What fits still runs, and ops without payload are not affected.
  auto small = client.Submit(*s, WriteOp(*file, std::string(2000, 'w')));
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(small->result(), 2000);
  EXPECT_TRUE(client.Submit(*other, NopOp()).ok());
  auto stats = client.GetStats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->limits().max_buffered_bytes(), 8192u);
  // The blocked read's buffer, and nothing refused; the small write's bytes
  // go when its call is done on the daemon's side, just after the reply.
  EXPECT_TRUE(WaitFor([&] { return client.GetStats()->buffered_bytes() == 6000; }))
      << client.GetStats()->buffered_bytes();

  // The blocked read ends (its bytes are released once delivered): room again.
  v1::OpSelector all;
  all.set_all(true);
  ASSERT_TRUE(client.Cancel(all).ok());
  ASSERT_TRUE(done.Wait(1));
  absl::StatusOr<v1::Completion> again;
  ASSERT_TRUE(WaitFor([&] { return (again = client.Submit(*s, ReadOp(*file, 0, 4096))).ok(); }))
      << again.status();
  EXPECT_EQ(again->data().size(), 2000u);
  EXPECT_TRUE((*stream)->Finish().ok());
  EXPECT_TRUE(WaitFor([&] { return client.GetStats()->buffered_bytes() == 0; }))
      << "every byte is released once its result is delivered";
}

TEST(LimitsTest, MaxSessionsRefusesTheNextSessionNamingTheLimit) {
  ConfigFile config("[limits]\nmax_sessions = 2\n");
  Daemon daemon(BackendMode::kIoUring, config.Args());
  Client client(daemon.channel());
  ASSERT_TRUE(client.OpenSession("a").ok());
  ASSERT_TRUE(client.OpenSession("b").ok());
  auto third = client.OpenSession("c");
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(third.status().message()), HasSubstr("limits.max_sessions"));
  auto stream = StreamClient::Create(daemon.channel(), "d");
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kResourceExhausted);
  auto sessions = client.ListSessions();
  ASSERT_TRUE(sessions.ok());
  EXPECT_EQ(sessions->size(), 2u);
}

TEST(LimitsTest, MaxInflightPerSessionRejectsOpsOverItInBand) {
  ConfigFile config("[limits]\nmax_inflight_per_session = 2\n");
  Daemon daemon(BackendMode::kIoUring, config.Args());
  Client client(daemon.channel());
  auto s = client.OpenSession("per-session");
  ASSERT_TRUE(s.ok());
  auto stream = StreamClient::Create(daemon.channel(), "per-session", *s);
  ASSERT_TRUE(stream.ok());
  Completions done;
  ASSERT_TRUE((*stream)
                  ->Submit({TimeoutOp(seconds(30), 1), TimeoutOp(seconds(30), 2)}, done.Callback())
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return Inflight(client) == 2; }));
  auto unary = client.Submit(*s, NopOp());
  EXPECT_EQ(unary.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(unary.status().message()), HasSubstr("limits.max_inflight_per_session"));
  // Another session is not affected.
  auto other = client.OpenSession("other");
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(client.Submit(*other, NopOp()).ok());
  // The reply can arrive a moment before the nop's slot is retired.
  EXPECT_TRUE(WaitFor([&] { return Inflight(client) == 2; }));
  v1::OpSelector all;
  all.set_all(true);
  ASSERT_TRUE(client.Cancel(all).ok());
  EXPECT_TRUE((*stream)->Finish().ok());
}

// The raw stream (StreamClient splits batches at max_batch_ops itself).
TEST(LimitsTest, MaxBatchOpsRejectsEveryOpOfAnOversizedBatch) {
  ConfigFile config("[limits]\nmax_batch_ops = 2\n");
  Daemon daemon(BackendMode::kIoUring, config.Args());
  auto stub = v1::Asyncd::NewStub(daemon.NewChannel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(20));
  auto rw = stub->Stream(&ctx);
  v1::StreamRequest open;
  open.mutable_open()->set_client_name("batch");
  ASSERT_TRUE(rw->Write(open));
  v1::StreamResponse resp;
  ASSERT_TRUE(rw->Read(&resp));
  ASSERT_TRUE(resp.has_opened());
  v1::StreamRequest batch;
  for (uint64_t t = 1; t <= 3; ++t) *batch.mutable_submit()->add_ops() = NopOp(t);
  ASSERT_TRUE(rw->Write(batch));
  int rejected = 0;
  while (rejected < 3 && rw->Read(&resp)) {
    if (resp.has_accepted()) {
      for (const auto& a : resp.accepted().ops()) EXPECT_EQ(a.op_id(), 0u);
    }
    for (const auto& c : resp.completions().completions()) {
      EXPECT_EQ(c.outcome(), v1::OUTCOME_REJECTED);
      EXPECT_EQ(c.status_code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
      EXPECT_THAT(c.message(), HasSubstr("max_batch_ops 2"));
      ++rejected;
    }
  }
  EXPECT_EQ(rejected, 3);
  rw->WritesDone();
  EXPECT_TRUE(rw->Finish().ok());
}

TEST(LimitsTest, MaxOpBytesRefusesALargerReadOrWrite) {
  ConfigFile config("[limits]\nmax_op_bytes = 4096\n");
  Daemon daemon(BackendMode::kIoUring, config.Args());
  Client client(daemon.channel());
  auto s = client.OpenSession("op-bytes");
  ASSERT_TRUE(s.ok());
  auto file = client.Open(*s, "f", v1::OPEN_MODE_READ_WRITE, {.create = true});
  ASSERT_TRUE(file.ok());
  auto read = client.Submit(*s, ReadOp(*file, 0, 4097));
  EXPECT_EQ(read.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(read.status().message()), HasSubstr("max_op_bytes 4096"));
  auto write = client.Submit(*s, WriteOp(*file, std::string(4097, 'x')));
  EXPECT_EQ(write.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(std::filesystem::file_size(daemon.root() + "/f"), 0u);
  EXPECT_TRUE(client.Submit(*s, ReadOp(*file, 0, 4096)).ok());
}

v1::Operation OpenFifoOp(const std::string& path, uint64_t tag) {
  v1::Operation op;
  op.set_tag(tag);
  op.mutable_open()->set_path(path);
  op.mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
  return op;
}

v1::Operation StatxOp(const std::string& path) {
  v1::Operation op;
  op.mutable_statx()->set_path(path);
  return op;
}

// The thread pool's limits, on the fallback: a session's hung ops (blocking
// FIFO opens) hold at most max_pool_running_per_session workers, so another
// session's statx still runs; a session queues at most
// max_pool_queued_per_session ops and all sessions pool_queue_depth; each
// refusal is RESOURCE_EXHAUSTED naming its limit and changes nothing; the
// three limits are in OpenSession's and GetStats' Limits.
TEST(LimitsTest, ThreadPoolLimitsKeepSessionsApartAndNameThemselves) {
  ConfigFile config(
      "[backends]\nthread_pool_threads = 2\nthread_pool_queue = 4\n"
      "[limits]\nmax_pool_queued_per_session = 2\nmax_pool_running_per_session = 1\n");
  Daemon daemon(BackendMode::kThreadPoolOnly, config.Args());
  Client client(daemon.channel());
  ASSERT_EQ(mkfifo((daemon.root() + "/hung").c_str(), 0600), 0);
  v1::OpenSessionResponse opened;
  auto a = client.OpenSession("flooder", 0, &opened);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(opened.limits().pool_queue_depth(), 4u);
  EXPECT_EQ(opened.limits().max_pool_queued_per_session(), 2u);
  EXPECT_EQ(opened.limits().max_pool_running_per_session(), 1u);

  auto stream_a = StreamClient::Create(daemon.channel(), "flooder", *a);
  ASSERT_TRUE(stream_a.ok()) << stream_a.status();
  Completions done;
  // Waits until the daemon holds `inflight` ops, `queued` of them queued for
  // a worker (not only counted in flight, which the daemon does first).
  auto in_pool = [&](uint64_t inflight, uint64_t queued) {
    return WaitFor([&] {
      auto st = client.GetStats();
      return st.ok() && st->inflight() == inflight && st->queued() == queued;
    });
  };
  // A's first open runs, holding a worker until the FIFO gets a writer; A is
  // then at its running share: two more queue. Waits for RUNNING: (1, 0) also
  // holds before a worker took it, and two more would then find A's queue full.
  ASSERT_TRUE((*stream_a)->Submit({OpenFifoOp("hung", 1)}, done.Callback()).ok());
  ASSERT_TRUE(WaitFor([&] {
    auto ops = client.ListAll(v1::OpSelector());
    return ops.ok() && ops->size() == 1 && (*ops)[0].state() == v1::OP_STATE_RUNNING;
  }));
  ASSERT_TRUE(in_pool(1, 0));
  ASSERT_TRUE((*stream_a)->Submit({OpenFifoOp("hung", 2), OpenFifoOp("hung", 3)}, done.Callback()).ok());
  ASSERT_TRUE(in_pool(3, 2));
  auto over_share = client.Submit(*a, StatxOp("hung"));
  EXPECT_EQ(over_share.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over_share.status().message()),
              HasSubstr("limits.max_pool_queued_per_session"));

  // Session B still gets the other worker.
  auto b = client.OpenSession("b");
  ASSERT_TRUE(b.ok()) << b.status();
  auto statx = client.Submit(*b, StatxOp("hung"));
  ASSERT_TRUE(statx.ok()) << statx.status();
  EXPECT_EQ(statx->outcome(), v1::OUTCOME_COMPLETED);
  EXPECT_EQ(statx->stat().file_type(), v1::FILE_TYPE_FIFO);

  // B holds that worker too and queues two: the queue (4) is full.
  auto stream_b = StreamClient::Create(daemon.channel(), "b", *b);
  ASSERT_TRUE(stream_b.ok()) << stream_b.status();
  ASSERT_TRUE((*stream_b)->Submit({OpenFifoOp("hung", 4)}, done.Callback()).ok());
  ASSERT_TRUE(in_pool(4, 2));
  ASSERT_TRUE((*stream_b)->Submit({OpenFifoOp("hung", 5), OpenFifoOp("hung", 6)}, done.Callback()).ok());
  ASSERT_TRUE(in_pool(6, 4));
  auto c = client.OpenSession("c");
  ASSERT_TRUE(c.ok()) << c.status();
  auto over_depth = client.Submit(*c, StatxOp("hung"));
  EXPECT_EQ(over_depth.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over_depth.status().message()), HasSubstr("limits.pool_queue_depth"));
  EXPECT_THAT(std::string(over_depth.status().message()), HasSubstr("backends.thread_pool_queue"));

  // Nothing changed: the six opens, in the queue and in Stats.
  auto stats = client.GetStats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->inflight(), 6u);
  EXPECT_EQ(stats->queued(), 4u);
  EXPECT_EQ(stats->limits().pool_queue_depth(), 4u);
  EXPECT_EQ(stats->limits().max_pool_queued_per_session(), 2u);
  EXPECT_EQ(stats->limits().max_pool_running_per_session(), 1u);

  // A writer arrives: every open completes, and the pool takes work again.
  const int writer = ::open((daemon.root() + "/hung").c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(writer, 0) << std::strerror(errno);
  for (uint64_t tag = 1; tag <= 6; ++tag) {
    auto opened_fifo = done.Wait(tag);
    ASSERT_TRUE(opened_fifo) << tag;
    EXPECT_EQ(opened_fifo->outcome(), v1::OUTCOME_COMPLETED) << tag;
  }
  EXPECT_TRUE(client.Submit(*c, StatxOp("hung")).ok());
  ::close(writer);
  EXPECT_TRUE((*stream_a)->Finish().ok());
  EXPECT_TRUE((*stream_b)->Finish().ok());
}

// A stream client that keeps submitting 1 MiB reads and never reads a
// completion: the daemon stops reading its requests once
// max_inflight_per_session results are undelivered, so its memory stays
// bounded, and everyone else is still served.
TEST(LimitsTest, StreamClientThatNeverReadsLeavesDaemonMemoryBounded) {
  ConfigFile config("[limits]\nmax_inflight_per_session = 8\n");
  Daemon daemon(BackendMode::kIoUring, config.Args());
  Client client(daemon.channel());
  {
    std::ofstream big(daemon.root() + "/big");
    big << std::string(1 << 20, 'b');
  }
  auto s = client.OpenSession("never-reads", 60000);
  ASSERT_TRUE(s.ok());
  auto h = client.Open(*s, "big", v1::OPEN_MODE_READ_ONLY);
  ASSERT_TRUE(h.ok());
  // Warm up (allocator arenas, gRPC buffers) with reads that are delivered.
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(client.Read(*s, *h, 0, 1 << 20).ok());
  const int64_t before = RssBytes(daemon.pid()) / 1024;
  ASSERT_GT(before, 0);

  auto stub = v1::Asyncd::NewStub(daemon.NewChannel());
  grpc::ClientContext ctx;
  auto rw = stub->Stream(&ctx);
  v1::StreamRequest open;
  open.mutable_open()->set_session_id(*s);
  ASSERT_TRUE(rw->Write(open));
  std::atomic<uint64_t> ops_sent{0};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    v1::StreamRequest batch;
    for (int i = 0; i < 8; ++i) *batch.mutable_submit()->add_ops() = ReadOp(*h, 0, 1 << 20, i);
    while (!stop && rw->Write(batch)) ops_sent += 8;
  });
  // Unchecked, this would be > 1 GiB of read results within seconds.
  std::this_thread::sleep_for(seconds(3));
  const uint64_t sent_at_3s = ops_sent;
  std::this_thread::sleep_for(seconds(2));
  const int64_t after = RssBytes(daemon.pid()) / 1024;
  // The client's writes are held back (transport flow control) once the
  // daemon stops reading: it could not push an unbounded number of ops.
  EXPECT_EQ(ops_sent.load(), sent_at_3s) << "the daemon kept reading requests";
  EXPECT_LT(after - before, 96 * 1024) << "RSS grew from " << before << " KiB to " << after;

  // Everyone else is still served, reads included.
  Client other(daemon.NewChannel());
  auto s2 = other.OpenSession("other");
  ASSERT_TRUE(s2.ok()) << s2.status();
  EXPECT_TRUE(other.Submit(*s2, NopOp()).ok());
  auto h2 = other.Open(*s2, "big", v1::OPEN_MODE_READ_ONLY);
  ASSERT_TRUE(h2.ok());
  auto data = other.Read(*s2, *h2, 0, 1 << 20);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->size(), size_t{1} << 20);

  stop = true;
  ctx.TryCancel();
  writer.join();
  // Once the stream is gone its ops and buffered results are released.
  EXPECT_TRUE(WaitFor([&] { return Inflight(client) == 0; }));
  std::cerr << "daemon RSS " << before << " KiB -> " << after << " KiB with " << sent_at_3s
            << " ops sent by a client that never reads\n";
}

}  // namespace
}  // namespace asyncd::testing
