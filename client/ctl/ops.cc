// asyncctl ops: list, get, cancel, watch, history — the in-flight registry.

#include <unistd.h>

#include <iostream>

#include "client/ctl/command.h"
#include "client/ctl/duration.h"
#include "client/ctl/format.h"
#include "client/ctl/interrupt.h"
#include "client/ctl/selector.h"

namespace asyncd::ctl {
namespace {

constexpr uint32_t kMaxPage = 1000;  // the API's page/limit cap

// Adds the filter flags shared by list, history, watch and cancel.
void AddSelectorFlags(CLI::App* cmd, SelectorFlags* f, SelectorUse use) {
  std::string states = use == SelectorUse::kHistory ? "completed, cancelled, timed_out, failed"
                                                    : "queued, dispatched, running";
  cmd->add_option("--session", f->session, "Only this session's operations (id, 0x.. or decimal)");
  cmd->add_option("--client", f->client, "Only sessions with this exact client name");
  cmd->add_option("--kind", f->kinds,
                  "Only these kinds (repeatable or comma-separated): " +
                      EnumChoices(google::protobuf::GetEnumDescriptor<v1::OpKind>()))
      ->delimiter(',');
  cmd->add_option("--state", f->states, "Only these states (repeatable): " + states)
      ->delimiter(',');
  cmd->add_option("--backend", f->backend, "Only this backend: io_uring, thread_pool, inline");
  cmd->add_option("--older-than", f->older_than,
                  "Only operations at least this old, e.g. 30s, 500ms, 2m");
  cmd->add_option("--handle", f->handle, "Only operations on this handle (needs --session)");
}

// --- ops list ----------------------------------------------------------------

struct ListFlags {
  SelectorFlags selector;
  uint64_t limit = 0;
  bool watch = false;
  std::string interval = "1s";
};

int RunList(Env& env, const ListFlags& f) {
  absl::StatusOr<v1::OpSelector> selector = BuildSelector(f.selector, SelectorUse::kList);
  if (!selector.ok()) return UsageError(selector.status());
  absl::StatusOr<std::chrono::microseconds> interval = ParseDuration(f.interval);
  if (!interval.ok()) return UsageError(interval.status());
  if (interval->count() == 0)
    return UsageError(absl::InvalidArgumentError("--interval must be > 0"));
  std::function<absl::StatusOr<v1::ListOperationsResponse>(client::Client&)> call =
      [&](client::Client& c) { return c.ListAllPages(*selector, f.limit); };
  std::vector<TargetResult<v1::ListOperationsResponse>> results;
  if (!f.watch) {
    ExitCode code = ForEachDaemon(env, "ops list", call, &results);
    env.printer().Operations(results);
    return ToInt(code);
  }
  // --watch: refresh until Ctrl-C; errors are reported and watching goes on.
  InterruptScope scope([] {});
  bool tty = isatty(STDOUT_FILENO) == 1 && env.format() != OutputFormat::kJson;
  do {
    if (tty) std::cout << "\033[H\033[2J";  // home + clear, as watch(1)
    if (env.format() != OutputFormat::kJson) {
      std::cout << "Every " << FormatDuration(*interval) << ": asyncctl ops list  ("
                << FormatTimestamp(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count())
                << ")\n\n";
    }
    ForEachDaemon(env, "ops list", call, &results);
    env.printer().Operations(results);
    std::cout << std::flush;
  } while (SleepUnlessInterrupted(*interval));
  return 0;
}

// --- ops get -----------------------------------------------------------------

int RunGet(Env& env, const std::string& id_text, bool timeline) {
  absl::StatusOr<Daemon*> daemon = env.Single("ops get");
  if (!daemon.ok()) return UsageError(daemon.status());
  absl::StatusOr<uint64_t> id = ParseId(id_text, "op id");
  if (!id.ok()) return UsageError(id.status());
  absl::StatusOr<v1::OperationInfo> op = (*daemon)->client().GetOperation(*id);
  if (!op.ok()) return Report((*daemon)->Error(op.status(), "ops get " + FormatOpId(*id)));
  env.printer().Operation(*op, timeline);
  return 0;
}

// --- ops cancel --------------------------------------------------------------

struct CancelFlags {
  std::vector<std::string> ids;
  SelectorFlags selector;
};

void AddCounts(v1::CancelCounts* into, const v1::CancelCounts& c) {
  into->set_cancelled(into->cancelled() + c.cancelled());
  into->set_not_cancellable(into->not_cancellable() + c.not_cancellable());
  into->set_already_done(into->already_done() + c.already_done());
  into->set_not_found(into->not_found() + c.not_found());
}

int RunCancel(Env& env, const CancelFlags& f) {
  absl::StatusOr<Daemon*> daemon = env.Single("ops cancel");
  if (!daemon.ok()) return UsageError(daemon.status());
  Daemon& d = **daemon;
  v1::CancelResponse merged;
  ExitCode code = ExitCode::kOk;
  if (!f.ids.empty()) {
    if (HasCriteria(f.selector) || f.selector.all) {
      return UsageError(
          absl::InvalidArgumentError("give either OP_IDs or selectors (--session, --kind, "
                                     "--older-than, --all, ...), not both"));
    }
    std::vector<uint64_t> ids;
    for (const std::string& text : f.ids) {
      absl::StatusOr<uint64_t> id = ParseId(text, "op id");
      if (!id.ok()) return UsageError(id.status());
      ids.push_back(*id);
    }
    for (uint64_t id : ids) {
      absl::StatusOr<v1::CancelResponse> response = d.client().Cancel(id);
      if (!response.ok()) {
        CliError error = d.Error(response.status(), "ops cancel " + FormatOpId(id));
        Report(error);
        if (error.code == ExitCode::kUnreachable) return ToInt(error.code);
        code = Worse(code, error.code);
        continue;
      }
      for (const auto& o : response->outcomes()) *merged.add_outcomes() = o;
      AddCounts(merged.mutable_counts(), response->counts());
    }
    // Naming an op that is gone, or whose cancel was refused, is an error
    // for the caller to see; one that already finished is not.
    if (merged.counts().not_found() > 0 || merged.counts().not_cancellable() > 0) {
      code = Worse(code, ExitCode::kOpError);
    }
  } else {
    absl::StatusOr<v1::OpSelector> selector = BuildSelector(f.selector, SelectorUse::kCancel);
    if (!selector.ok()) return UsageError(selector.status());
    absl::StatusOr<v1::CancelResponse> response = d.client().Cancel(*selector);
    if (!response.ok()) return Report(d.Error(response.status(), "ops cancel"));
    merged = *std::move(response);
    if (merged.counts().not_cancellable() > 0) code = ExitCode::kOpError;
  }
  env.printer().Cancel(merged);
  if (merged.counts().not_cancellable() > 0 && env.format() != OutputFormat::kJson) {
    std::cerr << "asyncctl: " << merged.counts().not_cancellable()
              << " operation(s) not cancellable: already started a syscall that is unsafe to "
                 "interrupt; they will complete normally"
              << std::endl;
  }
  return ToInt(code);
}

// --- ops watch ---------------------------------------------------------------

struct WatchFlags {
  SelectorFlags selector;
  std::vector<std::string> types;
  uint64_t count = 0;
};

int RunWatch(Env& env, const WatchFlags& f) {
  absl::StatusOr<Daemon*> daemon = env.Single("ops watch");
  if (!daemon.ok()) return UsageError(daemon.status());
  Daemon& d = **daemon;
  absl::StatusOr<v1::OpSelector> selector = BuildSelector(f.selector, SelectorUse::kWatch);
  if (!selector.ok()) return UsageError(selector.status());
  std::vector<v1::EventType> types;
  for (const std::string& t : f.types) {
    absl::StatusOr<v1::EventType> type = ParseEnum<v1::EventType>(t, "event type");
    if (!type.ok()) return UsageError(type.status());
    types.push_back(*type);
  }
  client::CallCanceller canceller;
  InterruptScope scope([&canceller] { canceller.Cancel(); });
  uint64_t seen = 0;
  absl::Status status = d.client().Watch(*selector, types,
                                         [&](const v1::WatchEvent& event) {
                                           env.printer().Event(event);
                                           return f.count != 0 && ++seen >= f.count
                                                      ? client::WatchNext::kStop
                                                      : client::WatchNext::kContinue;
                                         },
                                         {.canceller = &canceller});
  if (Interrupted() || status.ok()) return 0;
  return Report(d.Error(status, "ops watch"));
}

// --- ops history -------------------------------------------------------------

struct HistoryFlags {
  SelectorFlags selector;
  bool slowest = false;
  uint32_t limit = 0;
};

int RunHistory(Env& env, const HistoryFlags& f) {
  absl::StatusOr<v1::OpSelector> selector = BuildSelector(f.selector, SelectorUse::kHistory);
  if (!selector.ok()) return UsageError(selector.status());
  const client::HistoryOrder order =
      f.slowest ? client::HistoryOrder::kSlowestFirst : client::HistoryOrder::kMostRecentFirst;
  std::function<absl::StatusOr<v1::ListHistoryResponse>(client::Client&)> call =
      [&](client::Client& c) -> absl::StatusOr<v1::ListHistoryResponse> {
    absl::StatusOr<std::vector<v1::OperationInfo>> ops = c.ListHistory(*selector, f.limit, order);
    if (!ops.ok()) return ops.status();
    v1::ListHistoryResponse response;
    for (v1::OperationInfo& op : *ops) *response.add_ops() = std::move(op);
    return response;
  };
  std::vector<TargetResult<v1::ListHistoryResponse>> results;
  ExitCode code = ForEachDaemon(env, "ops history", call, &results);
  env.printer().History(results);
  return ToInt(code);
}

}  // namespace

void AddOpsCommand(CLI::App& app, Action* action) {
  CLI::App* ops =
      app.add_subcommand("ops", "In-flight operations: list, get, cancel, watch, history");
  ops->require_subcommand(1);

  auto list_flags = std::make_shared<ListFlags>();
  CLI::App* list = ops->add_subcommand("list", "List in-flight operations (oldest first)");
  list->alias("ls");
  AddSelectorFlags(list, &list_flags->selector, SelectorUse::kList);
  list->add_option("--limit", list_flags->limit, "Show at most N operations (0 = all)");
  list->add_flag("-w,--watch", list_flags->watch, "Refresh every --interval until Ctrl-C");
  list->add_option("--interval", list_flags->interval, "Refresh period for --watch")
      ->default_str("1s");
  list->callback([action, list_flags] {
    *action = [list_flags](Env& env) { return RunList(env, *list_flags); };
  });

  auto get_id = std::make_shared<std::string>();
  auto get_timeline = std::make_shared<bool>(false);
  CLI::App* get = ops->add_subcommand("get", "Show one operation (in flight or in the history)");
  get->add_option("OP_ID", *get_id, "Operation id (0x.. hex or decimal)")->required();
  get->add_flag("-t,--timeline", *get_timeline, "Show its event timeline");
  get->callback([action, get_id, get_timeline] {
    *action = [get_id, get_timeline](Env& env) { return RunGet(env, *get_id, *get_timeline); };
  });

  auto cancel_flags = std::make_shared<CancelFlags>();
  CLI::App* cancel = ops->add_subcommand(
      "cancel",
      "Cancel operations by id, or every in-flight one matching selectors. Prints each "
      "outcome and the counts; exit 1 if one was not found or refused (not cancellable)");
  cancel->add_option("OP_ID", cancel_flags->ids, "Operation ids (0x.. hex or decimal)");
  AddSelectorFlags(cancel, &cancel_flags->selector, SelectorUse::kCancel);
  cancel->add_flag("--all", cancel_flags->selector.all,
                   "Cancel every in-flight operation you may see (required when no other "
                   "selector is given)");
  cancel->callback([action, cancel_flags] {
    *action = [cancel_flags](Env& env) { return RunCancel(env, *cancel_flags); };
  });

  auto watch_flags = std::make_shared<WatchFlags>();
  CLI::App* watch = ops->add_subcommand(
      "watch", "Stream operation events as they happen, until Ctrl-C or --count");
  AddSelectorFlags(watch, &watch_flags->selector, SelectorUse::kWatch);
  watch
      ->add_option("--types", watch_flags->types,
                   "Only these event types (repeatable or comma-separated): " +
                       EnumChoices(google::protobuf::GetEnumDescriptor<v1::EventType>()))
      ->delimiter(',');
  watch->add_option("--count", watch_flags->count, "Stop after N events (0 = never)");
  watch->callback([action, watch_flags] {
    *action = [watch_flags](Env& env) { return RunWatch(env, *watch_flags); };
  });

  auto history_flags = std::make_shared<HistoryFlags>();
  CLI::App* history = ops->add_subcommand(
      "history", "List recently finished operations (most recent first), or the slowest");
  AddSelectorFlags(history, &history_flags->selector, SelectorUse::kHistory);
  history->add_flag("--slowest", history_flags->slowest,
                    "The slowest operations since start instead of the most recent");
  history->add_option("--limit", history_flags->limit, "At most N (0 = 100; max 1000)")
      ->check(CLI::Range(0u, kMaxPage));
  history->callback([action, history_flags] {
    *action = [history_flags](Env& env) { return RunHistory(env, *history_flags); };
  });
}

}  // namespace asyncd::ctl
