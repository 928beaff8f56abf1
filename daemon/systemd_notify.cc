#include "daemon/systemd_notify.h"

#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include <spdlog/sinks/systemd_sink.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"

namespace asyncd::daemon {

bool UnderSystemd() {
  if (const char* js = std::getenv("JOURNAL_STREAM"); js != nullptr && *js != '\0') {
    unsigned long long dev = 0, ino = 0;
    struct stat st {};
    if (std::sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
        st.st_dev == dev && st.st_ino == ino) {
      return true;
    }
  }
  const char* id = std::getenv("INVOCATION_ID");
  return id != nullptr && *id != '\0' && sd_booted() > 0;
}

void SetUpLogging() {
  if (!UnderSystemd()) return;
  // The journal adds its own timestamp, pid and priority: log the message only.
  auto sink = std::make_shared<spdlog::sinks::systemd_sink_mt>("asyncd");
  auto logger = std::make_shared<spdlog::logger>("asyncd", std::move(sink));
  logger->set_level(spdlog::get_level());
  spdlog::set_default_logger(std::move(logger));
}

namespace notify {

void Ready(const std::string& status) {
  sd_notify(0, absl::StrCat("READY=1\nSTATUS=", status).c_str());
}

void Reloading() {
  struct timespec ts {};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const uint64_t usec = uint64_t(ts.tv_sec) * 1000000 + uint64_t(ts.tv_nsec) / 1000;
  sd_notify(0, absl::StrCat("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=", usec).c_str());
}

void Stopping(const std::string& status) {
  sd_notify(0, absl::StrCat("STOPPING=1\nSTATUS=", status).c_str());
}

void Status(const std::string& status) {
  sd_notify(0, absl::StrCat("STATUS=", status).c_str());
}

void Watchdog() { sd_notify(0, "WATCHDOG=1"); }

uint64_t WatchdogUsec() {
  uint64_t usec = 0;
  return sd_watchdog_enabled(0, &usec) > 0 ? usec : 0;
}

}  // namespace notify
}  // namespace asyncd::daemon
