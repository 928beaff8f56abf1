// The figures of a restart that hands over (deploy/README.md, "Restart and
// upgrade"): the service gap a client sees, the checkpoint's size, and the
// latency of a client that keeps calling through the restart. It drives the
// real daemon binary as systemd would: a socket-activated listener kept
// across the restart, the notify socket and its descriptor store (the
// bench plays the service manager), SIGUSR2 as asyncd-stop sends it.
//
//   restart_bench [SESSIONS [HANDLES [BLOCKED]]]   (default 10000 10000 1000)
//
// HANDLES descriptors live in the daemon and, during the handover, in
// flight: keep HANDLES + 1000 under RLIMIT_NOFILE. BLOCKED FIFO reads wait
// when the restart comes (its drain ends them). Prints one line per figure.
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>

#include "asyncd/stream_client.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/integration/service_manager.h"

namespace asyncd::testing {
namespace {

using Clock = std::chrono::steady_clock;

int Run(int sessions, int handles, int blocked) {
  char tmpl[] = "/tmp/asyncd-restart-bench-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  NotifySocket notify(dir + "/notify.sock");
  const int listener = ListenSocket(dir + "/asyncd.sock");
  {
    FILE* f = std::fopen((dir + "/asyncd.toml").c_str(), "w");
    std::fprintf(f, "[limits]\nmax_sessions = %d\nmax_handles_per_session = 65535\n",
                 sessions + 16);
    std::fclose(f);
  }
  const DaemonOptions options{.extra_args = {"--config", dir + "/asyncd.toml"},
                              .env = {{"NOTIFY_SOCKET", notify.path()},
                                      {"INVOCATION_ID", "0123456789abcdef"}},
                              .dir = dir,
                              .listen_fd = listener};
  auto first = std::make_unique<Daemon>(BackendMode::kIoUring, options);
  client::Client setup(first->NewChannel(), {.default_timeout = std::chrono::seconds(30)});

  const auto t0 = Clock::now();
  std::vector<uint64_t> ids;
  for (int i = 0; i < sessions; ++i) ids.push_back(*setup.OpenSession("s" + std::to_string(i)));
  const int file = open((first->root() + "/f").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  close(file);
  for (int i = 0; i < handles; ++i) {
    if (!setup.Open(ids[i % ids.size()], "f", v1::OPEN_MODE_READ_ONLY).ok()) {
      std::fprintf(stderr, "open %d failed\n", i);
      return 1;
    }
  }
  // The blocked reads: a thousand per session (under its in-flight limit),
  // each session's on its own resumable stream and FIFO handle: the restart
  // carries them over.
  mkfifo((first->root() + "/fifo").c_str(), 0600);
  std::atomic<int> ended{0};
  std::vector<std::unique_ptr<client::StreamClient>> streams;
  for (int done = 0, g = 0; done < blocked; ++g) {
    const int n = std::min(1000, blocked - done);
    const uint64_t reader = ids[static_cast<size_t>(g) % ids.size()];
    const uint32_t fifo = *setup.Open(reader, "fifo", v1::OPEN_MODE_READ_WRITE);
    auto stream = client::StreamClient::Create(first->NewChannel(), "blocked", reader,
                                               {.resume = client::RetryPolicy{}});
    std::vector<v1::Operation> reads;
    for (int i = 0; i < n; ++i) reads.push_back(ReadOp(fifo, -1, 8));
    if (!stream.ok() ||
        !(*stream)->Submit(std::move(reads), [&](const v1::Completion&) { ended.fetch_add(1); })
             .ok()) {
      std::fprintf(stderr, "cannot block the reads\n");
      return 1;
    }
    streams.push_back(*std::move(stream));
    done += n;
  }
  WaitFor([&] {
    auto st = setup.GetStats();
    return st.ok() && st->inflight() >= static_cast<uint64_t>(blocked);
  }, std::chrono::seconds(60));
  std::printf("populated: %d sessions, %d handles, %d blocked reads in %.1f s\n", sessions,
              handles + static_cast<int>(streams.size()), blocked,
              std::chrono::duration<double>(Clock::now() - t0).count());

  // One client calls through the restart: each call's latency counts its
  // retries, as an application retrying UNAVAILABLE sees it.
  const uint64_t caller = *setup.OpenSession("caller");
  std::atomic<bool> stop{false};
  std::vector<double> latencies_us;
  Clock::duration gap{};  // the longest time between two calls served
  int retries = 0;
  std::thread load([&] {
    client::Client c(client::Connect(first->socket()), {.default_timeout = std::chrono::seconds(10)});
    Clock::time_point last_served = Clock::now();
    while (!stop.load()) {
      const auto start = Clock::now();
      while (!c.Submit(caller, NopOp()).ok() && !stop.load()) {
        ++retries;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      const auto end = Clock::now();
      latencies_us.push_back(std::chrono::duration<double, std::micro>(end - start).count());
      gap = std::max(gap, end - last_served);
      last_served = end;
    }
  });
  std::this_thread::sleep_for(std::chrono::seconds(1));

  const auto signalled = Clock::now();
  kill(first->pid(), SIGUSR2);
  std::optional<NotifySocket::Message> stored = notify.WaitFor("FDSTORE=1", std::chrono::seconds(60));
  const int exit_status = first->WaitExit(std::chrono::seconds(60));
  if (!stored || stored->fds.size() != 1 || exit_status != 0) {
    std::fprintf(stderr, "no handover (exit %d):\n%s\n", exit_status, first->Log().c_str());
    return 1;
  }
  const auto handed = Clock::now();
  DaemonOptions next_options = options;
  next_options.passed_fds = {{stored->fds[0], "asyncd-handover"}};
  auto next = std::make_unique<Daemon>(BackendMode::kIoUring, next_options);
  close(stored->fds[0]);
  const auto serving = Clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  stop.store(true);
  load.join();

  client::Client check(next->NewChannel(), {.default_timeout = std::chrono::seconds(30)});
  auto stats = check.GetStats();
  int alive = 0;
  for (uint64_t id : ids) alive += check.KeepAlive(id).ok();
  std::sort(latencies_us.begin(), latencies_us.end());
  auto at = [&](double q) { return latencies_us[static_cast<size_t>(q * (latencies_us.size() - 1))]; };
  auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  std::printf("old daemon: SIGUSR2 to exit 0 (drain, checkpoint, pack, push): %.1f ms\n",
              ms(handed - signalled));
  std::printf("new daemon: start to serving (unpack, load, restore): %.1f ms\n", ms(serving - handed));
  std::printf("service gap (longest time between two calls served, a call every ~100 us): %.1f ms\n",
              ms(gap));
  if (stats.ok()) {
    const v1::Restart& r = stats->last_restart();
    std::printf("checkpoint: %llu bytes; restored %u sessions, %u handles; error: %s\n",
                static_cast<unsigned long long>(r.checkpoint_bytes()), r.sessions(), r.handles(),
                r.error().empty() ? "none" : r.error().c_str());
  }
  std::printf("sessions alive after the restart: %d of %d\n", alive, sessions);
  size_t resumed = 0;
  for (const auto& s : streams) resumed += s->resumes();
  std::printf(
      "blocked reads run again by the new daemon: %llu of %d (%d ended by the restart); %zu of "
      "%zu streams resumed\n",
      stats.ok() ? static_cast<unsigned long long>(stats->inflight()) : 0ULL, blocked, ended.load(),
      resumed, streams.size());
  streams.clear();
  std::printf(
      "client calls through the restart: %zu (%d retried attempts); latency with retries: p50 "
      "%.0f us, p99 %.0f us, max %.0f us\n",
      latencies_us.size(), retries, at(0.5), at(0.99), latencies_us.back());
  next->Stop();
  close(listener);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return alive == sessions ? 0 : 1;
}

}  // namespace
}  // namespace asyncd::testing

int main(int argc, char** argv) {
  const int sessions = argc > 1 ? std::atoi(argv[1]) : 10000;
  const int handles = argc > 2 ? std::atoi(argv[2]) : 10000;
  const int blocked = argc > 3 ? std::atoi(argv[3]) : 1000;
  return asyncd::testing::Run(sessions, handles, blocked);
}
