#pragma once

// Building an OpSelector from asyncctl's filter flags, shared by
// `ops list`, `ops history`, `ops watch` and `ops cancel`.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "asyncd/v1/asyncd.pb.h"

namespace asyncd::ctl {

/// The filter flags as typed on the command line (unparsed, so parse errors
/// are reported with the user's text). Empty = not given.
struct SelectorFlags {
  std::string session;              // --session ID (0x.. or decimal)
  std::string client;               // --client NAME
  std::vector<std::string> kinds;   // --kind K (repeatable, or comma-separated)
  std::vector<std::string> states;  // --state S
  std::string backend;              // --backend B
  std::string older_than;           // --older-than DURATION
  std::string handle;               // --handle H (needs --session)
  bool all = false;                 // --all (cancel only)
};

/// Which RPC the selector is for; decides which states are valid and
/// whether an empty selector needs --all.
enum class SelectorUse {
  kList,     // ListOperations: in-flight states.
  kWatch,    // Watch: any state (the op's state at the event).
  kHistory,  // ListHistory: terminal states.
  kCancel,   // Cancel: in-flight states; empty needs --all, --all excludes the rest.
};

/// True when any criterion other than --all is set.
bool HasCriteria(const SelectorFlags& flags);

/// Parses and validates the flags into an OpSelector. Errors (usage errors,
/// INVALID_ARGUMENT): a bad id/kind/state/backend/duration/handle, --handle
/// without --session, a state of the wrong family for `use`; for kCancel, no
/// criterion without --all, or --all with a criterion.
[[nodiscard]] absl::StatusOr<v1::OpSelector> BuildSelector(const SelectorFlags& flags,
                                                           SelectorUse use);

}  // namespace asyncd::ctl
