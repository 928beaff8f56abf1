#include "src/core/dispatcher.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "src/core/check.h"
#include "src/core/clock.h"

namespace asyncd::core {

namespace {

bool UsesHandle(const OpRequest& r) {
  switch (r.kind) {
    case OpKind::kClose:
    case OpKind::kRead:
    case OpKind::kWrite:
    case OpKind::kFsync:
    case OpKind::kFallocate:
    case OpKind::kFtruncate:
    case OpKind::kPoll:
      return true;
    case OpKind::kStatx:
      return r.params.path == nullptr;
    default:
      return false;
  }
}

}  // namespace

void CancelCounts::Add(CancelResult r) {
  switch (r) {
    case CancelResult::kCancelled: ++cancelled; break;
    case CancelResult::kNotCancellable: ++not_cancellable; break;
    case CancelResult::kAlreadyDone: ++already_done; break;
    case CancelResult::kNotFound: ++not_found; break;
  }
}

Dispatcher::Dispatcher(Registry& registry, int root_fd) : registry_(registry), root_fd_(root_fd) {}

Dispatcher::~Dispatcher() = default;

void Dispatcher::SetBackends(std::vector<Backend*> backends) {
  ASYNCD_CHECK(!backends.empty());
  backends_ = std::move(backends);
  for (int k = 1; k <= kOpKindCount; ++k) {
    route_[k] = nullptr;
    for (Backend* b : backends_) {
      if (b->Supports(static_cast<OpKind>(k))) {
        route_[k] = b;
        break;
      }
    }
    ASYNCD_CHECK(route_[k] != nullptr);  // the fallback must run everything
  }
}

BackendKind Dispatcher::RouteFor(OpKind kind) const { return BackendFor(kind)->kind(); }

Backend* Dispatcher::BackendOf(BackendKind kind) const {
  for (Backend* b : backends_) {
    if (b->kind() == kind) return b;
  }
  return nullptr;
}

Backend* Dispatcher::AreaBackend() const {
  Backend* b = BackendFor(OpKind::kRead);
  return b != nullptr && b == BackendFor(OpKind::kWrite) ? b : nullptr;
}

uint8_t Dispatcher::RegisterArea(void* base, size_t bytes) {
  Backend* b = AreaBackend();
  return b != nullptr ? b->RegisterArea(base, bytes) : 0;
}

void Dispatcher::UnregisterArea(uint8_t area) {
  Backend* b = AreaBackend();
  if (b != nullptr && area != 0) b->UnregisterArea(area);
}

absl::StatusOr<HandleTable::Use> Dispatcher::AcquireHandle(Session& session,
                                                           const OpRequest& request) {
  // First: a closing session has closed its handles too, and an op on its
  // way when the session ended must say so, not that its handle is unknown.
  if (session.closing()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", session.id(), " is closing"));
  }
  if (!UsesHandle(request)) return HandleTable::Use{};
  return session.handles().Acquire(request.handle);
}

absl::StatusOr<Op*> Dispatcher::Prepare(Session& session, const OpRequest& request, int64_t now) {
  absl::StatusOr<HandleTable::Use> use = AcquireHandle(session, request);
  if (!use.ok()) return use.status();
  const bool uses_handle = UsesHandle(request);
  // A handle op shows the path its handle was opened with (Snapshot falls
  // back to "h:<handle>"); a path op its path.
  std::string_view target = use->path;
  if (!uses_handle && request.params.path != nullptr) {
    target = request.shown_path != nullptr ? request.shown_path : request.params.path;
  }
  const bool creates =
      request.kind == OpKind::kOpen && (request.params.flags & (O_CREAT | O_TRUNC)) != 0;
  absl::StatusOr<Op*> registered = session.Register(
      request.kind, SafetyOf(request.kind, creates, use->stream), uses_handle ? request.handle : 0,
      target, now, request.tag, request.params.deadline_ns);
  if (!registered.ok()) {
    if (uses_handle) session.handles().Release(request.handle);
    return registered.status();
  }
  Fill(session, **registered, request, *use);
  return *registered;
}

absl::StatusOr<Op*> Dispatcher::PrepareRestored(Session& session, OpId id,
                                                const OpRequest& request) {
  Op* op =
      id.session_index() == session.index() ? session.Find(id.slot(), id.generation()) : nullptr;
  if (op == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("no operation ", id.value, " in session ", session.id()));
  }
  // Restored and never submitted: still queued, with no backend.
  if (op->state() != OpState::kQueued ||
      op->head->backend.load(std::memory_order_relaxed) != BackendKind::kNone) {
    return absl::FailedPreconditionError(
        absl::StrCat("operation ", id.value, " was submitted already"));
  }
  if (op->head->kind.load(std::memory_order_relaxed) != request.kind ||
      op->head->handle.load(std::memory_order_relaxed) !=
          (UsesHandle(request) ? request.handle : 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("operation ", id.value, ": the request is not the restored one"));
  }
  absl::StatusOr<HandleTable::Use> use = AcquireHandle(session, request);
  if (!use.ok()) {
    Abandon(*op);
    return use.status();
  }
  Fill(session, *op, request, *use);
  return op;
}

void Dispatcher::Fill(Session& session, Op& op, const OpRequest& request,
                      const HandleTable::Use& use) {
  const bool uses_handle = UsesHandle(request);
  op.head->may_block.store(MayBlock(request.kind, use.stream && !use.nonblock),
                           std::memory_order_relaxed);
  op.params = request.params;
  // Set-id and sticky bits are never created, whoever calls core: seccomp
  // (systemd's RestrictSUIDSGID=) does not see io_uring's openat2.
  if (request.kind == OpKind::kOpen || request.kind == OpKind::kMkdir) op.params.mode &= 0777;
  op.params.fd = use.fd;
  op.params.stream = use.stream;
  if (op.params.dirfd < 0) op.params.dirfd = root_fd_;
  op.sink = request.sink;
  op.cookie = request.cookie;
  op.holds_handle = uses_handle;
  op.backend_data[0] = op.backend_data[1] = 0;
  if (request.kind == OpKind::kClose) {
    // The handle disappears now; the descriptor closes when its last user is done.
    absl::StatusOr<int> detached = session.handles().Detach(request.handle);
    op.holds_handle = false;
    op.params.fd = detached.ok() ? *detached : -1;
  }
}

void Dispatcher::Abandon(Op& op) {
  if (op.holds_handle) op.session->handles().Release(op.head->handle.load(std::memory_order_relaxed));
  op.Fail(EAGAIN, MonoNanos());
  op.session->Retire(op);
}

void Dispatcher::CompleteInline(Op& op, int64_t result, int64_t now) {
  op.MarkDispatched(BackendKind::kInline, now);
  if (observer_ != nullptr) observer_->OnSubmitted(op);
  CompleteAt(op, Start(op, now) ? result : -ECANCELED, now);
}

absl::StatusOr<OpId> Dispatcher::Submit(Session& session, const OpRequest& request) {
  absl::StatusOr<OpId> out;
  SubmitBatch(session, std::span<const OpRequest>(&request, 1),
              std::span<absl::StatusOr<OpId>>(&out, 1), false, Nops::kToBackend);
  return out;
}

absl::StatusOr<OpId> Dispatcher::SubmitRestored(Session& session, OpId id,
                                                const OpRequest& request) {
  absl::StatusOr<OpId> out;
  SubmitBatch(session, std::span<const OpRequest>(&request, 1),
              std::span<absl::StatusOr<OpId>>(&out, 1), false, Nops::kToBackend, &id);
  return out;
}

absl::StatusOr<OpId> Dispatcher::RunOrSubmit(Session& session, const OpRequest& request) {
  absl::StatusOr<OpId> out;
  SubmitBatch(session, std::span<const OpRequest>(&request, 1),
              std::span<absl::StatusOr<OpId>>(&out, 1), true, Nops::kToBackend);
  return out;
}

void Dispatcher::SubmitBatch(Session& session, std::span<const OpRequest> requests,
                             std::span<absl::StatusOr<OpId>> out, Nops nops) {
  SubmitBatch(session, requests, out, false, nops);
}

void Dispatcher::SubmitBatch(Session& session, std::span<const OpRequest> requests,
                             std::span<absl::StatusOr<OpId>> out, bool run_inline, Nops nops,
                             const OpId* restored) {
  ASYNCD_CHECK(out.size() >= requests.size());
  constexpr size_t kChunk = 64;
  const int64_t now = MonoNanos();
  // Per backend, a chunk of ops to hand over in one call.
  struct Pending {
    Backend* backend = nullptr;
    Op* ops[kChunk];
    size_t index[kChunk];
    size_t n = 0;
  };
  Pending pending[4];
  size_t npending = 0;
  auto flush = [&](Pending& p) {
    const Accepted accepted = p.backend->Submit(std::span<Op* const>(p.ops, p.n));
    ASYNCD_CHECK(accepted.count == p.n || !accepted.refusal.ok());  // a refusal says why
    for (size_t i = accepted.count; i < p.n; ++i) {
      Abandon(*p.ops[i]);
      out[p.index[i]] = accepted.refusal;
    }
    p.n = 0;
  };
  for (size_t i = 0; i < requests.size(); ++i) {
    absl::StatusOr<Op*> prepared = restored != nullptr
                                       ? PrepareRestored(session, *restored, requests[i])
                                       : Prepare(session, requests[i], now);
    if (!prepared.ok()) {
      out[i] = prepared.status();
      continue;
    }
    Op* op = *prepared;
    out[i] = op->id();  // before handing it over: it may be finished and reused at once
    const OpKind kind = op->head->kind.load(std::memory_order_relaxed);
    if ((kind == OpKind::kClose && op->params.fd < 0) ||
        (kind == OpKind::kNop && nops == Nops::kAnswerInline)) {
      CompleteInline(*op, 0, now);
      continue;
    }
    Backend* backend = BackendFor(requests[i].kind);
    op->MarkDispatched(backend->kind(), now);
    if (observer_ != nullptr) observer_->OnSubmitted(*op);
    if (run_inline && backend->TryRunInline(*op)) continue;
    Pending* p = nullptr;
    for (size_t j = 0; j < npending; ++j) {
      if (pending[j].backend == backend) p = &pending[j];
    }
    if (p == nullptr) {
      ASYNCD_CHECK(npending < std::size(pending));
      p = &pending[npending++];
      p->backend = backend;
    }
    p->ops[p->n] = op;
    p->index[p->n] = i;
    if (++p->n == kChunk) flush(*p);
  }
  for (size_t j = 0; j < npending; ++j) {
    if (pending[j].n > 0) flush(pending[j]);
  }
}

CancelResult Dispatcher::Cancel(OpId id, EndReason reason) {
  Registry::Found found = registry_.Find(id);
  if (!found) return CancelResult::kNotFound;
  return Cancel(*found.op, id.generation(), reason);
}

CancelResult Dispatcher::Cancel(Op& op, uint32_t gen, EndReason reason) {
  CancelResult r = op.RequestEnd(gen, reason, MonoNanos());
  // The caller saw the op live in generation `gen`: if that is gone, the op
  // finished and retired since.
  if (r == CancelResult::kNotFound) r = CancelResult::kAlreadyDone;
  if (observer_ != nullptr) observer_->OnEndRequested(op, gen, reason, r);
  if (r == CancelResult::kCancelled) {
    // Before dispatch the backend is unknown and TryStart will refuse to run it.
    if (Backend* b = BackendOf(op.head->backend.load(std::memory_order_relaxed))) b->Interrupt(op, gen);
  }
  return r;
}

CancelResult Dispatcher::Expire(Op& op, uint32_t gen, int64_t now_ns) noexcept {
  const CancelResult r = op.RequestEnd(gen, EndReason::kDeadline, now_ns);
  if (observer_ != nullptr) observer_->OnEndRequested(op, gen, EndReason::kDeadline, r);
  return r;
}

absl::StatusOr<CancelCounts> Dispatcher::CloseSession(uint64_t session_id, EndReason reason) {
  std::shared_ptr<Session> session = registry_.BeginClose(session_id);
  if (session == nullptr) {
    return absl::NotFoundError(absl::StrCat("no open session ", session_id));
  }
  CancelCounts counts;
  session->ForEachSlot([&](Op& op) {
    const uint64_t w = op.head->word.load(std::memory_order_acquire);
    if (OpWord::State(w) == OpState::kFree) return;
    counts.Add(Cancel(op, OpWord::Gen(w), reason));
  });
  return counts;
}

void Dispatcher::Complete(Op& op, int64_t result) noexcept { CompleteAt(op, result, MonoNanos()); }

void Dispatcher::CompleteAt(Op& op, int64_t result, int64_t now) noexcept {
  Session& session = *op.session;
  const OpKind kind = op.head->kind.load(std::memory_order_relaxed);
  // A deadline that passed while the op ran on (past its cancel point, or
  // with no backend timer to see it) is recorded, as a refused end.
  if (op.DeadlinePassed(now) && !OpWord::DeadlineWasPassed(op.head->word.load(std::memory_order_relaxed))) {
    op.NoteDeadlinePassed();
    if (observer_ != nullptr) {
      observer_->OnEndRequested(op, op.generation(), EndReason::kDeadline,
                                CancelResult::kNotCancellable);
    }
  }
  const OpState end = op.Finish(result, now);
  session.NoteFinished(op);
  if (kind == OpKind::kOpen && result >= 0) {
    const int fd = static_cast<int>(result);
    if (end != OpState::kCompleted) {
      ::close(fd);  // the client asked for the open to end: it never sees this descriptor
    } else if (absl::StatusOr<uint32_t> h = session.handles().Insert(
                   fd, op.params.path != nullptr ? op.params.path - op.params.shown_prefix : "");
               h.ok()) {
      op.result.store(static_cast<int32_t>(*h), std::memory_order_relaxed);
    } else {
      // Insert closed it: a full table, or the session ended meanwhile.
      op.result.store(absl::IsResourceExhausted(h.status()) ? -EMFILE : -ECANCELED,
                      std::memory_order_relaxed);
    }
  }
  if (kind == OpKind::kClose && op.params.fd >= 0 &&
      op.started_ns.load(std::memory_order_relaxed) == 0) {
    ::close(op.params.fd);  // ended before it ran: the detached descriptor is still ours
  }
  if (op.holds_handle) session.handles().Release(op.head->handle.load(std::memory_order_relaxed));
  if (observer_ != nullptr) observer_->OnFinished(op);
  if (op.sink != nullptr) op.sink->OnComplete(op);
  session.Retire(op);
}

}  // namespace asyncd::core
