// libFuzzer target for the request path below gRPC: decode (a v1::StreamRequest,
// a v1::SubmitRequest, or a length-prefixed sequence of StreamRequests, as a
// stream would deliver them), validate (daemon/convert.cc ToOpRequest), and
// dispatch what is accepted into a real core::Registry + core::Dispatcher with
// the real thread-pool backend over a temporary root (fallocate goes to an
// inline fake so fuzzed lengths cannot fill the disk), then cancel (by id and
// by selector), list and end the session.
//
// Invariants checked on every input (a violation is a crash libFuzzer reports):
//   - every accepted op completes exactly once; a refused op never completes;
//   - after the session ends the registry is empty (no live op, no session);
//   - no descriptor leaks (none left open beneath the temporary dir);
//   - nothing outside the root changes (a canary next to it stays alone).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "asyncd/v1/asyncd.pb.h"
#include "daemon/convert.h"
#include "daemon/observer.h"
#include "src/backends/thread_pool_backend.h"
#include "src/core/clock.h"
#include "src/core/dispatcher.h"
#include "src/core/registry.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::fuzz {
namespace {

namespace v1 = ::asyncd::v1;
using daemon::OpBuffers;

constexpr uint32_t kMaxOpBytes = 64 * 1024;  // the daemon's default is larger; fuzz stays cheap
constexpr uint32_t kMaxBatchOps = 1024;      // the daemon's default max_batch_ops
constexpr size_t kMaxOpsPerInput = 4096;

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "request_fuzzer: invariant broken: %s\n", what);
  std::abort();
}

// Descriptors of ours that point beneath the temporary dir, besides the
// root itself (libFuzzer and the sanitizers open pipes of their own).
int CountOurFds(const std::string& dir, int root_fd) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    if (e.path().filename() == std::to_string(root_fd)) continue;
    const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (target.rfind(dir, 0) == 0) {
      std::fprintf(stderr, "leaked descriptor %s -> %s\n", e.path().filename().c_str(),
                   target.c_str());
      ++n;
    }
  }
  return n;
}

// One long-lived "daemon" below gRPC, shared by every input (as the real one
// outlives its clients). Never destroyed: no shutdown-order questions.
struct World {
  std::string dir, root, canary;
  int root_fd = -1;
  core::Registry registry{core::Registry::Options{
      .max_sessions = 16, .max_ops_per_session = 2048, .max_handles_per_session = 64}};
  std::unique_ptr<core::Dispatcher> dispatcher;
  std::unique_ptr<daemon::Observer> observer;
  std::unique_ptr<backends::ThreadPoolBackend> pool;
  std::unique_ptr<mocks::FakeBackend> fake;

  World() {
    char tmpl[] = "/tmp/asyncd-fuzz.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) Fail("mkdtemp");
    dir = tmpl;
    root = dir + "/root";
    canary = dir + "/canary";
    std::filesystem::create_directories(root);
    if (FILE* f = fopen(canary.c_str(), "w")) fclose(f);
    root_fd = open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0) Fail("open root");
    dispatcher = std::make_unique<core::Dispatcher>(registry, root_fd);
    observer = std::make_unique<daemon::Observer>(64, 16);
    dispatcher->SetObserver(observer.get());
    pool = std::make_unique<backends::ThreadPoolBackend>(
        *dispatcher, backends::ThreadPoolOptions{.threads = 2, .queue_capacity = 4096});
    // Completes what it takes at once, inline (BackendKind::kInline). Takes
    // only fallocate: a fuzzed length must not allocate real disk space.
    fake = std::make_unique<mocks::FakeBackend>(
        *dispatcher, mocks::FakeBackend::Options{.kind = core::BackendKind::kInline,
                                                 .kinds = {core::OpKind::kFallocate}});
    dispatcher->SetBackends({fake.get(), pool.get()});
  }

  // Fresh fixtures for each input: a file with data, a directory, a FIFO.
  void ResetRoot() {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(root, ec)) {
      std::filesystem::remove_all(e.path(), ec);
    }
    if (FILE* f = fopen((root + "/a").c_str(), "w")) {
      fputs("0123456789abcdef", f);
      fclose(f);
    }
    mkdir((root + "/d").c_str(), 0755);
    mkfifo((root + "/p").c_str(), 0600);
  }

  void CheckConfined() const {
    if (access(canary.c_str(), F_OK) != 0) Fail("the canary outside the root is gone");
    int entries = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      (void)e;
      ++entries;
    }
    if (entries != 2) Fail("something appeared next to the root");
  }
};

World& GetWorld() {
  static World* world = new World();
  return *world;
}

// Everything one input submits. Ops borrow from `messages` and `buffers`
// until they complete, so both live until the session is gone.
class Run final : public core::CompletionSink {
 public:
  explicit Run(World& w) : w_(w) { records_.reserve(kMaxOpsPerInput + 2); }

  void OnComplete(const core::Op& op) noexcept override {
    const size_t i = static_cast<size_t>(op.cookie);
    Record& r = *records_[i];
    if (!core::IsTerminal(op.state())) Fail("a completion for a non-terminal op");
    daemon::FillCompletion(op, r.buffers);
    if (r.completions.fetch_add(1, std::memory_order_acq_rel) != 0) Fail("an op completed twice");
    if (!r.accepted.load(std::memory_order_acquire) && r.refused.load(std::memory_order_acquire)) {
      Fail("a refused op completed");
    }
    const v1::Completion& c = r.buffers.completion;
    if (c.outcome() == v1::OUTCOME_COMPLETED && c.kind() == v1::OP_KIND_OPEN &&
        c.error_number() == 0) {
      std::lock_guard lock(mu_);
      opened_.push_back(c.handle());
    }
    done_.fetch_add(1, std::memory_order_acq_rel);
  }

  bool Open() {
    auto s = w_.registry.OpenSession({"fuzz", getuid(), getgid(), static_cast<uint32_t>(getpid())});
    if (!s.ok()) return false;
    session_ = *s;
    // Two handles a fuzzed op can name as 1 and 2: the data file and the FIFO.
    v1::Operation a, p;
    a.mutable_open()->set_path("a");
    a.mutable_open()->set_access(v1::OPEN_MODE_READ_WRITE);
    p.mutable_open()->set_path("p");
    p.mutable_open()->set_access(v1::OPEN_MODE_READ_WRITE);  // RDWR: the open does not block
    SubmitOps({a, p}, /*call_deadline_ns=*/0);
    WaitQuiet(std::chrono::milliseconds(2000));
    return true;
  }

  // Handles 1..8 name the handles this input holds (the fixtures first), op
  // ids 1..255 the ops it submitted: fuzzed numbers rarely hit real ones.
  uint32_t MapHandle(uint32_t h) {
    if (h == 0 || h > 8) return h;
    std::lock_guard lock(mu_);
    return h <= opened_.size() ? opened_[h - 1] : h;
  }
  uint64_t MapOpId(uint64_t id) {
    if (id == 0 || id > 255) return id;
    std::lock_guard lock(mu_);
    return id <= ids_.size() ? ids_[id - 1] : id;
  }

  void RemapHandles(v1::Operation& op) {
    switch (op.kind_case()) {
      case v1::Operation::kClose: op.mutable_close()->set_handle(MapHandle(op.close().handle())); break;
      case v1::Operation::kRead: op.mutable_read()->set_handle(MapHandle(op.read().handle())); break;
      case v1::Operation::kWrite: op.mutable_write()->set_handle(MapHandle(op.write().handle())); break;
      case v1::Operation::kFsync: op.mutable_fsync()->set_handle(MapHandle(op.fsync().handle())); break;
      case v1::Operation::kFallocate:
        op.mutable_fallocate()->set_handle(MapHandle(op.fallocate().handle()));
        break;
      case v1::Operation::kFtruncate:
        op.mutable_ftruncate()->set_handle(MapHandle(op.ftruncate().handle()));
        break;
      case v1::Operation::kPoll: op.mutable_poll()->set_handle(MapHandle(op.poll().handle())); break;
      case v1::Operation::kStatx:
        if (op.statx().target_case() == v1::Statx::kHandle) {
          op.mutable_statx()->set_handle(MapHandle(op.statx().handle()));
        }
        break;
      default: break;
    }
  }

  // As the service does for a SubmitBatch: over max_batch_ops the whole batch
  // is refused; each op is validated, the valid ones dispatched in one batch.
  void SubmitOps(const google::protobuf::RepeatedPtrField<v1::Operation>& ops,
                 int64_t call_deadline_ns) {
    std::vector<v1::Operation> copy(ops.begin(), ops.end());
    SubmitOps(std::move(copy), call_deadline_ns);
  }
  void SubmitOps(std::vector<v1::Operation> ops, int64_t call_deadline_ns) {
    if (ops.size() > kMaxBatchOps) return;  // all REJECTED: nothing reaches core
    if (records_.size() + ops.size() > kMaxOpsPerInput) return;  // stays within the reserve
    std::vector<core::OpRequest> requests;
    std::vector<size_t> index;
    for (v1::Operation& op : ops) {
      RemapHandles(op);
      auto rec = std::make_unique<Record>();
      rec->op = std::move(op);
      core::OpRequest req;
      const absl::Status s =
          daemon::ToOpRequest(rec->op, kMaxOpBytes, call_deadline_ns, rec->buffers, req);
      const size_t i = records_.size();
      records_.push_back(std::move(rec));
      if (!s.ok()) {
        if (s.message().empty()) Fail("a refusal without a message");
        records_[i]->refused = true;
        // What the stream would send back; exercised for its own sake.
        v1::Completion rejected;
        daemon::FillRejected(s, records_[i]->op.tag(), rejected);
        continue;
      }
      req.sink = this;
      req.cookie = i;
      requests.push_back(req);
      index.push_back(i);
    }
    if (requests.empty()) return;
    std::vector<absl::StatusOr<core::OpId>> out(requests.size());
    w_.dispatcher->SubmitBatch(*session_, requests, out);
    std::lock_guard lock(mu_);
    for (size_t j = 0; j < requests.size(); ++j) {
      Record& r = *records_[index[j]];
      if (out[j].ok()) {
        r.accepted.store(true, std::memory_order_release);
        ++accepted_;
        ids_.push_back(out[j]->value);
      } else {
        // Refused by core: no completion may come (it may not have come already).
        r.refused.store(true, std::memory_order_release);
        if (r.completions.load(std::memory_order_acquire) != 0) Fail("a refused op completed");
      }
    }
  }

  void Cancel(const v1::CancelRequest& req) {
    if (req.target_case() == v1::CancelRequest::kOpId) {
      (void)w_.dispatcher->Cancel(core::OpId{MapOpId(req.op_id())},
                                  core::EndReason::kClientRequest);
      return;
    }
    if (req.target_case() != v1::CancelRequest::kSelector) return;
    // The service's selector conversion, reduced to what core sees.
    const v1::OpSelector& sel = req.selector();
    daemon::Filter f;
    f.session_id = sel.session_id() == 1 ? session_->id() : sel.session_id();
    f.client = sel.client();
    f.handle = MapHandle(sel.handle());
    for (int k : sel.kinds()) {
      if (k < 1 || k > core::kOpKindCount) return;
      f.kinds |= 1u << k;
    }
    for (int st : sel.states()) {
      if (st < 1 || st > 7) return;
      f.states |= 1u << st;
    }
    f.older_than_ns = static_cast<int64_t>(sel.older_than_ms() % 1000) * 1'000'000;
    f.uid = getuid();
    std::vector<core::OpId> ids;
    const int64_t now = core::MonoNanos();
    w_.registry.ForEach([&](const core::OpSnapshot& snap, const auto&) {
      if (core::IsTerminal(snap.state)) return true;
      auto s = w_.registry.FindSession(snap.session_id);
      if (s != nullptr && f.Matches(snap, s->client().uid, s->client().name, now)) {
        ids.push_back(snap.id);
      }
      return true;
    });
    for (core::OpId id : ids) (void)w_.dispatcher->Cancel(id, core::EndReason::kClientRequest);
  }

  // Listing while ops run: every snapshot must be coherent.
  void List() {
    w_.registry.ForEach([&](const core::OpSnapshot& snap, const auto&) {
      if (snap.state == core::OpState::kFree) Fail("a free slot was listed");
      if (w_.registry.Snapshot(snap.id).has_value()) {
        daemon::FinishedOp f{.snap = snap};
        (void)f.duration_ns();
      }
      return true;
    });
  }

  // Until the ops that do not block are done (opens of the FIFO and reads on
  // it, polls and timeouts may block until the session ends).
  void WaitQuiet(std::chrono::milliseconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (done_.load(std::memory_order_acquire) < accepted_ &&
           std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  void End() {
    const uint64_t id = session_->id();
    if (!w_.dispatcher->CloseSession(id, core::EndReason::kSessionClosed).ok()) {
      Fail("CloseSession of an open session failed");
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (done_.load(std::memory_order_acquire) < accepted_ ||
           w_.registry.FindSession(id) != nullptr || w_.registry.live_ops() != 0) {
      if (std::chrono::steady_clock::now() > until) {
        std::fprintf(stderr, "accepted %zu, completed %zu, live %llu\n", accepted_,
                     done_.load(), static_cast<unsigned long long>(w_.registry.live_ops()));
        Fail("ops still live 20 s after their session ended");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    session_.reset();
    for (const auto& r : records_) {
      const int n = r->completions.load(std::memory_order_acquire);
      if (r->accepted && n != 1) Fail("an accepted op did not complete exactly once");
      if (!r->accepted && n != 0) Fail("an op that was not accepted completed");
    }
    if (w_.registry.session_count() != 0) Fail("a session outlived its end");
  }

 private:
  struct Record {
    v1::Operation op;
    OpBuffers buffers;
    std::atomic<int> completions{0};
    std::atomic<bool> accepted{false};
    std::atomic<bool> refused{false};
  };

  World& w_;
  std::shared_ptr<core::Session> session_;
  // Reserved up front, never reallocated: completion threads index it while
  // the fuzzing thread appends.
  std::vector<std::unique_ptr<Record>> records_;
  std::mutex mu_;
  std::vector<uint32_t> opened_;  // guarded by mu_
  std::vector<uint64_t> ids_;     // guarded by mu_
  size_t accepted_ = 0;           // written by the fuzzing thread only
  std::atomic<size_t> done_{0};
};

void Handle(Run& run, const v1::StreamRequest& req) {
  switch (req.msg_case()) {
    case v1::StreamRequest::kSubmit:
      run.SubmitOps(req.submit().ops(), 0);
      run.List();
      // Let the quick ops finish so later messages can name their handles.
      run.WaitQuiet(std::chrono::milliseconds(20));
      break;
    case v1::StreamRequest::kCancel:
      run.Cancel(req.cancel());
      break;
    default:  // open: the session exists already; empty: refused by the service
      break;
  }
}

}  // namespace
}  // namespace asyncd::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace asyncd::fuzz;
  if (size < 1 || size > 256 * 1024) return -1;
  World& w = GetWorld();
  w.ResetRoot();
  {
    Run run(w);
    if (!run.Open()) Fail("OpenSession");
    const uint8_t mode = data[0] % 3;
    ++data;
    --size;
    if (mode == 0) {
      v1::StreamRequest req;
      if (req.ParseFromArray(data, static_cast<int>(size))) Handle(run, req);
    } else if (mode == 1) {
      v1::SubmitRequest req;
      if (req.ParseFromArray(data, static_cast<int>(size))) {
        // session_id's low bits stand in for the call's gRPC deadline (ms).
        const uint64_t ms = req.session_id() % 2048;
        const int64_t deadline = ms == 0 ? 0 : asyncd::core::MonoNanos() + int64_t(ms) * 1'000'000;
        run.SubmitOps({req.op()}, deadline);
        run.List();
      }
    } else {
      // The structured split: [u16 little-endian length][StreamRequest]...
      while (size >= 2) {
        const size_t n = std::min<size_t>(size - 2, data[0] | (size_t{data[1]} << 8));
        v1::StreamRequest req;
        if (req.ParseFromArray(data + 2, static_cast<int>(n))) Handle(run, req);
        data += 2 + n;
        size -= 2 + n;
      }
    }
    run.End();
  }
  w.CheckConfined();
  if (CountOurFds(w.dir, w.root_fd) != 0) Fail("a descriptor outlived its session");
  return 0;
}
