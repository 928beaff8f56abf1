#include "src/backends/syscalls.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

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
// asked to end (-EINTR), or ppoll fails (-errno). A negative timeout waits
// for ever; on expiry returns 0.
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

// Only descriptors whose I/O can wait for a peer need the interruptible
// path; a regular file or a block device always finishes on its own.
bool MayBlockForever(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return false;  // let the I/O call report the error
  return !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode) && !S_ISDIR(st.st_mode);
}

bool IsNonBlocking(int fd) {
  const int fl = ::fcntl(fd, F_GETFL);
  return fl >= 0 && (fl & O_NONBLOCK) != 0;
}

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
// (RWF_NOWAIT, honoured by pipes and sockets on this kernel), and the wait
// between attempts is an interruptible ppoll. Descriptors that refuse
// RWF_NOWAIT (ttys, eventfd) get ppoll then a plain read: that read can
// still block if another reader of the same descriptor took the data between
// the two calls, and then it is not interruptible; sharing a descriptor
// between concurrent readers of a byte stream is a client bug anyway.
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
    if (!nowait) return PlainIo(op, /*write=*/false);
  }
}

int64_t Read(const Op& op, const BlockingContext& ctx) {
  const OpParams& p = op.params;
  if (p.len == 0 || !MayBlockForever(p.fd) || IsNonBlocking(p.fd)) {
    return PlainIo(op, /*write=*/false);
  }
  return InterruptibleRead(op, ctx);
}

int64_t Open(const Op& op, const BlockingContext& ctx) {
  const OpParams& p = op.params;
  if (p.path == nullptr) return -EINVAL;
  const bool creates = (p.flags & O_CREAT) != 0;
  if (creates || ctx.wait_mask == nullptr) {
    // Opening with O_CREAT is not cancel-safe once started (it may leave the
    // file behind), so nobody will try to interrupt it.
    return OpenBeneath(p.dirfd, p.path, p.flags, p.mode);
  }
  // The open of a FIFO blocks until a peer opens the other end, and no call
  // can wait for that atomically with unblocking the signal. Run openat2
  // itself with the signal unblocked; the interrupter re-sends the signal
  // while in_unmasked_call is set, closing the window between the check
  // below and the call entering the kernel.
  sigset_t saved;
  if (ctx.in_unmasked_call != nullptr) ctx.in_unmasked_call->store(true, std::memory_order_seq_cst);
  ::pthread_sigmask(SIG_SETMASK, ctx.wait_mask, &saved);
  int64_t r;
  for (;;) {
    if (EndRequested(op)) {
      r = -EINTR;
      break;
    }
    r = OpenBeneath(p.dirfd, p.path, p.flags, p.mode);
    if (r != -EINTR) break;
  }
  ::pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  if (ctx.in_unmasked_call != nullptr) ctx.in_unmasked_call->store(false, std::memory_order_seq_cst);
  return r;
}

int64_t Statx(const Op& op) {
  const OpParams& p = op.params;
  if (p.buf == nullptr) return -EFAULT;
  const unsigned mask = p.mode != 0 ? p.mode : (STATX_BASIC_STATS | STATX_BTIME);
  auto* out = static_cast<struct statx*>(p.buf);
  if (p.path == nullptr) {
    return Ret(::statx(p.fd, "", static_cast<int>(p.flags) | AT_EMPTY_PATH, mask, out));
  }
  // Unlike unlink or mkdir, statx follows a final symlink unless told not
  // to, and a link's target must resolve inside the root too. So resolve
  // the whole path with openat2 (O_PATH: no access needed, nothing opened
  // for I/O) and stat the result.
  const uint64_t open_flags =
      O_PATH | ((p.flags & AT_SYMLINK_NOFOLLOW) != 0 ? static_cast<uint64_t>(O_NOFOLLOW) : 0);
  const int fd = OpenBeneath(p.dirfd, p.path, open_flags, 0);
  if (fd < 0) return fd;
  const int stat_flags =
      (static_cast<int>(p.flags) & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)) | AT_EMPTY_PATH;
  const int64_t r = Ret(::statx(fd, "", stat_flags, mask, out));
  ::close(fd);
  return r;
}

int64_t Unlink(const Op& op) {
  ParentDir parent;
  if (const int r = OpenParentBeneath(op.params.dirfd, op.params.path, parent); r < 0) return r;
  return Ret(::unlinkat(parent.fd(), parent.name(), static_cast<int>(op.params.flags & AT_REMOVEDIR)));
}

int64_t Mkdir(const Op& op) {
  ParentDir parent;
  if (const int r = OpenParentBeneath(op.params.dirfd, op.params.path, parent); r < 0) return r;
  return Ret(::mkdirat(parent.fd(), parent.name(), op.params.mode));
}

int64_t Rename(const Op& op) {
  ParentDir from, to;
  if (const int r = OpenParentBeneath(op.params.dirfd, op.params.path, from); r < 0) return r;
  if (const int r = OpenParentBeneath(op.params.dirfd, op.params.path2, to); r < 0) return r;
  return Ret(::renameat2(from.fd(), from.name(), to.fd(), to.name(), op.params.flags));
}

}  // namespace

ParentDir::~ParentDir() { Reset(); }

ParentDir::ParentDir(ParentDir&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {
  std::memcpy(name_, other.name_, sizeof(name_));
}

ParentDir& ParentDir::operator=(ParentDir&& other) noexcept {
  if (this != &other) {
    Reset();
    fd_ = std::exchange(other.fd_, -1);
    std::memcpy(name_, other.name_, sizeof(name_));
  }
  return *this;
}

void ParentDir::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  name_[0] = '\0';
}

int OpenBeneath(int root_fd, const char* path, uint64_t flags, uint64_t mode) {
  if (path == nullptr) return -EINVAL;
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  // openat2 rejects a mode without a flag that creates a file.
  how.mode = (flags & (O_CREAT | __O_TMPFILE)) != 0 ? mode : 0;
  how.resolve = kConfinedResolve;
  return static_cast<int>(Ret(::syscall(SYS_openat2, root_fd, path, &how, sizeof(how))));
}

int OpenParentBeneath(int root_fd, const char* path, ParentDir& out) {
  out.Reset();
  if (path == nullptr) return -EINVAL;
  size_t len = std::strlen(path);
  if (len == 0) return -ENOENT;
  if (len >= PATH_MAX) return -ENAMETOOLONG;
  while (len > 1 && path[len - 1] == '/') --len;  // "a/b/" names b
  size_t name_start = len;
  while (name_start > 0 && path[name_start - 1] != '/') --name_start;
  const size_t name_len = len - name_start;
  // "/" alone, "." and ".." name the root or a directory relative to the
  // parent, never an entry in it: nothing to unlink, create or rename there.
  if (name_len == 0 || (name_len == 1 && path[name_start] == '.') ||
      (name_len == 2 && path[name_start] == '.' && path[name_start + 1] == '.')) {
    return -EINVAL;
  }
  if (name_len > NAME_MAX) return -ENAMETOOLONG;

  char dir[PATH_MAX];
  if (name_start == 0) {
    dir[0] = '.';
    dir[1] = '\0';
  } else {
    std::memcpy(dir, path, name_start);  // keeps the trailing '/': "/" for "/x"
    dir[name_start] = '\0';
  }
  const int fd = OpenBeneath(root_fd, dir, O_PATH | O_DIRECTORY, 0);
  if (fd < 0) return fd;
  out.fd_ = fd;
  std::memcpy(out.name_, path + name_start, name_len);
  out.name_[name_len] = '\0';
  return 0;
}

int64_t RunBlocking(Op& op, const BlockingContext& ctx) {
  const OpParams& p = op.params;
  switch (op.kind.load(std::memory_order_relaxed)) {
    case OpKind::kNop:
      return 0;
    case OpKind::kOpen:
      return Open(op, ctx);
    case OpKind::kClose:
      return Ret(::close(p.fd));
    case OpKind::kRead:
      return Read(op, ctx);
    case OpKind::kWrite:
      // Not cancel-safe once started (partial effects), so nobody interrupts
      // it: a plain call, which may block on a full pipe until a reader comes.
      return PlainIo(op, /*write=*/true);
    case OpKind::kFsync:
      return Ret(p.flags == 1 ? ::fdatasync(p.fd) : ::fsync(p.fd));
    case OpKind::kFallocate:
      return Ret(::fallocate(p.fd, static_cast<int>(p.mode), p.offset, p.length));
    case OpKind::kFtruncate:
      return Ret(::ftruncate(p.fd, p.length));
    case OpKind::kStatx:
      return Statx(op);
    case OpKind::kUnlink:
      return Unlink(op);
    case OpKind::kRename:
      return Rename(op);
    case OpKind::kMkdir:
      return Mkdir(op);
    case OpKind::kPoll:
      return WaitReady(op, p.fd, static_cast<short>(p.flags), ctx);
    case OpKind::kTimeout:
      return Sleep(op, p.timeout_ns, ctx);
  }
  return -EINVAL;
}

}  // namespace asyncd::backends
