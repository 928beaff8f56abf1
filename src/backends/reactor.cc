#include "src/backends/reactor.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include "src/core/clock.h"

namespace asyncd::backends {

namespace asio = boost::asio;
using core::Op;
using core::OpKind;

namespace {

constexpr int kRead = 0;
constexpr int kWrite = 1;

int64_t Ret(int64_t r) { return r < 0 ? -errno : r; }

// steady_clock and MonoNanos are both CLOCK_MONOTONIC.
asio::steady_timer::time_point AtMono(int64_t mono_ns) {
  return asio::steady_timer::time_point(std::chrono::nanoseconds(mono_ns));
}

}  // namespace

struct Reactor::Waiter {
  Op* op = nullptr;
  uint32_t gen = 0;
  OpKind kind = OpKind::kNop;
  int direction = kRead;
  uint32_t moved = 0;      // bytes a write has written so far
  bool nowait_refused = false;  // RWF_NOWAIT gave EOPNOTSUPP: O_NONBLOCK per call
  int64_t timeout_end = 0;  // kTimeout: when it elapses (MonoNanos)
  Channel* channel = nullptr;  // while queued on a descriptor
  Waiter* prev = nullptr;
  Waiter* next = nullptr;
  // Only ops with a timeout or deadline have one: most blocked reads do not,
  // and it is the larger part of a waiter.
  std::unique_ptr<asio::steady_timer> timer;
};

// One descriptor some ops wait on: registered with epoll once, however many
// ops wait on it, with a FIFO of waiters per direction. It goes as soon as
// none waits (its fd may then be closed and reused): its handlers name it by
// fd and serial, and find nothing once it is gone.
struct Reactor::Channel {
  Channel(asio::io_context& io, int fd, uint64_t serial)
      : fd(fd), serial(serial), blocking((::fcntl(fd, F_GETFL) & O_NONBLOCK) == 0), descriptor(io) {}
  // The descriptor is the session's: never closed here. Pending waits end
  // aborted.
  ~Channel() { (void)descriptor.release(); }
  int fd;
  uint64_t serial;
  bool blocking;  // the description was blocking before we waited on it
  asio::posix::stream_descriptor descriptor;
  Waiter* head[2] = {nullptr, nullptr};
  Waiter* tail[2] = {nullptr, nullptr};
  bool armed[2] = {false, false};
  bool in_handler = false;  // OnReady walks it: not to be dropped under it
};

Reactor::Reactor(core::OpCompleter& completer)
    : completer_(completer), work_(asio::make_work_guard(io_)), thread_([this] { io_.run(); }) {}

Reactor::~Reactor() { Shutdown(); }

bool Reactor::Takes(const Op& op) {
  const OpKind kind = op.head->kind.load(std::memory_order_relaxed);
  const bool io = kind == OpKind::kRead || kind == OpKind::kWrite;
  return MayHold(op) && (!io || (op.params.stream && op.params.len > 0));
}

bool Reactor::MayHold(const Op& op) {
  switch (op.head->kind.load(std::memory_order_relaxed)) {
    case OpKind::kTimeout:
    case OpKind::kPoll:
      return true;
    case OpKind::kRead:
    case OpKind::kWrite:
      return op.head->may_block.load(std::memory_order_relaxed);
    default:
      return false;
  }
}

bool Reactor::Submit(Op& op) noexcept {
  submitting_.fetch_add(1, std::memory_order_seq_cst);
  if (stopping_.load(std::memory_order_seq_cst)) {
    submitting_.fetch_sub(1, std::memory_order_release);
    return false;
  }
  waiting_.fetch_add(1, std::memory_order_relaxed);
  const uint32_t gen = op.generation();
  asio::post(io_, [this, o = &op, gen] {
    Begin(o, gen);
    Flush();
  });
  submitting_.fetch_sub(1, std::memory_order_release);
  return true;
}

void Reactor::Interrupt(Op& op, uint32_t gen) noexcept {
  asio::post(io_, [this, o = &op, gen] {
    auto it = waiters_.find(o);
    if (it != waiters_.end() && it->second->gen == gen) EndEarly(it->second);
    Flush();
  });
}

void Reactor::Shutdown() {
  if (stopping_.exchange(true, std::memory_order_seq_cst)) {
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
    return;
  }
  // Every Submit that saw us running has posted its op: they run first.
  while (submitting_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  asio::post(io_, [this] {
    const int64_t now = core::MonoNanos();
    // Taken out first: ending one erases it, and a flat map's begin() scans.
    std::vector<Waiter*> all;
    all.reserve(waiters_.size());
    for (const auto& [op, w] : waiters_) all.push_back(w);
    for (Waiter* w : all) {
      w->op->RequestEnd(w->gen, core::EndReason::kDrain, now);
      EndEarly(w);
    }
    Flush();
    work_.reset();
  });
  thread_.join();
}

void Reactor::Begin(Op* op, uint32_t gen) {
  // Always before Shutdown's drain, which Shutdown posts after every Submit.
  const int64_t now = core::MonoNanos();
  if (!completer_.Start(*op, now)) {
    waiting_.fetch_sub(1, std::memory_order_relaxed);
    completer_.Complete(*op, -ECANCELED);
    return;
  }
  auto* w = new Waiter;
  w->op = op;
  w->gen = gen;
  w->kind = op->head->kind.load(std::memory_order_relaxed);
  w->direction = w->kind == OpKind::kWrite ||
                         (w->kind == OpKind::kPoll && (op->params.flags & POLLOUT) != 0 &&
                          (op->params.flags & (POLLIN | POLLPRI)) == 0)
                     ? kWrite
                     : kRead;
  waiters_.emplace(op, w);
  int64_t wake = op->params.deadline_ns;
  if (w->kind == OpKind::kTimeout) {
    w->timeout_end = now + op->params.timeout_ns;
    wake = wake == 0 ? w->timeout_end : std::min(wake, w->timeout_end);
  } else if (Attempt(w)) {
    return;
  }
  if (wake != 0) {
    w->timer = std::make_unique<asio::steady_timer>(io_, AtMono(wake));
    w->timer->async_wait([this, op, gen](const boost::system::error_code& ec) {
      if (ec) return;
      OnTimer(op, gen);
      Flush();
    });
  }
}

// The non-blocking attempt. Never blocks: see the class comment.
bool Reactor::Attempt(Waiter* w) {
  // Asked to end, its Interrupt on its way: take no more data for it.
  if (core::OpWord::EndRequested(w->op->head->word.load(std::memory_order_acquire))) {
    EndEarly(w);
    return true;
  }
  const core::OpParams& p = w->op->params;
  if (w->kind == OpKind::kPoll) {
    pollfd pfd{p.fd, static_cast<short>(p.flags), 0};
    const timespec zero{0, 0};
    const int r = ::ppoll(&pfd, 1, &zero, nullptr);
    if (r == 0) return Wait(w);
    End(w, r > 0 ? pfd.revents : -errno);
    return true;
  }
  const bool write = w->kind == OpKind::kWrite;
  for (;;) {
    char* base = static_cast<char*>(p.buf) + w->moved;
    iovec iov{base, p.len - w->moved};
    const int64_t offset = p.offset >= 0 ? p.offset + w->moved : -1;
    int64_t n;
    if (!w->nowait_refused) {
      n = Ret(write ? ::pwritev2(p.fd, &iov, 1, offset, RWF_NOWAIT)
                    : ::preadv2(p.fd, &iov, 1, offset, RWF_NOWAIT));
      if (n == -EOPNOTSUPP) {
        w->nowait_refused = true;
        continue;
      }
    } else {
      // Only this thread reaches this description: the flag is ours for the call.
      const int fl = ::fcntl(p.fd, F_GETFL);
      if (fl < 0) {
        End(w, -errno);
        return true;
      }
      if ((fl & O_NONBLOCK) == 0) (void)::fcntl(p.fd, F_SETFL, fl | O_NONBLOCK);
      n = Ret(write ? (offset >= 0 ? ::pwrite(p.fd, base, iov.iov_len, offset)
                                   : ::write(p.fd, base, iov.iov_len))
                    : (offset >= 0 ? ::pread(p.fd, base, iov.iov_len, offset)
                                   : ::read(p.fd, base, iov.iov_len)));
      if ((fl & O_NONBLOCK) == 0) (void)::fcntl(p.fd, F_SETFL, fl);
    }
    if (n == -EAGAIN) return Wait(w);
    if (n < 0) {
      End(w, w->moved > 0 ? int64_t{w->moved} : n);
      return true;
    }
    if (!write) {
      End(w, n);
      return true;
    }
    w->moved += static_cast<uint32_t>(n);
    if (w->moved == p.len) {
      End(w, w->moved);
      return true;
    }
  }
}

// Queues the waiter on its descriptor and waits for readiness. False (it
// waits) unless the descriptor cannot be waited on: then it completed.
bool Reactor::Wait(Waiter* w) {
  Channel* ch = w->channel != nullptr ? w->channel : ChannelFor(w->op->params.fd);
  if (ch == nullptr) {
    End(w, -EINVAL);
    return true;
  }
  if (w->channel == nullptr) {
    w->channel = ch;
    const int d = w->direction;
    w->prev = ch->tail[d];
    w->next = nullptr;
    (ch->tail[d] != nullptr ? ch->tail[d]->next : ch->head[d]) = w;
    ch->tail[d] = w;
  }
  Arm(ch, w->direction);
  return false;
}

void Reactor::Arm(Channel* ch, int d) {
  if (ch->armed[d] || ch->head[d] == nullptr) return;
  ch->armed[d] = true;
  ch->descriptor.async_wait(
      d == kRead ? asio::posix::stream_descriptor::wait_read
                 : asio::posix::stream_descriptor::wait_write,
      [this, fd = ch->fd, serial = ch->serial, d](const boost::system::error_code& ec) {
        if (ec == asio::error::operation_aborted) return;  // the channel went
        auto it = channels_.find(fd);
        if (it == channels_.end() || it->second->serial != serial) return;
        Channel* ch = it->second.get();
        ch->armed[d] = false;
        ch->in_handler = true;
        if (!ec) {
          OnReady(ch, d);
        } else {
          // The descriptor cannot be waited on after all: end its waiters.
          while (ch->head[d] != nullptr) End(ch->head[d], -ec.value());
        }
        ch->in_handler = false;
        MaybeDropChannel(ch);
        Flush();
      });  // Asio sets O_NONBLOCK on the open file description for its wait (once:
  // it remembers), which the client's other ops on the handle must not see.
  // A wait needs no such flag: cleared at once.
  if (ch->blocking) {
    const int fl = ::fcntl(ch->fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK) != 0) (void)::fcntl(ch->fd, F_SETFL, fl & ~O_NONBLOCK);
  }
}

void Reactor::OnReady(Channel* ch, int d) {
  // In order, until one would block: the rest would too.
  while (Waiter* w = ch->head[d]) {
    if (!Attempt(w)) return;  // re-armed by Wait
  }
}

void Reactor::OnTimer(Op* op, uint32_t gen) {
  auto it = waiters_.find(op);
  if (it == waiters_.end() || it->second->gen != gen) return;  // ended meanwhile
  Waiter* w = it->second;
  const int64_t now = core::MonoNanos();
  const int64_t deadline = op->params.deadline_ns;
  if (w->kind == OpKind::kTimeout && now >= w->timeout_end &&
      (deadline == 0 || deadline > w->timeout_end)) {
    End(w, 0);
    return;
  }
  if (deadline != 0 && now >= deadline &&
      completer_.Expire(*op, gen, now) == core::CancelResult::kCancelled) {
    EndEarly(w);
    return;
  }
  if (w->kind == OpKind::kTimeout) {  // its deadline did not end it: wait out the timeout
    w->timer->expires_at(AtMono(w->timeout_end));
    w->timer->async_wait([this, op, gen](const boost::system::error_code& ec) {
      if (ec) return;
      OnTimer(op, gen);
      Flush();
    });
  }
}

void Reactor::EndEarly(Waiter* w) {
  End(w, w->moved > 0 ? int64_t{w->moved} : -ECANCELED);
}

void Reactor::End(Waiter* w, int64_t result) {
  Channel* ch = w->channel;
  if (ch != nullptr) {
    const int d = w->direction;
    (w->prev != nullptr ? w->prev->next : ch->head[d]) = w->next;
    (w->next != nullptr ? w->next->prev : ch->tail[d]) = w->prev;
    // A wait left armed for an empty direction fires once and finds no one.
    MaybeDropChannel(ch);
  }
  Op* op = w->op;
  waiters_.erase(op);
  delete w;  // cancels its timer; the handler finds no waiter
  // Completed by Flush, once the channel (if it goes) has left epoll: the
  // completion may release the handle and close its fd.
  ended_.emplace_back(op, result);
}

// Completions never reach back into End (only this thread's handlers do),
// so ended_ keeps its capacity: no allocation per handler.
void Reactor::Flush() {
  for (const auto& [op, result] : ended_) {
    waiting_.fetch_sub(1, std::memory_order_relaxed);
    completer_.Complete(*op, result);
  }
  ended_.clear();
}

Reactor::Channel* Reactor::ChannelFor(int fd) {
  auto it = channels_.find(fd);
  if (it != channels_.end()) return it->second.get();
  auto ch = std::make_unique<Channel>(io_, fd, ++channel_serial_);
  boost::system::error_code ec;
  ch->descriptor.assign(fd, ec);
  if (ec) {
    (void)ch->descriptor.release();
    return nullptr;
  }
  return channels_.emplace(fd, std::move(ch)).first->second.get();
}

void Reactor::MaybeDropChannel(Channel* ch) {
  if (ch->in_handler || ch->head[kRead] != nullptr || ch->head[kWrite] != nullptr) {
    return;
  }
  channels_.erase(ch->fd);
}

}  // namespace asyncd::backends
