#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asyncd/v1/asyncd.grpc.pb.h"

namespace asyncd::client {

namespace v1 = ::asyncd::v1;

/// Largest message the client sends or accepts (64 MiB). The daemon's own
/// limit (Limits.max_message_bytes, 16 MiB by default) is lower; ours only has
/// to be at least as large so we never refuse what the daemon sends.
inline constexpr int kMaxMessageBytes = 64 << 20;

/// The socket to connect to when nothing says otherwise: $ASYNCD_SOCKET;
/// else for root the system socket /run/asyncd/asyncd.sock; else the
/// per-user daemon's socket ($XDG_RUNTIME_DIR/asyncd/asyncd.sock, else
/// /tmp/asyncd-<uid>/asyncd.sock) when a daemon listens there, else the
/// system socket. Reads the environment and probes the per-user socket
/// (one non-blocking connect) on every call.
[[nodiscard]] std::string DefaultSocketPath();

/// Turns a user-supplied target into a gRPC target string. Pure; never blocks.
///   ""                      -> "unix:" + DefaultSocketPath()
///   "unix:..." "unix-abstract:..." "dns:..." "ipv4:..." "ipv6:..."
///                           -> unchanged (already a gRPC target)
///   "/abs/path", "./rel", "../rel", "dir/file", "~/x" (~ expanded from $HOME)
///                           -> "unix:" + path
///   "host:port", "[::1]:port" -> unchanged (TCP)
///   anything else without ':' (e.g. "asyncd.sock") -> "unix:" + it (a relative
///                           socket path; a TCP target always needs a port).
[[nodiscard]] std::string NormalizeTarget(std::string_view target);

/// True if a normalized target names a unix domain socket.
[[nodiscard]] bool IsUnixTarget(std::string_view normalized_target);

/// TLS for TCP targets: PEM contents (not paths; see ReadTls). Empty
/// root_certs = no TLS (plaintext, for a daemon with server.tcp_insecure).
struct TlsOptions {
  std::string root_certs;   // CA bundle that signed the daemon's certificate
  std::string cert_chain;   // client certificate (mutual TLS), or empty
  std::string private_key;  // its key
  bool enabled() const { return !root_certs.empty(); }
};

/// Reads PEM files into TlsOptions: `ca_file` is required (a CA bundle);
/// `cert_file` and `key_file` go together (both or neither). NOT_FOUND /
/// INVALID_ARGUMENT naming the file. Blocks on file I/O.
[[nodiscard]] absl::StatusOr<TlsOptions> ReadTls(const std::string& ca_file,
                                                 const std::string& cert_file = "",
                                                 const std::string& key_file = "");

/// The one place that chooses channel credentials for a normalized target.
/// Unix sockets: insecure (the daemon authenticates by SO_PEERCRED; `tls` is
/// ignored). TCP: TLS (grpc::SslCredentials) when `tls` is enabled, else
/// insecure (only a daemon with server.tcp_insecure accepts that).
[[nodiscard]] std::shared_ptr<grpc::ChannelCredentials> ChannelCredentialsFor(
    std::string_view normalized_target, const TlsOptions& tls = {});

/// How a client tries again when the daemon is restarting (a live restart:
/// systemctl restart, a package upgrade): between the stopping daemon's
/// refusals and the next daemon's first answer, calls fail UNAVAILABLE for a
/// moment. Used by StreamOptions::resume and ClientOptions::retry.
struct RetryPolicy {
  /// How long to keep trying, counted from the first failure; once it has
  /// passed, the last failure is reported.
  std::chrono::milliseconds budget{30000};
  /// The first wait between two attempts; each later wait doubles, up to
  /// max_backoff.
  std::chrono::milliseconds initial_backoff{10};
  std::chrono::milliseconds max_backoff{1000};
};

/// How Connect builds a channel.
struct ConnectOptions {
  /// For TCP targets (see ChannelCredentialsFor).
  TlsOptions tls;
  /// Wait before reconnecting after a failed connection attempt; 0 = gRPC's
  /// default (1 s, growing). While it lasts calls fail at once (UNAVAILABLE),
  /// so a short-lived tool making a few calls (asyncctl: 100 ms) lowers it.
  std::chrono::milliseconds initial_reconnect_backoff{0};
};

/// Creates a channel to the daemon (target as NormalizeTarget accepts; empty
/// = the default socket), with send/receive message limits of
/// kMaxMessageBytes. Does not block and does not connect yet: gRPC connects
/// lazily on the first call (use channel->WaitForConnected() to probe).
/// Never returns null.
[[nodiscard]] std::shared_ptr<grpc::Channel> Connect(std::string_view target = "",
                                                     const TlsOptions& tls = {});
/// Connect with more settings.
[[nodiscard]] std::shared_ptr<grpc::Channel> Connect(std::string_view target,
                                                     const ConnectOptions& options);

/// grpc::Status -> absl::Status, keeping the code (same numbering) and the
/// message. OK maps to OK.
[[nodiscard]] absl::Status ToAbslStatus(const grpc::Status& status);

/// The status a Completion stands for, for callers who want one:
///   COMPLETED with error_number 0          -> OK
///   COMPLETED with error_number e          -> absl::ErrnoToStatus(e, ...)
///   CANCELLED                              -> CANCELLED
///   TIMED_OUT                              -> DEADLINE_EXCEEDED
///   FAILED                                 -> ErrnoToStatus (INTERNAL if no errno)
///   REJECTED                               -> its status_code and message
///   UNSPECIFIED (e.g. synthesized by StreamClient when the stream ended
///   before the completion arrived)         -> its status_code, else UNKNOWN
/// `what` prefixes the message (e.g. "read h:3").
[[nodiscard]] absl::Status CompletionToStatus(const v1::Completion& completion,
                                              std::string_view what = "");

}  // namespace asyncd::client
