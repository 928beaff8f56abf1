#pragma once

// Parsing and formatting of asyncd values for asyncctl: ids, enum names,
// handles, timestamps, payload bytes.

#include <google/protobuf/generated_enum_reflection.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "asyncd/v1/asyncd.pb.h"

namespace asyncd::ctl {

/// Operation ids are printed in hex with a "0x" prefix ("0x1000050000003"):
/// they encode session index | slot | generation (src/core/op_id.h), which
/// hex keeps readable. Input accepts "0x..." hex or plain decimal.
std::string FormatOpId(uint64_t id);

/// Parses an op or session id: "0x1f" (hex) or "31" (decimal). 0 is an error
/// (never a valid id). Errors: INVALID_ARGUMENT.
[[nodiscard]] absl::StatusOr<uint64_t> ParseId(std::string_view text, std::string_view what);

/// Parses a handle: "3" or "h:3" (as shown in TARGET columns). 0 is an error.
[[nodiscard]] absl::StatusOr<uint32_t> ParseHandle(std::string_view text);

/// Parses a non-negative integer that fits in uint64 (sizes, offsets, counts).
[[nodiscard]] absl::StatusOr<uint64_t> ParseUint(std::string_view text, std::string_view what);

/// The short, lower-case name of an enum value: the full name without the
/// enum's prefix (the part before "UNSPECIFIED" in value 0's name), e.g.
/// OP_KIND_READ -> "read", BACKEND_IO_URING -> "io_uring". Values unknown to
/// this build print as their number (the API may grow).
std::string ShortEnumName(const google::protobuf::EnumDescriptor* descriptor, int value);

template <typename E>
std::string ShortName(E value) {
  return ShortEnumName(google::protobuf::GetEnumDescriptor<E>(), static_cast<int>(value));
}

/// Parses an enum value from its short name ("read"), full name
/// ("OP_KIND_READ"), case-insensitively, '-' meaning '_', or an alias
/// ("stat" for statx, "uring"/"pool" for backends, "in"/"out" for poll
/// events). UNSPECIFIED is never accepted. Errors: INVALID_ARGUMENT listing
/// the valid names.
[[nodiscard]] absl::StatusOr<int> ParseEnumValue(const google::protobuf::EnumDescriptor* descriptor,
                                                 std::string_view text, std::string_view what);

template <typename E>
[[nodiscard]] absl::StatusOr<E> ParseEnum(std::string_view text, std::string_view what) {
  absl::StatusOr<int> v = ParseEnumValue(google::protobuf::GetEnumDescriptor<E>(), text, what);
  if (!v.ok()) return v.status();
  return static_cast<E>(*v);
}

/// Comma-separated short names of the valid values of an enum (for help).
std::string EnumChoices(const google::protobuf::EnumDescriptor* descriptor);

/// Local wall-clock time "HH:MM:SS.mmm" of a Unix-epoch nanosecond stamp;
/// "-" for 0.
std::string FormatClock(int64_t unix_nanos);

/// "2024-05-01T12:34:56.789012Z" (UTC); "-" for 0.
std::string FormatTimestamp(int64_t unix_nanos);

/// Keeps the end of `s` when longer than `max` bytes, with a leading "...".
std::string TruncateFront(std::string_view s, size_t max);

/// Printable rendering of payload bytes: C-style escapes for non-printable
/// bytes, truncated to `max` bytes of input with a "...(N bytes)" suffix.
std::string EscapeBytes(std::string_view data, size_t max);

/// "ENOENT" for 2, via strerrorname_np; the number as text when unknown.
std::string ErrnoName(int error_number);

/// A Completion's or OperationInfo's result for humans: "3", or "-ENOENT".
std::string FormatResult(int32_t result, int32_t error_number);

/// Poll event bits as "in|out|err|hup"; "-" when none.
std::string FormatPollEvents(uint32_t bits);

/// "yes" / "no".
inline const char* YesNo(bool b) { return b ? "yes" : "no"; }

}  // namespace asyncd::ctl
