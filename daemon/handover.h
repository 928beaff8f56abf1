#pragma once

// The handover package: what a daemon hands its successor on a live restart
// (the design: sessions and handles survive a restart or an upgrade). It is
// the receiving end of an AF_UNIX SOCK_SEQPACKET socketpair whose queue holds
// the open handles' descriptors (SCM_RIGHTS, up to 253 a message), then one
// end message carrying a sealed memfd with the sealed checkpoint. The queue
// is the package: the descriptors stay open in flight, owned by the kernel,
// however the old process ends.
//
// Under systemd the package waits in the service's descriptor store
// (PushToDescriptorStore, FileDescriptorStoreMax= in the unit); the successor
// takes it with TakePassedFd(kHandoverFdName) (daemon/passed_fds.h), removes
// it from the store and unpacks it.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace asyncd::daemon {

/// The package's FDNAME in the descriptor store, and so its name among the
/// descriptors systemd passes at the next start (LISTEN_FDNAMES).
inline constexpr std::string_view kHandoverFdName = "asyncd-handover";

/// The kernel's limit of descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
inline constexpr uint32_t kMaxFdsPerMessage = 253;

// The wire format. Each message's payload is exactly one header, in native
// byte order: both ends run on one host.
inline constexpr uint32_t kHandoverMagic = 0x4f484441;  // "ADHO" in memory on little-endian
inline constexpr uint16_t kHandoverVersion = 1;
enum class HandoverKind : uint16_t {
  kDescriptors = 1,  // carries `count` descriptors, indexes first .. first + count - 1
  kEnd = 2,          // carries the checkpoint's sealed memfd alone; always the last message
};
struct HandoverHeader {
  uint32_t magic = kHandoverMagic;
  uint16_t version = kHandoverVersion;
  HandoverKind kind = HandoverKind::kDescriptors;
  // The index of this message's first descriptor: how many came before it.
  // In the end message, the package's total.
  uint32_t first = 0;
  // Descriptors in this message, 1..kMaxFdsPerMessage; 0 in the end message
  // (its memfd is not one of the package's descriptors).
  uint32_t count = 0;
  // The end message only: the checkpoint's size, which the memfd must have.
  uint64_t checkpoint_size = 0;
};
static_assert(sizeof(HandoverHeader) == 24, "the header is a wire format: no padding");

/// Sends one message without blocking: `payload`, and `fds` (at most
/// kMaxFdsPerMessage) as SCM_RIGHTS. Returns 0 or the errno. PackHandover
/// sends each message with it; tests forge packages with it.
int SendWithDescriptors(int sock, std::span<const char> payload, std::span<const int> fds);

/// Packs `fds` (in this order) and `sealed_checkpoint` into a new package and
/// returns its receiving end (close-on-exec; the caller owns it). The kernel
/// duplicates `fds`: the caller keeps its own. Never blocks: when the queue is
/// full (EAGAIN) or the kernel refuses more descriptors in flight
/// (ETOOMANYREFS: a user's descriptors in flight may exceed its RLIMIT_NOFILE
/// only with CAP_SYS_RESOURCE), RESOURCE_EXHAUSTED says how many of them were
/// packed and why, and the daemon drains instead. On any error nothing is left
/// open. Any thread.
[[nodiscard]] absl::StatusOr<int> PackHandover(std::string_view sealed_checkpoint,
                                               std::span<const int> fds);

/// An unpacked package: it owns `fds`, which close with it. A restore takes a
/// descriptor it keeps by setting its slot to -1.
struct Handover {
  std::string sealed_checkpoint;
  std::vector<int> fds;  // in the order packed; close-on-exec

  Handover() = default;
  Handover(Handover&& other) noexcept;
  Handover& operator=(Handover&& other) noexcept;
  Handover(const Handover&) = delete;
  Handover& operator=(const Handover&) = delete;
  ~Handover() { Close(); }

  /// Closes every descriptor still held (slots not -1) and empties `fds`.
  void Close();
};

/// Reads the whole package from `fd` without blocking, and takes ownership of
/// `fd` (closed before returning). Refuses with INVALID_ARGUMENT, naming what
/// is wrong, anything but a whole package exactly as PackHandover makes it:
/// wrong magic or version, indexes not contiguous from 0, counts that do not
/// match the descriptors carried, descriptors without a header, a package cut
/// short (no end message: its writer stopped before finishing), a message
/// after the end, descriptors cut short (MSG_CTRUNC: too little room under our
/// RLIMIT_NOFILE), a memfd without its four seals or of another size than the
/// header says. On a refusal every descriptor received is closed: there are
/// no half-restores. Any thread.
[[nodiscard]] absl::StatusOr<Handover> UnpackHandover(int fd);

/// Stores `fd` in systemd's descriptor store as `name` (FDSTORE=1, FDNAME=,
/// and FDPOLL=0: a package's end shows POLLHUP from the start, at which
/// systemd would drop it);
/// systemd keeps its own duplicate and passes it at the next start. The
/// caller keeps `fd`. FAILED_PRECONDITION when not under systemd ($NOTIFY_SOCKET
/// unset); INVALID_ARGUMENT for a name systemd would refuse; INTERNAL when
/// the message cannot be sent. systemd does not answer: with
/// FileDescriptorStoreMax=0 it logs and drops the descriptor.
[[nodiscard]] absl::Status PushToDescriptorStore(int fd, std::string_view name);

/// Drops the store's descriptors named `name` (FDSTOREREMOVE=1). A no-op when
/// not under systemd.
void RemoveFromDescriptorStore(std::string_view name);

}  // namespace asyncd::daemon
