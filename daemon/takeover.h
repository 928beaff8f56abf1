#pragma once

// The takeover: a live restart without systemd (`asyncd --takeover`). The
// running daemon listens on a takeover socket (server.takeover_socket, by
// default its gRPC socket's path plus ".takeover"): an AF_UNIX
// SOCK_SEQPACKET socket, mode 0600, that answers only its own uid and root
// (SO_PEERCRED). A successor started with the same config and --takeover
// connects and asks; the daemon hands over as on a restart under systemd
// (Server::HandOver: drain, then the handover package of daemon/handover.h),
// but answers the successor with the package AND its listening gRPC socket
// (SCM_RIGHTS), leaves the socket file in place and exits 0. The successor
// serves on that very socket, so connections made meanwhile wait in its
// backlog: clients see a delay, never a refused connection.
//
// Each answer is one message: a TakeoverHeader, then `text_size` bytes of
// text (why, for kStateLost and kRefused), and the descriptors the kind says.

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace asyncd::daemon {

/// The predecessor's listening socket among the passed descriptors
/// (daemon/passed_fds.h) when it had bound the path itself: the successor
/// owns the file then, and removes it when it stops, as the predecessor would
/// have. A socket the predecessor had from socket activation travels as
/// kTakenOverActivatedSocketFdName and is taken as socket activation takes
/// its socket (TakeActivatedSocket): the .socket unit owns that file.
inline constexpr std::string_view kTakenOverSocketFdName = "asyncd-takeover-socket";
inline constexpr std::string_view kTakenOverActivatedSocketFdName = "asyncd-takeover-activated";

// The wire format, in native byte order: both ends run on one host.
inline constexpr uint32_t kTakeoverMagic = 0x4f544441;  // "ADTO" in memory on little-endian
inline constexpr uint16_t kTakeoverVersion = 1;
enum class TakeoverKind : uint16_t {
  kRequest = 1,     // successor -> daemon; no descriptors, no text
  kHandedOver = 2,  // daemon -> successor: the listening socket, then the handover package
  kStateLost = 3,   // the listening socket alone: the daemon drained, but its state did not
                    // pack (the text says why); it has stopped
  kRefused = 4,     // no descriptors: the text says why; the daemon goes on as before
};
/// kHandedOver, kStateLost: the daemon had bound its socket's path itself.
inline constexpr uint32_t kTakeoverSocketPathBound = 1;
struct TakeoverHeader {
  uint32_t magic = kTakeoverMagic;
  uint16_t version = kTakeoverVersion;
  TakeoverKind kind = TakeoverKind::kRequest;
  uint32_t flags = 0;
  uint32_t text_size = 0;  // at most kMaxTakeoverText
};
static_assert(sizeof(TakeoverHeader) == 16, "the header is a wire format: no padding");
inline constexpr uint32_t kMaxTakeoverText = 4096;

/// Sends one answer on `conn` without blocking: `kind`, `flags`, `text` (cut
/// at kMaxTakeoverText) and `fds` (SCM_RIGHTS; the caller keeps its own).
[[nodiscard]] absl::Status SendTakeoverAnswer(int conn, TakeoverKind kind, uint32_t flags,
                                              std::string_view text, std::span<const int> fds);

/// The running daemon's end: the takeover socket and one thread that accepts
/// on it, one connection at a time.
class TakeoverListener {
 public:
  /// What the daemon does with a successor's request: called on the
  /// listener's thread with the connection, once its peer is vetted (the
  /// daemon's uid or root) and its request read. It must answer (one message,
  /// SendTakeoverAnswer); the connection is closed when it returns. It may
  /// block for the whole handover (a drain) and may call Stop().
  using Handler = std::function<void(int conn)>;

  /// Binds `path` (mode 0600, from the first moment the file exists) and
  /// listens. A stale socket file is replaced; a live one (a daemon answers
  /// there) or anything that is not a socket is FAILED_PRECONDITION. Does
  /// not create directories: it goes next to the gRPC socket.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<TakeoverListener>> Bind(
      const std::string& path);
  ~TakeoverListener();
  TakeoverListener(const TakeoverListener&) = delete;
  TakeoverListener& operator=(const TakeoverListener&) = delete;

  /// Starts the accept thread. Once.
  void Start(Handler handler);
  /// Stops accepting, closes the socket and removes its file (when it is
  /// still ours), so a successor can bind it. Any thread, the handler's too
  /// (then without waiting for the thread, which is in the handler);
  /// idempotent.
  void Stop();

  const std::string& path() const { return path_; }

 private:
  TakeoverListener(int fd, std::string path, ino_t inode);
  void AcceptLoop();
  // Vets `conn`'s peer, reads its request and runs the handler. Closes conn.
  void Serve(int conn);

  int fd_;  // -1 once stopped
  const std::string path_;
  const ino_t inode_;
  int wake_fd_ = -1;
  Handler handler_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
};

/// What a successor got from RequestTakeover. It owns the descriptors.
struct TakenOver {
  int socket_fd = -1;              // the listening gRPC socket
  bool socket_path_bound = false;  // kTakeoverSocketPathBound
  int package_fd = -1;             // the handover package; -1 when the state was lost
  std::string state_lost;          // why there is no package
};

/// The successor's end: connects to the takeover socket at `path`, checks
/// that the daemon there runs as our uid or root, asks, and waits up to
/// `wait` for the answer (the daemon drains first). Blocks. Errors name the
/// path and what to do: UNAVAILABLE when no daemon listens there (or it
/// closed without an answer), PERMISSION_DENIED when we may not connect or
/// the daemon is another user's, FAILED_PRECONDITION when the daemon refused
/// (it goes on serving, or was already stopping), DEADLINE_EXCEEDED.
[[nodiscard]] absl::StatusOr<TakenOver> RequestTakeover(const std::string& path,
                                                        std::chrono::milliseconds wait);

}  // namespace asyncd::daemon
