#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "daemon/config.h"
#include "daemon/listener.h"

namespace grpc {
class CallbackServerContext;
}

namespace asyncd::daemon {

/// Who is calling, from the connection: SO_PEERCRED/SO_PEERGROUPS on the unix
/// socket (see UnixListener), the verified client certificate on TCP with
/// mutual TLS, else nobody (uid 65534, no privileges).
struct Caller {
  uint32_t uid = 65534;
  uint32_t gid = 65534;
  uint32_t pid = 0;
  bool admin = false;
  uint64_t shares = 0;  // bit i: may use Config::shares[i]
  std::string peer;  // for logs: "unix pid N" or the TCP peer and its cert CN
};

/// Who administers the daemon: uid 0, the daemon's own uid, and [admin].
struct AdminRules {
  uint32_t own_uid = 0;  // the daemon's effective uid: it can signal and trace it anyway
  std::vector<uint32_t> uids;
  std::vector<uint32_t> gids;        // matched against the primary and supplementary groups
  std::vector<uint32_t> group_gids;  // [admin] groups, resolved; matched as `gids`
  std::vector<std::string> tls_cns;  // client-certificate CNs
  /// Who may use each [[share]], in Config::shares order: uids, and gids
  /// matched as `gids` are.
  struct ShareMembers {
    std::vector<uint32_t> uids;
    std::vector<uint32_t> gids;
  };
  std::vector<ShareMembers> shares;
  /// The rules of `config` ([admin]) for a daemon running as `own_uid`.
  static AdminRules FromConfig(const Config& config, uint32_t own_uid);
};

/// A caller on the unix socket, from the kernel's credentials of its peer.
/// Admin by uid (0, own, listed) or by any of its groups; a share's member
/// the same way. Pure; any thread.
Caller CallerFromPeerCred(const PeerCred& cred, const AdminRules& rules);

/// A caller on TCP. `peer` is gRPC's name for it; `verified_cn` the common
/// name of a client certificate the TLS layer verified against
/// server.tls_client_ca, or nullopt (then the caller is nobody). A CN
/// "uid:N" (N != 0) names uid N, a member of the shares listing N in their
/// uids; admin when the CN is in tls_cns. Pure; any
/// thread.
Caller CallerFromCertificate(const std::string& peer, const std::optional<std::string>& verified_cn,
                             const AdminRules& rules);

/// Identifies the caller of each RPC. Immutable after construction.
class Identifier {
 public:
  /// `listener` (not owned; may be null: no unix socket) must outlive this.
  Identifier(AdminRules rules, const UnixListener* listener)
      : rules_(std::move(rules)), listener_(listener) {}

  /// The caller of `ctx`'s call: its unix peer credentials when the call
  /// came through our listener, else its verified certificate. Called on
  /// gRPC threads while the call is alive; never blocks (one map lookup
  /// under the listener's lock).
  Caller Identify(grpc::CallbackServerContext* ctx) const;

  const AdminRules& rules() const { return rules_; }

 private:
  const AdminRules rules_;
  const UnixListener* const listener_;
};

/// PERMISSION_DENIED with `why`. Logs a warning naming the caller, at most
/// 20 lines a second over the whole daemon (a client looping on a refused
/// call must not flood the journal); the refusals not logged are counted
/// and their number logged with the next window. Any thread; never blocks.
[[nodiscard]] absl::Status Deny(const Caller& caller, const std::string& why);

}  // namespace asyncd::daemon
