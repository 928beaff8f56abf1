#include "daemon/convert.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <poll.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "src/core/clock.h"

namespace asyncd::daemon {
namespace {

constexpr size_t kMaxPath = 4095;
constexpr uint64_t kMaxTimeoutUs = 24ull * 3600 * 1'000'000;

const int64_t kMonoToUnix = core::UnixNanos() - core::MonoNanos();

}  // namespace

bool ClimbsAbove(std::string_view path) {
  int depth = 0;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    const std::string_view part = path.substr(i, j - i);
    if (part == "..") {
      if (--depth < 0) return true;
    } else if (!part.empty() && part != ".") {
      ++depth;
    }
    i = j + 1;
  }
  return false;
}

namespace {

absl::Status Invalid(std::string_view field, std::string_view why) {
  return absl::InvalidArgumentError(std::string(field) + ": " + std::string(why));
}

// Rejects paths the kernel would refuse anyway or that climb above the root
// lexically; symlinks are contained at resolution time (RESOLVE_IN_ROOT).
absl::Status CheckPath(std::string_view field, const std::string& path) {
  if (path.empty()) return Invalid(field, "must not be empty");
  if (path.size() > kMaxPath) return Invalid(field, "longer than 4095 bytes");
  if (path.find('\0') != std::string::npos) return Invalid(field, "contains a NUL byte");
  if (ClimbsAbove(path)) return Invalid(field, "climbs above the root");
  return absl::OkStatus();
}

absl::Status CheckHandle(std::string_view field, uint32_t handle) {
  if (handle == 0) return Invalid(field, "0 is not a handle");
  return absl::OkStatus();
}

absl::Status CheckOffset(std::string_view field, int64_t offset) {
  if (offset < -1) return Invalid(field, "must be >= -1 (-1 = current position)");
  return absl::OkStatus();
}

// Only permission bits: the daemon never creates set-id or sticky files,
// as its unit's RestrictSUIDSGID= promises (seccomp cannot see io_uring).
absl::Status CheckMode(std::string_view field, uint32_t mode) {
  if (mode > 07777) return Invalid(field, "has bits beyond 07777");
  if ((mode & 07000) != 0) {
    return Invalid(field, "setuid, setgid and sticky bits (07000) are refused; use 0..0777");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ToOpRequest(const v1::Operation& op, uint32_t max_op_bytes, int64_t call_deadline_ns,
                         OpBuffers& buffers, core::OpRequest& out) {
  out = core::OpRequest{};
  out.tag = op.tag();
  core::OpParams& p = out.params;
  if (op.deadline_ms() != 0) {
    p.deadline_ns = core::MonoNanos() + int64_t{op.deadline_ms()} * 1'000'000;
  }
  if (call_deadline_ns != 0 && (p.deadline_ns == 0 || call_deadline_ns < p.deadline_ns)) {
    p.deadline_ns = call_deadline_ns;
  }
  switch (op.kind_case()) {
    case v1::Operation::kNop:
      out.kind = core::OpKind::kNop;
      break;
    case v1::Operation::kOpen: {
      const v1::Open& o = op.open();
      out.kind = core::OpKind::kOpen;
      if (auto s = CheckPath("open.path", o.path()); !s.ok()) return s;
      int flags = O_CLOEXEC;
      switch (o.access()) {
        case v1::OPEN_MODE_READ_ONLY: flags |= O_RDONLY; break;
        case v1::OPEN_MODE_WRITE_ONLY: flags |= O_WRONLY; break;
        case v1::OPEN_MODE_READ_WRITE: flags |= O_RDWR; break;
        default: return Invalid("open.access", "must be READ_ONLY, WRITE_ONLY or READ_WRITE");
      }
      if (o.exclusive() && !o.create()) return Invalid("open.exclusive", "requires create");
      if (o.truncate() && o.access() == v1::OPEN_MODE_READ_ONLY) {
        return Invalid("open.truncate", "requires WRITE_ONLY or READ_WRITE");
      }
      if (o.directory() && (o.access() != v1::OPEN_MODE_READ_ONLY || o.create() || o.truncate())) {
        return Invalid("open.directory", "requires READ_ONLY, without create or truncate");
      }
      if (o.create()) flags |= O_CREAT;
      if (o.exclusive()) flags |= O_EXCL;
      if (o.truncate()) flags |= O_TRUNC;
      if (o.append()) flags |= O_APPEND;
      if (o.directory()) flags |= O_DIRECTORY;
      if (o.nonblock()) flags |= O_NONBLOCK;
      if (o.no_follow()) flags |= O_NOFOLLOW;
      const uint32_t mode = o.has_mode() ? o.mode() : 0644;
      // Ignored without create, as the proto says: not validated either.
      if (o.create()) {
        if (auto s = CheckMode("open.mode", mode); !s.ok()) return s;
      }
      p.flags = static_cast<uint32_t>(flags);
      p.mode = o.create() ? mode : 0;
      p.path = o.path().c_str();
      break;
    }
    case v1::Operation::kClose:
      out.kind = core::OpKind::kClose;
      out.handle = op.close().handle();
      if (auto s = CheckHandle("close.handle", out.handle); !s.ok()) return s;
      break;
    case v1::Operation::kRead: {
      const v1::Read& r = op.read();
      out.kind = core::OpKind::kRead;
      out.handle = r.handle();
      if (auto s = CheckHandle("read.handle", out.handle); !s.ok()) return s;
      if (auto s = CheckOffset("read.offset", r.offset()); !s.ok()) return s;
      if (r.length() == 0) return Invalid("read.length", "must be at least 1");
      if (r.length() > max_op_bytes) {
        return absl::ResourceExhaustedError(
            absl::StrCat("read.length: ", r.length(), " bytes is over max_op_bytes ", max_op_bytes));
      }
      std::string* data = buffers.completion.mutable_data();
      // Read straight into the reply's buffer: no copy on the way out.
      data->resize(r.length());
      p.buf = data->data();
      p.len = r.length();
      p.offset = r.offset();
      break;
    }
    case v1::Operation::kWrite: {
      const v1::Write& w = op.write();
      out.kind = core::OpKind::kWrite;
      out.handle = w.handle();
      if (auto s = CheckHandle("write.handle", out.handle); !s.ok()) return s;
      if (auto s = CheckOffset("write.offset", w.offset()); !s.ok()) return s;
      if (w.data().size() > max_op_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "write.data: ", w.data().size(), " bytes is over max_op_bytes ", max_op_bytes));
      }
      p.buf = const_cast<char*>(w.data().data());
      p.len = static_cast<uint32_t>(w.data().size());
      p.offset = w.offset();
      break;
    }
    case v1::Operation::kFsync:
      out.kind = core::OpKind::kFsync;
      out.handle = op.fsync().handle();
      if (auto s = CheckHandle("fsync.handle", out.handle); !s.ok()) return s;
      p.flags = op.fsync().datasync() ? 1 : 0;
      break;
    case v1::Operation::kFallocate: {
      const v1::Fallocate& f = op.fallocate();
      out.kind = core::OpKind::kFallocate;
      out.handle = f.handle();
      if (auto s = CheckHandle("fallocate.handle", out.handle); !s.ok()) return s;
      constexpr uint32_t kKnown = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
      if ((f.mode() & ~kKnown) != 0) return Invalid("fallocate.mode", "unknown mode bits");
      if ((f.mode() & FALLOC_FL_PUNCH_HOLE) != 0) {
        if ((f.mode() & FALLOC_FL_KEEP_SIZE) == 0) {
          return Invalid("fallocate.mode", "PUNCH_HOLE requires KEEP_SIZE");
        }
        if ((f.mode() & FALLOC_FL_ZERO_RANGE) != 0) {
          return Invalid("fallocate.mode", "PUNCH_HOLE excludes ZERO_RANGE");
        }
      }
      if (f.offset() < 0) return Invalid("fallocate.offset", "must be >= 0");
      if (f.length() <= 0) return Invalid("fallocate.length", "must be > 0");
      p.mode = f.mode();
      p.offset = f.offset();
      p.length = f.length();
      break;
    }
    case v1::Operation::kFtruncate:
      out.kind = core::OpKind::kFtruncate;
      out.handle = op.ftruncate().handle();
      if (auto s = CheckHandle("ftruncate.handle", out.handle); !s.ok()) return s;
      if (op.ftruncate().length() < 0) return Invalid("ftruncate.length", "must be >= 0");
      p.length = op.ftruncate().length();
      break;
    case v1::Operation::kStatx: {
      const v1::Statx& st = op.statx();
      out.kind = core::OpKind::kStatx;
      if (st.target_case() == v1::Statx::kHandle) {
        out.handle = st.handle();
        if (auto s = CheckHandle("statx.handle", out.handle); !s.ok()) return s;
        p.flags = AT_EMPTY_PATH;
      } else if (st.target_case() == v1::Statx::kPath) {
        if (auto s = CheckPath("statx.path", st.path()); !s.ok()) return s;
        p.path = st.path().c_str();
        p.flags = st.no_follow() ? AT_SYMLINK_NOFOLLOW : 0;
      } else {
        return Invalid("statx.target", "set handle or path");
      }
      p.buf = &buffers.stx;
      break;
    }
    case v1::Operation::kUnlink:
      out.kind = core::OpKind::kUnlink;
      if (auto s = CheckPath("unlink.path", op.unlink().path()); !s.ok()) return s;
      p.path = op.unlink().path().c_str();
      p.flags = op.unlink().directory() ? AT_REMOVEDIR : 0;
      break;
    case v1::Operation::kRename:
      out.kind = core::OpKind::kRename;
      if (auto s = CheckPath("rename.old_path", op.rename().old_path()); !s.ok()) return s;
      if (auto s = CheckPath("rename.new_path", op.rename().new_path()); !s.ok()) return s;
      p.path = op.rename().old_path().c_str();
      p.path2 = op.rename().new_path().c_str();
      p.flags = op.rename().no_replace() ? RENAME_NOREPLACE : 0;
      break;
    case v1::Operation::kMkdir: {
      out.kind = core::OpKind::kMkdir;
      if (auto s = CheckPath("mkdir.path", op.mkdir().path()); !s.ok()) return s;
      const uint32_t mode = op.mkdir().has_mode() ? op.mkdir().mode() : 0755;
      if (auto s = CheckMode("mkdir.mode", mode); !s.ok()) return s;
      p.path = op.mkdir().path().c_str();
      p.mode = mode;
      break;
    }
    case v1::Operation::kPoll: {
      out.kind = core::OpKind::kPoll;
      out.handle = op.poll().handle();
      if (auto s = CheckHandle("poll.handle", out.handle); !s.ok()) return s;
      const uint32_t ev = op.poll().events();
      if (ev == 0 || (ev & ~uint32_t{v1::POLL_EVENTS_READABLE | v1::POLL_EVENTS_WRITABLE}) != 0) {
        return Invalid("poll.events", "must be READABLE and/or WRITABLE");
      }
      p.flags = ((ev & v1::POLL_EVENTS_READABLE) ? POLLIN : 0) |
                ((ev & v1::POLL_EVENTS_WRITABLE) ? POLLOUT : 0);
      break;
    }
    case v1::Operation::kTimeout:
      out.kind = core::OpKind::kTimeout;
      if (op.timeout().duration_us() > kMaxTimeoutUs) {
        return Invalid("timeout.duration_us", "over 24 hours");
      }
      p.timeout_ns = static_cast<int64_t>(op.timeout().duration_us()) * 1000;
      break;
    case v1::Operation::KIND_NOT_SET:
      return Invalid("op.kind", "no operation set");
  }
  return absl::OkStatus();
}

namespace {

// The errno a finished op reports: ECANCELED, ETIMEDOUT, or its own.
int ErrorOf(core::OpState state, int64_t result) {
  if (state == core::OpState::kCancelled) return ECANCELED;
  if (state == core::OpState::kTimedOut) return ETIMEDOUT;
  return result < 0 ? static_cast<int>(-result) : 0;
}

v1::FileType FileTypeOf(uint16_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG: return v1::FILE_TYPE_REGULAR;
    case S_IFDIR: return v1::FILE_TYPE_DIRECTORY;
    case S_IFLNK: return v1::FILE_TYPE_SYMLINK;
    case S_IFIFO: return v1::FILE_TYPE_FIFO;
    case S_IFSOCK: return v1::FILE_TYPE_SOCKET;
    case S_IFCHR: return v1::FILE_TYPE_CHAR_DEVICE;
    case S_IFBLK: return v1::FILE_TYPE_BLOCK_DEVICE;
    default: return v1::FILE_TYPE_UNSPECIFIED;
  }
}

int64_t Nanos(const struct statx_timestamp& t) {
  return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

uint32_t ToProtoPollEvents(int64_t revents) {
  uint32_t out = 0;
  if (revents & POLLIN) out |= v1::POLL_EVENTS_READABLE;
  if (revents & POLLOUT) out |= v1::POLL_EVENTS_WRITABLE;
  if (revents & POLLERR) out |= v1::POLL_EVENTS_ERROR;
  if (revents & POLLHUP) out |= v1::POLL_EVENTS_HANGUP;
  return out;
}

// Completion.message of a cancelled op: who or what ended it.
std::string_view CancelledBy(core::EndReason reason) {
  switch (reason) {
    case core::EndReason::kClientRequest:
      return "cancelled by its client";
    case core::EndReason::kOperatorRequest:
      return "cancelled by an operator";
    case core::EndReason::kSessionClosed:
      return "session closed";
    case core::EndReason::kRpcCancelled:
      return "its RPC was cancelled or broke";
    case core::EndReason::kDrain:
      return "the daemon drained";
    case core::EndReason::kRestart:
      return "the daemon restarted before it ran; submit it again";
    default:
      return "cancelled";
  }
}

}  // namespace

int32_t CompletionResult(core::OpState state, core::OpKind kind, int64_t result) {
  const int error = ErrorOf(state, result);
  if (error != 0) return -error;
  if (kind == core::OpKind::kPoll && state == core::OpState::kCompleted) {
    return static_cast<int32_t>(ToProtoPollEvents(result));
  }
  return static_cast<int32_t>(result);
}

void FillCompletion(const core::Op& op, OpBuffers& buffers) {
  v1::Completion& c = buffers.completion;
  const uint64_t w = op.head->word.load(std::memory_order_acquire);
  const core::OpState state = core::OpWord::State(w);
  const core::OpKind kind = op.head->kind.load(std::memory_order_relaxed);
  const int64_t result = op.result.load(std::memory_order_relaxed);
  c.set_op_id(op.id().value);
  c.set_outcome(OutcomeOf(state));
  c.set_kind(ToProto(kind));
  c.set_backend(ToProto(op.head->backend.load(std::memory_order_relaxed)));
  c.set_end_reason(ToProto(core::OpWord::Reason(w)));
  const int64_t submitted = op.head->submitted_ns.load(std::memory_order_relaxed);
  const int64_t finished = op.finished_ns.load(std::memory_order_relaxed);
  c.set_duration_us(finished > submitted ? (finished - submitted) / 1000 : 0);
  const uint64_t bytes = op.bytes_done.load(std::memory_order_relaxed);
  c.set_bytes_done(bytes);
  const int error = ErrorOf(state, result);
  c.set_result(CompletionResult(state, kind, result));
  c.set_error_number(error);
  if (error != 0) c.set_error_name(ErrnoName(error));
  if (state == core::OpState::kCancelled) {
    c.set_message(std::string(CancelledBy(core::OpWord::Reason(w))));
  } else if (state == core::OpState::kFailed) {
    c.set_message(strerror(error));
  } else {
    c.clear_message();
  }
  if (kind == core::OpKind::kRead) {
    c.mutable_data()->resize(bytes);  // a cancelled read still returns what it read
  } else {
    c.clear_data();
  }
  if (state != core::OpState::kCompleted || result < 0) return;
  switch (kind) {
    case core::OpKind::kOpen:
      c.set_handle(static_cast<uint32_t>(result));
      break;
    case core::OpKind::kPoll:
      c.set_revents(ToProtoPollEvents(result));
      break;
    case core::OpKind::kStatx: {
      const struct statx& x = buffers.stx;
      v1::Stat* s = c.mutable_stat();
      s->set_file_type(FileTypeOf(x.stx_mode));
      s->set_mode(x.stx_mode & 07777);
      s->set_uid(x.stx_uid);
      s->set_gid(x.stx_gid);
      s->set_nlink(x.stx_nlink);
      s->set_ino(x.stx_ino);
      s->set_dev_major(x.stx_dev_major);
      s->set_dev_minor(x.stx_dev_minor);
      s->set_rdev_major(x.stx_rdev_major);
      s->set_rdev_minor(x.stx_rdev_minor);
      s->set_size_bytes(x.stx_size);
      s->set_blksize(x.stx_blksize);
      s->set_blocks(x.stx_blocks);
      s->set_atime_unix_nanos(Nanos(x.stx_atime));
      s->set_mtime_unix_nanos(Nanos(x.stx_mtime));
      s->set_ctime_unix_nanos(Nanos(x.stx_ctime));
      if (x.stx_mask & STATX_BTIME) s->set_btime_unix_nanos(Nanos(x.stx_btime));
      break;
    }
    default:
      break;
  }
}

void FillRejected(const absl::Status& status, uint64_t tag, v1::Completion& out) {
  out.Clear();
  out.set_tag(tag);
  out.set_outcome(v1::OUTCOME_REJECTED);
  out.set_status_code(static_cast<int32_t>(status.code()));
  out.set_message(std::string(status.message()));
}

v1::OpKind ToProto(core::OpKind kind) { return static_cast<v1::OpKind>(kind); }
core::OpKind FromProto(v1::OpKind kind) {
  return (kind >= 1 && kind <= core::kOpKindCount) ? static_cast<core::OpKind>(kind)
                                                   : core::OpKind::kNop;
}
v1::OpState ToProto(core::OpState state, core::BackendKind backend) {
  switch (state) {
    case core::OpState::kFree:
      return v1::OP_STATE_UNSPECIFIED;
    case core::OpState::kQueued:
    case core::OpState::kDispatched:
      return v1::OP_STATE_QUEUED;  // waiting for its backend to take it
    case core::OpState::kRunning:
      // The ring takes an op by submitting it to the kernel, which does not
      // say when it starts it.
      return backend == core::BackendKind::kIoUring ? v1::OP_STATE_DISPATCHED
                                                    : v1::OP_STATE_RUNNING;
    default:
      return static_cast<v1::OpState>(state);  // terminal states share their values
  }
}
core::OpState FromProto(v1::OpState state) {
  return (state >= 1 && state <= 7) ? static_cast<core::OpState>(state) : core::OpState::kFree;
}

v1::Backend ToProto(core::BackendKind backend) {
  switch (backend) {
    case core::BackendKind::kIoUring: return v1::BACKEND_IO_URING;
    case core::BackendKind::kThreadPool: return v1::BACKEND_THREAD_POOL;
    case core::BackendKind::kInline: return v1::BACKEND_INLINE;
    default: return v1::BACKEND_UNSPECIFIED;
  }
}

v1::EndReason ToProto(core::EndReason reason) { return static_cast<v1::EndReason>(reason); }

v1::CancelResult ToProto(core::CancelResult result) {
  switch (result) {
    case core::CancelResult::kCancelled: return v1::CANCEL_RESULT_CANCELLED;
    case core::CancelResult::kNotCancellable: return v1::CANCEL_RESULT_NOT_CANCELLABLE;
    case core::CancelResult::kAlreadyDone: return v1::CANCEL_RESULT_ALREADY_DONE;
    case core::CancelResult::kNotFound: return v1::CANCEL_RESULT_NOT_FOUND;
  }
  return v1::CANCEL_RESULT_UNSPECIFIED;
}

v1::Outcome OutcomeOf(core::OpState terminal) {
  switch (terminal) {
    case core::OpState::kCompleted: return v1::OUTCOME_COMPLETED;
    case core::OpState::kCancelled: return v1::OUTCOME_CANCELLED;
    case core::OpState::kTimedOut: return v1::OUTCOME_TIMED_OUT;
    case core::OpState::kFailed: return v1::OUTCOME_FAILED;
    default: return v1::OUTCOME_UNSPECIFIED;
  }
}

std::string ErrnoName(int error) {
  const char* name = strerrorname_np(error);
  return name != nullptr ? std::string(name) : absl::StrCat("E", error);
}

v1::EventType TerminalEvent(core::OpState s) {
  switch (s) {
    case core::OpState::kCompleted: return v1::EVENT_TYPE_COMPLETED;
    case core::OpState::kCancelled: return v1::EVENT_TYPE_CANCELLED;
    case core::OpState::kTimedOut: return v1::EVENT_TYPE_TIMED_OUT;
    default: return v1::EVENT_TYPE_FAILED;
  }
}

int64_t ToUnixNanos(int64_t mono_ns) { return mono_ns == 0 ? 0 : mono_ns + kMonoToUnix; }

bool FromOperationInfo(const v1::OperationInfo& info, core::OpSnapshot& out) {
  const core::OpState state = FromProto(info.state());
  if (!core::IsTerminal(state)) return false;
  // CLOCK_MONOTONIC is the host's: a predecessor's timestamps map back as ours.
  auto mono = [](int64_t unix_nanos) { return unix_nanos == 0 ? 0 : unix_nanos - kMonoToUnix; };
  out = core::OpSnapshot{};
  out.id = core::OpId{info.op_id()};
  out.session_id = info.session_id();
  out.kind = FromProto(info.kind());
  out.state = state;
  switch (info.backend()) {
    case v1::BACKEND_IO_URING: out.backend = core::BackendKind::kIoUring; break;
    case v1::BACKEND_THREAD_POOL: out.backend = core::BackendKind::kThreadPool; break;
    case v1::BACKEND_INLINE: out.backend = core::BackendKind::kInline; break;
    default: out.backend = core::BackendKind::kNone; break;
  }
  out.safety = info.cancel_safety() == v1::CANCEL_SAFETY_ALWAYS ? core::CancelSafety::kAlways
                                                                 : core::CancelSafety::kOnlyBeforeStart;
  out.end_requested = info.end_reason() != v1::END_REASON_UNSPECIFIED;
  out.end_reason = static_cast<core::EndReason>(info.end_reason());
  out.cancel_requested = info.cancel_requested();
  out.handle = info.handle();
  out.submitted_ns = mono(info.submitted_unix_nanos());
  out.finished_ns = mono(info.finished_unix_nanos());
  out.result = info.error_number() != 0 ? -int64_t{info.error_number()} : info.result();
  out.bytes_done = info.bytes_done();
  out.tag = info.tag();
  out.deadline_ms = info.deadline_ms();
  std::snprintf(out.target, sizeof out.target, "%s", info.target().c_str());
  for (const v1::Event& e : info.timeline()) {
    switch (e.type()) {
      case v1::EVENT_TYPE_DISPATCHED: out.dispatched_ns = mono(e.unix_nanos()); break;
      case v1::EVENT_TYPE_STARTED: out.started_ns = mono(e.unix_nanos()); break;
      case v1::EVENT_TYPE_CANCEL_REQUESTED: out.cancel_requested_ns = mono(e.unix_nanos()); break;
      case v1::EVENT_TYPE_DEADLINE_EXPIRED: out.deadline_passed = true; break;
      default: break;
    }
  }
  return true;
}

void ToOperationInfo(const core::OpSnapshot& s, uint32_t uid, uint32_t pid,
                     std::string_view client, bool include_timeline, int64_t now_mono_ns,
                     v1::OperationInfo& out) {
  out.set_op_id(s.id.value);
  out.set_session_id(s.session_id);
  out.set_client(std::string(client));
  out.set_uid(uid);
  out.set_pid(pid);
  out.set_kind(ToProto(s.kind));
  out.set_target(s.target);
  out.set_handle(s.handle);
  out.set_backend(ToProto(s.backend));
  out.set_state(ToProto(s.state, s.backend));
  out.set_cancel_requested(s.cancel_requested);
  out.set_cancellable(s.cancellable());
  out.set_cancel_safety(s.safety == core::CancelSafety::kAlways
                            ? v1::CANCEL_SAFETY_ALWAYS
                            : v1::CANCEL_SAFETY_ONLY_BEFORE_START);
  const bool finished = core::IsTerminal(s.state);
  const int64_t end = finished && s.finished_ns != 0 ? s.finished_ns : now_mono_ns;
  out.set_age_us(end > s.submitted_ns ? (end - s.submitted_ns) / 1000 : 0);
  out.set_submitted_unix_nanos(ToUnixNanos(s.submitted_ns));
  out.set_finished_unix_nanos(finished ? ToUnixNanos(s.finished_ns) : 0);
  out.set_bytes_done(s.bytes_done);
  if (finished) {
    const int error = ErrorOf(s.state, s.result);
    out.set_outcome(OutcomeOf(s.state));
    out.set_result(error != 0 ? -error : static_cast<int32_t>(s.result));
    out.set_error_number(error);
  }
  if (s.end_requested) out.set_end_reason(ToProto(s.end_reason));
  out.set_tag(s.tag);
  out.set_deadline_ms(s.deadline_ms);
  if (!include_timeline) return;
  auto add = [&](v1::EventType type, int64_t mono, std::string detail = {}) {
    if (mono == 0) return;
    v1::Event* e = out.add_timeline();
    e->set_type(type);
    e->set_unix_nanos(ToUnixNanos(mono));
    e->set_detail(std::move(detail));
  };
  add(v1::EVENT_TYPE_SUBMITTED, s.submitted_ns);
  add(v1::EVENT_TYPE_DISPATCHED, s.dispatched_ns, std::string(core::Name(s.backend)));
  add(v1::EVENT_TYPE_STARTED, s.started_ns);
  // A cancel and a deadline, granted or refused, in the order they came.
  const int64_t deadline_at =
      s.deadline_passed ? s.submitted_ns + int64_t{s.deadline_ms} * 1'000'000 : 0;
  const bool cancel_ended_it = s.end_requested && s.end_reason != core::EndReason::kDeadline;
  const bool deadline_ended_it = s.end_requested && s.end_reason == core::EndReason::kDeadline;
  std::string cancel_detail = "refused: past its cancel point";
  if (cancel_ended_it) {
    cancel_detail = std::string(core::Name(s.end_reason));
  } else if (deadline_ended_it) {
    cancel_detail = "refused: its deadline had ended it";
  }
  const std::string deadline_detail = deadline_ended_it ? "ended it" : "too late: it went on";
  if (s.cancel_requested && (deadline_at == 0 || s.cancel_requested_ns <= deadline_at)) {
    add(v1::EVENT_TYPE_CANCEL_REQUESTED, s.cancel_requested_ns, cancel_detail);
    add(v1::EVENT_TYPE_DEADLINE_EXPIRED, deadline_at, deadline_detail);
  } else {
    add(v1::EVENT_TYPE_DEADLINE_EXPIRED, deadline_at, deadline_detail);
    if (s.cancel_requested) add(v1::EVENT_TYPE_CANCEL_REQUESTED, s.cancel_requested_ns, cancel_detail);
  }
  if (finished) {
    const int error = ErrorOf(s.state, s.result);
    add(TerminalEvent(s.state), s.finished_ns, error != 0 ? ErrnoName(error) : std::string());
  }
}

}  // namespace asyncd::daemon
