#include "client/ctl/duration.h"

#include <cstdlib>
#include <limits>

#include "absl/status/status.h"

namespace asyncd::ctl {
namespace {

struct Unit {
  std::string_view name;
  int64_t micros;
};

// Longest names first so "ms" is not read as "m" followed by garbage.
constexpr Unit kUnits[] = {
    {"\xC2\xB5s", 1},  // µs
    {"us", 1},
    {"ms", 1000},
    {"s", 1000 * 1000},
    {"m", 60LL * 1000 * 1000},
    {"h", 3600LL * 1000 * 1000},
    {"d", 86400LL * 1000 * 1000},
};

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

absl::Status Bad(std::string_view text, std::string_view why) {
  return absl::InvalidArgumentError("invalid duration \"" + std::string(text) + "\": " +
                                    std::string(why) + " (examples: 30s, 500ms, 2m, 1h30m, 1.5s)");
}

// Appends `value` formatted with one decimal, dropping a trailing ".0",
// truncated (not rounded) so 59.99s prints as "59.9s", never "60.0s".
std::string OneDecimal(int64_t tenths) {
  std::string out = std::to_string(tenths / 10);
  if (tenths % 10 != 0) out += "." + std::to_string(tenths % 10);
  return out;
}

}  // namespace

absl::StatusOr<std::chrono::microseconds> ParseDuration(std::string_view text) {
  if (text.empty()) return Bad(text, "empty");
  if (text == "0") return std::chrono::microseconds(0);
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  int64_t total = 0;
  size_t i = 0;
  while (i < text.size()) {
    // Number: digits, optionally a fraction.
    size_t start = i;
    int64_t whole = 0;
    while (i < text.size() && IsDigit(text[i])) {
      if (whole > (kMax - 9) / 10) return Bad(text, "too large");
      whole = whole * 10 + (text[i] - '0');
      ++i;
    }
    bool had_whole = i > start;
    int64_t frac = 0;   // fraction digits as an integer
    int64_t scale = 1;  // 10^(number of fraction digits kept)
    if (i < text.size() && text[i] == '.') {
      ++i;
      size_t frac_start = i;
      while (i < text.size() && IsDigit(text[i])) {
        // Keep 9 digits at most; more is below our microsecond resolution.
        if (scale < 1000000000) {
          frac = frac * 10 + (text[i] - '0');
          scale *= 10;
        }
        ++i;
      }
      if (i == frac_start) return Bad(text, "missing digits after '.'");
    } else if (!had_whole) {
      if (text[i] == '-') return Bad(text, "must not be negative");
      return Bad(text, "expected a number");
    }
    // Unit.
    const Unit* unit = nullptr;
    for (const Unit& u : kUnits) {
      if (text.substr(i, u.name.size()) == u.name) {
        // "m" must not swallow the "m" of "ms".
        if (u.name == "m" && text.substr(i, 2) == "ms") continue;
        unit = &u;
        break;
      }
    }
    if (unit == nullptr) {
      if (i == text.size()) return Bad(text, "missing unit");
      return Bad(text, "unknown unit \"" + std::string(text.substr(i)) + "\"");
    }
    i += unit->name.size();
    if (whole > 0 && unit->micros > kMax / whole) return Bad(text, "too large");
    int64_t term = whole * unit->micros;
    // frac/scale of a unit, computed without overflow: scale <= 1e9 and
    // unit->micros <= 8.64e10, so split the unit into (micros / scale) parts.
    int64_t frac_part = (unit->micros / scale) * frac + (unit->micros % scale) * frac / scale;
    if (term > kMax - frac_part || total > kMax - term - frac_part) return Bad(text, "too large");
    total += term + frac_part;
  }
  return std::chrono::microseconds(total);
}

std::string FormatDuration(std::chrono::microseconds d) {
  int64_t us = d.count();
  if (us < 0) {
    if (us == std::numeric_limits<int64_t>::min()) us += 1;
    return "-" + FormatDuration(std::chrono::microseconds(-us));
  }
  constexpr int64_t kMs = 1000, kS = 1000 * kMs, kM = 60 * kS, kH = 60 * kM, kD = 24 * kH;
  if (us == 0) return "0s";
  if (us < kMs) return std::to_string(us) + "us";
  if (us < kS) return OneDecimal(us / (kMs / 10)) + "ms";
  if (us < kM) return OneDecimal(us / (kS / 10)) + "s";
  if (us < kH) {
    std::string out = std::to_string(us / kM) + "m";
    if (int64_t s = (us % kM) / kS; s != 0) out += std::to_string(s) + "s";
    return out;
  }
  if (us < kD) {
    std::string out = std::to_string(us / kH) + "h";
    if (int64_t m = (us % kH) / kM; m != 0) out += std::to_string(m) + "m";
    return out;
  }
  std::string out = std::to_string(us / kD) + "d";
  if (int64_t h = (us % kD) / kH; h != 0) out += std::to_string(h) + "h";
  return out;
}

}  // namespace asyncd::ctl
