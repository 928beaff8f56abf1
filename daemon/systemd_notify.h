#pragma once

#include <cstdint>
#include <string>

namespace asyncd::daemon {

/// True when this process runs as a systemd service whose stderr goes to the
/// journal: $JOURNAL_STREAM names our stderr (the check systemd.exec(5)
/// recommends), or $INVOCATION_ID is set on a systemd-booted host.
bool UnderSystemd();

/// Sends spdlog's default logger to the journal (spdlog's systemd sink, with
/// SYSLOG_IDENTIFIER=asyncd and the priority of each level) under systemd,
/// and leaves the console logger otherwise. Call once, early in main.
void SetUpLogging();

/// sd_notify(3) messages. Each is a no-op when $NOTIFY_SOCKET is unset (not
/// started by systemd, or Type= is not notify). Any thread; never blocks for
/// long (one datagram).
namespace notify {
void Ready(const std::string& status);
/// RELOADING=1 with MONOTONIC_USEC (systemd 253+ wants it; 252 ignores it).
void Reloading();
void Stopping(const std::string& status);
void Status(const std::string& status);
void Watchdog();
/// The watchdog period systemd expects pings within, in microseconds, or 0
/// when the watchdog is off for this process (sd_watchdog_enabled(3)).
uint64_t WatchdogUsec();
}  // namespace notify

}  // namespace asyncd::daemon
