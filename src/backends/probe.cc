#include "src/backends/probe.h"

#include <liburing.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <array>

#include "absl/strings/str_cat.h"

namespace asyncd::backends {

namespace {

using core::OpKind;

// Opcodes the ring implementation of each kind issues. Empty = no opcode in
// the liburing headers we build against (liburing 2.3 has no ftruncate), so
// the kind is unsupported whatever the kernel offers.
// Up to two opcodes; -1 = none.
using Opcodes = std::array<int, 2>;
Opcodes OpcodesFor(OpKind kind) {
  switch (kind) {
    case OpKind::kNop: return {IORING_OP_NOP, -1};
    case OpKind::kOpen: return {IORING_OP_OPENAT2, -1};
    case OpKind::kClose: return {IORING_OP_CLOSE, -1};
    case OpKind::kRead: return {IORING_OP_READ, -1};
    case OpKind::kWrite: return {IORING_OP_WRITE, -1};
    case OpKind::kFsync: return {IORING_OP_FSYNC, -1};
    case OpKind::kFallocate: return {IORING_OP_FALLOCATE, -1};
    case OpKind::kFtruncate: return {-1, -1};
    // A path statx first opens the path O_PATH beneath the root (openat2).
    case OpKind::kStatx: return {IORING_OP_STATX, IORING_OP_OPENAT2};
    case OpKind::kUnlink: return {IORING_OP_UNLINKAT, -1};
    case OpKind::kRename: return {IORING_OP_RENAMEAT, -1};
    case OpKind::kMkdir: return {IORING_OP_MKDIRAT, -1};
    case OpKind::kPoll: return {IORING_OP_POLL_ADD, -1};
    case OpKind::kTimeout: return {IORING_OP_TIMEOUT, -1};
  }
  return {-1, -1};
}

// kernel.io_uring_disabled (Linux 6.6+): 0 allowed, 1 only for members of
// kernel.io_uring_group, 2 disabled. -1 when the sysctl does not exist.
int ReadIoUringDisabled() {
  FILE* f = std::fopen("/proc/sys/kernel/io_uring_disabled", "re");
  if (f == nullptr) return -1;
  int v = -1;
  if (std::fscanf(f, "%d", &v) != 1) v = -1;
  std::fclose(f);
  return v;
}

std::string SetupFailureReason(int err) {
  switch (err) {
    case ENOSYS:
      return "io_uring_setup: ENOSYS (the kernel is built without io_uring)";
    case EPERM: {
      const int disabled = ReadIoUringDisabled();
      if (disabled == 2) return "io_uring_setup: EPERM (kernel.io_uring_disabled=2)";
      if (disabled == 1) {
        return "io_uring_setup: EPERM (kernel.io_uring_disabled=1 and this process is not in "
               "kernel.io_uring_group)";
      }
      return "io_uring_setup: EPERM (refused by a seccomp filter or a security module)";
    }
    case ENOMEM:
      return "io_uring_setup: ENOMEM (RLIMIT_MEMLOCK too low for the ring, or out of memory)";
    default:
      return absl::StrCat("io_uring_setup: ", std::strerror(err));
  }
}

}  // namespace

UringProbe ProbeUring() {
  UringProbe probe;
  if (const char* env = std::getenv("ASYNCD_DISABLE_IO_URING");
      env != nullptr && std::strcmp(env, "1") == 0) {
    probe.reason = "disabled by ASYNCD_DISABLE_IO_URING";
    return probe;
  }
  io_uring ring;
  const int ret = io_uring_queue_init(8, &ring, 0);
  if (ret < 0) {
    probe.reason = SetupFailureReason(-ret);
    return probe;
  }
  io_uring_probe* p = io_uring_get_probe_ring(&ring);
  io_uring_queue_exit(&ring);
  if (p == nullptr) {
    // IORING_REGISTER_PROBE arrived in 5.6, with the opcodes we need anyway.
    probe.reason = "io_uring_register(IORING_REGISTER_PROBE) failed: kernel too old";
    return probe;
  }
  auto has = [p](int opcode) { return io_uring_opcode_supported(p, opcode) != 0; };
  if (!has(IORING_OP_ASYNC_CANCEL) || !has(IORING_OP_LINK_TIMEOUT)) {
    probe.reason = "the kernel lacks IORING_OP_ASYNC_CANCEL or IORING_OP_LINK_TIMEOUT, which "
                   "cancellation and deadlines need";
  } else {
    probe.usable = true;
    for (int k = 1; k <= core::kOpKindCount; ++k) {
      const auto opcodes = OpcodesFor(static_cast<OpKind>(k));
      bool all = opcodes[0] >= 0;
      for (int op : opcodes) all = all && (op < 0 || has(op));
      probe.supported[k] = all;
    }
  }
  io_uring_free_probe(p);
  return probe;
}

}  // namespace asyncd::backends
