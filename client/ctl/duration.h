#pragma once

// Human durations for asyncctl: "30s", "500ms", "2m", "1h30m", "1.5s", "250us", "2d".

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace asyncd::ctl {

/// Parses a non-negative human duration: one or more <number><unit> terms,
/// e.g. "30s", "500ms", "1h30m", "1.5s", "250us". Units: us (or µs), ms, s,
/// m, h, d. "0" alone is accepted; any other bare number is an error (is "5"
/// seconds or milliseconds?). Sub-microsecond remainders are truncated.
/// Errors: INVALID_ARGUMENT naming the problem.
[[nodiscard]] absl::StatusOr<std::chrono::microseconds> ParseDuration(std::string_view text);

/// Formats a duration for humans, with at most ~3 significant digits, so
/// that the result parses back with ParseDuration (truncating, never
/// rounding up): "250us", "12.3ms", "850ms", "12.3s", "30s", "4m10s", "2m",
/// "1h30m", "1h", "2d3h". Negative values are formatted as "-" + abs.
std::string FormatDuration(std::chrono::microseconds d);

/// FormatDuration of a count of microseconds (the unit of the API's *_us).
inline std::string FormatMicros(uint64_t us) {
  return FormatDuration(std::chrono::microseconds(static_cast<int64_t>(us)));
}

}  // namespace asyncd::ctl
