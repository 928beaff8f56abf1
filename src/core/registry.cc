#include "src/core/registry.h"

#include <algorithm>
#include <charconv>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "src/core/check.h"
#include "src/core/clock.h"

namespace asyncd::core {

namespace {
constexpr uint64_t kTagOne = uint64_t{1} << 32;
uint32_t NextGen(uint32_t gen) {
  gen = (gen + 1) & OpId::kGenMask;
  return gen == 0 ? 1 : gen;  // generation 0 is never used, so op id 0 never names an op
}
// Rounded up, and at least 1: a deadline already passed is still a deadline.
uint32_t DeadlineMs(int64_t deadline_ns, int64_t now_ns) {
  if (deadline_ns == 0) return 0;
  const int64_t ms = (deadline_ns - now_ns + 999'999) / 1'000'000;
  return static_cast<uint32_t>(std::clamp<int64_t>(ms, 1, UINT32_MAX));
}
}  // namespace

Session::Session(Registry* registry, uint32_t index, uint64_t id, uint32_t gen_base,
                 ClientInfo client, uint32_t max_ops, uint32_t max_handles)
    : registry_(registry),
      index_(index),
      id_(id),
      gen_base_(gen_base),
      client_(std::move(client)),
      max_slots_(std::min(max_ops, OpId::kMaxSlots)),
      created_ns_(MonoNanos()),
      slabs_(new std::atomic<Slab*>[(max_slots_ + kSlabSlots - 1) / kSlabSlots]),
      oldest_gen_(gen_base),
      handles_(max_handles) {
  const uint32_t n = (max_slots_ + kSlabSlots - 1) / kSlabSlots;
  for (uint32_t i = 0; i < n; ++i) slabs_[i].store(nullptr, std::memory_order_relaxed);
}

Session::~Session() {
  const uint32_t n = slab_count_.load(std::memory_order_acquire);
  for (uint32_t i = 0; i < n; ++i) delete slabs_[i].load(std::memory_order_relaxed);
}

Op& Session::SlotAt(uint32_t slot) const {
  Slab* slab = slabs_[slot / kSlabSlots].load(std::memory_order_acquire);
  return slab->slots[slot % kSlabSlots];
}

uint32_t Session::SlabSlots(uint32_t slab) const {
  return std::min(kSlabSlots, max_slots_ - slab * kSlabSlots);
}

Session::Slab* Session::AddSlab() {
  const uint32_t n = slab_count_.load(std::memory_order_relaxed);
  auto* slab = new Slab;
  const uint32_t first = n * kSlabSlots;
  for (uint32_t i = 0; i < SlabSlots(n); ++i) {
    Op& op = slab->slots[i];
    op.head = &slab->heads[i];
    op.slot_index = first + i;
    op.session = this;
    op.head->word.store(OpWord::Make(gen_base_, OpState::kFree), std::memory_order_relaxed);
  }
  slabs_[n].store(slab, std::memory_order_release);
  slab_count_.store(n + 1, std::memory_order_release);
  return slab;
}

bool Session::Grow() {
  std::lock_guard lock(grow_mu_);
  if (free_head_.load(std::memory_order_acquire) & 0xffffffffu) return true;  // someone grew
  const uint32_t n = slab_count_.load(std::memory_order_relaxed);
  if (uint64_t{n} * kSlabSlots >= max_slots_) return false;
  Slab* slab = AddSlab();
  // Push the new slots in reverse so the lowest index is taken first.
  for (uint32_t i = SlabSlots(n); i-- > 0;) PushFree(slab->slots[i]);
  return true;
}

void Session::PushFree(Op& op) {
  uint64_t head = free_head_.load(std::memory_order_relaxed);
  for (;;) {
    op.next_free.store(static_cast<uint32_t>(head), std::memory_order_relaxed);
    const uint64_t next = ((head & ~uint64_t{0xffffffff}) + kTagOne) | (op.slot_index + 1);
    if (free_head_.compare_exchange_weak(head, next, std::memory_order_release,
                                         std::memory_order_relaxed)) {
      return;
    }
  }
}

Op* Session::PopFree() {
  uint64_t head = free_head_.load(std::memory_order_acquire);
  for (;;) {
    const uint32_t top = static_cast<uint32_t>(head);
    if (top == 0) return nullptr;
    // Slots are never freed while the session lives, so reading a slot that
    // was popped meanwhile is safe; the tag makes the CAS fail in that case.
    Op& op = SlotAt(top - 1);
    const uint32_t next = op.next_free.load(std::memory_order_relaxed);
    const uint64_t desired = ((head & ~uint64_t{0xffffffff}) + kTagOne) | next;
    if (free_head_.compare_exchange_weak(head, desired, std::memory_order_acquire,
                                         std::memory_order_acquire)) {
      return &op;
    }
  }
}

absl::StatusOr<Op*> Session::Register(OpKind kind, CancelSafety safety, uint32_t handle,
                                      std::string_view target, int64_t now_ns, uint64_t tag,
                                      int64_t deadline_ns) {
  if ((state_.fetch_add(1, std::memory_order_acq_rel) & kClosing) != 0) {
    DropLive();
    return absl::FailedPreconditionError(absl::StrCat("session ", id_, " is closing"));
  }
  Op* op = PopFree();
  while (op == nullptr) {
    if (!Grow()) {
      DropLive();
      return absl::ResourceExhaustedError(
          absl::StrCat("session ", id_, " has the maximum of ", max_slots_, " operations in flight"));
    }
    op = PopFree();
  }
  Describe(*op, op->generation(), kind, safety, handle, target, now_ns, tag, deadline_ns);
  return op;
}

void Session::Describe(Op& op, uint32_t gen, OpKind kind, CancelSafety safety, uint32_t handle,
                       std::string_view target, int64_t now_ns, uint64_t tag, int64_t deadline_ns) {
  // Pairs with the acquire fence in Snapshot: a reader that sees any field
  // written below also sees this slot's retirement (the generation change).
  std::atomic_thread_fence(std::memory_order_release);
  ASYNCD_CHECK(OpWord::State(op.head->word.load(std::memory_order_relaxed)) == OpState::kFree);
  op.head->kind.store(kind, std::memory_order_relaxed);
  op.head->backend.store(BackendKind::kNone, std::memory_order_relaxed);
  op.head->safety.store(safety, std::memory_order_relaxed);
  op.head->may_block.store(MayBlock(kind, /*blocking_stream=*/false), std::memory_order_relaxed);
  op.head->handle.store(handle, std::memory_order_relaxed);
  op.head->submitted_ns.store(now_ns, std::memory_order_relaxed);
  op.dispatched_ns.store(0, std::memory_order_relaxed);
  op.started_ns.store(0, std::memory_order_relaxed);
  op.cancel_requested_ns.store(0, std::memory_order_relaxed);
  op.finished_ns.store(0, std::memory_order_relaxed);
  op.result.store(0, std::memory_order_relaxed);
  op.bytes_done.store(0, std::memory_order_relaxed);
  op.tag.store(tag, std::memory_order_relaxed);
  op.deadline_ms.store(DeadlineMs(deadline_ns, now_ns), std::memory_order_relaxed);
  op.SetTarget(target);
  op.sink = nullptr;
  op.holds_handle = false;
  op.head->word.store(OpWord::Make(gen, OpState::kQueued), std::memory_order_release);
}

// While ops are restored the free list holds every free slot of the grown
// slabs in ascending order, so a slot's predecessor on it is the highest
// free slot below it. A restored slot is off the list and its link spare:
// it points down to where that search goes on, shortened as it is followed.
uint32_t Session::FreeBelow(uint32_t slot) {
  uint32_t found = slot;
  while (found != 0 && SlotAt(found - 1).state() != OpState::kFree) {
    found = SlotAt(found - 1).next_free.load(std::memory_order_relaxed);
  }
  for (uint32_t at = slot; at != found;) {
    Op& op = SlotAt(at - 1);
    at = op.next_free.load(std::memory_order_relaxed);
    op.next_free.store(found, std::memory_order_relaxed);
  }
  return found;
}

absl::StatusOr<Op*> Session::Restore(OpId id, OpKind kind, CancelSafety safety, uint32_t handle,
                                     std::string_view target, int64_t now_ns, uint64_t tag,
                                     int64_t deadline_ns) {
  std::lock_guard lock(grow_mu_);
  const uint64_t head = free_head_.load(std::memory_order_acquire);
  if (static_cast<uint32_t>(head >> 32) != restore_tag_) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", id_, " is in use: its ops can no longer be restored"));
  }
  if (closing()) return absl::FailedPreconditionError(absl::StrCat("session ", id_, " is closing"));
  const uint32_t slot = id.slot();
  const uint32_t gen = id.generation();
  if (id.session_index() != index_) {
    return absl::InvalidArgumentError(
        absl::StrCat("operation ", id.value, " is not of session ", id_, " (index ", index_, ")"));
  }
  if (slot >= max_slots_) {
    return absl::InvalidArgumentError(
        absl::StrCat("operation ", id.value, ": slot ", slot, " over the limit of ", max_slots_));
  }
  if (gen == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("operation ", id.value, ": generation 0 is never issued"));
  }
  const uint32_t grown = slab_count_.load(std::memory_order_relaxed) * kSlabSlots;
  if (slot < grown && SlotAt(slot).state() != OpState::kFree) {
    return absl::InvalidArgumentError(
        absl::StrCat("operation ", id.value, ": slot ", slot, " holds an operation"));
  }

  uint32_t top = static_cast<uint32_t>(head);
  while (slab_count_.load(std::memory_order_relaxed) * kSlabSlots <= slot) {
    const uint32_t n = slab_count_.load(std::memory_order_relaxed);
    const uint32_t first = n * kSlabSlots;
    const uint32_t count = SlabSlots(n);
    Slab* slab = AddSlab();
    for (uint32_t i = 0; i < count; ++i) {
      slab->slots[i].next_free.store(i + 1 < count ? first + i + 2 : 0, std::memory_order_relaxed);
    }
    // Appended: every slot already on the list is below this slab.
    if (const uint32_t tail = FreeBelow(first); tail != 0) {
      SlotAt(tail - 1).next_free.store(first + 1, std::memory_order_relaxed);
    } else {
      top = first + 1;
    }
  }
  Op& op = SlotAt(slot);
  const uint32_t next = op.next_free.load(std::memory_order_relaxed);
  if (const uint32_t before = FreeBelow(slot); before != 0) {
    SlotAt(before - 1).next_free.store(next, std::memory_order_relaxed);
  } else {
    top = next;  // the lowest free slot heads the list
  }
  op.next_free.store(slot, std::memory_order_relaxed);  // search on from slot - 1
  ++restore_tag_;
  free_head_.store((uint64_t{restore_tag_} << 32) | top, std::memory_order_release);

  // The predecessor issued `gen` below this session's first generation; its
  // slot goes on from there, so max_generation must count from it.
  const uint32_t oldest = oldest_gen_.load(std::memory_order_relaxed);
  if (((oldest - gen) & OpId::kGenMask) < (OpId::kGenMask >> 1)) {
    oldest_gen_.store(gen, std::memory_order_relaxed);
  }
  state_.fetch_add(1, std::memory_order_acq_rel);
  Describe(op, gen, kind, safety, handle, target, now_ns, tag, deadline_ns);
  op.restored = true;
  return &op;
}

void Session::Retire(Op& op) {
  const uint64_t w = op.head->word.load(std::memory_order_relaxed);
  ASYNCD_CHECK(IsTerminal(OpWord::State(w)));
  // A restored op's generation is its predecessor's, which may have issued
  // later ones in this slot before it handed over: the slot goes on from
  // this session's first generation, above all of those, if it is behind.
  uint32_t next = NextGen(OpWord::Gen(w));
  if (op.restored && ((gen_base_ - next) & OpId::kGenMask) < (OpId::kGenMask >> 1)) {
    next = gen_base_;
  }
  op.restored = false;
  op.head->word.store(OpWord::Make(next, OpState::kFree), std::memory_order_release);
  const uint64_t drop = op.noted_finished ? (uint64_t{1} << kFinishedShift) | 1 : 1;
  op.noted_finished = false;
  PushFree(op);
  DropLive(drop);
}

void Session::NoteFinished(Op& op) {
  op.noted_finished = true;
  state_.fetch_add(uint64_t{1} << kFinishedShift, std::memory_order_acq_rel);
}

void Session::DropLive(uint64_t drop) {
  // Nothing after the decrement may touch the session unless this thread is
  // the one to remove it: otherwise it may already be gone.
  if (state_.fetch_sub(drop, std::memory_order_acq_rel) == (kClosing | drop)) registry_->Remove(*this);
}

Op* Session::Find(uint32_t slot, uint32_t gen) {
  if (slot >= slab_count_.load(std::memory_order_acquire) * kSlabSlots) return nullptr;
  Op& op = SlotAt(slot);
  const uint64_t w = op.head->word.load(std::memory_order_acquire);
  if (OpWord::Gen(w) != gen || OpWord::State(w) == OpState::kFree) return nullptr;
  return &op;
}

void Session::ForEachSlot(const std::function<void(Op&)>& fn) {
  const uint32_t n = slab_count_.load(std::memory_order_acquire);
  for (uint32_t s = 0; s < n; ++s) {
    Slab* slab = slabs_[s].load(std::memory_order_acquire);
    for (Op& op : slab->slots) {
      if (op.session == nullptr) continue;  // tail of a partial last slab
      if (OpWord::State(op.head->word.load(std::memory_order_acquire)) != OpState::kFree) fn(op);
    }
  }
}

uint32_t Session::max_generation() const {
  // Slabs not yet grown will start at gen_base_: it is the least answer.
  uint32_t max_gen = gen_base_;
  const uint32_t oldest = oldest_gen_.load(std::memory_order_relaxed);
  const uint32_t n = slab_count_.load(std::memory_order_acquire);
  for (uint32_t s = 0; s < n; ++s) {
    Slab* slab = slabs_[s].load(std::memory_order_acquire);
    for (const Op& op : slab->slots) {
      if (op.session == nullptr) continue;  // tail of a partial last slab
      // Generations grow modulo 2^28 from the oldest; compare by distance.
      const uint32_t g = op.generation();
      if (((g - oldest) & OpId::kGenMask) > ((max_gen - oldest) & OpId::kGenMask)) {
        max_gen = g;
      }
    }
  }
  return max_gen;
}

Registry::Registry(Options options) : options_(options) {
  options_.max_sessions = std::clamp(options_.max_sessions, 1u, OpId::kMaxSessions);
  // Leave room for its sessions in a session id's 48 bits of serial.
  options_.first_serial = std::clamp<uint64_t>(options_.first_serial, 1,
                                               uint64_t{1} << (64 - OpId::kSessionBits - 1));
  table_.resize(options_.max_sessions);
  for (Entry& e : table_) e.serial = options_.first_serial - 1;
  free_.reserve(options_.max_sessions);
  for (uint32_t i = options_.max_sessions; i-- > 0;) free_.push_back(i);
}

Registry::Registry() : Registry(Options{}) {}

Registry::~Registry() = default;

absl::StatusOr<std::shared_ptr<Session>> Registry::OpenSession(ClientInfo client) {
  std::unique_lock lock(mu_);
  if (free_.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the daemon serves the maximum of ", options_.max_sessions, " sessions"));
  }
  const uint32_t index = free_.back();
  free_.pop_back();
  opened_ = true;
  Entry& e = table_[index];
  ++e.serial;
  // The session id carries the table index in its low bits for O(1) lookup
  // and a per-index serial above them, so a closed session's id stays dead.
  const uint64_t id = (e.serial << OpId::kSessionBits) | index;
  e.session = std::make_shared<Session>(this, index, id, e.next_gen, std::move(client),
                                        options_.max_ops_per_session,
                                        options_.max_handles_per_session);
  ++open_;
  return e.session;
}

absl::Status Registry::RestoreCounters(std::span<const IndexCounters> counters) {
  std::unique_lock lock(mu_);
  if (opened_ || restored_counters_) {
    return absl::FailedPreconditionError(
        "id counters are restored once, before any session is opened");
  }
  std::vector<bool> named(table_.size());
  for (const IndexCounters& c : counters) {
    const std::string at = absl::StrCat("session index ", c.index);
    if (c.index >= table_.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": over the limit of ", table_.size(), " sessions"));
    }
    if (named[c.index]) return absl::InvalidArgumentError(absl::StrCat(at, ": named twice"));
    named[c.index] = true;
    // The serial must leave room for its successors in a session id's 48 bits.
    if (c.serial == 0 || c.serial >= (uint64_t{1} << (64 - OpId::kSessionBits)) - 1) {
      return absl::InvalidArgumentError(absl::StrCat(at, ": serial ", c.serial, " out of range"));
    }
    if (c.next_gen == 0 || c.next_gen > OpId::kGenMask) {
      return absl::InvalidArgumentError(
          absl::StrCat(at, ": generation ", c.next_gen, " is not one an op id can carry"));
    }
  }
  for (const IndexCounters& c : counters) {
    table_[c.index].serial = c.serial;
    table_[c.index].next_gen = c.next_gen;
  }
  restored_counters_ = true;
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Session>> Registry::RestoreSession(uint64_t session_id,
                                                                  ClientInfo client) {
  const uint32_t index = static_cast<uint32_t>(session_id & (OpId::kMaxSessions - 1));
  const uint64_t serial = session_id >> OpId::kSessionBits;
  std::unique_lock lock(mu_);
  if (index >= table_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("session ", session_id, ": index ", index,
                                                   " over the limit of ", table_.size()));
  }
  Entry& e = table_[index];
  if (serial == 0 || serial > e.serial) {
    return absl::InvalidArgumentError(
        absl::StrCat("session ", session_id, " was not issued by the restored id counters"));
  }
  if (e.session != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("session ", session_id, ": index ", index,
                                                      " holds session ", e.session->id()));
  }
  const auto in_free = std::find(free_.begin(), free_.end(), index);
  ASYNCD_CHECK(in_free != free_.end());  // an index without a session is free
  free_.erase(in_free);
  opened_ = true;
  e.session =
      std::make_shared<Session>(this, index, session_id, e.next_gen, std::move(client),
                                options_.max_ops_per_session, options_.max_handles_per_session);
  ++open_;
  return e.session;
}

std::shared_ptr<Session> Registry::FindSession(uint64_t session_id) const {
  const uint32_t index = static_cast<uint32_t>(session_id & (OpId::kMaxSessions - 1));
  std::shared_lock lock(mu_);
  if (index >= table_.size()) return nullptr;
  const Entry& e = table_[index];
  if (e.session == nullptr || e.session->id() != session_id) return nullptr;
  return e.session;
}

bool Registry::Issued(uint64_t session_id) const {
  const uint32_t index = static_cast<uint32_t>(session_id & (OpId::kMaxSessions - 1));
  const uint64_t serial = session_id >> OpId::kSessionBits;
  std::shared_lock lock(mu_);
  // Serials count up per index from 1: every one up to the current was issued.
  return index < table_.size() && serial != 0 && serial <= table_[index].serial;
}

std::shared_ptr<Session> Registry::BeginClose(uint64_t session_id) {
  std::shared_ptr<Session> session = FindSession(session_id);
  if (session == nullptr) return nullptr;
  const uint64_t prev = session->state_.fetch_or(Session::kClosing, std::memory_order_acq_rel);
  if ((prev & Session::kClosing) != 0) return nullptr;
  session->handles_.CloseAll();
  if ((prev & Session::kLiveMask) == 0) Remove(*session);
  return session;
}

void Registry::Remove(Session& session) {
  std::unique_lock lock(mu_);
  Entry& e = table_[session.index()];
  if (e.session.get() != &session) return;
  // Retire() can still bump each slot's generation once more; start above that.
  e.next_gen = NextGen(NextGen(session.max_generation()));
  free_.push_back(session.index());
  --open_;
  // The session object lives on while anyone (a lookup, a teardown) holds it.
  std::shared_ptr<Session> keep = std::move(e.session);
  lock.unlock();
}

std::vector<Registry::IndexCounters> Registry::Counters() const {
  std::vector<IndexCounters> out;
  std::shared_lock lock(mu_);
  for (uint32_t index = 0; index < table_.size(); ++index) {
    const Entry& e = table_[index];
    if (e.serial == options_.first_serial - 1 && e.session == nullptr) continue;  // never used
    // As Remove would set it; a live session may still bump each slot once more.
    const uint32_t next_gen =
        e.session != nullptr ? NextGen(NextGen(e.session->max_generation())) : e.next_gen;
    out.push_back(IndexCounters{index, e.serial, next_gen});
  }
  return out;
}

std::vector<std::shared_ptr<Session>> Registry::Sessions() const {
  std::vector<std::shared_ptr<Session>> out;
  std::shared_lock lock(mu_);
  out.reserve(open_);
  for (const Entry& e : table_) {
    if (e.session) out.push_back(e.session);
  }
  return out;
}

Registry::Found Registry::Find(OpId id) const {
  Found found;
  {
    std::shared_lock lock(mu_);
    const uint32_t index = id.session_index();
    if (index >= table_.size() || table_[index].session == nullptr) return found;
    found.session = table_[index].session;
  }
  found.op = found.session->Find(id.slot(), id.generation());
  if (found.op == nullptr) found.session.reset();
  return found;
}

std::optional<OpSnapshot> Registry::Snapshot(const Op& op, uint64_t session_id,
                                             std::optional<uint32_t> gen) {
  OpSnapshot s;
  if (!SnapshotInto(op, session_id, s, gen)) return std::nullopt;
  return s;
}

bool Registry::SnapshotInto(const Op& op, uint64_t session_id, OpSnapshot& s,
                            std::optional<uint32_t> gen) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    const uint64_t w1 = op.head->word.load(std::memory_order_acquire);
    if (OpWord::State(w1) == OpState::kFree) return false;
    if (gen && OpWord::Gen(w1) != *gen) return false;
    s.kind = op.head->kind.load(std::memory_order_relaxed);
    s.backend = op.head->backend.load(std::memory_order_relaxed);
    s.safety = op.head->safety.load(std::memory_order_relaxed);
    s.may_block = op.head->may_block.load(std::memory_order_relaxed);
    s.handle = op.head->handle.load(std::memory_order_relaxed);
    s.submitted_ns = op.head->submitted_ns.load(std::memory_order_relaxed);
    s.dispatched_ns = op.dispatched_ns.load(std::memory_order_relaxed);
    s.started_ns = op.started_ns.load(std::memory_order_relaxed);
    s.cancel_requested_ns = op.cancel_requested_ns.load(std::memory_order_relaxed);
    s.finished_ns = op.finished_ns.load(std::memory_order_relaxed);
    s.result = op.result.load(std::memory_order_relaxed);
    s.bytes_done = op.bytes_done.load(std::memory_order_relaxed);
    s.tag = op.tag.load(std::memory_order_relaxed);
    s.deadline_ms = op.deadline_ms.load(std::memory_order_relaxed);
    if (!op.ReadTarget(s.target) && s.handle != 0) {
      s.target[0] = 'h';
      s.target[1] = ':';
      *std::to_chars(s.target + 2, s.target + sizeof(s.target) - 1, s.handle).ptr = '\0';
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    const uint64_t w2 = op.head->word.load(std::memory_order_relaxed);
    if (OpWord::Gen(w2) != OpWord::Gen(w1)) return false;  // retired under us
    if (w2 != w1) continue;  // moved on while we read: take it again
    s.id = OpId::Make(static_cast<uint32_t>(session_id & (OpId::kMaxSessions - 1)),
                      op.slot_index, OpWord::Gen(w1));
    s.session_id = session_id;
    s.state = OpWord::State(w1);
    s.end_requested = OpWord::EndRequested(w1);
    s.cancel_requested = OpWord::CancelAsked(w1);
    s.deadline_passed = OpWord::DeadlineWasPassed(w1);
    s.end_reason = OpWord::Reason(w1);
    return true;
  }
  return false;  // a slot this busy is reported on the next pass
}

bool Registry::SessionAt(uint32_t index, std::shared_ptr<Session>* out) const {
  std::shared_lock lock(mu_);
  if (index >= table_.size()) return false;
  *out = table_[index].session;
  return true;
}

std::optional<OpSnapshot> Registry::Snapshot(OpId id) const {
  Found found = Find(id);
  if (!found) return std::nullopt;
  return Snapshot(*found.op, found.session->id(), id.generation());
}

void Registry::ForEach(
    const std::function<bool(const OpSnapshot&, const std::shared_ptr<Session>&)>& fn) const {
  for (const auto& session : Sessions()) {
    bool go_on = true;
    const uint64_t sid = session->id();
    session->ForEachSlot([&](Op& op) {
      if (!go_on) return;
      if (auto snap = Snapshot(op, sid)) go_on = fn(*snap, session);
    });
    if (!go_on) return;
  }
}

uint64_t Registry::live_ops() const {
  uint64_t n = 0;
  for (const auto& s : Sessions()) n += s->live_ops();
  return n;
}

uint64_t Registry::inflight_ops() const {
  uint64_t n = 0;
  for (const auto& s : Sessions()) n += s->inflight_ops();
  return n;
}

uint32_t Registry::session_count() const {
  std::shared_lock lock(mu_);
  return open_;
}

}  // namespace asyncd::core
