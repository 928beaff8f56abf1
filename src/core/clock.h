#pragma once

#include <time.h>

#include <cstdint>

namespace asyncd::core {

/// Monotonic nanoseconds (CLOCK_MONOTONIC): ages, deadlines, durations.
inline int64_t MonoNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

/// Wall-clock nanoseconds since the Unix epoch, for timelines shown to people.
inline int64_t UnixNanos() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace asyncd::core
