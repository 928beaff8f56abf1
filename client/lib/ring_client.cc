#include "asyncd/ring_client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <ctime>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asyncd/connection.h"
#include "client/lib/string_compat.h"

namespace asyncd::client {
namespace {

using internal::ToAbsl;

// Closes a descriptor unless released.
class OwnedFd {
 public:
  explicit OwnedFd(int fd = -1) : fd_(fd) {}
  OwnedFd(OwnedFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  OwnedFd& operator=(OwnedFd&&) = delete;
  ~OwnedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

absl::Status Errno(int error, std::string_view what) {
  return absl::ErrnoToStatus(error, ToAbsl(what));
}

absl::Status ProtocolError(std::string_view why) {
  return absl::InternalError(absl::StrCat("ring setup: ", ToAbsl(why)));
}

// A range of `count` items of `size` bytes at `offset` lies inside `total`
// bytes (without overflowing on the way).
bool Inside(uint64_t offset, uint64_t count, uint64_t size, uint64_t total) {
  if (offset > total || count > (total - offset) / size) return false;
  return true;
}

// Waits up to `timeout` for `fd` to be readable; DEADLINE_EXCEEDED after.
absl::Status AwaitReadable(int fd, std::chrono::milliseconds timeout, std::string_view what) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count())));
    if (n > 0) return absl::OkStatus();
    if (n == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat(ToAbsl(what), ": no answer within ", timeout.count(), " ms"));
    }
    if (errno != EINTR) return Errno(errno, "ring setup: poll");
  }
}

uint32_t Load(const uint32_t& word) {
  return std::atomic_ref<const uint32_t>(word).load(std::memory_order_acquire);
}
void Store(uint32_t& word, uint32_t value) {
  std::atomic_ref<uint32_t>(word).store(value, std::memory_order_release);
}

}  // namespace

absl::StatusOr<std::string> RingSocketPath(std::string_view target) {
  const std::string normalized = NormalizeTarget(target);
  std::string_view path = normalized;
  if (path.starts_with("unix://")) {
    path.remove_prefix(7);  // unix:///abs/path
  } else if (path.starts_with("unix:") && !path.starts_with("unix-abstract:")) {
    path.remove_prefix(5);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ring is for clients on the daemon's host: target ", normalized,
        " is not a unix socket path (name the ring socket in RingOptions.ring_socket)"));
  }
  return absl::StrCat(ToAbsl(path), ".ring");
}

absl::StatusOr<RingClient> RingClient::Open(std::string_view target, uint64_t session_id,
                                            const RingOptions& options) {
  std::string path = options.ring_socket;
  if (path.empty()) {
    absl::StatusOr<std::string> derived = RingSocketPath(target);
    if (!derived.ok()) return derived.status();
    path = *std::move(derived);
  }
  const std::string what = "ring socket " + path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": path too long"));
  }
  std::copy(path.begin(), path.end(), addr.sun_path);
  OwnedFd sock(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (sock.get() < 0) return Errno(errno, "socket(AF_UNIX, SOCK_SEQPACKET)");
  if (::connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int error = errno;
    // Nothing listens: the daemon is not running, or has no ring socket.
    if (error == ENOENT || error == ECONNREFUSED) {
      return absl::UnavailableError(absl::StrCat(what, ": connect: ", strerror(error)));
    }
    return Errno(error, absl::StrCat(what, ": connect"));
  }

  asyncd_ring_setup setup{};
  setup.magic = ASYNCD_RING_MAGIC;
  setup.version = ASYNCD_RING_VERSION;
  setup.session_id = session_id;
  setup.sq_entries = options.sq_entries;
  setup.cq_entries = options.cq_entries;
  setup.buffer_bytes = options.buffer_bytes;
  if (::send(sock.get(), &setup, sizeof(setup), MSG_NOSIGNAL) != sizeof(setup)) {
    return absl::UnavailableError(absl::StrCat(what, ": send: ", strerror(errno)));
  }

  if (absl::Status s = AwaitReadable(sock.get(), options.setup_timeout, what); !s.ok()) return s;
  asyncd_ring_setup_reply reply{};
  iovec iov{&reply, sizeof(reply)};
  // Room for more descriptors than the protocol sends, to tell a wrong
  // count from a right one.
  alignas(cmsghdr) char control[CMSG_SPACE(8 * sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(sock.get(), &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::UnavailableError(absl::StrCat(what, ": recvmsg: ", strerror(errno)));
  std::vector<OwnedFd> fds;  // closed on every error below
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.emplace_back(fd);
    }
  }
  if (n == 0) {
    return absl::UnavailableError(absl::StrCat(what, ": the daemon hung up without answering"));
  }
  if (static_cast<size_t>(n) != sizeof(reply) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
    return ProtocolError(absl::StrCat("a reply of ", n, " bytes, not ", sizeof(reply)));
  }
  if (reply.magic != ASYNCD_RING_MAGIC) {
    return ProtocolError(absl::StrCat("bad magic 0x", absl::Hex(reply.magic)));
  }
  if (reply.status != 0) {
    const std::string_view message(reply.message, strnlen(reply.message, sizeof(reply.message)));
    const absl::StatusCode code = reply.status <= 16 ? static_cast<absl::StatusCode>(reply.status)
                                                     : absl::StatusCode::kUnknown;
    return absl::Status(code, ToAbsl(message));
  }
  if (fds.size() != 3) {
    return ProtocolError(absl::StrCat(fds.size(), " descriptors with the reply, not 3"));
  }
  // The reply is the daemon's word on the layout: check it before mapping,
  // so that a wrong one is an error rather than a fault later.
  const uint32_t sq = reply.sq_entries, cq = reply.cq_entries;
  if (!std::has_single_bit(sq) || sq > ASYNCD_RING_MAX_SQ_ENTRIES) {
    return ProtocolError(absl::StrCat("sq_entries ", sq));
  }
  if (!std::has_single_bit(cq) || cq < sq || cq > ASYNCD_RING_MAX_CQ_ENTRIES) {
    return ProtocolError(absl::StrCat("cq_entries ", cq));
  }
  const uint64_t total = reply.region_bytes;
  if (total < sizeof(asyncd_ring_ctl) || total > (uint64_t{1} << 40) ||
      reply.sq_offset % alignof(asyncd_ring_sqe) != 0 ||
      reply.cq_offset % alignof(asyncd_ring_cqe) != 0 ||
      !Inside(reply.sq_offset, sq, sizeof(asyncd_ring_sqe), total) ||
      !Inside(reply.cq_offset, cq, sizeof(asyncd_ring_cqe), total) ||
      !Inside(reply.buffer_offset, reply.buffer_bytes, 1, total)) {
    return ProtocolError(absl::StrCat("a layout that does not fit region_bytes ", total));
  }
  struct stat st;
  if (::fstat(fds[0].get(), &st) != 0) return Errno(errno, "ring setup: fstat of the region");
  if (static_cast<uint64_t>(st.st_size) < total) {
    return ProtocolError(absl::StrCat("a region of ", st.st_size, " bytes, not ", total));
  }
  void* region = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0].get(), 0);
  if (region == MAP_FAILED) return Errno(errno, "ring setup: mmap of the region");

  RingClient ring;
  auto* base = static_cast<uint8_t*>(region);
  ring.region_ = region;
  ring.region_bytes_ = total;
  ring.ctl_ = reinterpret_cast<asyncd_ring_ctl*>(base);
  ring.sqes_ = reinterpret_cast<asyncd_ring_sqe*>(base + reply.sq_offset);
  ring.cqes_ = reinterpret_cast<const asyncd_ring_cqe*>(base + reply.cq_offset);
  ring.buffer_ = std::span<uint8_t>(base + reply.buffer_offset, reply.buffer_bytes);
  ring.sq_mask_ = sq - 1;
  ring.cq_mask_ = cq - 1;
  ring.max_op_bytes_ = reply.max_op_bytes;
  // A fresh ring starts at 0, but nothing says it must: start where it is.
  ring.sqe_tail_ = ring.sq_tail_ = Load(ring.ctl_->sq_tail);
  ring.sq_head_ = Load(ring.ctl_->sq_head);
  ring.cq_head_ = Load(ring.ctl_->cq_head);
  ring.socket_fd_ = sock.release();
  ring.submit_fd_ = fds[1].release();
  ring.completion_fd_ = fds[2].release();
  if (::fcntl(ring.completion_fd_, F_SETFL, O_NONBLOCK) != 0) {
    return Errno(errno, "ring setup: the completion pipe");
  }
  return ring;  // the memfd closes with fds: the mapping keeps the memory
}

RingClient::RingClient(RingClient&& other) noexcept { *this = std::move(other); }

RingClient& RingClient::operator=(RingClient&& other) noexcept {
  if (this == &other) return *this;
  Reset();
  socket_fd_ = std::exchange(other.socket_fd_, -1);
  submit_fd_ = std::exchange(other.submit_fd_, -1);
  completion_fd_ = std::exchange(other.completion_fd_, -1);
  region_ = std::exchange(other.region_, nullptr);
  region_bytes_ = std::exchange(other.region_bytes_, 0);
  ctl_ = std::exchange(other.ctl_, nullptr);
  sqes_ = std::exchange(other.sqes_, nullptr);
  cqes_ = std::exchange(other.cqes_, nullptr);
  buffer_ = std::exchange(other.buffer_, {});
  sq_mask_ = std::exchange(other.sq_mask_, 0);
  cq_mask_ = std::exchange(other.cq_mask_, 0);
  max_op_bytes_ = std::exchange(other.max_op_bytes_, 0);
  sqe_tail_ = other.sqe_tail_;
  sq_tail_ = other.sq_tail_;
  sq_head_ = other.sq_head_;
  cq_head_ = other.cq_head_;
  socket_closed_.store(other.socket_closed_.load());
  return *this;
}

RingClient::~RingClient() { Reset(); }

void RingClient::Reset() noexcept {
  if (region_ != nullptr) ::munmap(region_, region_bytes_);
  region_ = nullptr;
  for (int* fd : {&socket_fd_, &submit_fd_, &completion_fd_}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
}

void RingClient::Kick() const {
  const uint64_t one = 1;
  // Only EAGAIN (the counter is full, so the daemon has a wake-up pending)
  // or EBADF (a moved-from client) can fail here; neither needs handling.
  (void)!::write(submit_fd_, &one, sizeof(one));
}

uint32_t RingClient::Submit() {
  const uint32_t n = sqe_tail_ - sq_tail_;
  if (n == 0) return 0;
  sq_tail_ = sqe_tail_;
  Store(ctl_->sq_tail, sq_tail_);
  // Pairs with the daemon's fence between setting NEED_WAKEUP and its last
  // look at sq_tail: either it sees our tail or we see its flag.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (Load(ctl_->flags) & ASYNCD_RING_NEED_WAKEUP) Kick();
  return n;
}

uint32_t RingClient::Ready() const {
  // A daemon that posts more than the ring holds is broken; never read
  // past what the ring can hold.
  return std::min(Load(ctl_->cq_tail) - cq_head_, cq_mask_ + 1);
}

uint32_t RingClient::PeekBatch(std::span<asyncd_ring_cqe> out) const {
  const uint32_t n = std::min<uint32_t>(Ready(), static_cast<uint32_t>(out.size()));
  for (uint32_t i = 0; i < n; ++i) out[i] = cqes_[(cq_head_ + i) & cq_mask_];
  return n;
}

void RingClient::Advance(uint32_t n) {
  if (n == 0) return;
  cq_head_ += n;
  Store(ctl_->cq_head, cq_head_);
  // Pairs with the daemon's fence between setting CQ_OVERFLOW and its last
  // look at cq_head: either it sees the room or we see its flag.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (Load(ctl_->flags) & ASYNCD_RING_CQ_OVERFLOW) Kick();
}

absl::Status RingClient::Wait(uint32_t min_completions, std::chrono::nanoseconds timeout) {
  if (min_completions == 0 || min_completions > cq_entries()) {
    return absl::InvalidArgumentError(absl::StrCat("Wait: min_completions ", min_completions,
                                                   " is not in 1..", cq_entries()));
  }
  const auto start = std::chrono::steady_clock::now();
  const bool forever = timeout == kForever;
  std::atomic_ref<uint32_t> client_flags(ctl_->client_flags);
  while (true) {
    if (Ready() >= min_completions) return absl::OkStatus();
    // Not the CLOSED flag: the daemon sets it before it posts the
    // completions still due, and closes the socket only after them.
    if (socket_closed_.load(std::memory_order_relaxed)) {
      if (Ready() >= min_completions) return absl::OkStatus();
      return Closed();
    }
    std::chrono::nanoseconds left = kForever;
    if (!forever) {
      left = timeout - (std::chrono::steady_clock::now() - start);
      if (left.count() <= 0) {
        return absl::DeadlineExceededError(
            absl::StrCat("Wait: fewer than ", min_completions, " completions in ",
                         std::chrono::duration<double, std::milli>(timeout).count(), " ms"));
      }
    }
    client_flags.store(client_flags.load(std::memory_order_relaxed) | ASYNCD_RING_CQ_WAITING,
                       std::memory_order_relaxed);
    // Pairs with the daemon's fence between publishing cq_tail and reading
    // client_flags: either we see its completions now or it wakes us.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (Ready() < min_completions) {
      pollfd fds[2] = {{completion_fd_, POLLIN, 0}, {socket_fd_, POLLIN, 0}};
      timespec ts{};
      if (!forever) {
        ts.tv_sec = static_cast<time_t>(left.count() / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(left.count() % 1'000'000'000);
      }
      const int n = ::ppoll(fds, 2, forever ? nullptr : &ts, nullptr);
      if (n < 0 && errno != EINTR) {
        const int error = errno;
        client_flags.store(client_flags.load(std::memory_order_relaxed) & ~ASYNCD_RING_CQ_WAITING,
                           std::memory_order_relaxed);
        return Errno(error, "Wait: ppoll");
      }
      if (n > 0 && (fds[0].revents & POLLIN)) {
        // Empties the pipe (non-blocking) for the next wait.
        char drained[64];
        while (::read(completion_fd_, drained, sizeof drained) == sizeof drained) {
        }
      }
      if (n > 0 && fds[1].revents != 0) socket_closed_.store(true, std::memory_order_relaxed);
    }
    client_flags.store(client_flags.load(std::memory_order_relaxed) & ~ASYNCD_RING_CQ_WAITING,
                       std::memory_order_relaxed);
  }
}

absl::Status RingClient::Closed() const {
  const uint32_t flags = Load(ctl_->flags);
  if (flags & ASYNCD_RING_CLOSED) {
    const uint32_t status = Load(ctl_->closed_status);
    const uint32_t reason = Load(ctl_->closed_reason);
    // CLOSED with OK would read as "not closed": that is no state to report.
    const absl::StatusCode code = status != 0 && status <= 16 ? static_cast<absl::StatusCode>(status)
                                                              : absl::StatusCode::kUnknown;
    return absl::Status(code, ToAbsl(absl::StrCat(
                                  "the ring ended: ", ToAbsl(ReasonText(
                                                          static_cast<uint16_t>(reason))))));
  }
  if (!socket_closed_.load(std::memory_order_relaxed)) {
    // The daemon sends nothing after its reply: anything readable is the end.
    pollfd p{socket_fd_, POLLIN, 0};
    if (::poll(&p, 1, 0) > 0 && p.revents != 0) socket_closed_.store(true);
  }
  if (socket_closed_.load(std::memory_order_relaxed)) {
    return absl::UnavailableError("the ring ended: the daemon closed the ring socket");
  }
  return absl::OkStatus();
}

std::string_view RingClient::ReasonText(uint16_t reason) {
  switch (reason) {
    case ASYNCD_RING_REASON_NONE:
      return "no reason";
    case ASYNCD_RING_REASON_BAD_KIND:
      return "kind is not a ring operation";
    case ASYNCD_RING_REASON_BAD_FIELD:
      return "a field the kind does not use, or reserved, is not 0; or unknown flags";
    case ASYNCD_RING_REASON_BAD_OFFSET:
      return "offset below -1";
    case ASYNCD_RING_REASON_BAD_LENGTH:
      return "READ of length 0";
    case ASYNCD_RING_REASON_TOO_LONG:
      return "length over max_op_bytes";
    case ASYNCD_RING_REASON_BAD_BUFFER:
      return "buffer_offset + length past the buffer area";
    case ASYNCD_RING_REASON_BAD_POLL_EVENTS:
      return "no PollEvents bit, or an unknown one";
    case ASYNCD_RING_REASON_BAD_DURATION:
      return "TIMEOUT over 24 h";
    case ASYNCD_RING_REASON_UNKNOWN_HANDLE:
      return "unknown handle";
    case ASYNCD_RING_REASON_SESSION_ENDED:
      return "the session has ended";
    case ASYNCD_RING_REASON_DRAINING:
      return "the daemon is draining";
    case ASYNCD_RING_REASON_OVER_LIMIT:
      return "over a daemon-wide limit (max_inflight_total, pool_queue_depth, ...)";
    case ASYNCD_RING_REASON_BROKEN_INDEX:
      return "the client's indices cannot be (a tail more than entries ahead of its head)";
    case ASYNCD_RING_REASON_RESTART:
      return "a live restart: ask the next daemon for a ring";
    case ASYNCD_RING_REASON_CLIENT_GONE:
      return "the ring socket was closed";
    case ASYNCD_RING_REASON_BAD_HANDLE:
      return "handle 0, which is never a handle";
  }
  return "unknown reason";
}

absl::Status RingClient::ToStatus(const asyncd_ring_cqe& cqe) {
  if (cqe.flags & ASYNCD_RING_CQE_CANCEL_ANSWER) return absl::OkStatus();
  switch (cqe.outcome) {
    case v1::OUTCOME_COMPLETED:
      return cqe.result >= 0 ? absl::OkStatus() : Errno(-cqe.result, "ring op");
    case v1::OUTCOME_CANCELLED:
      return absl::CancelledError("ring op cancelled");
    case v1::OUTCOME_TIMED_OUT:
      return absl::DeadlineExceededError("ring op timed out");
    case v1::OUTCOME_FAILED:
      return cqe.result < 0 ? Errno(-cqe.result, "ring op failed")
                            : absl::InternalError("ring op failed");
    case v1::OUTCOME_REJECTED:
      return absl::Status(cqe.status != 0 && cqe.status <= 16
                              ? static_cast<absl::StatusCode>(cqe.status)
                              : absl::StatusCode::kUnknown,
                          ToAbsl(absl::StrCat("ring op rejected: ",
                                              ToAbsl(ReasonText(cqe.reason)))));
  }
  return absl::UnknownError(absl::StrCat("ring op: outcome ", cqe.outcome));
}

}  // namespace asyncd::client
