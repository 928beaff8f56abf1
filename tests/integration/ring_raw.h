#pragma once

// The client side of asyncd/ring.h at its rawest, for tests: handshake,
// mapping, submit and reap, written from the header alone. Not thread-safe.
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "asyncd/ring.h"

namespace asyncd::testing {

/// A ring the daemon set up, mapped here.
class RawRing {
 public:
  RawRing(int sock, const asyncd_ring_setup_reply& reply, int memfd, int submit_fd, int complete_fd)
      : sock_(sock),
        reply_(reply),
        memfd_(memfd),
        submit_fd_(submit_fd),
        complete_fd_(complete_fd) {
    void* base = mmap(nullptr, reply.region_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    base_ = base == MAP_FAILED ? nullptr : static_cast<uint8_t*>(base);
  }
  ~RawRing() {
    if (base_ != nullptr) munmap(base_, reply_.region_bytes);
    for (int fd : {sock_, memfd_, submit_fd_, complete_fd_}) {
      if (fd >= 0) close(fd);
    }
  }
  RawRing(const RawRing&) = delete;
  RawRing& operator=(const RawRing&) = delete;

  bool mapped() const { return base_ != nullptr; }
  const asyncd_ring_setup_reply& reply() const { return reply_; }
  asyncd_ring_ctl* ctl() { return reinterpret_cast<asyncd_ring_ctl*>(base_); }
  uint8_t* buffer() { return base_ + reply_.buffer_offset; }
  uint32_t flags() { return __atomic_load_n(&ctl()->flags, __ATOMIC_ACQUIRE); }
  int memfd() const { return memfd_; }
  int sock() const { return sock_; }
  /// Closes the ring socket: the ring's lifeline.
  void Hangup() {
    close(sock_);
    sock_ = -1;
  }

  /// The next free entry, zeroed, or null when the SQ is full.
  asyncd_ring_sqe* Next() {
    const uint32_t head = __atomic_load_n(&ctl()->sq_head, __ATOMIC_ACQUIRE);
    if (sq_tail_ - head >= reply_.sq_entries) return nullptr;
    auto* sq = reinterpret_cast<asyncd_ring_sqe*>(base_ + reply_.sq_offset);
    asyncd_ring_sqe* e = &sq[sq_tail_ & (reply_.sq_entries - 1)];
    std::memset(e, 0, sizeof *e);
    ++sq_tail_;
    return e;
  }
  /// Publishes what Next handed out, waking the daemon if it sleeps.
  void Submit() {
    __atomic_store_n(&ctl()->sq_tail, sq_tail_, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if ((flags() & ASYNCD_RING_NEED_WAKEUP) != 0) Kick();
  }
  /// Writes the submit eventfd (after making room in the CQ, say).
  void Kick() {
    const uint64_t one = 1;
    (void)!write(submit_fd_, &one, sizeof one);
  }
  /// Sets the client's SQ tail as is (a hostile client's indices).
  void ForceSqTail(uint32_t tail) {
    sq_tail_ = tail;
    Submit();
  }

  /// Reaps what the CQ holds now into `out`; returns how many.
  size_t Reap(std::vector<asyncd_ring_cqe>& out) {
    const uint32_t tail = __atomic_load_n(&ctl()->cq_tail, __ATOMIC_ACQUIRE);
    auto* cq = reinterpret_cast<asyncd_ring_cqe*>(base_ + reply_.cq_offset);
    size_t n = 0;
    for (; cq_head_ != tail; ++cq_head_, ++n) out.push_back(cq[cq_head_ & (reply_.cq_entries - 1)]);
    __atomic_store_n(&ctl()->cq_head, cq_head_, __ATOMIC_RELEASE);
    return n;
  }
  /// Reaps until `n` CQEs came (sleeping on the completion eventfd between
  /// looks, as ring.h says), or `timeout` passed. Kicks the daemon when it
  /// holds overflowed completions.
  std::vector<asyncd_ring_cqe> Wait(size_t n,
                                    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::vector<asyncd_ring_cqe> out;
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (out.size() < n && std::chrono::steady_clock::now() < until) {
      if (Reap(out) > 0) {
        if ((flags() & ASYNCD_RING_CQ_OVERFLOW) != 0) Kick();
        continue;
      }
      __atomic_or_fetch(&ctl()->client_flags, ASYNCD_RING_CQ_WAITING, __ATOMIC_SEQ_CST);
      __atomic_thread_fence(__ATOMIC_SEQ_CST);
      if (__atomic_load_n(&ctl()->cq_tail, __ATOMIC_ACQUIRE) == cq_head_) {
        pollfd p{complete_fd_, POLLIN, 0};
        if (poll(&p, 1, 20) > 0) {
          uint64_t v;
          (void)!read(complete_fd_, &v, sizeof v);
        }
      }
      __atomic_and_fetch(&ctl()->client_flags, ~ASYNCD_RING_CQ_WAITING, __ATOMIC_SEQ_CST);
    }
    return out;
  }
  /// Whether the daemon closed the ring socket within `timeout`.
  bool WaitSocketClosed(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    pollfd p{sock_, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return false;
    char c;
    return recv(sock_, &c, 1, MSG_DONTWAIT) == 0;
  }

 private:
  int sock_;
  asyncd_ring_setup_reply reply_;
  int memfd_, submit_fd_, complete_fd_;
  uint8_t* base_ = nullptr;
  uint32_t sq_tail_ = 0;
  uint32_t cq_head_ = 0;
};

/// What the daemon answered a setup: the reply, and the ring when it is OK.
struct RingSetupResult {
  asyncd_ring_setup_reply reply{};
  size_t reply_bytes = 0;
  std::unique_ptr<RawRing> ring;
};

/// A setup for `session` with the header's defaults.
inline asyncd_ring_setup RingSetup(uint64_t session, uint32_t sq = 0, uint32_t cq = 0,
                                   uint64_t buffer_bytes = 0) {
  asyncd_ring_setup s{};
  s.magic = ASYNCD_RING_MAGIC;
  s.version = ASYNCD_RING_VERSION;
  s.session_id = session;
  s.sq_entries = sq;
  s.cq_entries = cq;
  s.buffer_bytes = buffer_bytes;
  return s;
}

/// Connects to the ring socket at `path`, sends `bytes` as the setup message,
/// and reads the answer.
inline RingSetupResult OpenRingRaw(const std::string& path, const void* bytes, size_t size) {
  RingSetupResult out;
  const int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  if (connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      send(sock, bytes, size, MSG_NOSIGNAL) != static_cast<ssize_t>(size)) {
    close(sock);
    return out;
  }
  alignas(cmsghdr) char control[CMSG_SPACE(3 * sizeof(int))];
  iovec iov{&out.reply, sizeof out.reply};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  pollfd p{sock, POLLIN, 0};
  const ssize_t got = poll(&p, 1, 10000) > 0 ? recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) : -1;
  out.reply_bytes = got > 0 ? static_cast<size_t>(got) : 0;
  int fds[3] = {-1, -1, -1};
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
        c->cmsg_len == CMSG_LEN(sizeof fds)) {
      std::memcpy(fds, CMSG_DATA(c), sizeof fds);
    }
  }
  if (got == static_cast<ssize_t>(sizeof out.reply) && out.reply.status == 0 && fds[0] >= 0) {
    out.ring = std::make_unique<RawRing>(sock, out.reply, fds[0], fds[1], fds[2]);
  } else {
    for (int fd : fds) {
      if (fd >= 0) close(fd);
    }
    close(sock);
  }
  return out;
}

inline RingSetupResult OpenRing(const std::string& path, const asyncd_ring_setup& setup) {
  return OpenRingRaw(path, &setup, sizeof setup);
}

}  // namespace asyncd::testing
