#pragma once

// Starts the real asyncd binary on a temporary socket and root, and talks
// gRPC to it through the client library.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "asyncd/client.h"

namespace asyncd::testing {

namespace v1 = ::asyncd::v1;

enum class BackendMode { kIoUring, kThreadPoolOnly };

inline std::string Name(BackendMode m) {
  return m == BackendMode::kIoUring ? "IoUring" : "ThreadPoolOnly";
}

/// A daemon process of our own, killed at the end of the test.
class Daemon {
 public:
  explicit Daemon(BackendMode mode, std::vector<std::string> extra_args = {}) {
    char tmpl[] = "/tmp/asyncd-it.XXXXXX";
    dir_ = mkdtemp(tmpl);
    socket_ = dir_ + "/asyncd.sock";
    root_ = dir_ + "/root";
    std::filesystem::create_directories(root_);
    std::vector<std::string> args = {ASYNCD_BINARY, "--socket", socket_, "--root", root_,
                                     "--log-level", "warn"};
    if (mode == BackendMode::kThreadPoolOnly) args.push_back("--no-io-uring");
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    log_ = dir_ + "/daemon.log";
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      setenv("STATE_DIRECTORY", (dir_ + "/state").c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    channel_ = client::Connect(socket_);
    const auto until = std::chrono::system_clock::now() + std::chrono::seconds(20);
    while (!channel_->WaitForConnected(std::chrono::system_clock::now() +
                                       std::chrono::milliseconds(100))) {
      if (std::chrono::system_clock::now() > until || !Alive()) {
        ADD_FAILURE() << "daemon did not come up; log:\n" << Log();
        return;
      }
    }
  }

  ~Daemon() {
    if (pid_ > 0) Stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  /// SIGTERM, then waits; returns the exit status (or -1 if it had to be killed).
  int Stop() {
    if (pid_ <= 0) return exit_status_;
    kill(pid_, SIGTERM);
    for (int i = 0; i < 600; ++i) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        return exit_status_;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
    return exit_status_ = -1;
  }

  bool Alive() const { return pid_ > 0 && waitpid(pid_, nullptr, WNOHANG) == 0; }
  std::string Log() const {
    std::string out;
    if (FILE* f = fopen(log_.c_str(), "r")) {
      char buf[4096];
      size_t n;
      while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
      fclose(f);
    }
    return out;
  }

  const std::string& socket() const { return socket_; }
  const std::string& root() const { return root_; }
  const std::string& dir() const { return dir_; }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  /// A fresh connection (another client process would have its own).
  std::shared_ptr<grpc::Channel> NewChannel() const { return client::Connect(socket_); }

 private:
  std::string dir_, socket_, root_, log_;
  pid_t pid_ = -1;
  int exit_status_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
};

inline v1::Operation NopOp(uint64_t tag = 0) {
  v1::Operation op;
  op.set_tag(tag);
  op.mutable_nop();
  return op;
}

inline v1::Operation ReadOp(uint32_t handle, int64_t offset, uint32_t len, uint64_t tag = 0) {
  v1::Operation op;
  op.set_tag(tag);
  op.mutable_read()->set_handle(handle);
  op.mutable_read()->set_offset(offset);
  op.mutable_read()->set_length(len);
  return op;
}

inline v1::Operation TimeoutOp(std::chrono::microseconds d, uint64_t tag = 0) {
  v1::Operation op;
  op.set_tag(tag);
  op.mutable_timeout()->set_duration_us(d.count());
  return op;
}

/// Waits for `pred` up to `timeout`; a test never waits forever.
template <typename Pred>
bool WaitFor(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace asyncd::testing
