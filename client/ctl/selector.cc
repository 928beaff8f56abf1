#include "client/ctl/selector.h"

#include "absl/status/status.h"
#include "client/ctl/duration.h"
#include "client/ctl/format.h"

namespace asyncd::ctl {
namespace {

bool IsInFlight(v1::OpState s) {
  return s == v1::OP_STATE_QUEUED || s == v1::OP_STATE_DISPATCHED || s == v1::OP_STATE_RUNNING;
}

// "read,write" and repeated flags both work; CLI11 may already have split.
std::vector<std::string> SplitCommas(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const std::string& v : values) {
    size_t start = 0;
    while (start <= v.size()) {
      size_t comma = v.find(',', start);
      if (comma == std::string::npos) comma = v.size();
      if (comma > start) out.push_back(v.substr(start, comma - start));
      start = comma + 1;
    }
  }
  return out;
}

}  // namespace

bool HasCriteria(const SelectorFlags& f) {
  return !f.session.empty() || !f.client.empty() || !f.kinds.empty() || !f.states.empty() ||
         !f.backend.empty() || !f.older_than.empty() || !f.handle.empty();
}

absl::StatusOr<v1::OpSelector> BuildSelector(const SelectorFlags& f, SelectorUse use) {
  v1::OpSelector sel;
  if (!f.session.empty()) {
    absl::StatusOr<uint64_t> id = ParseId(f.session, "session id");
    if (!id.ok()) return id.status();
    sel.set_session_id(*id);
  }
  sel.set_client(f.client);
  if (!f.handle.empty()) {
    if (f.session.empty()) {
      return absl::InvalidArgumentError("--handle needs --session: handles are session-scoped");
    }
    absl::StatusOr<uint32_t> h = ParseHandle(f.handle);
    if (!h.ok()) return h.status();
    sel.set_handle(*h);
  }
  for (const std::string& k : SplitCommas(f.kinds)) {
    absl::StatusOr<v1::OpKind> kind = ParseEnum<v1::OpKind>(k, "kind");
    if (!kind.ok()) return kind.status();
    sel.add_kinds(*kind);
  }
  for (const std::string& s : SplitCommas(f.states)) {
    absl::StatusOr<v1::OpState> state = ParseEnum<v1::OpState>(s, "state");
    if (!state.ok()) return state.status();
    // Watch matches the state an event finds the op in: any state can.
    const bool want_terminal = use == SelectorUse::kHistory;
    if (use != SelectorUse::kWatch && IsInFlight(*state) == want_terminal) {
      return absl::InvalidArgumentError(
          "state \"" + s + "\" never matches here: " +
          (want_terminal ? "history holds finished operations (completed, cancelled, timed_out, "
                           "failed)"
                         : "only in-flight states apply (queued, dispatched, running)"));
    }
    sel.add_states(*state);
  }
  if (!f.backend.empty()) {
    absl::StatusOr<v1::Backend> b = ParseEnum<v1::Backend>(f.backend, "backend");
    if (!b.ok()) return b.status();
    sel.set_backend(*b);
  }
  if (!f.older_than.empty()) {
    absl::StatusOr<std::chrono::microseconds> d = ParseDuration(f.older_than);
    if (!d.ok()) return d.status();
    // The API counts in ms; round up so "--older-than 1500us" does not
    // select ops younger than asked.
    sel.set_older_than_ms(static_cast<uint64_t>((d->count() + 999) / 1000));
  }
  if (use == SelectorUse::kCancel) {
    bool criteria = HasCriteria(f);
    if (f.all && criteria) {
      return absl::InvalidArgumentError(
          "--all cancels everything; it cannot be combined with "
          "other selectors");
    }
    if (!f.all && !criteria) {
      return absl::InvalidArgumentError(
          "nothing selected: give OP_IDs, a selector (--session, "
          "--client, --kind, --state, --backend, --older-than, "
          "--handle), or --all to cancel everything");
    }
    sel.set_all(f.all);
  }
  return sel;
}

}  // namespace asyncd::ctl
