// restart_probe: a client that rides through live restarts of the daemon,
// for the real-systemd test (tests/systemd/checks.sh). A test tool: built
// by tests/CMakeLists.txt, copied into the container by run.sh, never
// installed by the package.
//
// It holds a leased session with --handles handles (--reads of them on
// FIFOs, the rest on files) plus one file it appends to, one blocked read
// on each FIFO, and a steady stream of NOPs, small appends and a few 20 ms
// waits (--window of them outstanding, at most --rate a second: "the
// pump"), all on one resumable stream (StreamOptions::resume), while the
// test restarts the daemon (systemctl restart, a package upgrade). Once the
// stream has resumed --restarts times it writes one distinct payload into
// each FIFO, stops the pump, and checks what a client is promised across a
// restart:
//   - each read completes COMPLETED with exactly its FIFO's payload, none
//     before the payloads were written;
//   - every accepted op has exactly one completion (none lost, none
//     doubled), no completion comes for an op never accepted, no op is
//     rejected and every op of the pump completes without an errno;
//   - op ids are unique across the restarts, and a fresh one is new;
//   - every handle still works: a statx of each on the stream, and one
//     unary;
//   - the appended file is as long as the completed appends together.
// It prints a summary (ops, resumes, one line per invariant, the largest
// completion latency) and exits 0 only if all hold, 1 if one does not, 2
// if it cannot set up. It never sleeps for a fixed time: it polls, each
// wait with a deadline.
//
//   restart_probe --socket PATH --root DIR --ready FILE [--reads 1000]
//                 [--handles 1000] [--restarts 2] [--window 32] [--rate 5000]
//                 [--timeout 180]
//
// DIR is the directory the session's paths resolve beneath (for root, an
// admin, the daemon's root directory): the probe makes its FIFOs there, in
// a directory of its own that it removes when every check passed. FILE is
// written (atomically) once everything is in flight, "resumes 0", and
// again at each resume, "resumes N".
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asyncd/client.h"

namespace asyncd::testing {
namespace {

namespace v1 = ::asyncd::v1;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr int kExitFailed = 1;
constexpr int kExitSetup = 2;
// A read asks for more than any payload: each returns its payload whole.
constexpr uint32_t kReadLength = 64;
// The pump's waits (Timeout ops), in microseconds.
constexpr uint64_t kTimeoutUs = 20000;
// How many examples of each broken invariant the summary names.
constexpr size_t kExamples = 3;

struct ProbeOptions {
  std::string socket;
  std::string root;
  std::string ready;
  int reads = 1000;
  int handles = 1000;
  int restarts = 2;
  int window = 32;
  int rate = 5000;
  int timeout_s = 180;
};

enum class Kind : uint8_t { kNop, kAppend, kTimeout, kRead, kStat };

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kNop:
      return "nop";
    case Kind::kAppend:
      return "append";
    case Kind::kTimeout:
      return "timeout";
    case Kind::kRead:
      return "read";
    case Kind::kStat:
      return "statx";
  }
  return "?";
}

// Polls `done` every 10 ms until it holds or `timeout` has passed.
bool WaitFor(const std::function<bool()>& done, Clock::duration timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return true;
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One broken invariant's count and its first few examples.
struct Breaches {
  uint64_t count = 0;
  std::vector<std::string> examples;
  void Add(std::string example) {
    ++count;
    if (examples.size() < kExamples) examples.push_back(std::move(example));
  }
  std::string Describe() const {
    std::string out = absl::StrCat(count);
    for (const std::string& e : examples) absl::StrAppend(&out, "; ", e);
    return out;
  }
};

// Every op the probe submitted, by its tag (1, 2, 3...: the tag is its
// index + 1), and what the stream said about it. Thread-safe: the
// submitting threads and the stream's callbacks record here.
class Ledger {
 public:
  struct Op {
    Clock::time_point submitted;
    uint64_t op_id = 0;
    uint32_t accepted = 0;  // on_accepted calls with an op id
    uint32_t rejected = 0;  // on_accepted calls without one
    uint32_t completions = 0;
    Kind kind = Kind::kNop;
    bool sent = false;  // Submit returned OK: its callbacks will come
  };
  struct Latency {
    Clock::duration max{};
    uint64_t tag = 0;
    uint64_t op_id = 0;
    Kind kind = Kind::kNop;
  };

  // A tag for an op about to be submitted.
  uint64_t Add(Kind kind) {
    std::lock_guard lock(mu_);
    ops_.push_back(Op{.submitted = Clock::now(), .kind = kind});
    return ops_.size();
  }
  // Submit said OK (or not: then no callback comes for the op).
  void Sent(uint64_t tag, bool sent) {
    std::lock_guard lock(mu_);
    ops_[tag - 1].sent = sent;
  }

  void Accepted(const client::StreamClient::AcceptedOp& a) {
    std::lock_guard lock(mu_);
    if (a.tag == 0 || a.tag > ops_.size()) {
      unknown_.Add(absl::StrCat("accepted tag ", a.tag));
      return;
    }
    Op& op = ops_[a.tag - 1];
    if (a.op_id == 0) {
      ++op.rejected;
      return;
    }
    if (++op.accepted > 1) {
      accepted_twice_.Add(
          absl::StrCat(KindName(op.kind), " tag ", a.tag, " op ", op.op_id, " then ", a.op_id));
    } else {
      ++accepted_of_[static_cast<size_t>(op.kind)];
    }
    op.op_id = a.op_id;
  }

  // Records a completion (breaches included); false if it is not its op's
  // first: the caller has seen that op end already.
  bool Completed(const v1::Completion& c) {
    const auto now = Clock::now();
    std::lock_guard lock(mu_);
    if (c.tag() == 0 || c.tag() > ops_.size()) {
      unknown_.Add(absl::StrCat("completion tag ", c.tag(), " op ", c.op_id()));
      return false;
    }
    Op& op = ops_[c.tag() - 1];
    if (++op.completions > 1) {
      doubled_.Add(absl::StrCat(KindName(op.kind), " op ", c.op_id(), " (tag ", c.tag(), ") ",
                                op.completions, " completions"));
      return false;
    }
    ++completed_of_[static_cast<size_t>(op.kind)];
    if (c.outcome() == v1::OUTCOME_REJECTED) {
      rejected_.Add(absl::StrCat(KindName(op.kind), " tag ", c.tag(), ": ", c.message()));
      return true;
    }
    if (op.accepted == 0 || c.op_id() != op.op_id) {
      never_accepted_.Add(absl::StrCat(KindName(op.kind), " tag ", c.tag(), " completion op ",
                                       c.op_id(), " accepted op ", op.op_id, " (",
                                       v1::Outcome_Name(c.outcome()), ")"));
      return true;
    }
    // The reads wait for their data by design; every other op's wait is
    // the restart's.
    if (op.kind != Kind::kRead && now - op.submitted > latency_.max) {
      latency_ = {.max = now - op.submitted, .tag = c.tag(), .op_id = c.op_id(), .kind = op.kind};
    }
    return true;
  }

  // How many ops of `kind` have completed (been accepted) so far.
  uint64_t CompletedOf(Kind kind) const {
    std::lock_guard lock(mu_);
    return completed_of_[static_cast<size_t>(kind)];
  }
  uint64_t AcceptedOf(Kind kind) const {
    std::lock_guard lock(mu_);
    return accepted_of_[static_cast<size_t>(kind)];
  }

  // The verdict on what was recorded until now.
  struct Tally {
    uint64_t submitted = 0;  // Submit said OK
    uint64_t accepted = 0;
    uint64_t completed_once = 0;
    Breaches lost;  // accepted, no completion
    Breaches doubled, never_accepted, accepted_twice, rejected, unknown;
    Breaches duplicate_ids;
    std::vector<uint64_t> ids;  // sorted
    Latency latency;
  };
  Tally Count() const {
    std::lock_guard lock(mu_);
    Tally t{.doubled = doubled_,
            .never_accepted = never_accepted_,
            .accepted_twice = accepted_twice_,
            .rejected = rejected_,
            .unknown = unknown_,
            .latency = latency_};
    for (size_t i = 0; i < ops_.size(); ++i) {
      const Op& op = ops_[i];
      if (!op.sent) continue;
      ++t.submitted;
      if (op.accepted > 0) {
        ++t.accepted;
        t.ids.push_back(op.op_id);
        if (op.completions == 0) {
          t.lost.Add(absl::StrCat(KindName(op.kind), " op ", op.op_id, " (tag ", i + 1, ")"));
        }
      } else if (op.rejected == 0) {
        t.lost.Add(absl::StrCat(KindName(op.kind), " tag ", i + 1, " never accepted"));
      }
      t.completed_once += op.completions == 1;
    }
    std::sort(t.ids.begin(), t.ids.end());
    for (size_t i = 1; i < t.ids.size(); ++i) {
      if (t.ids[i] == t.ids[i - 1]) t.duplicate_ids.Add(absl::StrCat("op ", t.ids[i]));
    }
    return t;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Op> ops_;
  Breaches doubled_, never_accepted_, accepted_twice_, rejected_, unknown_;
  Latency latency_;
  uint64_t completed_of_[5] = {};  // by Kind
  uint64_t accepted_of_[5] = {};
};

v1::Operation Tagged(uint64_t tag) {
  v1::Operation op;
  op.set_tag(tag);
  return op;
}

// The payload written into FIFO `i` once the restarts are over.
std::string Payload(int i, int resumes) {
  return absl::StrCat("fifo ", i, " after ", resumes, " restarts");
}

// Writes `text` to `path` atomically (a temporary file renamed over it).
bool WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return false;
  const bool written = std::fputs(text.c_str(), f) >= 0;
  return std::fclose(f) == 0 && written && std::rename(tmp.c_str(), path.c_str()) == 0;
}

class Probe {
 public:
  explicit Probe(ProbeOptions options)
      : options_(std::move(options)),
        dir_name_(absl::StrCat("restart-probe-", getpid())),
        dir_(options_.root + "/" + dir_name_),
        channel_(client::Connect(options_.socket)),
        policy_{.budget = seconds(options_.timeout_s)},
        unary_(channel_, {.default_timeout = seconds(30), .retry = policy_}) {}

  int Run() {
    start_ = Clock::now();
    if (int rc = SetUp(); rc != 0) return rc;
    if (!Block()) return kExitSetup;
    pump_ = std::thread([this] { Pump(); });
    const bool pumping =
        WaitFor([&] { return ledger_.CompletedOf(Kind::kNop) >= 100; }, seconds(30));
    if (!pumping) {
      std::printf("restart_probe: the NOPs do not complete\n");
      StopPump();
      return kExitSetup;
    }
    if (!WriteFileAtomically(options_.ready, "resumes 0\n")) {
      std::printf("restart_probe: cannot write %s: %s\n", options_.ready.c_str(),
                  std::strerror(errno));
      StopPump();
      return kExitSetup;
    }
    std::printf(
        "restart_probe: ready after %.1f s: %d handles, %d reads blocked, up to %d NOPs, "
        "appends and waits outstanding\n",
        SecondsSince(start_), options_.handles + 1, options_.reads, options_.window);
    std::fflush(stdout);
    RideThroughRestarts();
    Feed();
    WaitForReads();
    StopPump();
    StatEveryHandle();
    return Verdict();
  }

 private:
  // The session, its handles and the stream.
  int SetUp() {
    v1::OpenSessionResponse opened;
    absl::StatusOr<uint64_t> session = unary_.OpenSession("restart-probe", 600000, &opened);
    if (!session.ok()) {
      std::printf("restart_probe: OpenSession: %s\n", session.status().ToString().c_str());
      return kExitSetup;
    }
    session_ = *session;
    const v1::Limits& limits = opened.limits();
    if (options_.reads > options_.handles ||
        static_cast<uint32_t>(options_.handles) + 1 > limits.max_handles_per_session() ||
        static_cast<uint32_t>(options_.reads + options_.window) >
            limits.max_inflight_per_session()) {
      std::printf(
          "restart_probe: --reads %d --handles %d --window %d do not fit the daemon's "
          "limits (max_handles_per_session %u, max_inflight_per_session %u)\n",
          options_.reads, options_.handles, options_.window, limits.max_handles_per_session(),
          limits.max_inflight_per_session());
      return kExitSetup;
    }
    // The FIFOs are the daemon's to open: its user owns them, as it owns
    // the rest of its root.
    struct stat root;
    if (stat(options_.root.c_str(), &root) != 0 || mkdir(dir_.c_str(), 0700) != 0 ||
        (geteuid() == 0 && chown(dir_.c_str(), root.st_uid, root.st_gid) != 0)) {
      std::printf("restart_probe: cannot make %s: %s\n", dir_.c_str(), std::strerror(errno));
      return kExitSetup;
    }
    for (int i = 0; i < options_.handles; ++i) {
      const bool fifo = i < options_.reads;
      const std::string name = absl::StrCat(dir_name_, fifo ? "/fifo-" : "/file-", i);
      if (fifo) {
        const std::string path = options_.root + "/" + name;
        if (mkfifo(path.c_str(), 0600) != 0 ||
            (geteuid() == 0 && chown(path.c_str(), root.st_uid, root.st_gid) != 0)) {
          std::printf("restart_probe: mkfifo %s: %s\n", path.c_str(), std::strerror(errno));
          return kExitSetup;
        }
      }
      // A FIFO opened read-write does not wait for a writer, and its reads
      // block until data comes.
      absl::StatusOr<uint32_t> handle =
          unary_.Open(session_, name, v1::OPEN_MODE_READ_WRITE, {.create = !fifo});
      if (!handle.ok()) {
        std::printf("restart_probe: open %s: %s\n", name.c_str(),
                    handle.status().ToString().c_str());
        return kExitSetup;
      }
      (fifo ? fifos_ : files_).push_back(*handle);
    }
    absl::StatusOr<uint32_t> appends =
        unary_.Open(session_, absl::StrCat(dir_name_, "/appends"), v1::OPEN_MODE_WRITE_ONLY,
                    {.create = true, .truncate = true, .append = true});
    if (!appends.ok()) {
      std::printf("restart_probe: open appends: %s\n", appends.status().ToString().c_str());
      return kExitSetup;
    }
    appends_ = *appends;
    client::StreamOptions stream_options;
    stream_options.resume = policy_;
    absl::StatusOr<std::unique_ptr<client::StreamClient>> stream =
        client::StreamClient::Create(channel_, "restart-probe", session_, stream_options);
    if (!stream.ok()) {
      std::printf("restart_probe: Stream: %s\n", stream.status().ToString().c_str());
      return kExitSetup;
    }
    stream_ = *std::move(stream);
    std::printf("restart_probe: session %lu, %zu FIFOs and %zu files open in %.1f s\n",
                static_cast<unsigned long>(session_), fifos_.size(), files_.size() + 1,
                SecondsSince(start_));
    std::fflush(stdout);
    return 0;
  }

  // One read on each FIFO, blocked until Feed.
  bool Block() {
    std::vector<v1::Operation> reads;
    for (size_t i = 0; i < fifos_.size(); ++i) {
      v1::Operation op = Tagged(ledger_.Add(Kind::kRead));
      if (i == 0) first_read_tag_ = op.tag();
      op.mutable_read()->set_handle(fifos_[i]);
      op.mutable_read()->set_offset(-1);
      op.mutable_read()->set_length(kReadLength);
      reads.push_back(std::move(op));
    }
    const absl::Status submitted = stream_->Submit(
        std::move(reads), [this](const v1::Completion& c) { OnRead(c); },
        [this](const client::StreamClient::AcceptedOp& a) { ledger_.Accepted(a); });
    for (size_t i = 0; i < fifos_.size(); ++i) ledger_.Sent(first_read_tag_ + i, submitted.ok());
    if (!submitted.ok()) {
      std::printf("restart_probe: submitting the reads: %s\n", submitted.ToString().c_str());
      return false;
    }
    if (!WaitFor([&] { return ledger_.AcceptedOf(Kind::kRead) == fifos_.size(); }, seconds(30))) {
      std::printf("restart_probe: %lu of %zu reads accepted in 30 s\n",
                  static_cast<unsigned long>(ledger_.AcceptedOf(Kind::kRead)), fifos_.size());
      return false;
    }
    return true;
  }

  void OnRead(const v1::Completion& c) {
    if (!ledger_.Completed(c)) return;
    const uint64_t i = c.tag() - first_read_tag_;
    std::string wrong;
    if (!fed_.load()) {
      wrong = "completed before its data was written";
    } else if (c.outcome() != v1::OUTCOME_COMPLETED || c.error_number() != 0) {
      wrong = absl::StrCat(v1::Outcome_Name(c.outcome()), " ", c.error_name(), " ", c.message());
    } else if (c.data() != Payload(static_cast<int>(i), fed_resumes_)) {
      wrong = absl::StrCat("data \"", c.data(), "\"");
    }
    std::lock_guard lock(mu_);
    if (wrong.empty()) {
      ++reads_right_;
    } else {
      reads_wrong_.Add(absl::StrCat("read of FIFO ", i, " (op ", c.op_id(), "): ", wrong));
    }
    ++reads_done_;
  }

  // Keeps up to options_.window NOPs, appends and waits outstanding, at most
  // options_.rate a second, until StopPump.
  void Pump() {
    const auto begin = Clock::now();
    std::unique_lock lock(mu_);
    for (uint64_t n = 0;; ++n) {
      cv_.wait(lock, [&] { return stop_ || pump_outstanding_ < options_.window; });
      if (options_.rate > 0) {
        const auto due = begin + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(double(n) / options_.rate));
        cv_.wait_until(lock, due, [&] { return stop_; });
      }
      if (stop_) return;
      ++pump_outstanding_;
      lock.unlock();
      // Every 16th a short wait: an op certainly in the daemon when a
      // restart comes, to be run again by the next one.
      const Kind kind = n % 16 == 15 ? Kind::kTimeout : n % 2 == 0 ? Kind::kNop : Kind::kAppend;
      v1::Operation op = Tagged(ledger_.Add(kind));
      const uint64_t tag = op.tag();
      if (kind == Kind::kNop) {
        op.mutable_nop();
      } else if (kind == Kind::kTimeout) {
        op.mutable_timeout()->set_duration_us(kTimeoutUs);
      } else {
        op.mutable_write()->set_handle(appends_);
        op.mutable_write()->set_offset(-1);
        op.mutable_write()->set_data(absl::StrCat("append ", tag, "\n"));
      }
      std::vector<v1::Operation> ops;
      ops.push_back(std::move(op));
      const absl::Status submitted = stream_->Submit(
          std::move(ops), [this, kind](const v1::Completion& c) { OnPumped(kind, c); },
          [this](const client::StreamClient::AcceptedOp& a) { ledger_.Accepted(a); });
      ledger_.Sent(tag, submitted.ok());
      lock.lock();
      if (!submitted.ok()) {
        // The stream has ended: nothing more can be submitted.
        --pump_outstanding_;
        pump_error_ = submitted.ToString();
        return;
      }
    }
  }

  void OnPumped(Kind kind, const v1::Completion& c) {
    if (!ledger_.Completed(c)) return;  // counted once, as the ledger says
    const bool completed = c.outcome() == v1::OUTCOME_COMPLETED && c.error_number() == 0;
    std::lock_guard lock(mu_);
    if (kind == Kind::kAppend && completed &&
        c.result() == static_cast<int32_t>(absl::StrCat("append ", c.tag(), "\n").size())) {
      appended_bytes_ += c.result();
    } else if (!completed || kind == Kind::kAppend) {
      pumped_wrong_.Add(absl::StrCat(KindName(kind), " op ", c.op_id(), ": ",
                                     v1::Outcome_Name(c.outcome()), " result ", c.result(), " ",
                                     c.error_name(), " ", c.message()));
    }
    if (c.outcome() == v1::OUTCOME_UNSPECIFIED) stream_ended_ = true;
    --pump_outstanding_;
    cv_.notify_all();
  }

  void StopPump() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (pump_.joinable()) pump_.join();
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, seconds(60), [&] { return pump_outstanding_ == 0; })) {
      std::printf("restart_probe: %d ops of the pump still outstanding after 60 s\n",
                  pump_outstanding_);
    }
  }

  bool PumpBroken() {
    std::lock_guard lock(mu_);
    return !pump_error_.empty() || stream_ended_;
  }

  // Until the stream has resumed options_.restarts times, then until it
  // has carried on for a while on the last daemon.
  void RideThroughRestarts() {
    const auto deadline = start_ + seconds(options_.timeout_s);
    size_t seen = 0;
    while (static_cast<int>(seen) < options_.restarts && Clock::now() < deadline && !PumpBroken()) {
      const size_t resumes = stream_->resumes();
      if (resumes != seen) {
        seen = resumes;
        std::printf("restart_probe: resume %zu after %.1f s (%lu NOPs completed)\n", seen,
                    SecondsSince(start_),
                    static_cast<unsigned long>(ledger_.CompletedOf(Kind::kNop)));
        std::fflush(stdout);
        if (!WriteFileAtomically(options_.ready, absl::StrCat("resumes ", seen, "\n"))) {
          std::printf("restart_probe: cannot write %s\n", options_.ready.c_str());
        }
        continue;
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
    resumes_ = stream_->resumes();
    if (static_cast<int>(resumes_) < options_.restarts) {
      std::printf("restart_probe: %zu of %d resumes after %.1f s%s\n", resumes_, options_.restarts,
                  SecondsSince(start_), PumpBroken() ? " (the stream has ended)" : "");
    }
    const uint64_t nops = ledger_.CompletedOf(Kind::kNop);
    if (!WaitFor([&] { return PumpBroken() || ledger_.CompletedOf(Kind::kNop) >= nops + 100; },
                 seconds(30))) {
      std::printf("restart_probe: the NOPs do not complete after the last resume\n");
    }
  }

  // One payload into each FIFO, written here as any other writer would.
  void Feed() {
    fed_resumes_ = static_cast<int>(resumes_);
    fed_.store(true);
    for (size_t i = 0; i < fifos_.size(); ++i) {
      const std::string path = absl::StrCat(dir_, "/fifo-", i);
      const std::string payload = Payload(static_cast<int>(i), fed_resumes_);
      const int fd = open(path.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      const ssize_t n = fd >= 0 ? write(fd, payload.data(), payload.size()) : -1;
      if (n != static_cast<ssize_t>(payload.size())) {
        feed_failed_.Add(absl::StrCat(path, ": ", std::strerror(errno)));
      }
      if (fd >= 0) close(fd);
    }
  }

  void WaitForReads() {
    const bool done = WaitFor(
        [&] {
          std::lock_guard lock(mu_);
          return reads_done_ == fifos_.size();
        },
        seconds(60));
    if (!done) std::printf("restart_probe: reads still blocked 60 s after their data came\n");
  }

  // A statx of every handle, on the stream.
  void StatEveryHandle() {
    if (PumpBroken()) return;
    std::vector<uint32_t> handles = fifos_;
    handles.insert(handles.end(), files_.begin(), files_.end());
    handles.push_back(appends_);
    std::vector<v1::Operation> stats;
    std::vector<uint64_t> tags;
    for (uint32_t h : handles) {
      v1::Operation op = Tagged(ledger_.Add(Kind::kStat));
      op.mutable_statx()->set_handle(h);
      tags.push_back(op.tag());
      stats.push_back(std::move(op));
    }
    const uint64_t first = tags.front();
    const size_t fifos = fifos_.size();
    const absl::Status submitted = stream_->Submit(
        std::move(stats),
        [this, first, fifos](const v1::Completion& c) {
          if (!ledger_.Completed(c)) return;
          const bool fifo = c.tag() - first < fifos;
          const bool ok =
              c.outcome() == v1::OUTCOME_COMPLETED && c.error_number() == 0 &&
              c.stat().file_type() == (fifo ? v1::FILE_TYPE_FIFO : v1::FILE_TYPE_REGULAR);
          std::lock_guard lock(mu_);
          ++stats_done_;
          if (ok) {
            ++stats_right_;
          } else {
            stats_wrong_.Add(absl::StrCat("handle #", c.tag() - first, ": ",
                                          v1::Outcome_Name(c.outcome()), " ", c.error_name(), " ",
                                          v1::FileType_Name(c.stat().file_type())));
          }
        },
        [this](const client::StreamClient::AcceptedOp& a) { ledger_.Accepted(a); });
    for (uint64_t tag : tags) ledger_.Sent(tag, submitted.ok());
    if (!submitted.ok()) {
      std::printf("restart_probe: submitting the statx: %s\n", submitted.ToString().c_str());
      return;
    }
    stats_wanted_ = handles.size();
    WaitFor(
        [&] {
          std::lock_guard lock(mu_);
          return stats_done_ == stats_wanted_;
        },
        seconds(60));
  }

  int Verdict() {
    // Everything the stream delivers from here on is too late to count.
    const Ledger::Tally t = ledger_.Count();
    bool all = true;
    auto check = [&](bool ok, const std::string& what) {
      all = all && ok;
      std::printf("restart_probe: %s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    };
    // The unary calls first: no lock held across them.
    v1::Operation nop;
    nop.mutable_nop();
    absl::StatusOr<v1::Completion> fresh = unary_.Submit(session_, nop);
    absl::StatusOr<v1::Stat> unary_stat =
        unary_.Stat(session_, fifos_.empty() ? appends_ : fifos_[0]);
    absl::StatusOr<v1::Stat> appended = unary_.Stat(session_, appends_);
    struct stat on_disk;
    const bool disk = stat((dir_ + "/appends").c_str(), &on_disk) == 0;
    std::lock_guard lock(mu_);
    std::printf(
        "restart_probe: ops %lu submitted, %lu accepted, %lu completed exactly once; "
        "resumes %zu; %.1f s\n",
        static_cast<unsigned long>(t.submitted), static_cast<unsigned long>(t.accepted),
        static_cast<unsigned long>(t.completed_once), resumes_, SecondsSince(start_));
    check(static_cast<int>(resumes_) >= options_.restarts,
          absl::StrCat("resumes: ", resumes_, " of ", options_.restarts,
                       pump_error_.empty() ? "" : absl::StrCat(" (stream: ", pump_error_, ")")));
    check(feed_failed_.count == 0 && reads_right_ == fifos_.size(),
          absl::StrCat("reads: ", reads_right_, "/", fifos_.size(),
                       " completed after the restarts with their FIFO's data (wrong: ",
                       reads_wrong_.Describe(), "; not fed: ", feed_failed_.Describe(),
                       "; not completed: ", fifos_.size() - reads_done_, ")"));
    check(t.lost.count == 0,
          absl::StrCat("none lost: accepted without a completion: ", t.lost.Describe()));
    check(t.doubled.count == 0 && t.accepted_twice.count == 0,
          absl::StrCat("none doubled: completions ", t.doubled.Describe(), "; acceptances ",
                       t.accepted_twice.Describe()));
    check(t.never_accepted.count == 0 && t.unknown.count == 0,
          absl::StrCat("no completion for an op never accepted: ", t.never_accepted.Describe(),
                       "; unknown tags ", t.unknown.Describe()));
    check(t.rejected.count == 0, absl::StrCat("none rejected: ", t.rejected.Describe()));
    check(pumped_wrong_.count == 0,
          absl::StrCat("NOPs, appends and waits completed without an errno: wrong ",
                       pumped_wrong_.Describe()));
    // A fresh op's id is new too.
    const bool fresh_new = fresh.ok() && fresh->op_id() != 0 &&
                           !std::binary_search(t.ids.begin(), t.ids.end(), fresh->op_id());
    check(t.duplicate_ids.count == 0 && fresh_new,
          absl::StrCat("op ids unique: ", t.ids.size(), " ids, duplicates ",
                       t.duplicate_ids.Describe(), "; a fresh NOP's id ",
                       fresh.ok()
                           ? absl::StrCat(fresh->op_id(), fresh_new ? " is new" : " is not new")
                           : fresh.status().ToString()));
    const size_t handles = fifos_.size() + files_.size() + 1;
    check(
        stats_right_ == handles && unary_stat.ok(),
        absl::StrCat("handles: ", stats_right_, "/", handles,
                     " still work (statx on the stream; wrong ", stats_wrong_.Describe(),
                     "); unary statx: ", unary_stat.ok() ? "ok" : unary_stat.status().ToString()));
    check(appended.ok() && appended->size_bytes() == appended_bytes_ && disk &&
              static_cast<uint64_t>(on_disk.st_size) == appended_bytes_,
          absl::StrCat("file length: ", appended.ok() ? absl::StrCat(appended->size_bytes()) : "?",
                       " bytes (", disk ? absl::StrCat(on_disk.st_size) : "?",
                       " on disk) = ", appended_bytes_, " bytes of completed appends"));
    std::printf("restart_probe: max completion latency %.0f ms (%s op %lu), reads excluded\n",
                std::chrono::duration<double, std::milli>(t.latency.max).count(),
                KindName(t.latency.kind), static_cast<unsigned long>(t.latency.op_id));
    std::printf("restart_probe: %s\n", all ? "PASS" : "FAIL");
    std::fflush(stdout);
    return all ? 0 : kExitFailed;
  }

 public:
  // Ends the stream and the session; removes the FIFOs and files if
  // `passed` (else they stay for a look).
  void TearDown(bool passed) {
    if (stream_ != nullptr) {
      if (stream_->outstanding() == 0) {
        const absl::Status end = stream_->Finish();
        if (!end.ok()) std::printf("restart_probe: stream ended %s\n", end.ToString().c_str());
      }
      stream_.reset();  // cancels whatever is left
    }
    if (session_ != 0) (void)unary_.CloseSession(session_);
    if (passed) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

 private:
  const ProbeOptions options_;
  const std::string dir_name_;  // relative to the root: the daemon's name
  const std::string dir_;       // the same on disk
  std::shared_ptr<grpc::Channel> channel_;
  const client::RetryPolicy policy_;
  client::Client unary_;
  Clock::time_point start_;
  uint64_t session_ = 0;
  std::vector<uint32_t> fifos_;
  std::vector<uint32_t> files_;
  uint32_t appends_ = 0;
  Ledger ledger_;  // outlives stream_: its callbacks record here
  std::unique_ptr<client::StreamClient> stream_;
  uint64_t first_read_tag_ = 0;
  size_t resumes_ = 0;
  std::atomic<bool> fed_{false};
  int fed_resumes_ = 0;  // written before fed_ is set
  Breaches feed_failed_;
  std::thread pump_;

  std::mutex mu_;  // guards what follows
  std::condition_variable cv_;
  bool stop_ = false;
  int pump_outstanding_ = 0;
  std::string pump_error_;
  bool stream_ended_ = false;
  uint64_t appended_bytes_ = 0;
  Breaches pumped_wrong_;
  size_t reads_done_ = 0;
  size_t reads_right_ = 0;
  Breaches reads_wrong_;
  size_t stats_wanted_ = 0;
  size_t stats_done_ = 0;
  size_t stats_right_ = 0;
  Breaches stats_wrong_;
};

int Main(int argc, char** argv) {
  CLI::App app("restart_probe: a client riding through live restarts of asyncd", "restart_probe");
  ProbeOptions options;
  app.add_option("--socket", options.socket, "the daemon's socket")->required();
  app.add_option("--root", options.root, "where the session's paths resolve (FIFOs go there)")
      ->required();
  app.add_option("--ready", options.ready, "written once all is in flight, then at each resume")
      ->required();
  app.add_option("--reads", options.reads, "blocked FIFO reads")->capture_default_str();
  app.add_option("--handles", options.handles, "handles held, the FIFOs' included")
      ->capture_default_str();
  app.add_option("--restarts", options.restarts, "resumes to ride through before checking")
      ->capture_default_str();
  app.add_option("--window", options.window, "NOPs, appends and waits outstanding")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--rate", options.rate, "most NOPs, appends and waits a second (0: no limit)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--timeout", options.timeout_s,
                 "seconds to wait for the resumes (also the "
                 "retry budget)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitSetup;
  }
  Probe probe(options);
  const int rc = probe.Run();
  probe.TearDown(rc == 0);
  return rc;
}

}  // namespace
}  // namespace asyncd::testing

int main(int argc, char** argv) { return asyncd::testing::Main(argc, argv); }
