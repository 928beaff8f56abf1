#include "client/ctl/format.h"

#include <google/protobuf/descriptor.h>
#include <string.h>

#include <cctype>
#include <charconv>
#include <cstdio>
#include <ctime>

#include "absl/status/status.h"

namespace asyncd::ctl {
namespace {

std::string Normalize(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text)
    out += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string EnumPrefix(const google::protobuf::EnumDescriptor* d) {
  const google::protobuf::EnumValueDescriptor* zero = d->FindValueByNumber(0);
  if (zero == nullptr) return "";
  const std::string& name = zero->name();
  constexpr std::string_view kUnspecified = "UNSPECIFIED";
  if (name.size() >= kUnspecified.size() &&
      name.compare(name.size() - kUnspecified.size(), kUnspecified.size(), kUnspecified) == 0) {
    return name.substr(0, name.size() - kUnspecified.size());
  }
  return "";
}

struct Alias {
  std::string_view enum_name;
  std::string_view alias;
  std::string_view value;  // short name, upper case
};

constexpr Alias kAliases[] = {
    {"OpKind", "STAT", "STATX"},
    {"OpKind", "TRUNCATE", "FTRUNCATE"},
    {"OpKind", "RMDIR", "UNLINK"},
    {"Backend", "URING", "IO_URING"},
    {"Backend", "IOURING", "IO_URING"},
    {"Backend", "POOL", "THREAD_POOL"},
    {"Backend", "THREADPOOL", "THREAD_POOL"},
    {"Backend", "THREADS", "THREAD_POOL"},
    {"OpenMode", "R", "READ_ONLY"},
    {"OpenMode", "RO", "READ_ONLY"},
    {"OpenMode", "READ", "READ_ONLY"},
    {"OpenMode", "W", "WRITE_ONLY"},
    {"OpenMode", "WO", "WRITE_ONLY"},
    {"OpenMode", "WRITE", "WRITE_ONLY"},
    {"OpenMode", "RW", "READ_WRITE"},
    {"PollEvents", "IN", "READABLE"},
    {"PollEvents", "POLLIN", "READABLE"},
    {"PollEvents", "OUT", "WRITABLE"},
    {"PollEvents", "POLLOUT", "WRITABLE"},
    {"EventType", "CANCEL", "CANCEL_REQUESTED"},
    {"EventType", "DEADLINE", "DEADLINE_EXPIRED"},
};

}  // namespace

std::string FormatOpId(uint64_t id) {
  char buf[2 + 16 + 1];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(id));
  return buf;
}

absl::StatusOr<uint64_t> ParseId(std::string_view text, std::string_view what) {
  std::string_view digits = text;
  int base = 10;
  if (digits.size() > 2 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) {
    digits.remove_prefix(2);
    base = 16;
  }
  uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value, base);
  if (digits.empty() || ec != std::errc() || ptr != digits.data() + digits.size()) {
    return absl::InvalidArgumentError("invalid " + std::string(what) + " \"" + std::string(text) +
                                      "\": expected 0x<hex> or a decimal number");
  }
  if (value == 0) return absl::InvalidArgumentError(std::string(what) + " must not be 0");
  return value;
}

absl::StatusOr<uint32_t> ParseHandle(std::string_view text) {
  std::string_view digits = text;
  if (digits.substr(0, 2) == "h:") digits.remove_prefix(2);
  uint32_t value = 0;
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (digits.empty() || ec != std::errc() || ptr != digits.data() + digits.size() || value == 0) {
    return absl::InvalidArgumentError("invalid handle \"" + std::string(text) +
                                      "\": expected a positive number (or h:<number>)");
  }
  return value;
}

absl::StatusOr<uint64_t> ParseUint(std::string_view text, std::string_view what) {
  uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size()) {
    return absl::InvalidArgumentError("invalid " + std::string(what) + " \"" + std::string(text) +
                                      "\": expected a non-negative integer");
  }
  return value;
}

std::string ShortEnumName(const google::protobuf::EnumDescriptor* d, int value) {
  const google::protobuf::EnumValueDescriptor* v = d->FindValueByNumber(value);
  if (v == nullptr) return std::to_string(value);
  std::string name = v->name();
  std::string prefix = EnumPrefix(d);
  if (name.compare(0, prefix.size(), prefix) == 0) name.erase(0, prefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

std::string EnumChoices(const google::protobuf::EnumDescriptor* d) {
  std::string out;
  for (int i = 0; i < d->value_count(); ++i) {
    if (d->value(i)->number() == 0) continue;
    if (!out.empty()) out += ", ";
    out += ShortEnumName(d, d->value(i)->number());
  }
  return out;
}

absl::StatusOr<int> ParseEnumValue(const google::protobuf::EnumDescriptor* d, std::string_view text,
                                   std::string_view what) {
  std::string wanted = Normalize(text);
  std::string prefix = EnumPrefix(d);
  for (const Alias& a : kAliases) {
    if (a.enum_name == d->name() && a.alias == wanted) wanted = std::string(a.value);
  }
  const google::protobuf::EnumValueDescriptor* v = d->FindValueByName(prefix + wanted);
  if (v == nullptr) v = d->FindValueByName(wanted);
  if (v == nullptr || v->number() == 0) {
    return absl::InvalidArgumentError("invalid " + std::string(what) + " \"" + std::string(text) +
                                      "\": expected one of " + EnumChoices(d));
  }
  return v->number();
}

std::string FormatClock(int64_t unix_nanos) {
  if (unix_nanos == 0) return "-";
  time_t secs = static_cast<time_t>(unix_nanos / 1000000000);
  struct tm tm_local;
  localtime_r(&secs, &tm_local);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%02d:%02d:%02d.%03d", tm_local.tm_hour, tm_local.tm_min,
                tm_local.tm_sec, static_cast<int>((unix_nanos / 1000000) % 1000));
  return buf;
}

std::string FormatTimestamp(int64_t unix_nanos) {
  if (unix_nanos == 0) return "-";
  time_t secs = static_cast<time_t>(unix_nanos / 1000000000);
  struct tm tm_utc;
  gmtime_r(&secs, &tm_utc);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm_utc.tm_year + 1900,
                tm_utc.tm_mon + 1, tm_utc.tm_mday, tm_utc.tm_hour, tm_utc.tm_min, tm_utc.tm_sec,
                static_cast<int>((unix_nanos / 1000) % 1000000));
  return buf;
}

std::string TruncateFront(std::string_view s, size_t max) {
  if (s.size() <= max) return std::string(s);
  if (max <= 3) return std::string(s.substr(s.size() - max));
  return "..." + std::string(s.substr(s.size() - (max - 3)));
}

std::string EscapeBytes(std::string_view data, size_t max) {
  std::string out;
  std::string_view shown = data.substr(0, max);
  for (unsigned char c : shown) {
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      default:
        if (c >= 0x20 && c < 0x7f) {
          out += static_cast<char>(c);
        } else {
          char buf[5];
          std::snprintf(buf, sizeof(buf), "\\x%02x", c);
          out += buf;
        }
    }
  }
  if (data.size() > shown.size()) out += "...(" + std::to_string(data.size()) + " bytes)";
  return out;
}

std::string ErrnoName(int error_number) {
  if (error_number == 0) return "0";
  const char* name = strerrorname_np(error_number);
  return name != nullptr ? name : std::to_string(error_number);
}

std::string FormatResult(int32_t result, int32_t error_number) {
  if (error_number != 0) return "-" + ErrnoName(error_number);
  return std::to_string(result);
}

std::string FormatPollEvents(uint32_t bits) {
  std::string out;
  auto add = [&](uint32_t bit, const char* name) {
    if ((bits & bit) == 0) return;
    if (!out.empty()) out += "|";
    out += name;
    bits &= ~bit;
  };
  add(v1::POLL_EVENTS_READABLE, "in");
  add(v1::POLL_EVENTS_WRITABLE, "out");
  add(v1::POLL_EVENTS_ERROR, "err");
  add(v1::POLL_EVENTS_HANGUP, "hup");
  if (bits != 0) {
    if (!out.empty()) out += "|";
    out += std::to_string(bits);
  }
  return out.empty() ? "-" : out;
}

}  // namespace asyncd::ctl
