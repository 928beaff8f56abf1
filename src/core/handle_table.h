#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace asyncd::core {

/// A session's handles: what clients hold instead of raw descriptors.
///
/// A handle is 31 bits, index (low 16) plus a 15-bit generation, so a closed
/// handle never names a descriptor opened later (until its slot is reused
/// 32,768 times), and a handle is a valid non-negative int32: an open's
/// Completion.result carries it. Every op using a handle
/// holds a reference; a close while ops are in flight detaches the handle at
/// once (new uses fail) and the descriptor is closed when the last user
/// releases it, so a descriptor number is never reused under a running op.
///
/// Thread-safe. One mutex per session: the table is not shared across
/// sessions, so no global lock is involved.
class HandleTable {
 public:
  explicit HandleTable(uint32_t max_handles = 4096);
  ~HandleTable();  // closes every descriptor still open
  HandleTable(const HandleTable&) = delete;
  HandleTable& operator=(const HandleTable&) = delete;

  /// Takes ownership of `fd`, opened as `path` (shown as the target of the
  /// ops that use it; may be empty). RESOURCE_EXHAUSTED when the table is
  /// full, FAILED_PRECONDITION after CloseAll (fd is closed in both cases).
  [[nodiscard]] absl::StatusOr<uint32_t> Insert(int fd, std::string_view path = {});

  /// What an op needs of the handle it uses.
  struct Use {
    int fd = -1;
    /// A pipe, FIFO, socket or character device: no file position, and I/O
    /// may wait for a peer.
    bool stream = false;
    /// Opened O_NONBLOCK: I/O answers EAGAIN rather than waiting.
    bool nonblock = false;
    /// The path it was opened with; valid while the reference is held.
    std::string_view path;
  };
  /// Takes a reference and returns the handle's use. NOT_FOUND for an
  /// unknown, stale or closed handle.
  [[nodiscard]] absl::StatusOr<Use> Acquire(uint32_t handle);
  /// Drops a reference taken by Acquire; closes a detached descriptor at zero.
  void Release(uint32_t handle);
  /// Detaches the handle. Returns the descriptor for the caller to close when
  /// nobody else uses it, or -1 when the close is deferred to the last user.
  /// NOT_FOUND for an unknown handle. The caller's own reference (from
  /// Acquire) is consumed.
  [[nodiscard]] absl::StatusOr<int> Detach(uint32_t handle);
  /// Closes every handle, and refuses new ones; descriptors in use are closed
  /// by their last user.
  void CloseAll();
  uint32_t open_count() const;

  /// One open handle, as a checkpoint records it.
  struct Listed {
    uint32_t handle = 0;
    int fd = -1;  // still owned by the table
    bool stream = false;
    int status_flags = 0;  // fcntl F_GETFL when it was opened
    std::string path;
  };
  /// Every open handle, by handle slot, and each slot's current generation
  /// (so a successor never hands out a handle seen here). A copy, under the
  /// table's lock.
  void List(std::vector<Listed>* open, std::vector<uint32_t>* slot_generations) const;

  /// One handle to restore: its number, and the descriptor it names now.
  struct RestoredHandle {
    uint32_t handle = 0;
    int fd = -1;
    std::string path;
  };
  /// Takes over a predecessor's List(): slot i + 1 gets generation
  /// slot_generations[i], each handle its exact number and its descriptor,
  /// learnt from the descriptor as Insert does (stream, O_NONBLOCK, status
  /// flags). Handles are then acquired, detached and listed as before the
  /// restart; the other slots are free, and Insert hands them out in the
  /// generation given. On success the table owns every descriptor; on error
  /// it owns none (the caller closes them) and nothing changed.
  /// FAILED_PRECONDITION unless the table has never held a handle (nor
  /// closed). INVALID_ARGUMENT for more slots than max_handles, a generation
  /// over 15 bits, a handle whose slot is 0 or past the slots or whose
  /// generation is not its slot's, a slot or a descriptor named twice, or a
  /// negative descriptor.
  [[nodiscard]] absl::Status Restore(std::span<const uint32_t> slot_generations,
                                     std::span<const RestoredHandle> handles);

 private:
  static constexpr uint16_t kGenMask = 0x7fff;  // 15 bits: handles stay below 2^31
  struct Entry {
    int fd = -1;
    uint32_t refs = 0;
    uint16_t gen = 1;
    bool open = false;
    bool stream = false;
    bool nonblock = false;
    int status_flags = 0;
    // Heap-held so Use::path survives the table growing.
    std::unique_ptr<const std::string> path;
  };
  // What a handle keeps of its descriptor. Clients cannot change a handle's
  // flags, so it holds for the handle's life.
  struct FdTraits {
    bool stream = false;
    bool nonblock = false;
    int status_flags = 0;
  };
  static FdTraits Inspect(int fd);
  // Fills the free entry `e` with an open handle; under mu_.
  void OpenLocked(Entry& e, int fd, const FdTraits& traits,
                  std::unique_ptr<const std::string> path);
  Entry* Find(uint32_t handle);
  // Frees the entry's slot; the next handle in it gets a new generation.
  void FreeLocked(Entry& e);

  mutable std::mutex mu_;
  std::vector<Entry> entries_;
  std::vector<uint32_t> free_;
  bool closed_ = false;  // CloseAll ran: Insert refuses
  uint32_t max_handles_;
  uint32_t open_ = 0;
};

}  // namespace asyncd::core
