#include "src/backends/syscalls.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "src/core/clock.h"

namespace asyncd::backends {

namespace {

using core::Op;
using core::OpKind;
using core::OpParams;

int64_t Ret(int64_t r) { return r < 0 ? -errno : r; }

// Waits until `fd` reports one of `events` (returns revents > 0), the op is
// asked to end (-EINTR), or ppoll fails (-errno).
int WaitReady(const Op& op, int fd, short events, const BlockingContext& ctx) {
  pollfd p{fd, events, 0};
  for (;;) {
    p.revents = 0;
    const int r = ::ppoll(&p, 1, nullptr, ctx.wait_mask);
    if (r > 0) return p.revents;
    if (r == 0) continue;  // no timeout given: cannot happen, but is harmless
    if (errno != EINTR) return -errno;
    // A signal: ours for this op, ours left over from an earlier op on this
    // thread, or someone else's. Only the first ends the wait.
    if (EndRequested(op)) return -EINTR;
  }
}

// Sleeps `ns`; 0 when it elapsed, -EINTR when the op was asked to end.
int64_t Sleep(const Op& op, int64_t ns, const BlockingContext& ctx) {
  const int64_t until = core::MonoNanos() + ns;
  for (;;) {
    const int64_t left = until - core::MonoNanos();
    if (left <= 0) return 0;
    const timespec ts{static_cast<time_t>(left / 1'000'000'000), static_cast<long>(left % 1'000'000'000)};
    if (::ppoll(nullptr, 0, &ts, ctx.wait_mask) < 0) {
      if (errno != EINTR) return -errno;
      if (EndRequested(op)) return -EINTR;
    }
  }
}

// Runs `call` (returning a result or -errno) with the interrupt signal
// unblocked, for the few calls that may block and have no variant that
// unblocks it atomically. A signal landing between the EndRequested check
// and the call entering the kernel would be lost, so in_unmasked_call tells
// the interrupter to keep re-sending it while we are in here. -EINTR means
// a signal arrived: the caller checks EndRequested and retries if it is not
// for this op.
template <typename F>
int64_t CallUnmasked(const Op& op, const BlockingContext& ctx, F call) {
  if (ctx.wait_mask == nullptr) return call();
  if (ctx.in_unmasked_call != nullptr) ctx.in_unmasked_call->store(true, std::memory_order_seq_cst);
  sigset_t saved;
  ::pthread_sigmask(SIG_SETMASK, ctx.wait_mask, &saved);
  const int64_t r = EndRequested(op) ? -EINTR : call();
  ::pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  if (ctx.in_unmasked_call != nullptr) ctx.in_unmasked_call->store(false, std::memory_order_seq_cst);
  return r;
}

// Only I/O that can wait for a peer takes the interruptible path: the
// dispatcher marks it may_block (a pipe, FIFO, socket or character device
// opened without O_NONBLOCK, which keeps its EAGAIN semantics); a regular
// file or block device always finishes on its own.
bool Interruptible(const Op& op) { return op.head->may_block.load(std::memory_order_relaxed); }

int64_t PlainIo(const Op& op, bool write) {
  const OpParams& p = op.params;
  if (write) {
    return Ret(p.offset >= 0 ? ::pwrite(p.fd, p.buf, p.len, p.offset) : ::write(p.fd, p.buf, p.len));
  }
  return Ret(p.offset >= 0 ? ::pread(p.fd, p.buf, p.len, p.offset) : ::read(p.fd, p.buf, p.len));
}

// A read that may wait for a peer (pipe, FIFO, socket, tty, eventfd...).
// The descriptor is shared with the client's other ops, so it cannot be
// switched to O_NONBLOCK; instead each attempt is non-blocking by itself
// (RWF_NOWAIT, honoured by anonymous pipes and sockets on 6.x kernels), and
// the wait between attempts is an interruptible ppoll. Descriptors that
// refuse RWF_NOWAIT with EOPNOTSUPP (named FIFOs, ttys, eventfd on 6.18) get
// ppoll then a plain read, which returns what is there. When several ops
// read one descriptor, another may take the data between the two calls and
// the read blocks: so it runs with the signal unblocked (CallUnmasked) and
// an interrupt still ends it.
int64_t InterruptibleRead(const Op& op, const BlockingContext& ctx) {
  const OpParams& p = op.params;
  iovec iov{p.buf, p.len};
  bool nowait = true;
  for (;;) {
    if (nowait) {
      const ssize_t n = ::preadv2(p.fd, &iov, 1, p.offset, RWF_NOWAIT);
      if (n >= 0) return n;
      if (errno == EOPNOTSUPP) {
        nowait = false;
      } else if (errno != EAGAIN) {
        return -errno;
      }
    }
    const int ready = WaitReady(op, p.fd, POLLIN, ctx);
    if (ready < 0) return ready;
    if (!nowait) {
      const int64_t r = CallUnmasked(op, ctx, [&] { return PlainIo(op, /*write=*/false); });
      if (r != -EINTR || EndRequested(op)) return r;
    }
  }
}

int64_t Read(const Op& op, const BlockingContext& ctx) {
  if (op.params.len == 0 || !Interruptible(op)) return PlainIo(op, /*write=*/false);
  return InterruptibleRead(op, ctx);
}

// A write to a pipe, FIFO or socket, interruptible the same way as a read.
// Like a blocking write(2), it returns only once every byte is written,
// unless interrupted: then it reports the bytes already written (the op
// ends cancelled with them as bytes_done), or -EINTR if none were.
int64_t InterruptibleWrite(const Op& op, const BlockingContext& ctx) {
  const OpParams& p = op.params;
  const char* src = static_cast<const char*>(p.buf);
  uint32_t done = 0;
  bool nowait = true;
  // What the op reports when it stops early: the bytes written, if any.
  auto partial = [&done](int64_t error) { return done > 0 ? int64_t{done} : error; };
  while (done < p.len) {
    if (!nowait) {
      const int ready = WaitReady(op, p.fd, POLLOUT, ctx);
      if (ready < 0) return partial(ready);
    }
    iovec iov{const_cast<char*>(src + done), p.len - done};
    const int64_t offset = p.offset >= 0 ? p.offset + done : -1;
    ssize_t n;
    if (nowait) {
      n = ::pwritev2(p.fd, &iov, 1, offset, RWF_NOWAIT);
    } else {
      // ppoll said writable, which for a pipe means a free page: a write of
      // at most PIPE_BUF bytes then fits without waiting, where a larger one
      // would block until all of it fits. It can still block if another
      // writer took the space meanwhile, hence CallUnmasked.
      const size_t chunk = std::min<size_t>(iov.iov_len, PIPE_BUF);
      const int64_t r = CallUnmasked(op, ctx, [&] {
        return Ret(offset >= 0 ? ::pwrite(p.fd, iov.iov_base, chunk, offset)
                               : ::write(p.fd, iov.iov_base, chunk));
      });
      if (r == -EINTR) {
        if (EndRequested(op)) return partial(-EINTR);
        continue;  // a signal meant for an earlier op
      }
      if (r < 0) {
        errno = static_cast<int>(-r);
        n = -1;
      } else {
        n = r;
      }
    }
    if (n >= 0) {
      done += static_cast<uint32_t>(n);
      continue;
    }
    const int err = errno;
    if (err == EOPNOTSUPP && nowait) {
      nowait = false;  // this descriptor refuses RWF_NOWAIT: poll before each write
      continue;
    }
    if (err != EAGAIN || !nowait) return partial(-err);
    const int ready = WaitReady(op, p.fd, POLLOUT, ctx);
    if (ready < 0) return partial(ready);
  }
  return done;
}

int64_t Write(const Op& op, const BlockingContext& ctx) {
  if (op.params.len == 0 || !Interruptible(op)) return PlainIo(op, /*write=*/true);
  return InterruptibleWrite(op, ctx);
}

int64_t Open(const Op& op, const BlockingContext& ctx) {
  const OpParams& p = op.params;
  if (p.path == nullptr) return -EINVAL;
  if (op.head->safety.load(std::memory_order_relaxed) != core::CancelSafety::kAlways ||
      ctx.wait_mask == nullptr) {
    // An open that may create or truncate (O_CREAT, O_TRUNC) is not
    // cancel-safe once started, so nobody will try to interrupt it.
    return OpenBeneath(ctx.resolver, p.dirfd, p.path, p.flags, p.mode);
  }
  // The open of a FIFO blocks until a peer opens the other end, and no call
  // can wait for that atomically with unblocking the signal.
  for (;;) {
    const int64_t r =
        CallUnmasked(op, ctx, [&] { return OpenBeneath(ctx.resolver, p.dirfd, p.path, p.flags, p.mode); });
    if (r != -EINTR || EndRequested(op)) return r;
  }
}

int64_t Statx(const Op& op, PathResolver resolver) {
  const OpParams& p = op.params;
  if (p.buf == nullptr) return -EFAULT;
  const unsigned mask = p.mode != 0 ? p.mode : (STATX_BASIC_STATS | STATX_BTIME);
  auto* out = static_cast<struct statx*>(p.buf);
  if (p.path == nullptr) {
    return Ret(::statx(p.fd, "", static_cast<int>(p.flags) | AT_EMPTY_PATH, mask, out));
  }
  // Unlike unlink or mkdir, statx follows a final symlink unless told not
  // to, and a link's target must resolve inside the root too. So resolve
  // the whole path (O_PATH: no access needed, nothing opened for I/O) and
  // stat the result.
  const uint64_t open_flags =
      O_PATH | ((p.flags & AT_SYMLINK_NOFOLLOW) != 0 ? static_cast<uint64_t>(O_NOFOLLOW) : 0);
  const int fd = OpenBeneath(resolver, p.dirfd, p.path, open_flags, 0);
  if (fd < 0) return fd;
  const int stat_flags =
      (static_cast<int>(p.flags) & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)) | AT_EMPTY_PATH;
  const int64_t r = Ret(::statx(fd, "", stat_flags, mask, out));
  ::close(fd);
  return r;
}

int64_t Unlink(const Op& op, PathResolver resolver) {
  ParentDir parent;
  if (const int r = OpenParentBeneath(resolver, op.params.dirfd, op.params.path, parent); r < 0) return r;
  return Ret(::unlinkat(parent.fd(), parent.name(), static_cast<int>(op.params.flags & AT_REMOVEDIR)));
}

int64_t Mkdir(const Op& op, PathResolver resolver) {
  ParentDir parent;
  if (const int r = OpenParentBeneath(resolver, op.params.dirfd, op.params.path, parent); r < 0) return r;
  return Ret(::mkdirat(parent.fd(), parent.name(), op.params.mode));
}

int64_t Rename(const Op& op, PathResolver resolver) {
  ParentDir from, to;
  if (const int r = OpenParentBeneath(resolver, op.params.dirfd, op.params.path, from); r < 0) return r;
  if (const int r = OpenParentBeneath(resolver, op.params.dirfd, op.params.path2, to); r < 0) return r;
  return Ret(::renameat2(from.fd(), from.name(), to.fd(), to.name(), op.params.flags));
}

}  // namespace

int64_t RunBlocking(Op& op, const BlockingContext& ctx) {
  const OpParams& p = op.params;
  switch (op.head->kind.load(std::memory_order_relaxed)) {
    case OpKind::kNop:
      return 0;
    case OpKind::kOpen:
      return Open(op, ctx);
    case OpKind::kClose:
      return Ret(::close(p.fd));
    case OpKind::kRead:
      return Read(op, ctx);
    case OpKind::kWrite:
      return Write(op, ctx);
    case OpKind::kFsync:
      return Ret(p.flags == 1 ? ::fdatasync(p.fd) : ::fsync(p.fd));
    case OpKind::kFallocate:
      return Ret(::fallocate(p.fd, static_cast<int>(p.mode), p.offset, p.length));
    case OpKind::kFtruncate:
      return Ret(::ftruncate(p.fd, p.length));
    case OpKind::kStatx:
      return Statx(op, ctx.resolver);
    case OpKind::kUnlink:
      return Unlink(op, ctx.resolver);
    case OpKind::kRename:
      return Rename(op, ctx.resolver);
    case OpKind::kMkdir:
      return Mkdir(op, ctx.resolver);
    case OpKind::kPoll:
      return WaitReady(op, p.fd, static_cast<short>(p.flags), ctx);
    case OpKind::kTimeout:
      return Sleep(op, p.timeout_ns, ctx);
  }
  return -EINVAL;
}

bool MayRunInline(const Op& op, int64_t now) {
  if (op.DeadlinePassed(now)) return false;
  switch (op.head->kind.load(std::memory_order_relaxed)) {
    case OpKind::kNop:
      return true;
    case OpKind::kRead:
      return op.params.stream || op.params.offset >= 0;
    default:
      return false;
  }
}

int64_t RunNoWait(const Op& op) {
  if (op.head->kind.load(std::memory_order_relaxed) == OpKind::kNop) return 0;
  const OpParams& p = op.params;
  iovec v{p.buf, p.len};
  return Ret(::preadv2(p.fd, &v, 1, p.offset, RWF_NOWAIT));
}

bool InlineMustWait(const Op& op, int64_t res) {
  if (res == -EAGAIN || res == -EOPNOTSUPP) return true;
  return op.head->kind.load(std::memory_order_relaxed) == OpKind::kRead && !op.params.stream &&
         res >= 0 && res < op.params.len;
}

}  // namespace asyncd::backends
