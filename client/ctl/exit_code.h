#pragma once

// asyncctl's fixed exit codes and the mapping from RPC failures to them.

#include <grpcpp/support/status.h>

#include <string>
#include <string_view>

namespace asyncd::ctl {

/// Exit codes; stable, documented in `asyncctl --help`.
enum class ExitCode : int {
  kOk = 0,
  /// The daemon answered with an error (NOT_FOUND op, PERMISSION_DENIED,
  /// a refused cancel, a failed syscall from `submit`, a draining daemon...).
  kOpError = 1,
  /// Bad command line: unknown flag, bad duration, conflicting selectors.
  kUsage = 2,
  /// The daemon could not be reached: no socket, connection refused, the
  /// connection broke, or it could not be established before the deadline.
  kUnreachable = 3,
};

inline int ToInt(ExitCode c) { return static_cast<int>(c); }

/// The more severe of two exit codes, for commands that talk to several
/// daemons: unreachable (3) > usage (2) > operation error (1) > ok (0).
ExitCode Worse(ExitCode a, ExitCode b);

/// Whether the channel was connected when the RPC failed; decides whether an
/// UNAVAILABLE / DEADLINE_EXCEEDED is the daemon talking or the transport.
enum class Transport { kConnected, kNotConnected };

/// Maps a failed RPC to an exit code. UNAVAILABLE or DEADLINE_EXCEEDED with
/// the transport not connected means the daemon was not reached (3); an
/// UNAVAILABLE answered over a live connection (the daemon is draining or
/// shutting down) is an operation error (1), as is every other code.
ExitCode ExitCodeForRpc(grpc::StatusCode code, Transport transport);

/// "NOT_FOUND", "UNAVAILABLE", ... for messages.
std::string_view StatusCodeName(grpc::StatusCode code);

/// A failure to report: one line on stderr, and an exit code.
struct CliError {
  ExitCode code = ExitCode::kOpError;
  std::string message;
};

/// Prints "asyncctl: <message>" as one line on stderr (newlines in the
/// message are flattened) and returns the exit code as an int.
int Report(const CliError& error);

}  // namespace asyncd::ctl
