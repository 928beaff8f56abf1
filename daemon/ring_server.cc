#include "daemon/ring_server.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/handover.h"
#include "daemon/listener.h"
#include "daemon/service.h"
#include "src/core/clock.h"

namespace asyncd::daemon {
namespace {

// A spin-wait hint to the CPU (and to its sibling hyperthread).
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

constexpr uint64_t AlignUp(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }
constexpr bool PowerOfTwo(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

// The region, sealed at its size, mapped here, the submit eventfd and the
// completion pipe.
absl::StatusOr<RingRegion> MakeRegion(RingRegion r) {
  r.memfd = memfd_create("asyncd-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (r.memfd < 0) return absl::ErrnoToStatus(errno, "ring: memfd_create");
  auto fail = [&](const char* what) {
    absl::Status s = absl::ErrnoToStatus(errno, absl::StrCat("ring: ", what));
    if (r.base != nullptr) munmap(r.base, r.bytes);
    for (int fd : {r.memfd, r.submit_fd, r.complete_fd, r.complete_write_fd}) {
      if (fd >= 0) close(fd);
    }
    return s;
  };
  if (ftruncate(r.memfd, static_cast<off_t>(r.bytes)) != 0) return fail("ftruncate");
  // Sealed before the client sees it: it cannot shrink the region under
  // the daemon's mapping (a SIGBUS here).
  if (fcntl(r.memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return fail("sealing the memfd");
  }
  void* base = mmap(nullptr, r.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, r.memfd, 0);
  if (base == MAP_FAILED) return fail("mmap");
  r.base = base;
  // The daemon never reads the submit eventfd (edge-triggered in epoll):
  // a client that reads it, or sets it blocking, can stall nothing.
  r.submit_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (r.submit_fd < 0) return fail("eventfd");
  // A pipe, not an eventfd: an eventfd's blocking mode is the client's to
  // change too, which could make the daemon's writes wait. The write end's
  // is the daemon's alone.
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return fail("pipe2");
  r.complete_fd = pipe_fds[0];
  r.complete_write_fd = pipe_fds[1];
  if (fcntl(r.complete_write_fd, F_SETFL, O_NONBLOCK) != 0) return fail("fcntl");
  return r;
}

}  // namespace

RingRegion RingLayout(uint32_t sq, uint32_t cq, uint64_t buffer_bytes) {
  RingRegion r;
  r.sq_entries = sq;
  r.cq_entries = cq;
  r.sq_offset = sizeof(asyncd_ring_ctl);
  r.cq_offset = r.sq_offset + uint64_t{sq} * sizeof(asyncd_ring_sqe);
  r.buffer_offset =
      AlignUp(r.cq_offset + uint64_t{cq} * sizeof(asyncd_ring_cqe), ASYNCD_RING_BUFFER_ALIGN);
  r.buffer_bytes = buffer_bytes;
  r.bytes = r.buffer_offset + buffer_bytes;
  return r;
}

absl::Status CheckRingSetup(asyncd_ring_setup& setup, uint64_t max_buffered_bytes) {
  if (setup.magic != ASYNCD_RING_MAGIC) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "magic: 0x%08x is not ASYNCD_RING_MAGIC 0x%08x", setup.magic, ASYNCD_RING_MAGIC));
  }
  if (setup.version != ASYNCD_RING_VERSION) {
    return absl::InvalidArgumentError(absl::StrCat(
        "version: ", setup.version, " is not supported; this daemon speaks ", ASYNCD_RING_VERSION));
  }
  if (setup.session_id == 0) return absl::InvalidArgumentError("session_id: 0 is not a session");
  for (size_t i = 0; i < std::size(setup.reserved); ++i) {
    if (setup.reserved[i] != 0) {
      return absl::InvalidArgumentError(absl::StrCat("reserved[", i, "]: must be 0"));
    }
  }
  const uint32_t sq = setup.sq_entries != 0 ? setup.sq_entries : ASYNCD_RING_DEFAULT_SQ_ENTRIES;
  if (!PowerOfTwo(sq) || sq > ASYNCD_RING_MAX_SQ_ENTRIES) {
    return absl::InvalidArgumentError(
        absl::StrCat("sq_entries: ", setup.sq_entries, " is not a power of two in 1..",
                     ASYNCD_RING_MAX_SQ_ENTRIES, " (0 = ", ASYNCD_RING_DEFAULT_SQ_ENTRIES, ")"));
  }
  const uint32_t cq = setup.cq_entries != 0 ? setup.cq_entries : 2 * sq;
  if (!PowerOfTwo(cq) || cq < sq || cq > ASYNCD_RING_MAX_CQ_ENTRIES) {
    return absl::InvalidArgumentError(
        absl::StrCat("cq_entries: ", setup.cq_entries, " is not a power of two in sq_entries (", sq,
                     ")..", ASYNCD_RING_MAX_CQ_ENTRIES, " (0 = 2 x sq_entries)"));
  }
  const uint64_t buffer =
      setup.buffer_bytes != 0 ? setup.buffer_bytes : ASYNCD_RING_DEFAULT_BUFFER_BYTES;
  if (buffer % ASYNCD_RING_BUFFER_ALIGN != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "buffer_bytes: ", setup.buffer_bytes, " is not a multiple of ", ASYNCD_RING_BUFFER_ALIGN));
  }
  if (buffer > max_buffered_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "buffer_bytes: ", buffer, " is over limits.max_buffered_bytes ", max_buffered_bytes));
  }
  setup.sq_entries = sq;
  setup.cq_entries = cq;
  setup.buffer_bytes = buffer;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RingServer>> RingServer::Bind(Service& service,
                                                             RingServerOptions options) {
  absl::StatusOr<BoundUnixSocket> bound =
      BindUnixSocket(options.path, SOCK_SEQPACKET, options.mode, options.gid, 64);
  if (!bound.ok()) return bound.status();
  return std::unique_ptr<RingServer>(
      new RingServer(service, std::move(options), bound->fd, bound->inode));
}

RingServer::RingServer(Service& service, RingServerOptions options, int fd, ino_t inode)
    : service_(service), options_(std::move(options)), fd_(fd), inode_(inode) {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  Watch(fd_, &listen_tag_, EPOLLIN);
  Watch(wake_fd_, &wake_tag_, EPOLLIN);
}

RingServer::~RingServer() {
  Stop();
  close(epoll_fd_);
  close(wake_fd_);
}

void RingServer::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void RingServer::Stop(bool restart) {
  if (stopped_) return;
  stopped_ = true;
  restart_.store(restart, std::memory_order_relaxed);
  stopping_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  for (auto& p : pending_) {
    if (p->conn >= 0) close(p->conn);
  }
  pending_.clear();
  // Without a poller (never started) the rings are ended here.
  for (auto& slot : rings_) {
    slot->ring->Shutdown(restart);
    slot->ring->Close();
    slot->ring->Detach();
  }
  rings_.clear();
  close(fd_);
  struct stat st;
  if (lstat(options_.path.c_str(), &st) == 0 && st.st_ino == inode_) unlink(options_.path.c_str());
}

void RingServer::Watch(int fd, Tag* tag, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = tag;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    spdlog::error("ring poller: epoll_ctl: {}", std::strerror(errno));
  }
}

void RingServer::Loop() {
  const int64_t spin_ns = int64_t{options_.spin_us} * 1000;
  int64_t idle_since = core::MonoNanos();
  int64_t last_poll = idle_since;
  bool shut = false;
  for (;;) {
    const bool stopping = stopping_.load(std::memory_order_acquire);
    if (stopping && !shut) {
      const bool restart = restart_.load(std::memory_order_relaxed);
      for (auto& slot : rings_) slot->ring->Shutdown(restart);
      shut = true;
    }
    uint32_t work = 0;
    const size_t n = rings_.size();
    for (size_t k = 0; k < n; ++k) work += rings_[(next_first_ + k) % n]->ring->Pass(kBatch);
    if (n != 0) next_first_ = (next_first_ + 1) % n;
    const int64_t now = core::MonoNanos();
    Reap(now);
    if (stopping && rings_.empty()) return;
    if (work > 0) {
      idle_since = now;
      // Accepts and hang-ups, without waiting; at most once a millisecond
      // while busy, so that a full ring's passes are not a system call each.
      if (now - last_poll >= kBusyPollNs) {
        Poll(0);
        last_poll = now;
      }
      continue;
    }
    if (!rings_.empty() && now - idle_since < spin_ns) {
      CpuRelax();
      continue;
    }
    // Sleep, unless a client submitted after its last look at the flag:
    // it writes the eventfd only when it sees NEED_WAKEUP.
    for (auto& slot : rings_) slot->ring->SetNeedWakeup(true);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    bool busy = false;
    for (auto& slot : rings_) busy = busy || slot->ring->HasWork();
    // A handshake must not wait forever.
    const int timeout_ms = pending_.empty() ? -1 : 250;
    if (!busy && !stopping) Poll(timeout_ms);
    for (auto& slot : rings_) slot->ring->SetNeedWakeup(false);
    idle_since = core::MonoNanos();
  }
}

void RingServer::Poll(int timeout_ms) {
  epoll_event events[64];
  const int n = epoll_wait(epoll_fd_, events, 64, timeout_ms);
  for (int i = 0; i < n; ++i) {
    Tag* tag = static_cast<Tag*>(events[i].data.ptr);
    switch (tag->kind) {
      case Tag::kListen:
        AcceptAll();
        break;
      case Tag::kWake: {
        uint64_t v;
        (void)!read(wake_fd_, &v, sizeof v);  // ours alone, non-blocking
        break;
      }
      case Tag::kPending:
        Answer(*static_cast<Pending*>(tag->owner));
        break;
      case Tag::kSubmit:
        break;  // edge-triggered: the wake-up is all it says
      case Tag::kConn: {
        Slot& slot = *static_cast<Slot*>(tag->owner);
        bool gone = (events[i].events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) != 0;
        // The client has nothing more to say: whatever it sends is dropped.
        char sink[64];
        for (int k = 0; k < 16 && !gone; ++k) {
          const ssize_t got = recv(slot.ring->conn(), sink, sizeof sink, MSG_DONTWAIT);
          if (got > 0) continue;
          gone = got == 0 || (errno != EAGAIN && errno != EINTR);
          break;
        }
        if (gone) {
          epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, slot.ring->conn(), nullptr);
          slot.ring->ClientGone();
        }
        break;
      }
    }
  }
}

void RingServer::AcceptAll() {
  for (;;) {
    const int conn = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (conn < 0) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        spdlog::warn("accept on {}: {}", options_.path, std::strerror(errno));
      }
      return;
    }
    if (pending_.size() >= kMaxPending) {
      close(conn);  // the handshakes waiting come first
      continue;
    }
    auto p = std::make_unique<Pending>();
    p->conn = conn;
    p->deadline_ns = core::MonoNanos() + int64_t{kSetupWaitMs} * 1'000'000;
    p->tag.owner = p.get();
    Watch(conn, &p->tag, EPOLLIN | EPOLLRDHUP);
    pending_.push_back(std::move(p));
  }
}

void RingServer::Answer(Pending& p) {
  if (p.conn < 0) return;
  // One byte more than a setup: a longer message shows as such.
  alignas(asyncd_ring_setup) char buf[sizeof(asyncd_ring_setup) + 1];
  const ssize_t got = recv(p.conn, buf, sizeof buf, MSG_DONTWAIT);
  if (got < 0 && (errno == EAGAIN || errno == EINTR)) return;
  const int conn = p.conn;
  p.conn = -1;  // the ring's, or closed below
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, conn, nullptr);
  if (got <= 0) {
    close(conn);
    return;
  }
  asyncd_ring_setup_reply reply{};
  reply.magic = ASYNCD_RING_MAGIC;
  reply.version = ASYNCD_RING_VERSION;
  absl::StatusOr<std::unique_ptr<Ring>> ring;
  std::optional<PeerCred> cred = PeerCredOf(conn);
  if (static_cast<size_t>(got) != sizeof(asyncd_ring_setup)) {
    ring = absl::InvalidArgumentError(absl::StrCat("setup: ", got == sizeof buf ? "over " : "", got,
                                                   " bytes; struct asyncd_ring_setup is ",
                                                   sizeof(asyncd_ring_setup)));
  } else if (!cred) {
    ring = absl::PermissionDeniedError("the ring socket's peer has no credentials");
  } else {
    asyncd_ring_setup setup;
    std::memcpy(&setup, buf, sizeof setup);
    ring = SetUp(setup, CallerFromPeerCred(*cred, service_.admin_rules()), conn, reply);
  }
  if (!ring.ok()) {
    reply.status = static_cast<uint32_t>(ring.status().code());
    std::snprintf(reply.message, sizeof reply.message, "%s",
                  std::string(ring.status().message()).c_str());
    (void)SendWithDescriptors(conn, {reinterpret_cast<const char*>(&reply), sizeof reply}, {});
    close(conn);
    return;
  }
  const RingRegion& r = (*ring)->region();
  const int fds[] = {r.memfd, r.submit_fd, r.complete_fd};
  if (const int err =
          SendWithDescriptors(conn, {reinterpret_cast<const char*>(&reply), sizeof reply}, fds);
      err != 0) {
    spdlog::warn("ring for session {}: the reply did not go: {}", (*ring)->session_id(),
                 std::strerror(err));
    (*ring)->Detach();
    close(conn);
    return;
  }
  (*ring)->TakeConn(conn);
  AddRing(*std::move(ring));
}

absl::StatusOr<std::unique_ptr<Ring>> RingServer::SetUp(asyncd_ring_setup& setup,
                                                        const Caller& caller, int conn,
                                                        asyncd_ring_setup_reply& reply) {
  if (service_.draining()) {
    return absl::UnavailableError("the daemon is draining: it makes no new ring");
  }
  if (absl::Status s = CheckRingSetup(setup, service_.live().max_buffered_bytes()); !s.ok()) {
    return s;
  }
  absl::StatusOr<std::shared_ptr<SessionMeta>> owned =
      service_.sessions().Own(caller, setup.session_id);
  if (!owned.ok()) return owned.status();
  std::shared_ptr<SessionMeta> meta = *std::move(owned);
  if (meta->has_ring.exchange(true)) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", setup.session_id, " has a ring already: one per session"));
  }
  if (absl::Status charged = service_.budget().Reserve(0, setup.buffer_bytes); !charged.ok()) {
    meta->has_ring.store(false);
    return absl::ResourceExhaustedError(absl::StrCat("buffer_bytes: ", charged.message()));
  }
  absl::StatusOr<RingRegion> region =
      MakeRegion(RingLayout(setup.sq_entries, setup.cq_entries, setup.buffer_bytes));
  if (!region.ok()) {
    service_.budget().ReleaseBytes(setup.buffer_bytes);
    meta->has_ring.store(false);
    return region.status();
  }
  // From here the ring owns the region, the charge and the session's ring place.
  auto ring = std::make_unique<Ring>(service_, std::move(meta), *region, wake_fd_);
  if (absl::Status attached = ring->Attach(caller); !attached.ok()) return attached;
  reply.sq_entries = region->sq_entries;
  reply.cq_entries = region->cq_entries;
  reply.max_op_bytes = service_.live().max_op_bytes();
  reply.region_bytes = region->bytes;
  reply.sq_offset = region->sq_offset;
  reply.cq_offset = region->cq_offset;
  reply.buffer_offset = region->buffer_offset;
  reply.buffer_bytes = region->buffer_bytes;
  (void)conn;
  return ring;
}

void RingServer::AddRing(std::unique_ptr<Ring> ring) {
  auto slot = std::make_unique<Slot>();
  slot->ring = std::move(ring);
  slot->submit_tag.owner = slot.get();
  slot->conn_tag.owner = slot.get();
  Watch(slot->ring->submit_fd(), &slot->submit_tag, EPOLLIN | EPOLLET);
  Watch(slot->ring->conn(), &slot->conn_tag, EPOLLIN | EPOLLRDHUP);
  spdlog::debug("ring for session {}: {} submission and {} completion entries, {} buffer bytes",
                slot->ring->session_id(), slot->ring->region().sq_entries,
                slot->ring->region().cq_entries, slot->ring->region().buffer_bytes);
  rings_.push_back(std::move(slot));
  ring_count_.fetch_add(1, std::memory_order_relaxed);
}

void RingServer::Reap(int64_t now_ns) {
  std::erase_if(pending_, [&](const std::unique_ptr<Pending>& p) {
    if (p->conn >= 0 && now_ns < p->deadline_ns) return false;
    if (p->conn >= 0) close(p->conn);  // no setup in time
    return true;
  });
  std::erase_if(rings_, [&](const std::unique_ptr<Slot>& slot) {
    Ring& ring = *slot->ring;
    if (!ring.Finishable()) return false;
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, ring.submit_fd(), nullptr);
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, ring.conn(), nullptr);
    ring.Close();
    ring.Detach();
    ring_count_.fetch_sub(1, std::memory_order_relaxed);
    return true;
  });
}

}  // namespace asyncd::daemon
