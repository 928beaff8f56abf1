// Sealing and loading checkpoints: pure, so the fuzzer and the tests take
// them without a daemon.

#include <zlib.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "daemon/checkpoint.h"
#include "src/core/op_id.h"

namespace asyncd::daemon {

namespace {

// Fixed by the protocol or the configuration's own bounds.
constexpr uint32_t kMaxNameBytes = 128;
constexpr uint32_t kMaxPathBytes = 4095;
constexpr uint32_t kMaxLeaseMs = 86'400'000;
constexpr int kMaxHistory = 1 << 22;
constexpr uint32_t kHandleGenMask = 0x7fff;

// Over the format too, so that a Sealed cut short before its checkpoint
// (the checksum field then reads 0) never matches.
uint32_t Crc32(uint32_t format, std::string_view bytes) {
  const unsigned char le[4] = {static_cast<unsigned char>(format),
                               static_cast<unsigned char>(format >> 8),
                               static_cast<unsigned char>(format >> 16),
                               static_cast<unsigned char>(format >> 24)};
  uLong crc = crc32(0, le, sizeof le);
  return static_cast<uint32_t>(
      crc32(crc, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
}

absl::Status Invalid(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("checkpoint: ", what));
}

absl::Status CheckHandles(const state::Session& s, const std::string& where,
                          const CheckpointLimits& limits) {
  const auto& gens = s.handle_slot_generations();
  if (static_cast<uint32_t>(gens.size()) > std::min(limits.max_handles_per_session, 0xffffu)) {
    return Invalid(absl::StrCat(where, ": ", gens.size(), " handle slots, over the limit of ",
                                limits.max_handles_per_session));
  }
  for (int i = 0; i < gens.size(); ++i) {
    if (gens[i] > kHandleGenMask) {
      return Invalid(absl::StrCat(where, ": handle slot ", i + 1, " has generation ", gens[i],
                                  ", over 15 bits"));
    }
  }
  uint32_t previous_slot = 0;
  for (const state::Handle& h : s.handles()) {
    const uint32_t slot = h.handle() & 0xffff;
    const uint32_t gen = h.handle() >> 16;
    const std::string at = absl::StrCat(where, ", handle ", h.handle());
    if (slot <= previous_slot) {
      return Invalid(absl::StrCat(at, ": handles are not unique and in slot order"));
    }
    previous_slot = slot;
    if (slot == 0 || slot > static_cast<uint32_t>(gens.size()) || gen != gens[slot - 1]) {
      return Invalid(absl::StrCat(at, ": not the handle of any of its session's slots"));
    }
    if (h.path().size() > kMaxPathBytes) return Invalid(absl::StrCat(at, ": path over 4095 bytes"));
    if (h.fd() < 0) return Invalid(absl::StrCat(at, ": negative descriptor"));
  }
  return absl::OkStatus();
}

absl::Status CheckOps(const state::Session& s, const std::string& where,
                      const CheckpointLimits& limits) {
  if (static_cast<uint32_t>(s.ops_size()) > limits.max_ops_per_session) {
    return Invalid(absl::StrCat(where, ": ", s.ops_size(), " operations, over the limit of ",
                                limits.max_ops_per_session));
  }
  const uint32_t index = static_cast<uint32_t>(s.session_id() & (core::OpId::kMaxSessions - 1));
  uint64_t previous = 0;
  for (const v1::OperationInfo& op : s.ops()) {
    const core::OpId id{op.op_id()};
    const std::string at = absl::StrCat(where, ", operation ", op.op_id());
    if (op.op_id() <= previous) {
      return Invalid(absl::StrCat(at, ": operations are not unique and in order"));
    }
    previous = op.op_id();
    if (op.session_id() != s.session_id() || id.session_index() != index) {
      return Invalid(absl::StrCat(at, ": not an operation of its session"));
    }
    if (id.slot() >= limits.max_ops_per_session) {
      return Invalid(absl::StrCat(at, ": slot ", id.slot(), " over the limit of ",
                                  limits.max_ops_per_session, " operations"));
    }
  }
  return absl::OkStatus();
}

// A resumable stream's state: numbered messages in order below next_seq,
// and ops to run again that are the session's, once each.
absl::Status CheckCarry(const state::Session& s, const std::string& where,
                        const CheckpointLimits& limits) {
  if (!s.resumable()) {
    if (s.unacked_size() > 0 || s.undelivered_size() > 0 || s.resubmit_size() > 0) {
      return Invalid(absl::StrCat(where, ": a stream's state, yet not resumable"));
    }
    return absl::OkStatus();
  }
  if (s.next_seq() == 0) return Invalid(absl::StrCat(where, ": resumable, yet no next_seq"));
  // A daemon keeps up to twice its in-flight limit of messages not
  // acknowledged, plus what its ops still owe when a restart comes.
  const uint64_t most = limits.max_ops_per_session;
  if (static_cast<uint64_t>(s.unacked_size()) > 4 * most ||
      static_cast<uint64_t>(s.undelivered_size()) > most ||
      static_cast<uint64_t>(s.resubmit_size()) > most) {
    return Invalid(absl::StrCat(where, ": ", s.unacked_size(), " messages not acknowledged, ",
                                s.undelivered_size(), " completions and ", s.resubmit_size(),
                                " operations to run again: over the limits"));
  }
  uint64_t previous_seq = 0;
  for (const v1::StreamResponse& m : s.unacked()) {
    if (m.seq() <= previous_seq || m.seq() >= s.next_seq()) {
      return Invalid(absl::StrCat(where, ": unacknowledged message ", m.seq(),
                                  " out of order or not below next_seq ", s.next_seq()));
    }
    previous_seq = m.seq();
  }
  const uint32_t index = static_cast<uint32_t>(s.session_id() & (core::OpId::kMaxSessions - 1));
  uint64_t previous_op = 0;
  for (const state::Resubmit& r : s.resubmit()) {
    const core::OpId id{r.op_id()};
    const std::string at = absl::StrCat(where, ", operation ", r.op_id(), " to run again");
    if (r.op_id() <= previous_op) {
      return Invalid(absl::StrCat(at, ": operations are not unique and in order"));
    }
    previous_op = r.op_id();
    if (id.session_index() != index || id.generation() == 0 ||
        id.slot() >= limits.max_ops_per_session) {
      return Invalid(absl::StrCat(at, ": not an operation id of its session"));
    }
    if (r.op().kind_case() == v1::Operation::KIND_NOT_SET) {
      return Invalid(absl::StrCat(at, ": no kind"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string Seal(const state::Checkpoint& checkpoint) {
  state::Sealed sealed;
  sealed.set_format(kCheckpointFormat);
  checkpoint.SerializeToString(sealed.mutable_checkpoint());
  sealed.set_crc32(Crc32(kCheckpointFormat, sealed.checkpoint()));
  return sealed.SerializeAsString();
}

absl::StatusOr<state::Checkpoint> LoadCheckpoint(std::string_view bytes,
                                                 const CheckpointLimits& limits) {
  state::Sealed sealed;
  if (!sealed.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return Invalid("not a sealed checkpoint (truncated or corrupt)");
  }
  if (sealed.format() == 0) return Invalid("no format: not a sealed checkpoint");
  if (sealed.format() > kCheckpointFormat) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint: format ", sealed.format(), " is newer than this daemon's ",
                     kCheckpointFormat));
  }
  if (Crc32(sealed.format(), sealed.checkpoint()) != sealed.crc32()) {
    return Invalid("checksum mismatch (truncated or corrupt)");
  }
  state::Checkpoint cp;
  if (!cp.ParseFromString(sealed.checkpoint())) {
    return Invalid("its checksum matches but it does not parse");
  }

  // Counters: one per index, in order, within the session table.
  const uint32_t max_index = std::min(limits.max_sessions, core::OpId::kMaxSessions);
  std::vector<const state::IdCounter*> by_index(max_index, nullptr);
  int64_t previous_index = -1;
  for (const state::IdCounter& c : cp.id_counters()) {
    const std::string at = absl::StrCat("id counter of index ", c.index());
    if (static_cast<int64_t>(c.index()) <= previous_index) {
      return Invalid("id counters are not unique and in index order");
    }
    previous_index = c.index();
    if (c.index() >= max_index) {
      return Invalid(absl::StrCat(at, ": over the limit of ", limits.max_sessions, " sessions"));
    }
    // The next session opened there must still have an id: serial + 1 fits.
    if (c.serial() == 0 || c.serial() >= (uint64_t{1} << (64 - core::OpId::kSessionBits)) - 1) {
      return Invalid(absl::StrCat(at, ": serial ", c.serial(), " out of range"));
    }
    if (c.next_generation() == 0 || c.next_generation() > core::OpId::kGenMask) {
      return Invalid(absl::StrCat(at, ": generation ", c.next_generation(),
                                  " out of range (1 to 28 bits)"));
    }
    by_index[c.index()] = &c;
  }

  if (static_cast<uint32_t>(cp.sessions_size()) > limits.max_sessions) {
    return Invalid(absl::StrCat(cp.sessions_size(), " sessions, over the limit of ",
                                limits.max_sessions));
  }
  std::vector<bool> index_used(max_index, false);
  uint64_t previous_id = 0;
  for (const state::Session& s : cp.sessions()) {
    const std::string at = absl::StrCat("session ", s.session_id());
    if (s.session_id() <= previous_id) {
      return Invalid("sessions are not unique and in id order");
    }
    previous_id = s.session_id();
    const uint32_t index = static_cast<uint32_t>(s.session_id() & (core::OpId::kMaxSessions - 1));
    const uint64_t serial = s.session_id() >> core::OpId::kSessionBits;
    if (index >= max_index || by_index[index] == nullptr || serial == 0 ||
        serial > by_index[index]->serial()) {
      return Invalid(absl::StrCat(at, ": not covered by the id counters"));
    }
    if (index_used[index]) return Invalid(absl::StrCat(at, ": its index holds another session"));
    index_used[index] = true;
    if (s.client_name().size() > kMaxNameBytes) {
      return Invalid(absl::StrCat(at, ": client name over 128 bytes"));
    }
    if (s.lease_ms() > kMaxLeaseMs || s.lease_remaining_ms() > s.lease_ms()) {
      return Invalid(absl::StrCat(at, ": lease out of range"));
    }
    if (s.bound_to_stream() != (s.lease_ms() == 0)) {
      return Invalid(absl::StrCat(at, s.bound_to_stream() ? ": bound to a stream, yet leased"
                                                          : ": neither leased nor bound to a stream"));
    }
    if (s.whole_root() && s.shares_size() > 0) {
      return Invalid(absl::StrCat(at, ": beneath the whole root, yet named shares"));
    }
    if (s.shares_size() > 64) return Invalid(absl::StrCat(at, ": over 64 shares"));
    if (absl::Status st = CheckHandles(s, at, limits); !st.ok()) return st;
    if (absl::Status st = CheckOps(s, at, limits); !st.ok()) return st;
    if (absl::Status st = CheckCarry(s, at, limits); !st.ok()) return st;
  }
  if (cp.history_size() > kMaxHistory) {
    return Invalid(absl::StrCat(cp.history_size(), " finished operations, over ", kMaxHistory));
  }
  return cp;
}

}  // namespace asyncd::daemon
