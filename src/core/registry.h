#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/core/handle_table.h"
#include "src/core/op.h"

namespace asyncd::core {

/// Who a session belongs to: taken from the connection (peer credentials),
/// never from what the client claims.
struct ClientInfo {
  std::string name;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t pid = 0;
};

/// A consistent copy of one op's record, taken without stopping it.
struct OpSnapshot {
  OpId id;
  uint64_t session_id = 0;
  OpKind kind = OpKind::kNop;
  OpState state = OpState::kFree;
  BackendKind backend = BackendKind::kNone;
  CancelSafety safety = CancelSafety::kAlways;
  bool end_requested = false;     // it is ending early (cancelled or timed out)
  bool cancel_requested = false;  // a cancel was asked for, granted or refused
  bool deadline_passed = false;   // its deadline passed while it was in flight
  bool may_block = false;
  EndReason end_reason = EndReason::kNone;
  uint32_t handle = 0;
  int64_t submitted_ns = 0;  // MonoNanos
  int64_t dispatched_ns = 0;
  int64_t started_ns = 0;
  int64_t cancel_requested_ns = 0;  // the first cancel request; 0 = none
  int64_t finished_ns = 0;
  int64_t result = 0;
  uint64_t bytes_done = 0;
  uint64_t tag = 0;
  uint32_t deadline_ms = 0;  // after submitted_ns; 0 = none
  char target[Op::kTargetBytes + 1] = {};

  /// Would a cancel issued now take effect?
  bool cancellable() const {
    return !IsTerminal(state) &&
           (safety == CancelSafety::kAlways || state < OpState::kRunning);
  }
};

/// A session: the analogue of the kernel's kioctx. Owns an arena of op slots
/// (fixed-size, in lazily allocated slabs, never moved) and a handle table.
/// Ending it requests the end of every op it owns; its memory goes when the
/// last op retires and the last reference is dropped.
class Registry;

class Session : public std::enable_shared_from_this<Session> {
 public:
  static constexpr uint32_t kSlabSlots = 256;

  Session(Registry* registry, uint32_t index, uint64_t id, uint32_t gen_base, ClientInfo client,
          uint32_t max_ops, uint32_t max_handles);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// Takes a free slot and fills its description; the op is kQueued. The
  /// execution fields (params, cookie, backend_data) hold stale values: the
  /// caller sets them (Dispatcher does). Any
  /// thread. Lock-free; allocates only when every slab is full (a new slab).
  /// RESOURCE_EXHAUSTED at the session's op limit; FAILED_PRECONDITION once
  /// the session is closing.
  /// `tag` and `deadline_ns` (MonoNanos, 0 = none) are recorded for listing.
  [[nodiscard]] absl::StatusOr<Op*> Register(OpKind kind, CancelSafety safety, uint32_t handle,
                                             std::string_view target, int64_t now_ns,
                                             uint64_t tag = 0, int64_t deadline_ns = 0);
  /// Returns a finished op's slot to the free list. Called once, after its
  /// completion was delivered. Any thread. Lock-free, allocates nothing.
  void Retire(Op& op);

  /// The live op named by (slot, gen), or nullptr. The pointer is valid while
  /// the caller holds a reference to this session; the op may finish at any
  /// moment, so act on it only through its state word.
  Op* Find(uint32_t slot, uint32_t gen);
  /// Calls fn for every slot currently holding an op (any state). The
  /// callback may see ops finish under it; use Registry::Snapshot for a copy.
  void ForEachSlot(const std::function<void(Op&)>& fn);

  uint64_t id() const { return id_; }
  uint32_t index() const { return index_; }
  const ClientInfo& client() const { return client_; }
  HandleTable& handles() { return handles_; }
  uint32_t live_ops() const { return state_.load(std::memory_order_acquire) & kLiveMask; }
  bool closing() const { return (state_.load(std::memory_order_acquire) & kClosing) != 0; }
  int64_t created_ns() const { return created_ns_; }
  /// Largest generation handed out; the next session on this index starts above it.
  uint32_t max_generation() const;

 private:
  friend class Registry;
  struct Slab;

  Op& SlotAt(uint32_t slot) const;
  bool Grow();  // adds a slab; false at the limit
  void PushFree(Op& op);
  Op* PopFree();

  // Drops one live count; whoever leaves a closing session with none removes
  // it from the registry (a refused Register may do so a second time: harmless).
  void DropLive();

  Registry* const registry_;
  const uint32_t index_;
  const uint64_t id_;
  const uint32_t gen_base_;
  const ClientInfo client_;
  const uint32_t max_slots_;
  const int64_t created_ns_;

  // Free list: Treiber stack of slot indices; the high 32 bits are an ABA tag.
  alignas(64) std::atomic<uint64_t> free_head_{0};
  // Live ops and the closing flag in one word, so the thread that retires the
  // last op of a closing session knows it without touching the session again
  // (once the count is zero another thread may remove and free it).
  static constexpr uint32_t kClosing = 1u << 31;
  static constexpr uint32_t kLiveMask = kClosing - 1;
  alignas(64) std::atomic<uint32_t> state_{0};

  std::mutex grow_mu_;
  std::unique_ptr<std::atomic<Slab*>[]> slabs_;
  std::atomic<uint32_t> slab_count_{0};

  HandleTable handles_;
};

/// All sessions, and through them every in-flight op. Lookup and iteration
/// take a shared lock on the session table only (not on any op); submission
/// and completion (Session::Register/Retire) never touch the table.
class Registry {
 public:
  struct Options {
    uint32_t max_sessions = 4096;
    uint32_t max_ops_per_session = 65536;
    uint32_t max_handles_per_session = 4096;
  };
  explicit Registry(Options options);
  Registry();
  ~Registry();

  /// RESOURCE_EXHAUSTED when the session table is full.
  [[nodiscard]] absl::StatusOr<std::shared_ptr<Session>> OpenSession(ClientInfo client);
  /// Marks the session closing: it accepts no more ops, its handles close
  /// once unused, and it leaves the table when its last op retires (until
  /// then operators still see it and its ops). The caller ends its ops
  /// (Dispatcher::CloseSession does). Returns nullptr if it was not open.
  std::shared_ptr<Session> BeginClose(uint64_t session_id);
  std::shared_ptr<Session> FindSession(uint64_t session_id) const;
  std::vector<std::shared_ptr<Session>> Sessions() const;

  /// The live op named by id, with the session that keeps its memory valid.
  struct Found {
    std::shared_ptr<Session> session;
    Op* op = nullptr;
    explicit operator bool() const { return op != nullptr; }
  };
  Found Find(OpId id) const;

  /// A consistent snapshot of the op, or nullopt if the slot holds another
  /// generation or nothing. Lock-free; retries while the op changes under it.
  static std::optional<OpSnapshot> Snapshot(const Op& op, uint64_t session_id,
                                            std::optional<uint32_t> gen = std::nullopt);
  std::optional<OpSnapshot> Snapshot(OpId id) const;

  /// Visits a snapshot of every live op of every session, with the session
  /// that owns it (so callers need no lookup per op). fn returns false to
  /// stop. Never blocks submission or completion.
  void ForEach(
      const std::function<bool(const OpSnapshot&, const std::shared_ptr<Session>&)>& fn) const;

  uint64_t live_ops() const;
  uint32_t session_count() const;
  const Options& options() const { return options_; }

 private:
  friend class Session;
  // Idempotent: a session no longer in its table entry is left alone.
  void Remove(Session& session);

  struct Entry {
    std::shared_ptr<Session> session;
    uint32_t next_gen = 1;  // generations of the next session on this index start here
    uint64_t serial = 0;
  };
  Options options_;
  mutable std::shared_mutex mu_;
  std::vector<Entry> table_;
  std::vector<uint32_t> free_;
  uint32_t open_ = 0;
};

}  // namespace asyncd::core
