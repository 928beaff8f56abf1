#pragma once

// Debian's Abseil is built without ABSL_USES_STD_STRING_VIEW, so
// absl::string_view and std::string_view are distinct types; our public API
// uses std::string_view. These convert at the boundary (no copy).

#include <string_view>

#include "absl/strings/string_view.h"

namespace asyncd::client::internal {

inline absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }
inline std::string_view ToStd(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace asyncd::client::internal
