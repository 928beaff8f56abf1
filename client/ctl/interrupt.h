#pragma once

// Ctrl-C handling: a signal thread (signals blocked everywhere else), so
// interrupt handling may take locks and cancel gRPC calls, which a signal
// handler may not.

#include <chrono>
#include <functional>

namespace asyncd::ctl {

/// Blocks SIGINT/SIGTERM and starts the thread that waits for them. Call
/// first in main, before any other thread (gRPC's included) exists, so every
/// thread inherits the blocked mask. Outside an InterruptScope a signal ends
/// the process with exit status 130, as an unhandled Ctrl-C would.
void InstallInterruptHandler();

/// While alive, SIGINT/SIGTERM runs `on_interrupt` on the signal thread
/// (e.g. client::CallCanceller::Cancel) instead of exiting, and wakes
/// SleepUnlessInterrupted. A second signal while the first is being handled
/// exits at once (130). Scopes do not nest.
class InterruptScope {
 public:
  explicit InterruptScope(std::function<void()> on_interrupt);
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;
};

/// Whether a signal arrived inside the current (or a past) scope.
bool Interrupted();

/// Sleeps for `d`; returns early, false, when interrupted.
bool SleepUnlessInterrupted(std::chrono::microseconds d);

}  // namespace asyncd::ctl
