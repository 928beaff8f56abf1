#pragma once

#include <signal.h>

#include <atomic>
#include <cstdint>

#include "src/backends/resolve.h"
#include "src/core/op.h"

namespace asyncd::backends {

/// Whether an end (cancel, deadline) was requested on `op`. Any thread.
inline bool EndRequested(const core::Op& op) {
  return core::OpWord::EndRequested(op.head->word.load(std::memory_order_acquire));
}

/// Whether a backend's TryRunInline may attempt `op` on the calling thread
/// without blocking: a NOP; a read of a pipe, socket or other stream (no
/// position to move; a short read is what a blocking read gives too); or a
/// read of a file at an explicit offset (an attempt that got less can be
/// redone). Not a read at a file's position: an attempt would move it. Not
/// an op whose deadline has passed at `now`: that is the backend's to report.
bool MayRunInline(const core::Op& op, int64_t now);

/// Whether the result `res` of a no-wait attempt (a read with RWF_NOWAIT)
/// means the op must wait after all: -EAGAIN, -EOPNOTSUPP (no RWF_NOWAIT
/// for this file, as on tmpfs or a FIFO), or a file read that came back
/// short (maybe only part of the range is cached; maybe end-of-file).
bool InlineMustWait(const core::Op& op, int64_t res);

/// Runs an op MayRunInline allows without waiting: a NOP gives 0, a read is
/// preadv2(RWF_NOWAIT). Returns the result or -errno. Any thread.
int64_t RunNoWait(const core::Op& op);

/// How RunBlocking waits when it may block indefinitely: reads and writes
/// of ops the dispatcher marked may_block (pipes, FIFOs, sockets, character
/// devices, unless the fd is O_NONBLOCK), poll, timeout, and the cancel-safe
/// open (it may be of a FIFO, which waits for a peer).
///
/// The calling thread keeps an interrupt signal blocked. RunBlocking never
/// blocks in such a call directly: it waits in ppoll() with `wait_mask`
/// (the thread's mask without the signal), which unblocks the signal
/// atomically, so a signal sent just before the wait stays pending and ends
/// it at once; then it does the I/O without blocking. After each EINTR it
/// checks EndRequested(op): a signal meant for an earlier op only causes
/// another wait.
struct BlockingContext {
  /// The signal mask for interruptible waits; nullptr makes waits plain
  /// (only other signals or readiness end them).
  const sigset_t* wait_mask = nullptr;
  /// Set while the thread sits in a call that cannot unblock the signal
  /// atomically and so runs with it unblocked: the openat2 that may be of a
  /// FIFO, and the plain read/write that follows ppoll on descriptors that
  /// refuse RWF_NOWAIT. A signal that lands just before such a call enters
  /// the kernel is lost, so whoever interrupts must re-send the signal while
  /// this reads true. May be null.
  std::atomic<bool>* in_unmasked_call = nullptr;
  /// How open, statx, unlink, rename and mkdir confine their paths.
  PathResolver resolver = PathResolver::kOpenat2;
};

/// Runs op.params as op.kind describes with plain system calls and returns
/// the result or -errno. Kinds and the params they read:
///
///   nop        0
///   open       OpenBeneath(ctx.resolver, dirfd, path, flags, mode); the fd
///   close      close(fd)
///   read       pread(fd, buf, len, offset), or read() when offset < 0
///   write      pwrite / write likewise; like write(2) on a blocking fd, all
///              len bytes unless interrupted
///   fsync      fdatasync(fd) when flags == 1, else fsync(fd)
///   fallocate  fallocate(fd, mode, offset, length)
///   ftruncate  ftruncate(fd, length)
///   statx      path == nullptr: statx(fd, "", AT_EMPTY_PATH|flags); else
///              the path resolved beneath dirfd by ctx.resolver (the last
///              component followed inside the root unless flags has
///              AT_SYMLINK_NOFOLLOW). Mask:
///              mode if non-zero, else STATX_BASIC_STATS|STATX_BTIME. Writes
///              a struct statx into buf.
///   unlink     unlinkat(parent, name, flags & AT_REMOVEDIR)
///   rename     renameat2(parent(path), name, parent(path2), name2, flags)
///   mkdir      mkdirat(parent, name, mode)
///   poll       ppoll on fd for the POLL* events in flags; returns revents
///   timeout    waits timeout_ns; returns 0
///
/// An interrupted wait (see BlockingContext) returns the bytes moved so far
/// or -EINTR; the dispatcher turns that into cancelled / timed out because
/// an end was requested. Regular-file and block-device I/O is never
/// interrupted. A write to a pipe whose readers are gone raises SIGPIPE in
/// the calling thread, as write(2) does: the daemon ignores SIGPIPE.
/// Blocks for as long as the call does; any thread. Does not
/// touch op.word: the caller runs Op::TryStart before and completes after.
int64_t RunBlocking(core::Op& op, const BlockingContext& ctx = {});

}  // namespace asyncd::backends
