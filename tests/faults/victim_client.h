#pragma once

// A client process that is killed with SIGKILL mid-stream: it opens a stream
// (a session bound to it), submits ops that block (reads on a FIFO, long
// timeouts), reports "ready <session id> <accepted ops>" on stdout and waits
// to die. It is the test binary itself, re-executed (posix_spawn, no fork of a
// process running gRPC threads) with --gtest_filter naming the disabled test
// DISABLED_VictimProcess.Main below, which does nothing unless the
// environment asks for it. Include this header from exactly one file of a
// test binary.
#include <signal.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "tests/integration/daemon_fixture.h"

extern char** environ;

namespace asyncd::testing {

struct Victim {
  pid_t pid = -1;
  uint64_t session_id = 0;
  int blocked_ops = 0;

  /// SIGKILL and reap.
  void Kill() {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }
};

/// Starts a victim on `socket` whose reads block on `fifo` (a path beneath
/// the daemon root; the FIFO must exist). Returns once it reported ready, or
/// nullopt (then it was killed) if it did not within `timeout`.
inline std::optional<Victim> SpawnVictim(const std::string& socket, const std::string& fifo,
                                         int reads, int timeouts,
                                         std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return std::nullopt;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  env_strings.push_back("ASYNCD_VICTIM_SOCKET=" + socket);
  env_strings.push_back("ASYNCD_VICTIM_FIFO=" + fifo);
  env_strings.push_back("ASYNCD_VICTIM_READS=" + std::to_string(reads));
  env_strings.push_back("ASYNCD_VICTIM_TIMEOUTS=" + std::to_string(timeouts));
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe";
  std::string filter = "--gtest_filter=DISABLED_VictimProcess.Main";
  std::string disabled = "--gtest_also_run_disabled_tests";
  char* argv[] = {exe.data(), filter.data(), disabled.data(), nullptr};
  Victim v;
  const int rc = posix_spawn(&v.pid, exe.c_str(), &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  if (rc != 0) {
    close(out[0]);
    return std::nullopt;
  }
  // Read the stdout of gtest and the victim until the "ready" line.
  std::string text;
  const auto until = std::chrono::steady_clock::now() + timeout;
  bool ready = false;
  while (!ready && std::chrono::steady_clock::now() < until) {
    struct pollfd pfd = {out[0], POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    char buf[512];
    const ssize_t n = read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    text.append(buf, n);
    const size_t at = text.find("victim-ready ");
    if (at != std::string::npos && text.find('\n', at) != std::string::npos) {
      unsigned long long session = 0;
      int ops = 0;
      if (sscanf(text.c_str() + at, "victim-ready %llu %d", &session, &ops) == 2) {
        v.session_id = session;
        v.blocked_ops = ops;
        ready = true;
      }
    }
  }
  close(out[0]);
  if (!ready) {
    v.Kill();
    ADD_FAILURE() << "victim did not get ready; its output:\n" << text;
    return std::nullopt;
  }
  return v;
}

// Runs only as a victim (see SpawnVictim); never from CTest.
TEST(DISABLED_VictimProcess, Main) {
  const char* socket = getenv("ASYNCD_VICTIM_SOCKET");
  if (socket == nullptr) GTEST_SKIP() << "only runs as a child of SpawnVictim";
  const std::string fifo = getenv("ASYNCD_VICTIM_FIFO");
  const int reads = atoi(getenv("ASYNCD_VICTIM_READS"));
  const int timeouts = atoi(getenv("ASYNCD_VICTIM_TIMEOUTS"));
  auto stream = client::StreamClient::Create(client::Connect(socket), "victim");
  ASSERT_TRUE(stream.ok()) << stream.status();
  v1::Operation open;
  open.mutable_open()->set_path(fifo);
  open.mutable_open()->set_access(v1::OPEN_MODE_READ_WRITE);  // does not block on a FIFO
  auto opened = (*stream)->SubmitOne(open);
  ASSERT_EQ(opened.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const v1::Completion c = opened.get();
  ASSERT_EQ(c.error_number(), 0) << c.DebugString();
  std::vector<v1::Operation> ops;
  for (int i = 0; i < reads; ++i) ops.push_back(ReadOp(c.handle(), -1, 16, i));
  for (int i = 0; i < timeouts; ++i) ops.push_back(TimeoutOp(std::chrono::seconds(600), 1000 + i));
  std::atomic<int> accepted{0}, answered{0};
  ASSERT_TRUE((*stream)
                  ->Submit(ops, [](const v1::Completion&) {},
                           [&](const client::StreamClient::AcceptedOp& a) {
                             if (a.op_id != 0) ++accepted;
                             ++answered;
                           })
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return answered == static_cast<int>(ops.size()); }));
  std::printf("victim-ready %llu %d\n",
              static_cast<unsigned long long>((*stream)->session_id()), accepted.load());
  std::fflush(stdout);
  for (;;) pause();  // until SIGKILL
}

}  // namespace asyncd::testing
