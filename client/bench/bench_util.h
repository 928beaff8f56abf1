#pragma once

// Pieces of asyncd-bench that are testable without a daemon: the latency
// histogram, the --mix and duration parsers. Header-only so that tests can
// use them without linking the bench executable.

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace asyncd::client::bench {

/// A log-linear histogram of non-negative integers (nanoseconds here):
/// values below 64 have a bucket each; above, every power-of-two range is split
/// into 64 equal buckets, so a bucket's width is at most 1/64 (1.6 %) of its
/// values. Fixed size (3776 buckets, ~30 KiB), covers all of uint64_t.
/// Record is O(1) and allocation-free. Not thread-safe: one per thread, Merge
/// at the end.
class LatencyHistogram {
 public:
  static constexpr int kSubBucketBits = 6;
  static constexpr uint64_t kSubBuckets = uint64_t{1} << kSubBucketBits;
  static constexpr size_t kBuckets = (64 - kSubBucketBits + 1) * kSubBuckets;

  static constexpr size_t BucketOf(uint64_t v) {
    if (v < kSubBuckets) return static_cast<size_t>(v);
    const int msb = 63 - std::countl_zero(v);
    const int shift = msb - kSubBucketBits;
    return static_cast<size_t>((shift + 1) * kSubBuckets + ((v >> shift) - kSubBuckets));
  }
  /// Smallest value that falls into bucket i.
  static constexpr uint64_t BucketLow(size_t i) {
    if (i < kSubBuckets) return i;
    const int shift = static_cast<int>(i / kSubBuckets) - 1;
    return (kSubBuckets + i % kSubBuckets) << shift;
  }
  /// Largest value that falls into bucket i.
  static constexpr uint64_t BucketHigh(size_t i) {
    if (i < kSubBuckets) return i;
    const int shift = static_cast<int>(i / kSubBuckets) - 1;
    return BucketLow(i) + ((uint64_t{1} << shift) - 1);
  }

  void Record(uint64_t v) noexcept {
    ++counts_[BucketOf(v)];
    ++count_;
    sum_ += v;
    min_ = std::min(min_, v);
    max_ = std::max(max_, v);
  }

  void Merge(const LatencyHistogram& other) noexcept {
    for (size_t i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
    count_ += other.count_;
    sum_ += other.sum_;
    min_ = std::min(min_, other.min_);
    max_ = std::max(max_, other.max_);
  }

  uint64_t count() const { return count_; }
  uint64_t min() const { return count_ == 0 ? 0 : min_; }
  uint64_t max() const { return max_; }
  double mean() const { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / count_; }

  /// The value at percentile p (0..100]: the upper end of the bucket holding
  /// the ceil(p% * count)-th smallest value, clamped to [min, max] (so exact
  /// for p = 100 and for values < 64). 0 when empty.
  uint64_t Percentile(double p) const {
    if (count_ == 0) return 0;
    p = std::clamp(p, 0.0, 100.0);
    uint64_t rank = static_cast<uint64_t>(std::ceil(p / 100.0 * static_cast<double>(count_)));
    rank = std::clamp<uint64_t>(rank, 1, count_);
    uint64_t seen = 0;
    for (size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::clamp(BucketHigh(i), min(), max_);
    }
    return max_;
  }

 private:
  std::array<uint64_t, kBuckets> counts_{};
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t min_ = std::numeric_limits<uint64_t>::max();
  uint64_t max_ = 0;
};

/// Operation kinds the bench generates.
enum class BenchOp { kNop, kRead, kWrite, kTimeout };

inline std::string_view BenchOpName(BenchOp op) {
  switch (op) {
    case BenchOp::kNop: return "nop";
    case BenchOp::kRead: return "read";
    case BenchOp::kWrite: return "write";
    case BenchOp::kTimeout: return "timeout";
  }
  return "?";
}

struct MixEntry {
  BenchOp op;
  uint32_t weight;
  friend bool operator==(const MixEntry&, const MixEntry&) = default;
};

namespace internal {
inline std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}
}  // namespace internal

/// Parses "read=3,nop=1" (a kind without "=w" weighs 1). Kinds: nop, read,
/// write, timeout; each at most once; weights 0..1000000, total > 0.
inline absl::StatusOr<std::vector<MixEntry>> ParseMix(std::string_view spec) {
  std::vector<MixEntry> mix;
  uint64_t total = 0;
  while (true) {
    const size_t comma = spec.find(',');
    std::string_view item = internal::Trim(spec.substr(0, comma));
    if (item.empty()) return absl::InvalidArgumentError("--mix: empty entry");
    std::string_view name = item;
    uint32_t weight = 1;
    if (const size_t eq = item.find('='); eq != std::string_view::npos) {
      name = internal::Trim(item.substr(0, eq));
      std::string_view w = internal::Trim(item.substr(eq + 1));
      auto [ptr, ec] = std::from_chars(w.data(), w.data() + w.size(), weight);
      if (w.empty() || ec != std::errc() || ptr != w.data() + w.size() || weight > 1000000) {
        return absl::InvalidArgumentError("--mix: bad weight '" + std::string(w) + "'");
      }
    }
    BenchOp op;
    if (name == "nop") {
      op = BenchOp::kNop;
    } else if (name == "read") {
      op = BenchOp::kRead;
    } else if (name == "write") {
      op = BenchOp::kWrite;
    } else if (name == "timeout") {
      op = BenchOp::kTimeout;
    } else {
      return absl::InvalidArgumentError("--mix: unknown kind '" + std::string(name) +
                                        "' (nop, read, write, timeout)");
    }
    for (const MixEntry& e : mix) {
      if (e.op == op) {
        return absl::InvalidArgumentError("--mix: '" + std::string(name) + "' given twice");
      }
    }
    mix.push_back({op, weight});
    total += weight;
    if (comma == std::string_view::npos) break;
    spec.remove_prefix(comma + 1);
  }
  if (total == 0) return absl::InvalidArgumentError("--mix: weights sum to 0");
  return mix;
}

/// Picks a kind from a mix given a uniform random number (cumulative weights).
class MixPicker {
 public:
  explicit MixPicker(const std::vector<MixEntry>& mix) {
    for (const MixEntry& e : mix) {
      if (e.weight == 0) continue;
      total_ += e.weight;
      cumulative_.push_back({e.op, total_});
    }
  }
  BenchOp Pick(uint64_t random) const {
    const uint64_t r = random % total_;
    for (const auto& [op, upto] : cumulative_) {
      if (r < upto) return op;
    }
    return cumulative_.back().first;
  }
  bool Has(BenchOp op) const {
    return std::any_of(cumulative_.begin(), cumulative_.end(),
                       [op](const auto& e) { return e.first == op; });
  }

 private:
  std::vector<std::pair<BenchOp, uint64_t>> cumulative_;
  uint64_t total_ = 0;
};

/// Parses a duration: a non-negative decimal number with an optional unit
/// ns, us, ms, s (default), m, h. "10s", "500ms", "1.5", "2m".
inline absl::StatusOr<std::chrono::nanoseconds> ParseDuration(std::string_view s) {
  s = internal::Trim(s);
  size_t unit_at = 0;
  while (unit_at < s.size() && ((s[unit_at] >= '0' && s[unit_at] <= '9') || s[unit_at] == '.')) {
    ++unit_at;
  }
  const std::string number(s.substr(0, unit_at));
  const std::string_view unit = s.substr(unit_at);
  if (number.empty() || number == "." || std::count(number.begin(), number.end(), '.') > 1) {
    return absl::InvalidArgumentError("bad duration '" + std::string(s) + "'");
  }
  const double value = std::strtod(number.c_str(), nullptr);
  double scale;
  if (unit == "ns") {
    scale = 1;
  } else if (unit == "us") {
    scale = 1e3;
  } else if (unit == "ms") {
    scale = 1e6;
  } else if (unit.empty() || unit == "s") {
    scale = 1e9;
  } else if (unit == "m") {
    scale = 60e9;
  } else if (unit == "h") {
    scale = 3600e9;
  } else {
    return absl::InvalidArgumentError("bad duration unit '" + std::string(unit) +
                                      "' (ns, us, ms, s, m, h)");
  }
  const double ns = value * scale;
  if (!(ns < 9.2e18)) return absl::InvalidArgumentError("duration too long");
  return std::chrono::nanoseconds(static_cast<int64_t>(ns));
}

/// xorshift64*: a cheap per-thread PRNG for offsets and kind choice.
class FastRandom {
 public:
  explicit FastRandom(uint64_t seed) : state_(seed != 0 ? seed : 0x9E3779B97F4A7C15ULL) {}
  uint64_t Next() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return state_ * 0x2545F4914F6CDD1DULL;
  }

 private:
  uint64_t state_;
};

}  // namespace asyncd::client::bench
