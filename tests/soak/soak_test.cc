// Soak: the real daemon under many concurrent clients for a bounded time
// (ASYNCD_SOAK_SECONDS, default 90; ASYNCD_SOAK_THREADS, default 16): stream
// and unary clients submit a mixed load (nop, file reads and writes, statx,
// FIFO reads that block, timeouts), with random cancels, random deadlines,
// streams abandoned without Finish, and client processes SIGKILLed mid-stream.
//
// Invariants checked afterwards:
//   - every op a surviving client submitted got exactly one completion, and
//     every op the daemon accepted on a stream that finished cleanly has a
//     terminal outcome (COMPLETED, CANCELLED, TIMED_OUT or FAILED);
//   - the registry is empty: GetStats().inflight == 0 and sessions == 0 once
//     every client closed and the killed clients' sessions ended;
//   - no descriptor leaked: /proc/<daemon>/fd is back to its baseline
//     (taken after a warm-up, so the listener, ring, eventfds and gRPC's own
//     descriptors are in it);
//   - VmRSS grew by at most kRssGrowthBound (64 MiB; more under sanitizers).
// The figures go to RecordProperty (the XML report) and to stdout.
#include <dirent.h>
#include <sys/stat.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "tests/faults/victim_client.h"
#include "tests/integration/daemon_fixture.h"

namespace asyncd::testing {
namespace {

using client::Client;
using client::StreamClient;
using std::chrono::milliseconds;
using std::chrono::seconds;

#if defined(__SANITIZE_ADDRESS__) || defined(ASYNCD_SANITIZED)
constexpr int64_t kRssGrowthBound = 192ll << 20;  // ASan's shadow and quarantine
#else
constexpr int64_t kRssGrowthBound = 64ll << 20;
#endif

int EnvInt(const char* name, int fallback) {
  const char* v = getenv(name);
  return v != nullptr && *v != '\0' ? atoi(v) : fallback;
}

int CountFds(pid_t pid) {
  int n = 0;
  const std::string path = "/proc/" + std::to_string(pid) + "/fd";
  if (DIR* d = opendir(path.c_str())) {
    while (struct dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

std::string ListFds(pid_t pid) {
  std::string out;
  const std::string path = "/proc/" + std::to_string(pid) + "/fd";
  if (DIR* d = opendir(path.c_str())) {
    while (struct dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      char target[256] = {};
      (void)!readlink((path + "/" + e->d_name).c_str(), target, sizeof target - 1);
      out += std::string(e->d_name) + " -> " + target + "\n";
    }
    closedir(d);
  }
  return out;
}


// What the clients saw, summed over threads.
struct Tally {
  std::atomic<uint64_t> submitted{0};        // ops in Submit calls that returned OK
  std::atomic<uint64_t> accepted{0};         // the daemon gave them an op id
  std::atomic<uint64_t> rejected{0};         // REJECTED in-band
  std::atomic<uint64_t> completed{0}, cancelled{0}, timed_out{0}, failed{0};
  std::atomic<uint64_t> unknown{0};          // synthesized: the stream ended first
  std::atomic<uint64_t> duplicates{0};       // a second completion for one op
  std::atomic<uint64_t> missing{0};          // no completion at all
  std::atomic<uint64_t> bad_terminal{0};     // accepted, finished cleanly, no real outcome
  std::atomic<uint64_t> cancel_requests{0}, cancels_effective{0};
  std::atomic<uint64_t> unary_calls{0}, unary_ok{0}, unary_deadline{0}, unary_other{0};
  std::atomic<uint64_t> streams{0}, streams_abandoned{0};
  std::atomic<uint64_t> victims{0}, victim_ops{0};
  std::atomic<uint64_t> errors{0};
  std::mutex mu;
  std::string first_error;
  void Error(const std::string& what) {
    ++errors;
    std::lock_guard lock(mu);
    if (first_error.empty()) first_error = what;
  }
};

class SoakTest : public ::testing::Test {
 protected:
  SoakTest()
      : daemon_(BackendMode::kIoUring,
                DaemonOptions{.env = {{"ASAN_OPTIONS", "quarantine_size_mb=16:detect_leaks=1"}}}),
        client_(daemon_.channel()) {}

  void StreamWorker(int id, std::chrono::steady_clock::time_point until);
  void UnaryWorker(int id, std::chrono::steady_clock::time_point until);
  void Killer(std::chrono::steady_clock::time_point until);

  Daemon daemon_;
  Client client_;
  Tally t_;
};

v1::Operation RandomOp(std::mt19937_64& rng, uint32_t file, uint32_t fifo) {
  v1::Operation op;
  const int pick = static_cast<int>(rng() % 100);
  if (pick < 20) {
    op.mutable_nop();
  } else if (pick < 40) {
    op.mutable_write()->set_handle(file);
    op.mutable_write()->set_offset(static_cast<int64_t>(rng() % (1 << 20)));
    op.mutable_write()->set_data(std::string(1 + rng() % 4096, 'w'));
  } else if (pick < 60) {
    op.mutable_read()->set_handle(file);
    op.mutable_read()->set_offset(static_cast<int64_t>(rng() % (1 << 20)));
    op.mutable_read()->set_length(1 + rng() % 8192);
  } else if (pick < 68) {
    op.mutable_statx()->set_handle(file);
  } else if (pick < 85) {
    // Blocks until its deadline, a cancel, or a write on the FIFO.
    op.mutable_read()->set_handle(fifo);
    op.mutable_read()->set_offset(-1);
    op.mutable_read()->set_length(1 + rng() % 64);
    op.set_deadline_ms(1 + rng() % 300);
  } else if (pick < 90) {
    op.mutable_write()->set_handle(fifo);
    op.mutable_write()->set_offset(-1);
    op.mutable_write()->set_data("ping");
  } else {
    op.mutable_timeout()->set_duration_us(rng() % 50'000);
    if (rng() % 2) op.set_deadline_ms(1 + rng() % 40);
  }
  return op;
}

void SoakTest::StreamWorker(int id, std::chrono::steady_clock::time_point until) {
  std::mt19937_64 rng(id * 7919 + 1);
  auto channel = daemon_.NewChannel();
  Client canceller(channel);
  const std::string fifo_name = "fifo" + std::to_string(id);
  const std::string file_name = "file" + std::to_string(id);
  while (std::chrono::steady_clock::now() < until) {
    auto stream = StreamClient::Create(channel, "soak-stream-" + std::to_string(id));
    if (!stream.ok()) {
      t_.Error("StreamClient::Create: " + stream.status().ToString());
      std::this_thread::sleep_for(milliseconds(50));
      continue;
    }
    ++t_.streams;
    auto open = [&](const std::string& path, bool create) -> uint32_t {
      v1::Operation op;
      op.mutable_open()->set_path(path);
      op.mutable_open()->set_access(v1::OPEN_MODE_READ_WRITE);
      op.mutable_open()->set_create(create);
      auto f = (*stream)->SubmitOne(op);
      if (f.wait_for(seconds(30)) != std::future_status::ready) return 0;
      const v1::Completion c = f.get();
      if (c.error_number() != 0 || c.outcome() != v1::OUTCOME_COMPLETED) {
        t_.Error("open " + path + ": " + c.ShortDebugString());
        return 0;
      }
      return c.handle();
    };
    const uint32_t file = open(file_name, true);
    const uint32_t fifo = open(fifo_name, false);
    if (file == 0 || fifo == 0) continue;
    // Per stream: tag -> how many completions, and whether it was accepted.
    struct Slot {
      std::atomic<uint8_t> completions{0};
      std::atomic<bool> accepted{false};
      std::atomic<uint8_t> outcome{0};
    };
    const int kMaxOps = 4096;
    auto slots = std::make_unique<Slot[]>(kMaxOps);
    std::mutex ids_mu;
    std::vector<uint64_t> recent_ids;
    int next = 0;
    const int batches = 10 + static_cast<int>(rng() % 40);
    for (int b = 0; b < batches && std::chrono::steady_clock::now() < until; ++b) {
      const int n = 1 + static_cast<int>(rng() % 32);
      if (next + n > kMaxOps) break;
      std::vector<v1::Operation> ops;
      for (int i = 0; i < n; ++i) {
        ops.push_back(RandomOp(rng, file, fifo));
        ops.back().set_tag(next + i);
      }
      absl::Status s = (*stream)->Submit(
          std::move(ops),
          [&, base = slots.get()](const v1::Completion& c) {
            Slot& slot = base[c.tag()];
            if (slot.completions.fetch_add(1) != 0) ++t_.duplicates;
            slot.outcome = static_cast<uint8_t>(c.outcome());
          },
          [&, base = slots.get()](const StreamClient::AcceptedOp& a) {
            if (a.op_id == 0) return;
            base[a.tag].accepted = true;
            std::lock_guard lock(ids_mu);
            if (recent_ids.size() > 64) recent_ids.erase(recent_ids.begin());
            recent_ids.push_back(a.op_id);
          });
      if (!s.ok()) {
        t_.Error("Submit: " + s.ToString());
        break;
      }
      t_.submitted += n;
      next += n;
      // Random cancels: over the stream, or from a unary call on the side.
      if (rng() % 3 == 0) {
        uint64_t victim = 0;
        {
          std::lock_guard lock(ids_mu);
          if (!recent_ids.empty()) victim = recent_ids[rng() % recent_ids.size()];
        }
        if (victim != 0) {
          ++t_.cancel_requests;
          if (rng() % 2) {
            v1::CancelRequest req;
            req.set_op_id(victim);
            auto f = (*stream)->Cancel(req);
            if (f.wait_for(seconds(30)) == std::future_status::ready) {
              auto r = f.get();
              if (r.ok() && r->outcomes_size() == 1 &&
                  r->outcomes(0).result() == v1::CANCEL_RESULT_CANCELLED) {
                ++t_.cancels_effective;
              }
            }
          } else {
            auto r = canceller.Cancel(victim);
            if (r.ok() && r->outcomes_size() == 1 &&
                r->outcomes(0).result() == v1::CANCEL_RESULT_CANCELLED) {
              ++t_.cancels_effective;
            }
          }
        }
      }
    }
    const bool abandon = rng() % 8 == 0;
    if (abandon) {
      // Destroyed without Finish: the RPC is cancelled, the daemon ends the
      // ops (RPC_CANCELLED); the library synthesizes what it cannot know.
      ++t_.streams_abandoned;
      stream->reset();
    } else {
      absl::Status fin = (*stream)->Finish();
      if (!fin.ok()) t_.Error("Finish: " + fin.ToString());
      stream->reset();
    }
    for (int i = 0; i < next; ++i) {
      const Slot& slot = slots[i];
      const int n = slot.completions.load();
      if (n == 0) ++t_.missing;
      if (slot.accepted) ++t_.accepted;
      switch (static_cast<v1::Outcome>(slot.outcome.load())) {
        case v1::OUTCOME_COMPLETED: ++t_.completed; break;
        case v1::OUTCOME_CANCELLED: ++t_.cancelled; break;
        case v1::OUTCOME_TIMED_OUT: ++t_.timed_out; break;
        case v1::OUTCOME_FAILED: ++t_.failed; break;
        case v1::OUTCOME_REJECTED: ++t_.rejected; break;
        default:
          ++t_.unknown;
          if (!abandon && slot.accepted) ++t_.bad_terminal;
          break;
      }
    }
  }
}

void SoakTest::UnaryWorker(int id, std::chrono::steady_clock::time_point until) {
  std::mt19937_64 rng(id * 104729 + 3);
  Client c(daemon_.NewChannel());
  while (std::chrono::steady_clock::now() < until) {
    auto s = c.OpenSession("soak-unary-" + std::to_string(id));
    if (!s.ok()) {
      t_.Error("OpenSession: " + s.status().ToString());
      std::this_thread::sleep_for(milliseconds(50));
      continue;
    }
    auto file = c.Open(*s, "ufile" + std::to_string(id), v1::OPEN_MODE_READ_WRITE,
                       {.create = true});
    auto fifo = c.Open(*s, "ufifo" + std::to_string(id), v1::OPEN_MODE_READ_WRITE);
    if (!file.ok() || !fifo.ok()) {
      t_.Error("unary open: " + (file.ok() ? fifo.status() : file.status()).ToString());
      (void)c.CloseSession(*s);
      continue;
    }
    const int calls = 20 + static_cast<int>(rng() % 200);
    for (int i = 0; i < calls && std::chrono::steady_clock::now() < until; ++i) {
      v1::Operation op = RandomOp(rng, *file, *fifo);
      op.clear_deadline_ms();
      // A random gRPC deadline: it becomes the op's deadline.
      const auto deadline = std::chrono::system_clock::now() + milliseconds(5 + rng() % 200);
      ++t_.unary_calls;
      auto r = c.Submit(*s, op, deadline);
      if (r.ok()) {
        ++t_.unary_ok;
      } else if (r.status().code() == absl::StatusCode::kDeadlineExceeded) {
        ++t_.unary_deadline;
      } else {
        ++t_.unary_other;
        t_.Error("unary Submit: " + r.status().ToString());
      }
    }
    // Half the time leave ops to the session's end, with a timeout in flight.
    if (rng() % 2) {
      v1::Operation op = TimeoutOp(seconds(600));
      (void)c.Submit(*s, op, std::chrono::system_clock::now() + milliseconds(1));
    }
    auto closed = c.CloseSession(*s);
    if (!closed.ok()) t_.Error("CloseSession: " + closed.status().ToString());
  }
}

void SoakTest::Killer(std::chrono::steady_clock::time_point until) {
  int n = 0;
  while (std::chrono::steady_clock::now() + seconds(3) < until) {
    auto v = SpawnVictim(daemon_.socket(), "vfifo", 8, 8);
    if (v) {
      ++t_.victims;
      t_.victim_ops += v->blocked_ops;
      std::this_thread::sleep_for(milliseconds(50 + (n * 37) % 200));
      v->Kill();
    } else {
      t_.Error("victim did not start");
    }
    ++n;
    std::this_thread::sleep_for(milliseconds(1500));
  }
}

TEST_F(SoakTest, ManyClientsMixedLoadKillsAndCancels) {
  const int duration_s = EnvInt("ASYNCD_SOAK_SECONDS", 90);
  const int threads = EnvInt("ASYNCD_SOAK_THREADS", 16);
  const pid_t pid = daemon_.pid();
  ASSERT_GT(pid, 0);
  for (int i = 0; i < threads; ++i) {
    ASSERT_EQ(mkfifo((daemon_.root() + "/fifo" + std::to_string(i)).c_str(), 0600), 0);
    ASSERT_EQ(mkfifo((daemon_.root() + "/ufifo" + std::to_string(i)).c_str(), 0600), 0);
  }
  ASSERT_EQ(mkfifo((daemon_.root() + "/vfifo").c_str(), 0600), 0);

  // Warm-up, so that the baseline includes what the daemon creates lazily
  // (gRPC's pollers and threads, the first session's slab, history rings).
  {
    Client warm(daemon_.NewChannel());
    auto s = warm.OpenSession("warm-up");
    ASSERT_TRUE(s.ok()) << s.status();
    for (int i = 0; i < 200; ++i) ASSERT_TRUE(warm.Submit(*s, NopOp()).ok());
    ASSERT_TRUE(warm.CloseSession(*s).ok());
  }
  auto stats0 = client_.GetStats();
  ASSERT_TRUE(stats0.ok()) << stats0.status();
  std::this_thread::sleep_for(milliseconds(500));
  const int fd_before = CountFds(pid);
  const std::string fds_before = ListFds(pid);
  const int64_t rss_before = RssBytes(pid);

  const auto start = std::chrono::steady_clock::now();
  const auto until = start + seconds(duration_s);
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    if (i % 4 == 3) {
      workers.emplace_back([this, i, until] { UnaryWorker(i, until); });
    } else {
      workers.emplace_back([this, i, until] { StreamWorker(i, until); });
    }
  }
  std::thread killer([this, until] { Killer(until); });
  // Listing never stops submission: an operator lists while the load runs.
  int64_t rss_peak = rss_before;
  uint64_t listed = 0;
  while (std::chrono::steady_clock::now() < until) {
    auto ops = client_.ListOperations(v1::OpSelector(), 200);
    if (ops.ok()) listed += ops->ops_size();
    rss_peak = std::max(rss_peak, RssBytes(pid));
    std::this_thread::sleep_for(milliseconds(250));
  }
  for (auto& w : workers) w.join();
  killer.join();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Killed clients' sessions end when the daemon sees their connections go.
  v1::Stats after;
  const bool quiet = WaitFor(
      [&] {
        auto st = client_.GetStats();
        if (!st.ok()) return false;
        after = *st;
        return st->inflight() == 0 && st->sessions() == 0;
      },
      seconds(30));
  int fd_after = CountFds(pid);
  WaitFor([&] { return (fd_after = CountFds(pid)) <= fd_before; }, seconds(10));
  const int64_t rss_after = RssBytes(pid);
  uint64_t daemon_done = 0;
  for (const auto& k : after.kinds()) {
    daemon_done += k.completed() + k.cancelled() + k.timed_out() + k.failed();
  }

  const uint64_t outcomes = t_.completed + t_.cancelled + t_.timed_out + t_.failed;
  std::printf(
      "soak: %.1f s, %d client threads (%d stream, %d unary), %" PRIu64 " streams (%" PRIu64
      " abandoned), %" PRIu64 " killed client processes with %" PRIu64 " blocked ops\n"
      "soak: stream ops submitted %" PRIu64 ", accepted %" PRIu64 ", rejected %" PRIu64
      "; outcomes: completed %" PRIu64 ", cancelled %" PRIu64 ", timed out %" PRIu64
      ", failed %" PRIu64 ", unknown (abandoned) %" PRIu64 "\n"
      "soak: unary calls %" PRIu64 " (ok %" PRIu64 ", deadline exceeded %" PRIu64
      ", other %" PRIu64 "); cancel requests %" PRIu64 " (%" PRIu64 " took effect)\n"
      "soak: daemon terminal outcomes %" PRIu64 " (%.0f ops/s), cancels answered CANCELLED %"
      PRIu64 ", listed %" PRIu64 " op rows while running\n"
      "soak: RSS before %.1f MiB, peak %.1f MiB, after %.1f MiB (bound: before + %lld MiB); "
      "fds before %d, after %d\n",
      elapsed, threads, threads - threads / 4, threads / 4, t_.streams.load(),
      t_.streams_abandoned.load(), t_.victims.load(), t_.victim_ops.load(), t_.submitted.load(),
      t_.accepted.load(), t_.rejected.load(), t_.completed.load(), t_.cancelled.load(),
      t_.timed_out.load(), t_.failed.load(), t_.unknown.load(), t_.unary_calls.load(),
      t_.unary_ok.load(), t_.unary_deadline.load(), t_.unary_other.load(),
      t_.cancel_requests.load(), t_.cancels_effective.load(), daemon_done, daemon_done / elapsed,
      after.cancels_cancelled(), listed, rss_before / 1048576.0, rss_peak / 1048576.0,
      rss_after / 1048576.0, static_cast<long long>(kRssGrowthBound >> 20), fd_before, fd_after);
  RecordProperty("duration_s", static_cast<int>(elapsed));
  RecordProperty("client_threads", threads);
  RecordProperty("ops_submitted", std::to_string(t_.submitted.load()));
  RecordProperty("ops_accepted", std::to_string(t_.accepted.load()));
  RecordProperty("ops_completed", std::to_string(t_.completed.load()));
  RecordProperty("ops_cancelled", std::to_string(t_.cancelled.load()));
  RecordProperty("ops_timed_out", std::to_string(t_.timed_out.load()));
  RecordProperty("unary_calls", std::to_string(t_.unary_calls.load()));
  RecordProperty("daemon_terminal_outcomes", std::to_string(daemon_done));
  RecordProperty("killed_clients", std::to_string(t_.victims.load()));
  RecordProperty("rss_before_kib", std::to_string(rss_before / 1024));
  RecordProperty("rss_peak_kib", std::to_string(rss_peak / 1024));
  RecordProperty("rss_after_kib", std::to_string(rss_after / 1024));
  RecordProperty("fd_before", fd_before);
  RecordProperty("fd_after", fd_after);

  EXPECT_EQ(t_.errors.load(), 0u) << "first: " << t_.first_error;
  EXPECT_GT(t_.submitted.load(), 0u);
  EXPECT_GT(t_.victims.load(), 0u);
  EXPECT_EQ(t_.duplicates.load(), 0u) << "an op completed more than once";
  EXPECT_EQ(t_.missing.load(), 0u) << "an op submitted got no completion";
  EXPECT_EQ(t_.bad_terminal.load(), 0u)
      << "an accepted op of a cleanly finished stream got no real outcome";
  EXPECT_EQ(outcomes + t_.rejected + t_.unknown, t_.submitted.load());
  EXPECT_GE(daemon_done, outcomes);
  EXPECT_TRUE(quiet) << "registry not empty: inflight " << after.inflight() << ", sessions "
                     << after.sessions();
  EXPECT_LE(fd_after, fd_before) << "before:\n" << fds_before << "after:\n" << ListFds(pid);
  EXPECT_LE(rss_after - rss_before, kRssGrowthBound);
  EXPECT_TRUE(daemon_.Alive()) << daemon_.Log();
}

}  // namespace
}  // namespace asyncd::testing
