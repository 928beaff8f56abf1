#pragma once

// Starts the real asyncd binary on a temporary socket and root, and talks
// gRPC to it through the client library.
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
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

/// A system call a seccomp filter answers with an errno instead of running
/// it, as systemd's SystemCallFilter= and container runtimes' profiles do.
struct SyscallRefusal {
  long nr;
  int error;
};

/// A seccomp program that refuses `refusals` and allows everything else.
inline std::vector<sock_filter> RefusalFilter(const std::vector<SyscallRefusal>& refusals) {
#if defined(__x86_64__)
  constexpr uint32_t kArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
  constexpr uint32_t kArch = AUDIT_ARCH_AARCH64;
#else
#error "add this architecture's AUDIT_ARCH_*"
#endif
  std::vector<sock_filter> prog = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr))};
  for (const SyscallRefusal& r : refusals) {
    prog.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(r.nr), 0, 1));
    prog.push_back(BPF_STMT(BPF_RET | BPF_K,
                            SECCOMP_RET_ERRNO | (static_cast<uint32_t>(r.error) & SECCOMP_RET_DATA)));
  }
  prog.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  return prog;
}

/// Installs `prog` on the calling thread (in a child before exec: it is
/// inherited). Allocates nothing. False if the kernel refused it.
inline bool InstallFilter(std::vector<sock_filter>& prog) {
  sock_fprog fprog{static_cast<unsigned short>(prog.size()), prog.data()};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog) == 0;
}

/// How to start a Daemon beyond the backend mode (all optional).
struct DaemonOptions {
  std::vector<std::string> extra_args;
  /// RLIMIT_NOFILE (soft and hard) set in the child before exec.
  std::optional<rlim_t> nofile_limit;
  /// Environment variables set in the child before exec.
  std::vector<std::pair<std::string, std::string>> env;
  /// Reuse this directory (socket, root, state) instead of a fresh temporary
  /// one, e.g. to restart on the same socket path; it is then not removed.
  std::string dir;
  /// Hand this descriptor to the daemon as a socket-activated one (fd 3,
  /// LISTEN_FDS=1, LISTEN_PID), as systemd does for a .socket unit.
  int listen_fd = -1;
  /// Descriptors passed as systemd passes a socket unit's next to its
  /// descriptor store's: after listen_fd (named asyncd.socket), or from fd
  /// 3 without it, in this order, each with its LISTEN_FDNAMES name. The
  /// test keeps its own copies.
  std::vector<std::pair<int, std::string>> passed_fds;
  /// With listen_fd: the --socket the daemon is given, when it should differ
  /// from the activated socket's path (dir/asyncd.sock, which the test binds).
  std::string configured_socket;
  /// Run the daemon as this uid and gid (no supplementary groups); the
  /// directory is given to them. Needs root.
  std::optional<std::pair<uid_t, gid_t>> run_as;
  /// System calls a seccomp filter refuses the daemon, from its first
  /// instruction (no_new_privs is set, as under systemd's filters).
  std::vector<SyscallRefusal> refuse;
};

/// A daemon process of our own, killed at the end of the test.
class Daemon {
 public:
  explicit Daemon(BackendMode mode, std::vector<std::string> extra_args = {})
      : Daemon(mode, DaemonOptions{.extra_args = std::move(extra_args)}) {}

  Daemon(BackendMode mode, DaemonOptions options) {
    if (options.dir.empty()) {
      char tmpl[] = "/tmp/asyncd-it.XXXXXX";
      dir_ = mkdtemp(tmpl);
      owns_dir_ = true;
    } else {
      dir_ = options.dir;
    }
    socket_ = dir_ + "/asyncd.sock";
    root_ = dir_ + "/root";
    std::filesystem::create_directories(root_);
    if (options.run_as) {
      const auto [uid, gid] = *options.run_as;
      if (chown(dir_.c_str(), uid, gid) != 0 || chown(root_.c_str(), uid, gid) != 0) {
        ADD_FAILURE() << "cannot give " << dir_ << " to uid " << uid;
      }
    }
    const std::string socket_arg =
        options.configured_socket.empty() ? socket_ : options.configured_socket;
    std::vector<std::string> args = {ASYNCD_BINARY, "--socket", socket_arg, "--root", root_};
    if (std::find(options.extra_args.begin(), options.extra_args.end(), "--log-level") ==
        options.extra_args.end()) {
      args.insert(args.end(), {"--log-level", "warn"});
    }
    if (mode == BackendMode::kThreadPoolOnly) args.push_back("--no-io-uring");
    args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
    log_ = dir_ + "/daemon.log";
    std::vector<sock_filter> filter;  // built before fork: the child must not allocate
    if (!options.refuse.empty()) filter = RefusalFilter(options.refuse);
    // Another user may not reach the binary by its path (a clone under
    // /root is 0700): it runs from a descriptor opened now.
    const int exe = options.run_as ? open(ASYNCD_BINARY, O_PATH | O_CLOEXEC) : -1;
    // Built before fork: the child must not allocate.
    std::vector<std::pair<int, std::string>> passed;
    if (options.listen_fd >= 0) passed.emplace_back(options.listen_fd, "asyncd.socket");
    passed.insert(passed.end(), options.passed_fds.begin(), options.passed_fds.end());
    std::string passed_names;
    for (const auto& [fd, name] : passed) passed_names += (passed_names.empty() ? "" : ":") + name;
    const std::string passed_count = std::to_string(passed.size());
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      setenv("STATE_DIRECTORY", (dir_ + "/state").c_str(), 1);
      for (const auto& [name, value] : options.env) setenv(name.c_str(), value.c_str(), 1);
      if (!passed.empty()) {
        // Out of the way of 3.. first: a source may sit where another one goes.
        const int n = static_cast<int>(passed.size());
        for (auto& [fd, name] : passed) {
          fd = fcntl(fd, F_DUPFD_CLOEXEC, 3 + n);
          if (fd < 0) _exit(125);
        }
        for (int i = 0; i < n; ++i) {
          if (dup2(passed[i].first, 3 + i) != 3 + i) _exit(125);
        }
        setenv("LISTEN_FDS", passed_count.c_str(), 1);
        setenv("LISTEN_FDNAMES", passed_names.c_str(), 1);
        setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
      }
      if (options.nofile_limit) {
        const struct rlimit lim = {*options.nofile_limit, *options.nofile_limit};
        if (setrlimit(RLIMIT_NOFILE, &lim) != 0) _exit(126);
      }
      if (options.run_as) {
        const auto [uid, gid] = *options.run_as;
        if (setgroups(0, nullptr) != 0 || setresgid(gid, gid, gid) != 0 ||
            setresuid(uid, uid, uid) != 0) {
          _exit(124);
        }
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      if (!filter.empty() && !InstallFilter(filter)) _exit(123);
      if (exe >= 0) syscall(SYS_execveat, exe, "", argv.data(), environ, AT_EMPTY_PATH);
      execv(argv[0], argv.data());
      _exit(127);
    }
    if (exe >= 0) close(exe);
    // Wait for the socket to accept before creating the channel: a channel
    // that fails its first connect backs off for seconds.
    for (int i = 0; i < 2000 && !Accepting(); ++i) {
      if (!Alive()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
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
    if (!owns_dir_) return;
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  /// SIGKILL, and reaps it: no drain, no cleanup (its socket file stays).
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  pid_t pid() const { return pid_; }

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

  /// Waits up to `timeout` for the daemon to exit on its own (no signal);
  /// returns its exit status, or -1 if it is still running or was killed by
  /// a signal.
  int WaitExit(std::chrono::milliseconds timeout) {
    if (pid_ <= 0) return exit_status_;
    const auto until = std::chrono::steady_clock::now() + timeout;
    do {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    } while (std::chrono::steady_clock::now() < until);
    return -1;
  }

  bool Accepting() const {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", socket_.c_str());
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    close(fd);
    return ok;
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
  bool owns_dir_ = false;
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

/// Runs every op kind once through unary Submit in `session`, in a directory
/// `dir` beneath the root (on disk at `root`/`dir`), and checks each result
/// and its effect on disk. Returns the backend each kind ran on.
inline std::map<v1::OpKind, v1::Backend> ExpectEveryOpKindWorks(client::Client& client,
                                                                uint64_t session,
                                                                const std::string& root,
                                                                const std::string& dir = "every") {
  std::map<v1::OpKind, v1::Backend> ran_on;
  auto run = [&](v1::OpKind kind, v1::Operation op) {
    auto c = client.Submit(session, op);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return v1::Completion();
    EXPECT_EQ(c->outcome(), v1::OUTCOME_COMPLETED) << v1::OpKind_Name(kind);
    EXPECT_EQ(c->error_number(), 0) << v1::OpKind_Name(kind) << ": " << c->error_name();
    ran_on[kind] = c->backend();
    return *c;
  };
  const std::string file = dir + "/f.txt";
  v1::Operation op;
  run(v1::OP_KIND_NOP, NopOp());
  op.mutable_mkdir()->set_path(dir);
  run(v1::OP_KIND_MKDIR, op);
  EXPECT_TRUE(std::filesystem::is_directory(root + "/" + dir));
  op.Clear();
  op.mutable_open()->set_path(file);
  op.mutable_open()->set_access(v1::OPEN_MODE_READ_WRITE);
  op.mutable_open()->set_create(true);
  op.mutable_open()->set_mode(0640);
  const uint32_t h = run(v1::OP_KIND_OPEN, op).handle();
  EXPECT_NE(h, 0u);
  op.Clear();
  op.mutable_write()->set_handle(h);
  op.mutable_write()->set_offset(0);
  op.mutable_write()->set_data("hello, asyncd");
  EXPECT_EQ(run(v1::OP_KIND_WRITE, op).result(), 13);
  op.Clear();
  op.mutable_read()->set_handle(h);
  op.mutable_read()->set_offset(7);
  op.mutable_read()->set_length(100);
  EXPECT_EQ(run(v1::OP_KIND_READ, op).data(), "asyncd");  // short at the end of the file
  op.Clear();
  op.mutable_fsync()->set_handle(h);
  op.mutable_fsync()->set_datasync(true);
  run(v1::OP_KIND_FSYNC, op);
  op.Clear();
  op.mutable_fallocate()->set_handle(h);
  op.mutable_fallocate()->set_length(8192);
  run(v1::OP_KIND_FALLOCATE, op);
  EXPECT_EQ(std::filesystem::file_size(root + "/" + file), 8192u);
  op.Clear();
  op.mutable_statx()->set_handle(h);
  EXPECT_EQ(run(v1::OP_KIND_STATX, op).stat().size_bytes(), 8192u);
  op.Clear();
  op.mutable_ftruncate()->set_handle(h);
  op.mutable_ftruncate()->set_length(5);
  run(v1::OP_KIND_FTRUNCATE, op);
  EXPECT_EQ(std::filesystem::file_size(root + "/" + file), 5u);
  op.Clear();
  op.mutable_statx()->set_path(file);
  const v1::Stat st = run(v1::OP_KIND_STATX, op).stat();
  EXPECT_EQ(st.size_bytes(), 5u);
  EXPECT_EQ(st.file_type(), v1::FILE_TYPE_REGULAR);
  EXPECT_EQ(st.mode() & 0700, 0600u);  // 0640 less the daemon's umask, at most
  op.Clear();
  op.mutable_poll()->set_handle(h);
  op.mutable_poll()->set_events(v1::POLL_EVENTS_READABLE);
  EXPECT_EQ(run(v1::OP_KIND_POLL, op).revents() & v1::POLL_EVENTS_READABLE,
            uint32_t{v1::POLL_EVENTS_READABLE});
  op.Clear();
  op.mutable_close()->set_handle(h);
  run(v1::OP_KIND_CLOSE, op);
  op.Clear();
  op.mutable_rename()->set_old_path(file);
  op.mutable_rename()->set_new_path(dir + "/g.txt");
  run(v1::OP_KIND_RENAME, op);
  EXPECT_FALSE(std::filesystem::exists(root + "/" + file));
  std::ifstream renamed(root + "/" + dir + "/g.txt");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(renamed), {}), "hello");
  op.Clear();
  op.mutable_unlink()->set_path(dir + "/g.txt");
  run(v1::OP_KIND_UNLINK, op);
  op.mutable_unlink()->set_path(dir);
  op.mutable_unlink()->set_directory(true);
  run(v1::OP_KIND_UNLINK, op);
  EXPECT_FALSE(std::filesystem::exists(root + "/" + dir));
  EXPECT_EQ(run(v1::OP_KIND_TIMEOUT, TimeoutOp(std::chrono::milliseconds(5))).result(), 0);
  return ran_on;
}

/// Collects stream completions by tag.
class Completions {
 public:
  client::StreamClient::CompletionCallback Callback() {
    return [this](const v1::Completion& c) {
      std::lock_guard lock(mu_);
      by_tag_[c.tag()] = c;
      cv_.notify_all();
    };
  }
  std::optional<v1::Completion> Wait(uint64_t tag,
                                      std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return by_tag_.count(tag) > 0; })) return std::nullopt;
    return by_tag_[tag];
  }
  size_t size() {
    std::lock_guard lock(mu_);
    return by_tag_.size();
  }
  bool Has(uint64_t tag) {
    std::lock_guard lock(mu_);
    return by_tag_.count(tag) > 0;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, v1::Completion> by_tag_;
};

/// Resident memory of a process, in bytes (-1 if unknown).
inline int64_t RssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
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

// A restart's or takeover's successor: KeepAlive on a channel that may
// first meet the connection the old daemon closed (UNAVAILABLE, retried as
// the proto asks).
inline absl::StatusOr<uint32_t> KeepAliveRetried(client::Client& c, uint64_t session) {
  absl::StatusOr<uint32_t> kept;
  WaitFor([&] {
    kept = c.KeepAlive(session);
    return kept.status().code() != absl::StatusCode::kUnavailable;
  });
  return kept;
}

// The handles a predecessor held work on in its successor: `data` (its
// file holds "hello " at offset 6) writes on at its offset, and `fifo`
// carries what is written to it.
inline void ExpectHandlesCarryOn(client::Client& d, uint64_t data_session, uint32_t data,
                                 uint64_t fifo_session, uint32_t fifo) {
  ASSERT_TRUE(d.Write(data_session, data, -1, "world").ok());
  auto read = d.Read(data_session, data, 0, 64);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "hello world");
  ASSERT_TRUE(d.Write(fifo_session, fifo, -1, "ping").ok());
  auto piped = d.Read(fifo_session, fifo, -1, 4);
  ASSERT_TRUE(piped.ok()) << piped.status();
  EXPECT_EQ(*piped, "ping");
}

}  // namespace asyncd::testing
