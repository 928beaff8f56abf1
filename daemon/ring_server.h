#pragma once

// The local ring's daemon side (asyncd/ring.h): the ring socket, the
// handshake, and the poller thread that serves every ring.

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "asyncd/ring.h"
#include "daemon/caller.h"
#include "daemon/ring.h"

namespace asyncd::daemon {

class Service;

struct RingServerOptions {
  std::string path;      // server.ring_socket
  uint32_t mode = 0660;  // server.socket_mode
  int64_t gid = -1;      // server.socket_group, resolved; -1 = unchanged
  uint32_t spin_us = 0;  // [ring] spin_us: how long the idle poller spins before it sleeps
};

/// The layout of a ring's region for `sq` and `cq` entries and a buffer area
/// of `buffer_bytes`: control block, SQ, CQ, then the buffer area on a
/// BUFFER_ALIGN boundary. Pure.
RingRegion RingLayout(uint32_t sq, uint32_t cq, uint64_t buffer_bytes);

/// Checks a setup message against ring.h and fills in its defaults
/// (sq_entries, cq_entries, buffer_bytes). INVALID_ARGUMENT naming the
/// field; RESOURCE_EXHAUSTED when the buffer area is over
/// `max_buffered_bytes`. Pure.
[[nodiscard]] absl::Status CheckRingSetup(asyncd_ring_setup& setup, uint64_t max_buffered_bytes);

/// The ring socket (SOCK_SEQPACKET) and one poller thread for every ring.
/// The poller answers handshakes too, without blocking: a connection that
/// has not sent its setup within kSetupWaitMs is closed. It drains each
/// ring's entries in bounded batches, round-robin, spins up to spin_us when
/// idle, then sets NEED_WAKEUP on every ring and sleeps in epoll on their
/// submit eventfds and sockets.
class RingServer {
 public:
  /// Entries one ring may have taken per pass: no ring starves another.
  static constexpr uint32_t kBatch = 128;
  /// While rings keep it busy, the poller looks at accepts and hang-ups
  /// this often.
  static constexpr int64_t kBusyPollNs = 1'000'000;
  /// A connection's time to send its setup.
  static constexpr int kSetupWaitMs = 5000;
  /// Handshakes waiting at most: more connections are closed at once.
  static constexpr size_t kMaxPending = 64;

  /// Binds the ring socket at options.path (a stale file is replaced; a
  /// live one is FAILED_PRECONDITION). `service` must outlive the server.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<RingServer>> Bind(Service& service,
                                                                        RingServerOptions options);
  /// Stop(), then releases the socket.
  ~RingServer();
  RingServer(const RingServer&) = delete;
  RingServer& operator=(const RingServer&) = delete;

  /// Starts the poller. Once.
  void Start();
  /// Ends every ring (UNAVAILABLE, reason RESTART for a live restart, else
  /// DRAINING), cancelling what they still have in flight, and waits for
  /// their ops to end; then joins the poller, closes the socket and removes
  /// its file (when it is still ours). Blocks. Idempotent.
  void Stop(bool restart = false);

  const std::string& path() const { return options_.path; }
  /// Rings attached now. Any thread.
  uint32_t rings() const { return ring_count_.load(std::memory_order_relaxed); }

 private:
  // What an epoll event is about.
  struct Tag {
    enum Kind { kListen, kWake, kPending, kSubmit, kConn } kind;
    void* owner = nullptr;  // its Pending or Slot, which stays put until reaped
  };
  struct Pending {
    int conn = -1;
    int64_t deadline_ns = 0;
    Tag tag{Tag::kPending};
  };
  struct Slot {
    std::unique_ptr<Ring> ring;
    Tag submit_tag{Tag::kSubmit};
    Tag conn_tag{Tag::kConn};
  };

  RingServer(Service& service, RingServerOptions options, int fd, ino_t inode);
  void Loop();
  // Handles what epoll reported; waits up to `timeout_ms` (0: just looks).
  void Poll(int timeout_ms);
  void AcceptAll();
  // Reads a pending connection's setup and answers it; it becomes a ring,
  // or is closed.
  void Answer(Pending& pending);
  // The handshake proper: a ring, or why not (the reply says).
  absl::StatusOr<std::unique_ptr<Ring>> SetUp(asyncd_ring_setup& setup, const Caller& caller,
                                              int conn, asyncd_ring_setup_reply& reply);
  void AddRing(std::unique_ptr<Ring> ring);
  // Ends the rings that can end; drops closed handshakes.
  void Reap(int64_t now_ns);
  void Watch(int fd, Tag* tag, uint32_t events);

  Service& service_;
  const RingServerOptions options_;
  int fd_;
  const ino_t inode_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  Tag listen_tag_{Tag::kListen};
  Tag wake_tag_{Tag::kWake};
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> restart_{false};
  std::atomic<uint32_t> ring_count_{0};
  bool stopped_ = false;

  // The poller's alone.
  std::vector<std::unique_ptr<Pending>> pending_;
  std::vector<std::unique_ptr<Slot>> rings_;
  size_t next_first_ = 0;  // round-robin: the ring served first next pass
};

}  // namespace asyncd::daemon
