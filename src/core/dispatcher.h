#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "src/core/backend.h"
#include "src/core/registry.h"

namespace asyncd::core {

/// What a submitter asks for, in core terms (the daemon converts requests
/// into this; core knows nothing of gRPC).
struct OpRequest {
  OpKind kind = OpKind::kNop;
  uint32_t handle = 0;  // for operations on an open handle, else 0
  // fd is filled in by the dispatcher; dirfd too unless the caller chose
  // one (the daemon's per-user areas), else it is the dispatcher's root.
  OpParams params;
  // The path as the client named it, for listings, when params.path is
  // only what resolves beneath params.dirfd; else params.path.
  const char* shown_path = nullptr;
  CompletionSink* sink = nullptr;
  uint64_t cookie = 0;
  uint64_t tag = 0;  // the client's, shown when the op is listed
};

struct CancelCounts {
  uint32_t cancelled = 0;
  uint32_t not_cancellable = 0;
  uint32_t already_done = 0;
  uint32_t not_found = 0;
  void Add(CancelResult r);
};

/// Sees every op begin and end (before its sink): history, watchers,
/// metrics. OnFinished runs on the completing thread with the op terminal and
/// not yet retired. Must not block.
class CompletionObserver {
 public:
  virtual ~CompletionObserver() = default;
  virtual void OnFinished(const Op& op) noexcept = 0;
  /// The op was accepted and is about to reach its backend (submitting thread).
  virtual void OnSubmitted(const Op& op) noexcept {}
  /// An end was requested on `op` of generation `gen` (a cancel from any
  /// source, or its deadline) and answered `result`. Any thread; the op may
  /// finish, or its slot be reused, meanwhile: check `gen`.
  virtual void OnEndRequested(const Op& op, uint32_t gen, EndReason reason,
                              CancelResult result) noexcept {}
};

/// Routes each op to the first backend that supports its kind, resolves
/// handles, and finishes ops (handle bookkeeping, then the sink, then the
/// slot's retirement). The last backend must support every kind.
class Dispatcher final : public OpCompleter {
 public:
  /// `root_fd` is the directory paths resolve beneath unless a request
  /// names its own (OpRequest.params.dirfd); not owned.
  /// Backends are set later (they need this object as their completer).
  Dispatcher(Registry& registry, int root_fd);
  ~Dispatcher() override;

  /// Backends in preference order; the last one must support every kind.
  void SetBackends(std::vector<Backend*> backends);

  /// Registers the op and hands it to its backend. On error nothing changed
  /// and no completion will come: NOT_FOUND unknown handle, FAILED_PRECONDITION
  /// session closing, RESOURCE_EXHAUSTED op limit or backend full. On
  /// success the sink gets exactly one completion, possibly before this
  /// returns. Any thread; never blocks.
  [[nodiscard]] absl::StatusOr<OpId> Submit(Session& session, const OpRequest& request);

  /// Submit for one caller waiting on the result (a unary RPC): an op its
  /// backend can finish without blocking (Backend::TryRunInline) runs on
  /// this thread, and its sink's OnComplete is called here, before this
  /// returns. Otherwise as Submit.
  [[nodiscard]] absl::StatusOr<OpId> RunOrSubmit(Session& session, const OpRequest& request);

  /// Submit for an op Session::Restore registered: `request` gives what
  /// Register does not keep (params, sink, cookie); its kind and handle must
  /// be the op's. Call it once per restored op, from the restoring thread,
  /// after every op of the session is restored. Returns `id`.
  /// Errors about the op itself change nothing: NOT_FOUND no such live op in
  /// `session`, FAILED_PRECONDITION it was submitted already,
  /// INVALID_ARGUMENT the request's kind or handle is not the op's. Refused
  /// as Submit refuses (session closing, unknown handle, backend full), the
  /// op ends without a completion, as a refused Submit leaves none: the
  /// caller tells its client. On success as Submit.
  [[nodiscard]] absl::StatusOr<OpId> SubmitRestored(Session& session, OpId id,
                                                    const OpRequest& request);

  /// What SubmitBatch does with a NOP.
  enum class Nops {
    kToBackend,
    // Completed on the calling thread before SubmitBatch returns (BACKEND_INLINE):
    // a NOP needs no system call, and its whole life then stays on one core.
    kAnswerInline,
  };
  /// The same for many ops, handing each backend its share in one batch.
  /// out[i] receives ops[i]'s id or why it was refused.
  void SubmitBatch(Session& session, std::span<const OpRequest> requests,
                   std::span<absl::StatusOr<OpId>> out, Nops nops = Nops::kToBackend);

  /// Requests the end of one op (see CancelResult). Any thread; never blocks.
  CancelResult Cancel(OpId id, EndReason reason);
  /// `op` as the caller saw it live in generation `gen`; one that has
  /// retired since is ALREADY_DONE, never NOT_FOUND.
  CancelResult Cancel(Op& op, uint32_t gen, EndReason reason);

  /// Ends a session: it takes no more ops, every op it owns is cancelled
  /// (non-cancel-safe running ones complete), its handles close once unused.
  /// NOT_FOUND if there is no such open session.
  [[nodiscard]] absl::StatusOr<CancelCounts> CloseSession(uint64_t session_id, EndReason reason);

  void Complete(Op& op, int64_t result) noexcept override;
  CancelResult Expire(Op& op, uint32_t gen, int64_t now_ns) noexcept override;

  /// Registers [base, base + bytes) (memory a client shares with the
  /// daemon) with the backend reads and writes are routed to
  /// (Backend::RegisterArea): ops whose buffer lies inside it then name it
  /// in OpParams.area. Returns the area number, or 0 when that backend does
  /// not register it (the thread pool never does; io_uring may be over
  /// RLIMIT_MEMLOCK or out of its 255 areas): ops then leave area 0 and run
  /// as any other. OpParams.area means something only to that backend;
  /// every other one (and the thread pool and reactor always) uses `buf`
  /// as it is. Call after SetBackends; any thread; may block briefly.
  uint8_t RegisterArea(void* base, size_t bytes);
  /// Unregisters `area` from that backend once no op naming it is in
  /// flight; its number may come back from a later RegisterArea. Any
  /// thread; may block briefly.
  void UnregisterArea(uint8_t area);

  /// Set before the first Submit; not owned.
  void SetObserver(CompletionObserver* observer) { observer_ = observer; }

  /// Which backend runs `kind`.
  BackendKind RouteFor(OpKind kind) const;
  Registry& registry() { return registry_; }

 private:
  Backend* BackendFor(OpKind kind) const { return route_[static_cast<int>(kind)]; }
  Backend* BackendOf(BackendKind kind) const;
  // Where areas are registered: the backend of both reads and writes, if one
  // runs both (an area number names a slot in one backend's table).
  Backend* AreaBackend() const;
  // Registers and fills; the op is kQueued and not yet handed to anyone.
  absl::StatusOr<Op*> Prepare(Session& session, const OpRequest& request, int64_t now);
  // Prepare for the restored op `id`: fills it (see SubmitRestored).
  absl::StatusOr<Op*> PrepareRestored(Session& session, OpId id, const OpRequest& request);
  // The session is open and the request's handle, if it uses one, is held.
  absl::StatusOr<HandleTable::Use> AcquireHandle(Session& session, const OpRequest& request);
  // Sets what a backend needs of the registered `op`; it takes over the
  // reference AcquireHandle took.
  void Fill(Session& session, Op& op, const OpRequest& request, const HandleTable::Use& use);
  // Undoes Prepare for an op no backend took: nothing was run or reported.
  void Abandon(Op& op);
  // Ends an op without a backend (a NOP, or a close whose descriptor is
  // still in use).
  void CompleteInline(Op& op, int64_t result, int64_t now);
  // Complete, at `now` (a batch's clock, for ops ended in it).
  void CompleteAt(Op& op, int64_t result, int64_t now) noexcept;
  // `restored`: the one request is for that restored op, not a new one.
  void SubmitBatch(Session& session, std::span<const OpRequest> requests,
                   std::span<absl::StatusOr<OpId>> out, bool run_inline, Nops nops,
                   const OpId* restored = nullptr);

  Registry& registry_;
  const int root_fd_;
  std::vector<Backend*> backends_;
  std::array<Backend*, kOpKindCount + 1> route_{};
  CompletionObserver* observer_ = nullptr;
};

}  // namespace asyncd::core
