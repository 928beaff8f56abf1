#include "src/backends/uring_backend.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <liburing.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "src/backends/syscalls.h"
#include "src/core/check.h"
#include "src/core/clock.h"
#include "src/core/registry.h"

namespace asyncd::backends {

namespace {

using core::CancelSafety;
using core::EndReason;
using core::Op;
using core::OpKind;
using core::OpWord;

// user_data names the op's ring entry and that entry's sequence number, with
// a tag in the low bits saying which SQE of the op produced the CQE:
//   63    32 31           3 2   0
//   |  seq  |  entry index | tag |
// The kernel cancels by user_data (our ASYNC_CANCEL, and a link timeout
// whose deadline fires as its op completes: its cancel runs later, as task
// work), so user_data must never name a later op: an Op address would, as
// soon as the slot is reused; the sequence number changes on every reuse.
constexpr uint64_t kTagMask = 7;
constexpr int kIndexShift = 3;
constexpr uint64_t kIndexMask = (uint64_t{1} << 29) - 1;
constexpr uint64_t kTagOp = 0;
constexpr uint64_t kTagCancel = 1;
constexpr uint64_t kTagLinkTimeout = 2;
constexpr uint64_t kTagWake = 3;  // the eventfd poll; no op
constexpr uint64_t kTagShardWake = 4;  // the further shards' eventfd poll; no op

uint64_t UserData(uint32_t index, uint32_t seq, uint64_t tag) {
  return (uint64_t{seq} << 32) | (uint64_t{index} << kIndexShift) | tag;
}

// -ERESTARTSYS: what an open cancelled in io_uring's worker pool reports.
constexpr int32_t kRestartSys = 512;

// A cancel-safe op with a deadline gets a linked timeout on the ring.
bool HasLinkedDeadline(const Op& op) {
  return op.params.deadline_ns != 0 &&
         op.head->safety.load(std::memory_order_relaxed) == CancelSafety::kAlways;
}

// Whether an open of these flags waits when the path is a FIFO without a
// peer: read-only or write-only, blocking, and not certain to make a new
// regular file (O_CREAT|O_EXCL) or to want a directory.
bool OpenMayWaitForPeer(uint32_t flags) {
  if ((flags & (O_NONBLOCK | O_DIRECTORY | O_PATH)) != 0) return false;
  if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL)) return false;
  return (flags & O_ACCMODE) != O_RDWR;
}
// Op::backend_data[1], owned by the ring thread once it took the op.
constexpr uintptr_t kPending = 1;     // in the ring thread's pending list
constexpr uintptr_t kOnRing = 2;      // SQE prepared; its CQE not reaped yet
constexpr uintptr_t kCancelSent = 4;  // an ASYNC_CANCEL for it was prepared
constexpr uintptr_t kStage2 = 8;      // a path statx whose O_PATH open is done
constexpr int kAttemptShift = 4;      // bits 4-7: lookups tried again after EAGAIN
constexpr uintptr_t kAttemptMask = uintptr_t{0xf} << kAttemptShift;
constexpr int kFdShift = 32;          // the O_PATH descriptor of a kStage2 statx

constexpr unsigned kStatxMask = STATX_BASIC_STATS | STATX_BTIME;
constexpr uint32_t kMaxCqEntries = 65536;  // the kernel's IORING_MAX_CQ_ENTRIES
constexpr unsigned kReapBatch = 256;
// SQ entries of a shard past the first: its SQEs are submitted whenever the
// SQ fills, and a small SQ (with its per-SQE side storage) keeps a shard's
// memory near its CQ's.
constexpr uint32_t kShardSqEntries = 1024;
// While ops wait in the pending list (ring at its limit), the ring thread
// wakes at least this often to end those whose deadline passed.
constexpr int64_t kPendingDeadlineTickNs = 10'000'000;
// How long a missed cancel waits before it is sent again: long enough for
// the ring thread to have entered the kernel, where deferred task work puts
// a request that was between two attempts back where a cancel finds it.
constexpr int64_t kRecancelDelayNs = 1'000'000;

Op* Link(const Op& op) { return reinterpret_cast<Op*>(op.backend_data[0]); }
void SetLink(Op& op, Op* next) { op.backend_data[0] = reinterpret_cast<uintptr_t>(next); }

int StageFd(const Op& op) { return static_cast<int>(op.backend_data[1] >> kFdShift); }

__kernel_timespec ToTimespec(int64_t ns) {
  __kernel_timespec ts;
  ts.tv_sec = ns / 1'000'000'000;
  ts.tv_nsec = ns % 1'000'000'000;
  return ts;
}

// The calling thread's own ring for TryRunInline. It holds at most the one
// op being run, which completes during submission (a NOP, or a read with
// RWF_NOWAIT), so it is empty between calls and nothing else reaps it.
class InlineRing {
 public:
  // nullptr if this thread cannot have one (it then never runs ops inline).
  static InlineRing* ForThisThread() {
    thread_local InlineRing ring;
    return ring.ok_ ? &ring : nullptr;
  }

  ~InlineRing() {
    if (ok_) io_uring_queue_exit(&ring_);
  }

  // The CQE's result, or nullopt if the op was never issued.
  std::optional<int32_t> Run(const Op& op) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (op.head->kind.load(std::memory_order_relaxed) == OpKind::kNop) {
      io_uring_prep_nop(sqe);
    } else {
      const core::OpParams& p = op.params;
      io_uring_prep_read(sqe, p.fd, p.buf, p.len, static_cast<uint64_t>(p.offset));
      sqe->rw_flags = RWF_NOWAIT;
    }
    if (io_uring_submit_and_get_events(&ring_) != 1) {
      // Not consumed: take the SQE back so the next run starts clean.
      io_uring_queue_exit(&ring_);
      ok_ = Init();
      return std::nullopt;
    }
    io_uring_cqe* cqe = nullptr;
    int ret = io_uring_peek_cqe(&ring_, &cqe);
    // A guard only: both kinds complete during submission.
    while (ret == -EAGAIN || ret == -EINTR) ret = io_uring_wait_cqe(&ring_, &cqe);
    ASYNCD_CHECK(ret == 0);
    const int32_t res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    return res;
  }

 private:
  InlineRing() { ok_ = Init(); }

  bool Init() {
    io_uring_params p{};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    if (io_uring_queue_init_params(2, &ring_, &p) == 0) return true;
    p = io_uring_params{};  // before 6.1
    return io_uring_queue_init_params(2, &ring_, &p) == 0;
  }

  io_uring ring_{};
  bool ok_ = false;
};

// Why a registration failed, from its -errno.
std::string AreaError(int ret) {
  std::string why = std::strerror(-ret);
  if (ret == -ENOMEM) why += ": over RLIMIT_MEMLOCK?";
  return why;
}

uint32_t NextPow2(uint64_t v) {
  uint64_t p = 1;
  while (p < v) p <<= 1;
  return static_cast<uint32_t>(std::min<uint64_t>(p, kMaxCqEntries));
}

}  // namespace

absl::StatusOr<std::unique_ptr<UringBackend>> UringBackend::Create(core::OpCompleter& completer,
                                                                   UringOptions options) {
  UringProbe probe = ProbeUring();
  if (!probe.usable) {
    spdlog::warn("io_uring unavailable ({}): serving every operation from the thread pool",
                 probe.reason);
    return absl::UnavailableError(probe.reason);
  }
  std::unique_ptr<UringBackend> backend(new UringBackend(completer, options, std::move(probe)));
  if (absl::Status s = backend->Init(); !s.ok()) {
    spdlog::warn("io_uring unavailable ({}): serving every operation from the thread pool",
                 std::string(s.message()));
    return s;
  }
  int on_ring = 0;
  for (int k = 1; k <= core::kOpKindCount; ++k) on_ring += backend->on_ring_kinds_[k] ? 1 : 0;
  spdlog::info("io_uring enabled: {} of {} op kinds on the ring", on_ring, core::kOpKindCount);
  return backend;
}

UringBackend::UringBackend(core::OpCompleter& completer, UringOptions options, UringProbe probe)
    : completer_(completer),
      probe_(std::move(probe)),
      entries_(std::max<uint32_t>(options.entries, 8)),
      capacity_(options.max_ops != 0 ? options.max_ops : 4 * entries_),
      shard_ops_(options.shard_ops) {
  for (int k = 1; k <= core::kOpKindCount; ++k) {
    switch (static_cast<OpKind>(k)) {
      case OpKind::kUnlink:
      case OpKind::kRename:
      case OpKind::kMkdir:
        // Confinement needs a blocking parent lookup first: thread pool (see the class comment).
        on_ring_kinds_[k] = false;
        break;
      default:
        on_ring_kinds_[k] = probe_.supported[k];
    }
  }
  cancel_in_.reserve(1024);
  cancel_work_.reserve(1024);
}

absl::Status UringBackend::Init() {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return absl::ErrnoToStatus(errno, "eventfd");
  // SINGLE_ISSUER ties the ring to the thread that creates it, and
  // DEFER_TASKRUN runs completions only when that thread enters the kernel:
  // so the ring is created on the ring thread, which reports back here.
  std::promise<absl::Status> started;
  std::future<absl::Status> result = started.get_future();
  thread_ = std::thread([this, started = std::move(started)]() mutable {
    shards_.resize(1);
    io_uring_params p{};
    // Room for every op's CQE plus its cancel's and link timeout's.
    p.cq_entries = std::max(NextPow2(uint64_t{capacity_} * 2), 2 * NextPow2(entries_));
    if (const int ret = InitRing(shards_[0], entries_, 0, p); ret < 0) {
      started.set_value(absl::UnavailableError(
          absl::StrCat("io_uring_queue_init_params: ", std::strerror(-ret))));
      return;
    }
    ring_ = shards_[0].ring.get();
    ring_thread_id_ = std::this_thread::get_id();
    SetUpAreas(shards_[0]);
    setup_flags_ = p.flags;
    skip_cancel_cqe_ = (p.features & IORING_FEAT_CQE_SKIP) != 0;
    // Without NODROP a full CQ loses completions: never have more ops on the
    // ring than their CQEs (op, cancel, link timeout) can fill; and one ring.
    const bool nodrop = (p.features & IORING_FEAT_NODROP) != 0;
    ring_limit_ = nodrop ? capacity_ : std::max<uint32_t>(1, ring_->cq.ring_entries / 3);
    if (!nodrop || shard_ops_ == 0 || shard_ops_ >= ring_limit_) shard_ops_ = ring_limit_;
    if (shard_ops_ < ring_limit_) shard_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (shard_fd_ < 0) shard_ops_ = ring_limit_;  // no way to hear them: one ring
    shards_.resize((ring_limit_ + shard_ops_ - 1) / shard_ops_);
    ring_entries_.resize(ring_limit_);
    for (size_t s = 0; s < shards_.size(); ++s) {
      const uint32_t begin = static_cast<uint32_t>(s) * shard_ops_;
      const uint32_t end = std::min(begin + shard_ops_, ring_limit_);
      shards_[s].free.reserve(end - begin);
      for (uint32_t i = end; i-- > begin;) shards_[s].free.push_back(i);
    }
    started.set_value(absl::OkStatus());
    Run();
    {
      // Whoever still waits on an area request gets "not registered": the
      // rings go now, and their tables with them.
      std::lock_guard lock(area_mu_);
      areas_closed_ = true;
      for (AreaRequest* req : area_in_) req->done = true;
      area_in_.clear();
    }
    area_cv_.notify_all();
    for (size_t s = 0; s < shards_made_; ++s) {
      if (shards_[s].ring != nullptr) io_uring_queue_exit(shards_[s].ring.get());
    }
    if (shard_fd_ >= 0) ::close(shard_fd_);
  });
  absl::Status status = result.get();
  if (!status.ok()) {
    thread_.join();
    std::lock_guard lock(shutdown_mu_);
    joined_ = true;
  }
  return status;
}

int UringBackend::InitRing(Shard& shard, uint32_t entries, uint32_t flags, io_uring_params& p) {
  auto ring = std::make_unique<io_uring>();
  const uint32_t cq = p.cq_entries;
  p = io_uring_params{};
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_SINGLE_ISSUER |
            IORING_SETUP_DEFER_TASKRUN | flags;
  p.cq_entries = cq;
  int ret = io_uring_queue_init_params(entries, ring.get(), &p);
  if (ret == -EINVAL) {  // a kernel before 6.1: no DEFER_TASKRUN
    p = io_uring_params{};
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
    p.cq_entries = cq;
    ret = io_uring_queue_init_params(entries, ring.get(), &p);
  }
  if (ret < 0) return ret;
  const unsigned sq = ring->sq.ring_entries;
  shard.hows = std::make_unique<open_how[]>(sq);
  shard.timespecs = std::make_unique<__kernel_timespec[]>(sq);
  shard.ring = std::move(ring);
  return 0;
}

UringBackend::Shard* UringBackend::PickShard() {
  if (!shards_[0].free.empty()) return &shards_[0];
  for (size_t s = 1; s < shards_.size(); ++s) {
    Shard& shard = shards_[s];
    if (shard.free.empty() || shard.failed) continue;
    if (shard.ring == nullptr) {
      // Made on this thread (SINGLE_ISSUER), as its first op needs it. Its
      // completions run when this thread enters it; the eventfd says when.
      shards_made_ = std::max(shards_made_, s + 1);
      // Its CQ sized for its own ops and SQ, not the first ring's: each
      // further ring's CQ is resident memory (1 MiB at 65,536 CQEs).
      const uint32_t sq = std::min({entries_, shard_ops_, kShardSqEntries});
      io_uring_params p{};
      p.cq_entries = std::max(NextPow2(uint64_t{shard_ops_} * 2), 2 * NextPow2(sq));
      // TASKRUN_FLAG: the ring says when deferred completions are left (see
      // EnterShards).
      int ret = InitRing(shard, sq, IORING_SETUP_TASKRUN_FLAG, p);
      if (ret == 0) ret = io_uring_register_eventfd(shard.ring.get(), shard_fd_);
      if (ret < 0 && shard.ring != nullptr) {
        io_uring_queue_exit(shard.ring.get());
        shard.ring.reset();
      }
      if (ret < 0) {
        spdlog::warn("io_uring: no ring for shard {} ({}): at most {} ops on the ring", s,
                     std::strerror(-ret), s * shard_ops_);
        shard.failed = true;
        continue;
      }
      SetUpAreas(shard);
    }
    return &shard;
  }
  return nullptr;
}

void UringBackend::EnterShards() {
  shards_poked_ = false;
  for (size_t s = 1; s < shards_made_; ++s) {
    Shard& shard = shards_[s];
    if (shard.ring == nullptr) continue;
    io_uring* ring = shard.ring.get();
    if (!shard.poked && io_uring_sq_ready(ring) == 0) continue;
    // With DEFER_TASKRUN its completions are posted only when we ask, and
    // one entry runs a bounded batch of them (some post nothing: a read
    // woken for data another took waits again): ask again while the ring
    // flags work left. Unlike the first ring, no wait on it runs the rest.
    [[maybe_unused]] const int ret = io_uring_submit_and_get_events(ring);
    shard.poked = (IO_URING_READ_ONCE(*ring->sq.kflags) & IORING_SQ_TASKRUN) != 0;
    shards_poked_ = shards_poked_ || shard.poked;
  }
}

void UringBackend::SetUpAreas(Shard& shard) {
  // Sparse: every slot empty, so no memory is pinned until an area fills one.
  if (const int ret = io_uring_register_buffers_sparse(shard.ring.get(), kMaxAreas); ret < 0) {
    LogAreaFailure("a table of buffers", AreaError(ret).c_str());
    return;
  }
  shard.has_table = true;
  for (int a = 1; a <= kMaxAreas; ++a) {
    const Area& area = areas_[a];
    if (area.bytes == 0) continue;
    const int ret =
        UpdateArea(shard, static_cast<uint8_t>(a), const_cast<char*>(area.base), area.bytes);
    if (ret < 0) {
      LogAreaFailure("an area on a further ring", AreaError(ret).c_str());
    } else {
      shard.fixed.set(a);
    }
  }
}

int UringBackend::UpdateArea(Shard& shard, uint8_t area, void* base, size_t bytes) {
  iovec iov{base, bytes};
  const int ret =
      io_uring_register_buffers_update_tag(shard.ring.get(), area - 1u, &iov, nullptr, 1);
  return ret < 0 ? ret : 0;
}

void UringBackend::LogAreaFailure(const char* what, const char* why) {
  if (!area_failure_logged_.exchange(true, std::memory_order_relaxed)) {
    spdlog::info(
        "io_uring: could not register {} ({}): its reads and writes pin their buffers per op "
        "instead",
        what, why);
  } else {
    spdlog::debug("io_uring: could not register {} ({})", what, why);
  }
}

uint8_t UringBackend::RegisterArea(void* base, size_t bytes) noexcept {
  if (base == nullptr || bytes == 0 || bytes > kMaxAreaBytes) return 0;
  uint8_t area = 0;
  {
    std::lock_guard lock(area_mu_);
    if (areas_closed_ || stopping_.load(std::memory_order_relaxed)) return 0;
    for (int a = 1; a <= kMaxAreas && area == 0; ++a) {
      if (!area_taken_.test(a)) area = static_cast<uint8_t>(a);
    }
    if (area == 0) {
      LogAreaFailure("an area", "all 255 in use");
      return 0;
    }
    area_taken_.set(area);
  }
  AreaRequest req{area, base, bytes};
  RunAreaRequest(req);
  if (req.ok) return area;
  std::lock_guard lock(area_mu_);
  area_taken_.reset(area);
  return 0;
}

void UringBackend::UnregisterArea(uint8_t area) noexcept {
  if (area == 0) return;
  {
    std::lock_guard lock(area_mu_);
    if (!area_taken_.test(area)) return;
  }
  AreaRequest req{area, nullptr, 0};
  RunAreaRequest(req);  // a ring thread gone has taken its tables with it
  std::lock_guard lock(area_mu_);
  area_taken_.reset(area);
}

void UringBackend::RunAreaRequest(AreaRequest& req) {
  if (std::this_thread::get_id() == ring_thread_id_) {  // a sink registering: no hand-off
    ApplyArea(req);
    return;
  }
  std::unique_lock lock(area_mu_);
  if (areas_closed_) return;
  area_in_.push_back(&req);
  lock.unlock();
  areas_waiting_.store(true, std::memory_order_seq_cst);
  Wake();
  lock.lock();
  area_cv_.wait(lock, [&req] { return req.done; });
}

// Ring thread.
void UringBackend::TakeAreas() {
  if (!areas_waiting_.exchange(false, std::memory_order_seq_cst)) return;
  std::vector<AreaRequest*> work;
  {
    std::lock_guard lock(area_mu_);
    work.swap(area_in_);
  }
  // Unlocked: pinning a large area takes a while, and others may queue meanwhile.
  for (AreaRequest* req : work) ApplyArea(*req);
  {
    std::lock_guard lock(area_mu_);
    for (AreaRequest* req : work) req->done = true;
  }
  area_cv_.notify_all();
}

// Ring thread.
void UringBackend::ApplyArea(AreaRequest& req) {
  const uint8_t a = req.area;
  if (req.base == nullptr) {
    for (size_t s = 0; s < shards_made_; ++s) {
      Shard& shard = shards_[s];
      if (shard.ring == nullptr || !shard.fixed.test(a)) continue;
      // Failing, the slot keeps the old pages pinned until it is filled
      // again; we never name it meanwhile.
      if (const int ret = UpdateArea(shard, a, nullptr, 0); ret < 0) {
        spdlog::warn("io_uring: could not unregister an area: {}", std::strerror(-ret));
      }
      shard.fixed.reset(a);
    }
    areas_[a] = Area{};
    req.ok = true;
    return;
  }
  // The first ring decides: it runs every op up to shard_ops in flight.
  Shard& first = shards_[0];
  if (!first.has_table) return;  // logged when the table failed
  if (const int ret = UpdateArea(first, a, req.base, req.bytes); ret < 0) {
    LogAreaFailure("an area", AreaError(ret).c_str());
    return;
  }
  first.fixed.set(a);
  areas_[a] = Area{static_cast<const char*>(req.base), req.bytes};
  for (size_t s = 1; s < shards_made_; ++s) {
    Shard& shard = shards_[s];
    if (shard.ring == nullptr || !shard.has_table) continue;
    if (const int ret = UpdateArea(shard, a, req.base, req.bytes); ret < 0) {
      LogAreaFailure("an area on a further ring", AreaError(ret).c_str());
    } else {
      shard.fixed.set(a);
    }
  }
  req.ok = true;
}

int UringBackend::FixedIndex(const Shard& shard, const core::OpParams& p) const {
  if (p.area == 0 || !shard.fixed.test(p.area)) return -1;
  const Area& a = areas_[p.area];
  const uintptr_t start = reinterpret_cast<uintptr_t>(p.buf);
  const uintptr_t base = reinterpret_cast<uintptr_t>(a.base);
  // The whole buffer inside the area: the kernel checks the same, but
  // failing the op (EFAULT) where a plain read would succeed is not ours
  // to do.
  if (start < base || start - base > a.bytes || p.len > a.bytes - (start - base)) return -1;
  return p.area - 1;
}

UringBackend::~UringBackend() {
  Shutdown();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

bool UringBackend::Supports(OpKind kind) const { return on_ring_kinds_[static_cast<int>(kind)]; }

size_t UringBackend::Reserve(size_t wanted) noexcept {
  uint64_t cur = outstanding_.load(std::memory_order_relaxed);
  size_t n;
  do {
    if (cur >= capacity_) return 0;
    n = static_cast<size_t>(std::min<uint64_t>(wanted, capacity_ - cur));
  } while (!outstanding_.compare_exchange_weak(cur, cur + n, std::memory_order_seq_cst,
                                               std::memory_order_relaxed));
  // Seq-cst against Shutdown: either we see stopping_, or the ring thread
  // sees our reservation and waits for these ops before it exits.
  if (stopping_.load(std::memory_order_seq_cst)) {
    outstanding_.fetch_sub(n, std::memory_order_seq_cst);
    Wake();
    return 0;
  }
  return n;
}

void UringBackend::Push(std::span<Op* const> ops) noexcept {
  // Chain newest first (the stack is LIFO; the ring thread reverses it).
  for (size_t i = 1; i < ops.size(); ++i) SetLink(*ops[i], ops[i - 1]);
  Op* oldest = ops.front();
  Op* newest = ops.back();
  Op* head = submit_head_.load(std::memory_order_relaxed);
  do {
    SetLink(*oldest, head);
  } while (!submit_head_.compare_exchange_weak(head, newest, std::memory_order_seq_cst,
                                               std::memory_order_relaxed));
  Wake();
}

core::Accepted UringBackend::Submit(std::span<Op* const> ops) noexcept {
  if (ops.empty()) return {};
  const size_t n = Reserve(ops.size());
  if (n > 0) Push(ops.first(n));
  if (n == ops.size()) return {n};
  if (stopping_.load(std::memory_order_relaxed)) {
    return {n, absl::UnavailableError("the io_uring backend is shutting down")};
  }
  return {n, absl::ResourceExhaustedError(absl::StrCat(
                 "io_uring holds its most operations in flight (", capacity_,
                 "; limits.max_inflight_total as the daemon started); retry later"))};
}

bool UringBackend::TryRunInline(Op& op) noexcept {
  const int64_t now = core::MonoNanos();
  if (!MayRunInline(op, now) || !Supports(op.head->kind.load(std::memory_order_relaxed))) return false;
  InlineRing* ring = InlineRing::ForThisThread();
  if (ring == nullptr || Reserve(1) == 0) return false;
  if (!op.TryStart(now)) {
    Finish(op, -ECANCELED);
    return true;
  }
  const std::optional<int32_t> res = ring->Run(op);
  if (!res.has_value() || InlineMustWait(op, *res)) {
    Op* const one[] = {&op};
    Push(one);  // started: StartOne sees kRunning and does not start it again
  } else {
    Finish(op, *res);
  }
  return true;
}

void UringBackend::Interrupt(Op& op, uint32_t gen) noexcept {
  {
    std::lock_guard lock(cancel_mu_);
    cancel_in_.push_back({&op, gen, op.session->shared_from_this()});
  }
  cancels_waiting_.store(true, std::memory_order_seq_cst);
  Wake();
}

void UringBackend::Wake() {
  // Only a sleeping ring thread needs the eventfd; the exchange makes one
  // producer pay the write(2) per sleep, not one per op.
  if (sleeping_.load(std::memory_order_seq_cst) &&
      sleeping_.exchange(false, std::memory_order_seq_cst)) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(wake_fd_, &one, sizeof(one));
  }
}

void UringBackend::Shutdown() {
  std::lock_guard lock(shutdown_mu_);
  if (joined_) return;
  stopping_.store(true, std::memory_order_seq_cst);
  // Unconditional: the ring thread may be between its checks and its wait.
  sleeping_.store(false, std::memory_order_seq_cst);
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t r = ::write(wake_fd_, &one, sizeof(one));
  thread_.join();
  joined_ = true;
}

core::BackendStats UringBackend::Stats() const {
  core::BackendStats s;
  const uint64_t held = outstanding_.load(std::memory_order_relaxed);
  const uint64_t running = on_ring_count_.load(std::memory_order_relaxed);
  s.running = std::min(running, held);
  s.queued = held - s.running;
  s.capacity = capacity_;
  s.threads = 1;
  return s;
}

// ---------------------------------------------------------------------------
// Ring thread.

void UringBackend::Run() {
  for (;;) {
    const bool stopping = stopping_.load(std::memory_order_seq_cst);
    if (!wake_armed_) ArmPoll(wake_fd_, kTagWake, wake_armed_);
    if (shards_made_ > 1 && !shard_armed_) ArmPoll(shard_fd_, kTagShardWake, shard_armed_);
    size_t work = 0;
    const size_t before = pending_count_ + on_ring_;
    // Cancels first: any op submitted before a cancel request for it is then
    // already in the stack, so it is taken below and the cancel finds it.
    TakeCancels();
    TakeAreas();
    TakeSubmissions();
    if (stopping) DrainForShutdown();
    const int64_t now = core::MonoNanos();
    if (sweep_pending_) SweepPending(now);
    StartPending(now);
    work += ProcessCancels() ? 1 : 0;
    work += Reap();
    work += ResendCancels(now) ? 1 : 0;
    work += (before != pending_count_ + on_ring_) ? 1 : 0;
    work += shards_poked_ ? 1 : 0;
    if (stopping && outstanding_.load(std::memory_order_seq_cst) == 0) break;
    if (work > 0) {
      SubmitAndWait(false, 0);
      continue;
    }
    sleeping_.store(true, std::memory_order_seq_cst);
    if (submit_head_.load(std::memory_order_seq_cst) != nullptr ||
        cancels_waiting_.load(std::memory_order_seq_cst) ||
        areas_waiting_.load(std::memory_order_seq_cst) ||
        stopping_.load(std::memory_order_seq_cst) != stopping) {
      sleeping_.store(false, std::memory_order_relaxed);
      SubmitAndWait(false, 0);
      continue;
    }
    int64_t wait_ns = pending_count_ > 0 ? kPendingDeadlineTickNs : 0;
    if (!recancel_.empty()) wait_ns = std::max<int64_t>(recancel_at_ - now, 1);
    SubmitAndWait(true, wait_ns);
    sleeping_.store(false, std::memory_order_relaxed);
    if (pending_count_ > 0) sweep_pending_ = true;
  }
}

void UringBackend::SubmitAndWait(bool wait, int64_t timeout_ns) {
  if (shards_made_ > 1) {
    EnterShards();
    if (shards_poked_) wait = false;  // completions to reap first
  }
  int ret;
  if (!wait) {
    // With DEFER_TASKRUN completions are posted only when we ask (GETEVENTS).
    ret = io_uring_submit_and_get_events(ring_);
  } else if (timeout_ns > 0) {
    __kernel_timespec ts = ToTimespec(timeout_ns);
    io_uring_cqe* cqe = nullptr;
    ret = io_uring_submit_and_wait_timeout(ring_, &cqe, 1, &ts, nullptr);
  } else {
    ret = io_uring_submit_and_wait(ring_, 1);
  }
  // EINTR/ETIME: woken early or tick; EAGAIN/EBUSY: the kernel is short of
  // memory or CQ room, reaping frees it. The loop retries in every case.
  if (ret < 0 && ret != -EINTR && ret != -ETIME && ret != -EAGAIN && ret != -EBUSY) {
    spdlog::error("io_uring_enter: {}", std::strerror(-ret));
  }
}

// wake_fd_, and shard_fd_: the further shards' completions wait
// (DEFER_TASKRUN) until this thread enters their ring; the eventfd they all
// signal, polled on the first ring, wakes it when one has some.
void UringBackend::ArmPoll(int fd, uint64_t tag, bool& armed) {
  if (!EnsureSqes(shards_[0], 1)) return;
  io_uring_sqe* sqe = io_uring_get_sqe(ring_);
  io_uring_prep_poll_multishot(sqe, fd, POLLIN);
  io_uring_sqe_set_data64(sqe, tag);
  armed = true;
}

bool UringBackend::EnsureSqes(Shard& shard, unsigned n) {
  io_uring* ring = shard.ring.get();
  if (io_uring_sq_space_left(ring) >= n) return true;
  io_uring_submit(ring);
  return io_uring_sq_space_left(ring) >= n;
}

void UringBackend::TakeCancels() {
  if (!cancels_waiting_.exchange(false, std::memory_order_seq_cst)) return;
  std::lock_guard lock(cancel_mu_);
  if (cancel_done_ == cancel_work_.size()) {
    cancel_work_.clear();
    cancel_done_ = 0;
    cancel_work_.swap(cancel_in_);  // both keep their capacity: no allocation once warm
  } else {
    cancel_work_.insert(cancel_work_.end(), cancel_in_.begin(), cancel_in_.end());
    cancel_in_.clear();
  }
}

void UringBackend::TakeSubmissions() {
  Op* op = submit_head_.exchange(nullptr, std::memory_order_acquire);
  Op* oldest_first = nullptr;
  while (op != nullptr) {
    Op* next = Link(*op);
    SetLink(*op, oldest_first);
    oldest_first = op;
    op = next;
  }
  while (oldest_first != nullptr) {
    Op* next = Link(*oldest_first);
    oldest_first->backend_data[1] = 0;
    PendingPushBack(*oldest_first);
    oldest_first = next;
  }
}

void UringBackend::PendingPushBack(Op& op) {
  op.backend_data[1] |= kPending;
  SetLink(op, nullptr);
  if (pending_tail_ != nullptr) {
    SetLink(*pending_tail_, &op);
  } else {
    pending_head_ = &op;
  }
  pending_tail_ = &op;
  ++pending_count_;
}

void UringBackend::PendingPushFront(Op& op) {
  op.backend_data[1] |= kPending;
  SetLink(op, pending_head_);
  pending_head_ = &op;
  if (pending_tail_ == nullptr) pending_tail_ = &op;
  ++pending_count_;
}

void UringBackend::StartPending(int64_t now) {
  while (pending_head_ != nullptr && on_ring_ < ring_limit_) {
    Op& op = *pending_head_;
    Shard* shard = PickShard();
    if (shard == nullptr) break;  // the shards with room could not be made
    if (!EnsureSqes(*shard, HasLinkedDeadline(op) ? 2 : 1)) break;  // the kernel refused a submit: retry later
    pending_head_ = Link(op);
    if (pending_head_ == nullptr) pending_tail_ = nullptr;
    --pending_count_;
    op.backend_data[1] &= ~kPending;
    StartOne(*shard, op, now);
  }
}

bool UringBackend::StartOne(Shard& shard, Op& op, int64_t now) {
  const uintptr_t flags = op.backend_data[1];
  const bool stage2 = (flags & kStage2) != 0;
  if (!stage2) {
    // A non-cancel-safe op cannot be stopped once on the ring: its deadline
    // is checked here only (by Start). Cancel-safe ops get a linked timeout
    // below.
    if (!completer_.Start(op, now)) {
      Finish(op, -ECANCELED);
      return false;
    }
  } else {
    if (op.DeadlinePassed(now) && !EndRequested(op)) completer_.Expire(op, op.generation(), now);
    if (EndRequested(op)) {
      ::close(StageFd(op));
      Finish(op, -ECANCELED);
      return false;
    }
  }
  const uint64_t user_data = AddOnRing(shard, op);
  io_uring* ring = shard.ring.get();
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  const size_t slot = sqe - ring->sq.sqes;
  const core::OpParams& p = op.params;
  switch (op.head->kind.load(std::memory_order_relaxed)) {
    case OpKind::kNop:
      io_uring_prep_nop(sqe);
      break;
    case OpKind::kOpen: {
      open_how& how = shard.hows[slot];
      how = open_how{};
      how.flags = uint64_t{p.flags} | O_CLOEXEC;
      // openat2 refuses a mode without O_CREAT / O_TMPFILE.
      if ((p.flags & O_CREAT) != 0 || (p.flags & O_TMPFILE) == O_TMPFILE) how.mode = p.mode;
      how.resolve = kConfinedResolve;  // a leading '/' then means the root too
      io_uring_prep_openat2(sqe, p.dirfd, p.path, &how);
      // The kernel's inline attempt forces O_NONBLOCK, so a FIFO's open
      // would not wait for its peer (ENXIO for a writer, an early return for
      // a reader): an open that may wait runs in io_uring's workers instead.
      if (OpenMayWaitForPeer(p.flags)) sqe->flags |= IOSQE_ASYNC;
      break;
    }
    case OpKind::kClose:
      io_uring_prep_close(sqe, p.fd);
      break;
    case OpKind::kRead:
    case OpKind::kWrite: {
      // offset -1 (as u64) reads at the file position: IORING_FEAT_RW_CUR_POS.
      const uint64_t offset = static_cast<uint64_t>(p.offset);
      const bool write = op.head->kind.load(std::memory_order_relaxed) == OpKind::kWrite;
      if (const int index = FixedIndex(shard, p); index >= 0) {
        if (write) {
          io_uring_prep_write_fixed(sqe, p.fd, p.buf, p.len, offset, index);
        } else {
          io_uring_prep_read_fixed(sqe, p.fd, p.buf, p.len, offset, index);
        }
        fixed_ops_.store(fixed_ops_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      } else if (write) {
        io_uring_prep_write(sqe, p.fd, p.buf, p.len, offset);
      } else {
        io_uring_prep_read(sqe, p.fd, p.buf, p.len, offset);
      }
      break;
    }
    case OpKind::kFsync:
      io_uring_prep_fsync(sqe, p.fd, (p.flags & 1) != 0 ? IORING_FSYNC_DATASYNC : 0);
      break;
    case OpKind::kFallocate:
      io_uring_prep_fallocate(sqe, p.fd, static_cast<int>(p.mode), p.offset, p.length);
      break;
    case OpKind::kStatx:
      if (p.path == nullptr) {
        io_uring_prep_statx(sqe, p.fd, "", static_cast<int>(p.flags) | AT_EMPTY_PATH, kStatxMask,
                            static_cast<struct statx*>(p.buf));
      } else if (!stage2) {
        // statx takes no RESOLVE_* flags: open the path O_PATH beneath the
        // root first (confined like open), then statx that descriptor.
        open_how& how = shard.hows[slot];
        how = open_how{};
        how.flags = O_PATH | O_CLOEXEC | ((p.flags & AT_SYMLINK_NOFOLLOW) != 0 ? O_NOFOLLOW : 0);
        how.resolve = kConfinedResolve;
        io_uring_prep_openat2(sqe, p.dirfd, p.path, &how);
      } else {
        const int at_flags = (static_cast<int>(p.flags) & ~AT_SYMLINK_NOFOLLOW) | AT_EMPTY_PATH;
        io_uring_prep_statx(sqe, StageFd(op), "", at_flags, kStatxMask,
                            static_cast<struct statx*>(p.buf));
      }
      break;
    case OpKind::kPoll:
      io_uring_prep_poll_add(sqe, p.fd, p.flags);
      break;
    case OpKind::kTimeout: {
      __kernel_timespec& ts = shard.timespecs[slot];
      ts = ToTimespec(std::max<int64_t>(p.timeout_ns, 0));
      io_uring_prep_timeout(sqe, &ts, 0, 0);
      break;
    }
    default:
      ASYNCD_CHECK(false);  // Supports() said no; the dispatcher never sends it here
  }
  io_uring_sqe_set_data64(sqe, user_data | kTagOp);
  if (HasLinkedDeadline(op)) {
    sqe->flags |= IOSQE_IO_LINK;
    io_uring_sqe* lt = io_uring_get_sqe(ring);  // EnsureSqes(2) made room
    __kernel_timespec& ts = shard.timespecs[lt - ring->sq.sqes];
    // Absolute CLOCK_MONOTONIC, the clock of MonoNanos(): no drift between
    // now and the moment the kernel arms it.
    ts = ToTimespec(p.deadline_ns);
    io_uring_prep_link_timeout(lt, &ts, IORING_TIMEOUT_ABS);
    io_uring_sqe_set_data64(lt, user_data | kTagLinkTimeout);
  }
  op.backend_data[1] = (flags & ~(kPending | kCancelSent)) | kOnRing;
  return true;
}

uint64_t UringBackend::AddOnRing(Shard& shard, Op& op) {
  ASYNCD_CHECK(!shard.free.empty());  // PickShard chose a shard with room
  const uint32_t index = shard.free.back();
  shard.free.pop_back();
  ++shard.on_ring;
  RingEntry& e = ring_entries_[index];
  e.op = &op;
  if (++e.seq == 0) e.seq = 1;  // 0 stays free for the wake poll's user_data
  op.backend_data[0] = index;
  on_ring_count_.store(++on_ring_, std::memory_order_relaxed);
  return UserData(index, e.seq, 0);
}

void UringBackend::RemoveOnRing(Op& op) {
  const uintptr_t index = op.backend_data[0];
  ASYNCD_CHECK(index < ring_entries_.size() && ring_entries_[index].op == &op);
  ring_entries_[index].op = nullptr;
  Shard& shard = ShardOf(static_cast<uint32_t>(index));
  shard.free.push_back(static_cast<uint32_t>(index));
  --shard.on_ring;
  on_ring_count_.store(--on_ring_, std::memory_order_relaxed);
  op.backend_data[1] &= ~(kOnRing | kCancelSent);
}

bool UringBackend::ProcessCancels() {
  const bool any = cancel_done_ < cancel_work_.size();
  for (; cancel_done_ < cancel_work_.size(); ++cancel_done_) {
    const CancelRequest& req = cancel_work_[cancel_done_];
    Op& op = *req.op;
    const uint64_t w = op.head->word.load(std::memory_order_acquire);
    // Another generation: the op finished (we completed it, or the
    // dispatcher abandoned it) and its slot may be anyone's now.
    if (OpWord::Gen(w) != req.gen) continue;
    const core::OpState state = OpWord::State(w);
    if (state == core::OpState::kQueued || state == core::OpState::kDispatched) {
      // Not started: in our pending list, still in the stack, or not even
      // handed to us (the dispatcher may yet abandon it and reuse the slot,
      // so its backend_data is not ours to read). TryStart will refuse it
      // wherever it is; a sweep ends it now if it waits in the pending list.
      if (pending_count_ > 0) sweep_pending_ = true;
      continue;
    }
    if (state != core::OpState::kRunning) continue;
    // Running, same generation: we started it and only this thread ends it,
    // so backend_data[1] is ours: it is on the ring, or a path statx
    // between its two stages in the pending list.
    uintptr_t& flags = op.backend_data[1];
    if ((flags & kOnRing) != 0) {
      if ((flags & kCancelSent) != 0) continue;
      if (!EnsureSqes(ShardOf(static_cast<uint32_t>(op.backend_data[0])), 1)) break;  // next round
      flags |= kCancelSent;
      SendCancel(op);
    } else if ((flags & kPending) != 0) {
      sweep_pending_ = true;
    }
  }
  if (cancel_done_ == cancel_work_.size()) {
    cancel_work_.clear();
    cancel_done_ = 0;
  }
  return any;
}

// One cancel per op, by user_data. The kernel finds the request in a hash of
// at most 256 buckets, so each cancel walks O(ops on the ring / 256)
// entries: cheap at thousands in flight, about 10 us per op at 100,000. A
// descriptor-wide IORING_ASYNC_CANCEL_FD|ALL is no way out: it rescans from
// the first bucket per request found, past the ones it already cancelled
// (they leave the hash only when task work runs), which is quadratic.
// Sharding keeps each ring's ops (shard_ops) to a few per bucket instead.
void UringBackend::SendCancel(Op& op) {
  const uint32_t index = static_cast<uint32_t>(op.backend_data[0]);
  // On the op's own ring: its entry index names the shard.
  io_uring_sqe* sqe = io_uring_get_sqe(ShardOf(index).ring.get());
  const uint64_t user_data = UserData(index, ring_entries_[index].seq, 0);
  io_uring_prep_cancel64(sqe, user_data | kTagOp, 0);
  io_uring_sqe_set_data64(sqe, user_data | kTagCancel);
  // Only failures (-ENOENT: already done, -EALREADY: running) post a CQE.
  if (skip_cancel_cqe_) sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
}

// A cancel by user_data misses a request that is between two attempts
// (a FIFO read woken by data another reader took, on its way back to
// waiting), and says -ENOENT; one in io_uring's workers says -EALREADY and
// may go on. Either way the op stays on the ring with nothing to end it,
// however many deadlines pass: so it is cancelled again until its own CQE
// comes. Each miss names the entry's sequence number, so a later op in the
// same entry is never touched.
void UringBackend::OnCancelMissed(uint64_t data) {
  const uint32_t index = static_cast<uint32_t>((data >> kIndexShift) & kIndexMask);
  const uint32_t seq = static_cast<uint32_t>(data >> 32);
  const RingEntry& e = ring_entries_[index];
  // Not expired here: the op may have finished as the timer fired, its CQE
  // still on its way. A -ECANCELED from the cancel sent again is the
  // deadline's for OnOpCqe, as the link timeout's own would have been.
  if (e.op == nullptr || e.seq != seq) return;  // its own CQE came first
  if (recancel_.empty()) recancel_at_ = core::MonoNanos() + kRecancelDelayNs;
  recancel_.emplace_back(index, seq);
}

bool UringBackend::ResendCancels(int64_t now) {
  if (recancel_.empty() || now < recancel_at_) return false;
  size_t sent = 0;
  for (; sent < recancel_.size(); ++sent) {
    const auto [index, seq] = recancel_[sent];
    RingEntry& e = ring_entries_[index];
    if (e.op == nullptr || e.seq != seq) continue;  // ended meanwhile
    if (!EnsureSqes(ShardOf(index), 1)) break;      // the rest next round
    e.op->backend_data[1] |= kCancelSent;
    SendCancel(*e.op);
  }
  recancel_.erase(recancel_.begin(), recancel_.begin() + static_cast<ptrdiff_t>(sent));
  recancel_at_ = now + kRecancelDelayNs;
  return sent > 0;
}

void UringBackend::SweepPending(int64_t now) {
  sweep_pending_ = false;
  Op* op = pending_head_;
  pending_head_ = pending_tail_ = nullptr;
  pending_count_ = 0;
  while (op != nullptr) {
    Op* next = Link(*op);
    op->backend_data[1] &= ~kPending;
    if (!EndRequested(*op) && op->DeadlinePassed(now)) {
      completer_.Expire(*op, op->generation(), now);
    }
    if (EndRequested(*op)) {
      if ((op->backend_data[1] & kStage2) != 0) ::close(StageFd(*op));
      Finish(*op, -ECANCELED);
    } else {
      PendingPushBack(*op);
    }
    op = next;
  }
}

void UringBackend::DrainForShutdown() {
  const int64_t now = core::MonoNanos();
  while (pending_head_ != nullptr) {
    Op& op = *pending_head_;
    pending_head_ = Link(op);
    --pending_count_;
    op.RequestEnd(op.generation(), EndReason::kDrain, now);
    if ((op.backend_data[1] & kStage2) != 0) ::close(StageFd(op));
    Finish(op, -ECANCELED);
  }
  pending_tail_ = nullptr;
  if (drained_) return;
  // Once: after stopping_ nothing new reaches the ring.
  drained_ = true;
  for (const RingEntry& e : ring_entries_) {
    if (e.op == nullptr) continue;
    e.op->RequestEnd(e.op->generation(), EndReason::kDrain, now);
    // Still on the ring, so its session is alive now; the pin keeps it so.
    cancel_work_.push_back({e.op, e.op->generation(), e.op->session->shared_from_this()});
  }
}

unsigned UringBackend::Reap() {
  core::CompletionBatch batch;  // sinks take their locks once per reap, not per op
  unsigned total = ReapRing(*ring_);
  for (size_t s = 1; s < shards_made_; ++s) {
    if (shards_[s].ring != nullptr) total += ReapRing(*shards_[s].ring);
  }
  return total;
}

unsigned UringBackend::ReapRing(io_uring& ring) {
  unsigned total = 0;
  io_uring_cqe* cqes[kReapBatch];
  for (;;) {
    const unsigned n = io_uring_peek_batch_cqe(&ring, cqes, kReapBatch);
    if (n == 0) break;
    for (unsigned i = 0; i < n; ++i) {
      const uint64_t data = cqes[i]->user_data;
      const int32_t res = cqes[i]->res;
      switch (data & kTagMask) {
        case kTagOp: {
          const RingEntry& e = ring_entries_[(data >> kIndexShift) & kIndexMask];
          // An op's own CQE always finds it: its entry is freed only here.
          ASYNCD_CHECK(e.op != nullptr && e.seq == static_cast<uint32_t>(data >> 32));
          OnOpCqe(*e.op, res);
          break;
        }
        case kTagWake:
          if ((cqes[i]->flags & IORING_CQE_F_MORE) == 0) wake_armed_ = false;
          break;
        case kTagShardWake:
          if ((cqes[i]->flags & IORING_CQE_F_MORE) == 0) shard_armed_ = false;
          // Which shard signalled is unknown: ask each that holds ops.
          for (size_t s = 1; s < shards_made_; ++s) {
            if (shards_[s].on_ring > 0) shards_[s].poked = shards_poked_ = true;
          }
          break;
        case kTagCancel:       // only failures: -ENOENT, -EALREADY
        case kTagLinkTimeout:  // -ETIME fired and cancelled, -ECANCELED op done first
          if (res == -ENOENT || res == -EALREADY) OnCancelMissed(data);
          break;
        default:
          break;
      }
    }
    io_uring_cq_advance(&ring, n);
    total += n;
  }
  return total;
}

void UringBackend::OnOpCqe(Op& op, int32_t cqe_res) {
  RemoveOnRing(op);
  int64_t res = cqe_res;
  const uintptr_t flags = op.backend_data[1];
  const OpKind kind = op.head->kind.load(std::memory_order_relaxed);
  const bool lookup = kind == OpKind::kOpen ||
                      (kind == OpKind::kStatx && op.params.path != nullptr && (flags & kStage2) == 0);
  const uintptr_t attempts = (flags & kAttemptMask) >> kAttemptShift;
  if (lookup && res == -EAGAIN && attempts + 1 < kLookupAttempts) {
    // A rename raced with the lookup (see kLookupAttempts): look again.
    op.backend_data[1] = (flags & ~kAttemptMask) | ((attempts + 1) << kAttemptShift);
    PendingPushBack(op);
    return;
  }
  if (kind == OpKind::kStatx && op.params.path != nullptr) {
    if ((flags & kStage2) == 0) {
      if (res >= 0) {
        // The O_PATH open is done; its statx goes next, ahead of new work.
        op.backend_data[1] = (uintptr_t{static_cast<uint32_t>(res)} << kFdShift) | kStage2;
        PendingPushFront(op);
        return;
      }
    } else {
      ::close(StageFd(op));  // an O_PATH descriptor: no I/O, never blocks
    }
  }
  if (kind == OpKind::kTimeout && res == -ETIME) res = 0;  // it elapsed: that is success
  if (res == -kRestartSys) res = -EINTR;  // an open interrupted in io_uring's workers
  if ((res == -ECANCELED || res == -EINTR) && !EndRequested(op) && HasLinkedDeadline(op)) {
    // Nobody asked it to end, so its linked timeout fired: the kernel's
    // clock says the deadline passed, whatever ours read a moment ago.
    completer_.Expire(op, op.generation(), core::MonoNanos());
  }
  if (kind == OpKind::kWrite && op.head->may_block.load(std::memory_order_relaxed)) {
    // A blocking stream write returns when all of it is written, as write(2)
    // does and the thread pool's does; the ring returns what fit.
    const uint32_t done = op.bytes_done.load(std::memory_order_relaxed);
    if (res > 0 && res < op.params.len && !EndRequested(op)) {
      op.bytes_done.store(done + static_cast<uint32_t>(res), std::memory_order_relaxed);
      op.params.buf = static_cast<char*>(op.params.buf) + res;
      op.params.len -= static_cast<uint32_t>(res);
      if (op.params.offset >= 0) op.params.offset += res;
      PendingPushBack(op);
      return;
    }
    if (res >= 0) {
      res += done;
    } else if (done > 0) {
      res = done;  // stopped early: report what was written, like a short write
    }
  }
  Finish(op, res);
}

void UringBackend::Finish(Op& op, int64_t result) {
  completer_.Complete(op, result);  // op may be reused from here on
  outstanding_.fetch_sub(1, std::memory_order_seq_cst);
}

}  // namespace asyncd::backends
