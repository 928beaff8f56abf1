#pragma once

#include <cstdint>

namespace asyncd::core {

/// An operation id: 64 bits naming a registry slot *and* its generation, so an
/// id kept after its op finished can never reach the op that reuses the slot.
///
///   63        48 47          28 27           0
///   | session  |   slot index  |  generation  |
///
/// The session field is the index of the owning session in the registry's
/// session table; generations keep counting across sessions that reuse that
/// index, so ids of a closed session do not match its successor's ops either.
struct OpId {
  static constexpr int kGenBits = 28;
  static constexpr int kSlotBits = 20;
  static constexpr int kSessionBits = 16;
  static constexpr uint32_t kGenMask = (1u << kGenBits) - 1;
  static constexpr uint32_t kMaxSlots = 1u << kSlotBits;
  static constexpr uint32_t kMaxSessions = 1u << kSessionBits;

  static constexpr OpId Make(uint32_t session_index, uint32_t slot, uint32_t gen) {
    return OpId{(uint64_t{session_index} << (kSlotBits + kGenBits)) |
                (uint64_t{slot} << kGenBits) | (gen & kGenMask)};
  }
  constexpr uint32_t session_index() const {
    return static_cast<uint32_t>(value >> (kSlotBits + kGenBits));
  }
  constexpr uint32_t slot() const {
    return static_cast<uint32_t>(value >> kGenBits) & (kMaxSlots - 1);
  }
  constexpr uint32_t generation() const { return static_cast<uint32_t>(value) & kGenMask; }
  constexpr bool operator==(const OpId&) const = default;

  uint64_t value = 0;
};

}  // namespace asyncd::core
