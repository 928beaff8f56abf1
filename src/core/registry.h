#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
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

/// What a filter needs of one op: read as consistently as an OpSnapshot, at
/// a fraction of its bytes, so a walk over many ops copies little.
struct OpBrief {
  OpId id;
  OpState state = OpState::kFree;
  OpKind kind = OpKind::kNop;
  BackendKind backend = BackendKind::kNone;
  uint32_t handle = 0;
  int64_t submitted_ns = 0;
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
  /// Registers a queued op in exactly slot id.slot(), generation
  /// id.generation(): an op a predecessor daemon had in flight, with the
  /// description Register takes. It runs once handed to a backend
  /// (Dispatcher::SubmitRestored); a cancel or its session's close takes
  /// effect only then.
  ///
  /// Only while nobody else uses the session: the restoring thread calls it
  /// for every op of the session before the session is published or any of
  /// its ops is submitted. It takes the slot off the free list without
  /// atomics, which a concurrent Register or Retire would corrupt; once
  /// either has run it answers FAILED_PRECONDITION, as for a closing
  /// session. INVALID_ARGUMENT for an id of another session index, a slot at
  /// or over the op limit, generation 0 (never issued), or a slot holding an
  /// op. Allocates the slabs up to the slot. On error nothing changed.
  [[nodiscard]] absl::StatusOr<Op*> Restore(OpId id, OpKind kind, CancelSafety safety,
                                            uint32_t handle, std::string_view target,
                                            int64_t now_ns, uint64_t tag = 0,
                                            int64_t deadline_ns = 0);
  /// Returns a finished op's slot to the free list. Called once, after its
  /// completion was delivered. Any thread. Lock-free, allocates nothing.
  void Retire(Op& op);
  /// Counts a finished op out of inflight_ops() until its Retire: its
  /// completion may reach the client first. Once, by the op's holder.
  void NoteFinished(Op& op);

  /// The live op named by (slot, gen), or nullptr. The pointer is valid while
  /// the caller holds a reference to this session; the op may finish at any
  /// moment, so act on it only through its state word.
  Op* Find(uint32_t slot, uint32_t gen);
  /// Calls fn for every slot currently holding an op (any state). The
  /// callback may see ops finish under it; use Registry::Snapshot for a copy.
  void ForEachSlot(const std::function<void(Op&)>& fn);
  /// Calls fn(op, head, slot), in slot order from `first`, for every slot
  /// holding an op, until fn returns false. Reads the dense heads only. Returns false if fn stopped it. Inline: a
  /// walk over a million ops must not pay an indirect call per slot.
  template <typename Fn>
  bool ForEachSlotFrom(uint32_t first, Fn&& fn);

  uint64_t id() const { return id_; }
  uint32_t index() const { return index_; }
  const ClientInfo& client() const { return client_; }
  HandleTable& handles() { return handles_; }
  /// Registered and not yet retired (finished ops included).
  uint32_t live_ops() const {
    return static_cast<uint32_t>(state_.load(std::memory_order_acquire) & kLiveMask);
  }
  /// Registered and not finished: what the session has in flight.
  uint32_t inflight_ops() const {
    const uint64_t s = state_.load(std::memory_order_acquire);
    return static_cast<uint32_t>((s & kLiveMask) - ((s & kFinishedMask) >> kFinishedShift));
  }
  bool closing() const { return (state_.load(std::memory_order_acquire) & kClosing) != 0; }
  int64_t created_ns() const { return created_ns_; }
  /// Largest generation handed out; the next session on this index starts above it.
  uint32_t max_generation() const;

 private:
  friend class Registry;
  // The heads apart and dense: a walk reads them in sequence.
  struct Slab {
    OpHead heads[kSlabSlots];
    Op slots[kSlabSlots];
  };

  Op& SlotAt(uint32_t slot) const;
  bool Grow();  // adds a slab; false at the limit
  Slab* AddSlab();  // under grow_mu_: a slab of free slots, not yet on the free list
  uint32_t SlabSlots(uint32_t slab) const;  // slots in slab number `slab` (the last may be short)
  void PushFree(Op& op);
  Op* PopFree();
  // Writes the description of the free slot `op` and publishes it kQueued in `gen`.
  void Describe(Op& op, uint32_t gen, OpKind kind, CancelSafety safety, uint32_t handle,
                std::string_view target, int64_t now_ns, uint64_t tag, int64_t deadline_ns);
  // Restore only: the highest free slot below `slot`, plus one (0 = none).
  uint32_t FreeBelow(uint32_t slot);

  // Drops one live count; whoever leaves a closing session with none removes
  // it from the registry (a refused Register may do so a second time: harmless).
  void DropLive(uint64_t drop = 1);  // 1 live, plus the finished mark if noted

  Registry* const registry_;
  const uint32_t index_;
  const uint64_t id_;
  const uint32_t gen_base_;
  const ClientInfo client_;
  const uint32_t max_slots_;
  const int64_t created_ns_;

  // Free list: Treiber stack of slot indices; the high 32 bits are an ABA tag.
  alignas(64) std::atomic<uint64_t> free_head_{0};
  // Live ops, the finished among them and the closing flag in one word, so
  // the thread that retires the last op of a closing session knows it
  // without touching the session again (once the count is zero another
  // thread may remove and free it), and a reader never sees an op counted
  // live after it was counted finished.
  static constexpr uint64_t kClosing = uint64_t{1} << 63;
  static constexpr uint64_t kLiveMask = (uint64_t{1} << 32) - 1;
  static constexpr int kFinishedShift = 32;
  static constexpr uint64_t kFinishedMask = ~kClosing & ~kLiveMask;
  alignas(64) std::atomic<uint64_t> state_{0};

  std::mutex grow_mu_;
  std::unique_ptr<std::atomic<Slab*>[]> slabs_;
  std::atomic<uint32_t> slab_count_{0};

  // The oldest generation a slot may hold: gen_base_, or a restored op's,
  // which the predecessor issued below it. max_generation counts from here.
  std::atomic<uint32_t> oldest_gen_;
  // The free list's ABA tag as Restore last left it: another value means
  // Register or Retire has used the list since, and Restore may not.
  uint32_t restore_tag_ = 0;

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
    /// The serial of the first session opened on each index. A daemon that
    /// starts without its predecessor's counters starts above every serial
    /// that one may have issued, so no session id is issued twice; the ids
    /// below count as issued (ended).
    uint64_t first_serial = 1;
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
  /// Whether `session_id` was ever opened here: live, closing or ended. An
  /// id is never reused, so an ended session is told apart from an unknown
  /// one forever, at no cost.
  bool Issued(uint64_t session_id) const;
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
  /// The same into `out` (for a snapshot that is part of a larger record):
  /// false, and `out` unspecified, where Snapshot gives nullopt.
  static bool SnapshotInto(const Op& op, uint64_t session_id, OpSnapshot& out,
                           std::optional<uint32_t> gen = std::nullopt);
  std::optional<OpSnapshot> Snapshot(OpId id) const;

  /// Visits a snapshot of every live op of every session, with the session
  /// that owns it (so callers need no lookup per op). fn returns false to
  /// stop. Never blocks submission or completion.
  void ForEach(
      const std::function<bool(const OpSnapshot&, const std::shared_ptr<Session>&)>& fn) const;

  /// A brief of the op whose head is `head`, in `slot`, or nullopt if the
  /// slot is free or changing too fast. Reads the head only.
  static std::optional<OpBrief> Brief(const OpHead& head, uint32_t session_index, uint32_t slot);

  /// Visits the live ops in op-id order (session index, then slot: a slot
  /// holds one generation at a time), starting after `after` (OpId{} = from
  /// the first), with a brief and the owning session; fn returns false to
  /// stop. Take a full Snapshot of the ops that matter. Cost: the ops
  /// visited, not the registry: a page walk stops at its page. Never blocks
  /// submission or completion; takes the table lock briefly per session.
  /// fn(Op&, const OpBrief&, const std::shared_ptr<Session>&) -> bool.
  template <typename Fn>
  void Walk(OpId after, Fn&& fn) const;

  /// The id counters of one session table index that has held a session.
  struct IndexCounters {
    uint32_t index = 0;
    uint64_t serial = 0;    // the serial of the last session opened on it
    uint32_t next_gen = 0;  // op generations of its next session start here
  };
  /// The counters of every index used so far, in index order: what a
  /// successor needs so that no session id or op id named here is ever
  /// issued again. For a live session's index, next_gen is above every
  /// generation it has handed out as of the call.
  std::vector<IndexCounters> Counters() const;
  /// Takes over a predecessor's Counters(): OpenSession on such an index then
  /// issues serial + 1, with op generations from next_gen, so no session id
  /// or op id the predecessor issued is issued again. Once, on a registry
  /// that has not opened or restored a session: FAILED_PRECONDITION
  /// otherwise. INVALID_ARGUMENT, naming the index, for an index at or over
  /// max_sessions or named twice, serial 0 or leaving its successor no room
  /// in a session id's 48 bits, next_gen 0 or over 28 bits. On error
  /// nothing changed. Takes the table lock.
  [[nodiscard]] absl::Status RestoreCounters(std::span<const IndexCounters> counters);
  /// Opens a session with exactly `session_id`, one the predecessor issued
  /// (its serial at most its index's restored serial, see RestoreCounters);
  /// its ops' generations start at the index's next_gen. Then it is as any
  /// open session: FindSession, Issued, BeginClose. INVALID_ARGUMENT for
  /// serial 0 or above the index's serial, or an index at or over
  /// max_sessions; FAILED_PRECONDITION when the index holds a session. Its
  /// handles and ops are restored through the session
  /// (HandleTable::Restore, Session::Restore) before it is published.
  /// O(max_sessions); takes the table lock.
  [[nodiscard]] absl::StatusOr<std::shared_ptr<Session>> RestoreSession(uint64_t session_id,
                                                                        ClientInfo client);

  uint64_t live_ops() const;
  /// Ops registered and not finished, over every session.
  uint64_t inflight_ops() const;
  uint32_t session_count() const;
  const Options& options() const { return options_; }

 private:
  friend class Session;
  // Idempotent: a session no longer in its table entry is left alone.
  void Remove(Session& session);
  // The session at table index `index`, or nullptr; false past the table.
  bool SessionAt(uint32_t index, std::shared_ptr<Session>* out) const;

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
  bool restored_counters_ = false;
  bool opened_ = false;  // a session was opened or restored here
};

template <typename Fn>
bool Session::ForEachSlotFrom(uint32_t first, Fn&& fn) {
  const uint32_t n = slab_count_.load(std::memory_order_acquire);
  const uint32_t end = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{n} * kSlabSlots, max_slots_));
  for (uint32_t slot = first; slot < end;) {
    Slab* slab = slabs_[slot / kSlabSlots].load(std::memory_order_acquire);
    const uint32_t slab_end = std::min(end, (slot / kSlabSlots + 1) * kSlabSlots);
    for (; slot < slab_end; ++slot) {
      const uint32_t i = slot % kSlabSlots;
      const OpHead& head = slab->heads[i];
      if (OpWord::State(head.word.load(std::memory_order_acquire)) == OpState::kFree) continue;
      if (!fn(slab->slots[i], head, slot)) return false;
    }
  }
  return true;
}

// Inline: a walk calls it for every live op.
inline std::optional<OpBrief> Registry::Brief(const OpHead& head, uint32_t session_index,
                                              uint32_t slot) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    const uint64_t w1 = head.word.load(std::memory_order_acquire);
    if (OpWord::State(w1) == OpState::kFree) return std::nullopt;
    OpBrief b;
    b.kind = head.kind.load(std::memory_order_relaxed);
    b.backend = head.backend.load(std::memory_order_relaxed);
    b.handle = head.handle.load(std::memory_order_relaxed);
    b.submitted_ns = head.submitted_ns.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);  // as in Snapshot
    const uint64_t w2 = head.word.load(std::memory_order_relaxed);
    if (OpWord::Gen(w2) != OpWord::Gen(w1)) return std::nullopt;  // retired under us
    if (w2 != w1) continue;
    b.id = OpId::Make(session_index, slot, OpWord::Gen(w1));
    b.state = OpWord::State(w1);
    return b;
  }
  return std::nullopt;
}

template <typename Fn>
void Registry::Walk(OpId after, Fn&& fn) const {
  const bool from_start = after.value == 0;
  std::shared_ptr<Session> session;
  for (uint32_t index = from_start ? 0 : after.session_index(); SessionAt(index, &session);
       ++index) {
    if (session == nullptr) continue;
    const uint32_t first = !from_start && index == after.session_index() ? after.slot() + 1 : 0;
    const bool go_on = session->ForEachSlotFrom(first, [&](Op& op, const OpHead& head,
                                                          uint32_t slot) {
      const std::optional<OpBrief> brief = Brief(head, index, slot);
      return !brief || fn(op, *brief, session);
    });
    if (!go_on) return;
  }
}

}  // namespace asyncd::core
