#pragma once

// The descriptors systemd passed this process at start (sd_listen_fds(3)):
// the socket units' (socket activation) and the descriptor store's
// (FDSTORE=1), side by side in one LISTEN_FDS range, each with its name
// (LISTEN_FDNAMES: the socket unit's or FileDescriptorName=, the store's
// FDNAME=; "unknown" when systemd named none), and after them a takeover's
// (AddPassedFd). They are read once, on first use, and LISTEN_* is unset
// then. Each is taken at most once, by whoever asks first, who then owns it;
// so socket activation and the handover can take theirs in either order.
// Any thread.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace asyncd::daemon {

struct PassedFd {
  int fd;
  std::string name;
};

/// The passed descriptors nobody has taken yet, in LISTEN_FDS order. Still
/// not the caller's: take one with TakePassedFdAt.
std::vector<PassedFd> UntakenPassedFds();

/// Takes passed descriptor `fd`: true (and the caller owns it) when systemd
/// passed it and nobody has taken it yet.
[[nodiscard]] bool TakePassedFdAt(int fd);

/// Takes the first untaken passed descriptor named `name`; the caller owns
/// it. nullopt when there is none (not started by systemd, too).
std::optional<int> TakePassedFd(std::string_view name);

/// Adds `fd`, which this process got another way (a predecessor's, by
/// takeover: daemon/takeover.h), after systemd's, as if passed as `name`:
/// whoever takes it by name or place owns it then.
void AddPassedFd(int fd, std::string name);

}  // namespace asyncd::daemon
