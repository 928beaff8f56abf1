#pragma once

#include <cstdint>
#include <string_view>

namespace asyncd::core {

/// Operation kinds. Values are stable: they are stored in registry slots and
/// mapped one-to-one onto asyncd.v1.OpKind by the daemon.
enum class OpKind : uint8_t {
  kNop = 1,
  kOpen,
  kClose,
  kRead,
  kWrite,
  kFsync,
  kFallocate,
  kFtruncate,
  kStatx,
  kUnlink,
  kRename,
  kMkdir,
  kPoll,
  kTimeout,
};
inline constexpr int kOpKindCount = 14;

/// The state machine of one operation. kFree is a slot with no operation.
/// Order matters: every state >= kCompleted is terminal.
enum class OpState : uint8_t {
  kFree = 0,
  kQueued,      // registered, not yet handed to a backend
  kDispatched,  // handed to a backend (in its queue or submission ring)
  kRunning,     // the system call has started (or may start at any moment)
  kCompleted,   // the system call ran; result holds its return value or -errno
  kCancelled,
  kTimedOut,
  kFailed,  // the daemon could not run it (resource or internal failure)
};

inline constexpr bool IsTerminal(OpState s) { return s >= OpState::kCompleted; }

enum class BackendKind : uint8_t { kNone = 0, kIoUring, kThreadPool, kInline };

/// Whether a cancel can take effect once the system call has started (the
/// seed's second point: interrupting a write may leave partial effects).
enum class CancelSafety : uint8_t {
  kAlways,            // reads, polls, timeouts: interrupting them changes nothing
  kOnlyBeforeStart,   // writes, fsync, truncate, rename...: refused once running
};

/// Why an operation was asked to end early.
enum class EndReason : uint8_t {
  kNone = 0,
  kClientRequest,
  kOperatorRequest,
  kSessionClosed,
  kRpcCancelled,
  kDrain,
  kDeadline,
  kRestart,  // a live restart: run again by the next daemon, or submitted again by its client
};

/// The answer to a cancel request, in the spirit of POSIX aio_cancel.
enum class CancelResult : uint8_t {
  kCancelled,       // the op will end cancelled (or timed out); its completion still arrives
  kNotCancellable,  // it started a non-cancel-safe call and will complete normally
  kAlreadyDone,
  kNotFound,
};

/// Whether a cancel may interrupt `kind` once started: the one place that
/// decides it. `creates`: an open that may create or truncate a file
/// (O_CREAT, O_TRUNC), which could leave that done. `stream`: the op uses a
/// pipe, FIFO, socket or character device, where a read, write or poll may
/// wait forever and interrupting it leaves nothing half-done beyond the
/// bytes it reports.
constexpr CancelSafety SafetyOf(OpKind kind, bool creates = false, bool stream = false) {
  switch (kind) {
    case OpKind::kNop:
    case OpKind::kRead:
    case OpKind::kPoll:
    case OpKind::kTimeout:
    case OpKind::kStatx:
      return CancelSafety::kAlways;
    case OpKind::kWrite:
      return stream ? CancelSafety::kAlways : CancelSafety::kOnlyBeforeStart;
    case OpKind::kOpen:  // a FIFO open blocks until a peer arrives; cancelling it is harmless
      return creates ? CancelSafety::kOnlyBeforeStart : CancelSafety::kAlways;
    default:
      return CancelSafety::kOnlyBeforeStart;
  }
}

/// Whether `kind` may wait forever, so that drain cancels it at once rather
/// than granting it time: the other half of the classification. `blocking_stream`:
/// on a pipe, FIFO, socket or character device opened without O_NONBLOCK.
constexpr bool MayBlock(OpKind kind, bool blocking_stream) {
  switch (kind) {
    case OpKind::kPoll:
    case OpKind::kTimeout:
      return true;
    case OpKind::kRead:
    case OpKind::kWrite:
      return blocking_stream;
    default:
      return false;
  }
}

std::string_view Name(OpKind kind);
std::string_view Name(OpState state);
std::string_view Name(BackendKind backend);
std::string_view Name(EndReason reason);
std::string_view Name(CancelResult result);

}  // namespace asyncd::core
