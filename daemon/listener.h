#pragma once

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"

namespace grpc {
class Server;
}

namespace asyncd::daemon {

/// Who is on the other end of a unix connection, from SO_PEERCRED and
/// SO_PEERGROUPS (the supplementary groups), taken at accept: the kernel's
/// word, never the client's.
struct PeerCred {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t pid = 0;
  std::vector<uint32_t> groups;
};

/// A listening unix socket BindUnixSocket bound to a path.
struct BoundUnixSocket {
  int fd = -1;
  ino_t inode = 0;  // the file's: remove it only while it is still this one
};

/// Binds `path` as a listening unix socket of `type` (SOCK_STREAM,
/// SOCK_SEQPACKET; non-blocking, close-on-exec) with permissions `mode` and,
/// when `gid` >= 0, group `gid` (the file is created with no access for
/// anyone but the owner until the group is set, then gets `mode`). A stale
/// socket file left by a killed daemon is replaced; a live one (another
/// daemon answers) is FAILED_PRECONDITION. Creates the parent directory if
/// missing.
[[nodiscard]] absl::StatusOr<BoundUnixSocket> BindUnixSocket(const std::string& path, int type,
                                                             uint32_t mode, int64_t gid,
                                                             int backlog);

/// The credentials of `conn`'s peer; nullopt when the kernel gives none.
std::optional<PeerCred> PeerCredOf(int conn);

/// The unix socket listener. We accept connections ourselves, rather than
/// letting gRPC bind the path, to read each connection's peer credentials
/// before handing it to gRPC (which then names the peer "fd:N"), and to
/// adopt a socket-activated descriptor.
class UnixListener {
 public:
  /// Binds `path` with permissions `mode` and, when `gid` >= 0, group `gid`
  /// (the file is created with no access for anyone but the owner until the
  /// group is set, then gets `mode`). A stale socket file left by a killed
  /// daemon is replaced; a live one (another daemon answers) is
  /// FAILED_PRECONDITION. Creates the parent directory if missing.
  static absl::StatusOr<std::unique_ptr<UnixListener>> Bind(const std::string& path,
                                                            uint32_t mode, int64_t gid = -1);
  /// Where an adopted descriptor comes from.
  enum class Origin {
    // systemd socket activation (or a predecessor that had it so): the
    // .socket unit owns the path, which stays when this listener goes.
    kSocketActivation,
    // A predecessor that bound the path itself, by takeover: the path is
    // this listener's now, removed when it goes, as Bind's is.
    kPredecessor,
  };
  /// Adopts an already listening descriptor: FAILED_PRECONDITION unless it
  /// is a listening unix stream socket bound to a path. Its path and
  /// permissions are what they are, so where they differ from the configured
  /// `path`, `mode` and `gid` it warns.
  static absl::StatusOr<std::unique_ptr<UnixListener>> Adopt(
      int fd, const std::string& path, uint32_t mode, int64_t gid = -1,
      Origin origin = Origin::kSocketActivation);
  ~UnixListener();

  /// Starts the accept thread, handing each connection to `server`.
  void Start(grpc::Server* server);
  /// Stops accepting; existing connections stay. Idempotent.
  void Stop();

  /// Peer credentials of the connection gRPC calls `peer` ("fd:N"). Called
  /// on gRPC threads while the call is alive (its descriptor is then open).
  std::optional<PeerCred> Lookup(const std::string& peer) const;

  const std::string& path() const { return path_; }
  /// The listening socket, for a takeover to pass on; still this listener's.
  int fd() const { return fd_; }
  /// Whether this listener removes its path when it goes (it bound it, or
  /// took it over from a predecessor that had).
  bool owns_path() const { return owns_path_; }
  /// The socket went to a successor, which serves on it: the file stays
  /// when this listener goes. Any thread.
  void LeavePathInPlace() { path_left_.store(true); }

 private:
  UnixListener(int fd, std::string path, bool owns_path);
  void AcceptLoop(grpc::Server* server);

  const int fd_;
  const std::string path_;
  const bool owns_path_;
  ino_t inode_ = 0;
  int wake_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> path_left_{false};
  mutable std::mutex mu_;
  std::unordered_map<int, PeerCred> peers_;
};

/// Takes the socket systemd passed for socket activation (asyncd.socket) from
/// the passed descriptors (daemon/passed_fds.h); the caller owns it and
/// adopts it with UnixListener::Adopt. The descriptor store's entries travel
/// in the same range, so the first socket not named kHandoverFdName is taken,
/// whatever its place. A passed descriptor that is no socket and not the
/// store's is a misconfigured unit: it is taken for Adopt to refuse by
/// number, rather than silently binding a path of our own. nullopt when
/// systemd passed nothing else.
std::optional<int> TakeActivatedSocket();

/// For a daemon that will not serve (its config is bad): accepts and closes
/// the connections already pending on every listening unix stream socket
/// systemd passed for activation (the descriptor store's entries are left
/// alone), at most `max` per socket, without waiting. A connection left
/// pending would make systemd start the daemon again at once, until the start
/// limit fails asyncd.socket. Returns how many it closed.
size_t CloseActivatedConnections(size_t max);

}  // namespace asyncd::daemon
