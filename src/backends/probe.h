#pragma once

#include <array>
#include <string>

#include "src/core/op_types.h"

namespace asyncd::backends {

/// What the running kernel's io_uring can do, found once at start.
struct UringProbe {
  /// io_uring can serve ops at all: a ring could be set up and the opcodes
  /// every ring op needs (IORING_OP_ASYNC_CANCEL for cancels,
  /// IORING_OP_LINK_TIMEOUT for deadlines) exist. When false, every op goes
  /// to the thread pool and `reason` says why.
  bool usable = false;
  /// Why io_uring is unusable (or "" when usable), e.g.
  /// "io_uring_setup: EPERM (kernel.io_uring_disabled=2)".
  std::string reason;
  /// Indexed by core::OpKind: the kernel has every opcode the kind needs.
  /// All false when !usable. Index 0 is unused.
  std::array<bool, core::kOpKindCount + 1> supported{};

  bool Supports(core::OpKind kind) const { return supported[static_cast<int>(kind)]; }
};

/// Probes io_uring: sets up a small ring (then tears it down) and asks the
/// kernel which opcodes it supports (IORING_REGISTER_PROBE). Setting the
/// environment variable ASYNCD_DISABLE_IO_URING=1 forces usable=false.
/// Blocks briefly (two or three system calls); any thread; no side effects.
UringProbe ProbeUring();

}  // namespace asyncd::backends
