// asyncctl sessions: list, open, close, keepalive.
//
// `sessions open` exists for trying the daemon by hand: handles are
// session-scoped, so a multi-step `submit` sequence (open, then read the
// handle) must run in one long-lived session, passed as --session ID.

#include "client/ctl/command.h"
#include "client/ctl/duration.h"
#include "client/ctl/format.h"

namespace asyncd::ctl {
namespace {

int RunList(Env& env) {
  std::function<absl::StatusOr<v1::ListSessionsResponse>(client::Client&)> call =
      [](client::Client& c) -> absl::StatusOr<v1::ListSessionsResponse> {
    absl::StatusOr<std::vector<v1::SessionInfo>> sessions = c.ListSessions();
    if (!sessions.ok()) return sessions.status();
    v1::ListSessionsResponse response;
    for (v1::SessionInfo& s : *sessions) *response.add_sessions() = std::move(s);
    return response;
  };
  std::vector<TargetResult<v1::ListSessionsResponse>> results;
  ExitCode code = ForEachDaemon(env, "sessions list", call, &results);
  env.printer().Sessions(results);
  return ToInt(code);
}

struct OpenFlags {
  std::string lease = "10m";
  std::string name = "asyncctl";
};

int RunOpen(Env& env, const OpenFlags& f) {
  absl::StatusOr<Daemon*> daemon = env.Single("sessions open");
  if (!daemon.ok()) return UsageError(daemon.status());
  absl::StatusOr<std::chrono::microseconds> lease = ParseDuration(f.lease);
  if (!lease.ok()) return UsageError(lease.status());
  const auto lease_ms = static_cast<uint32_t>(
      std::min<int64_t>(lease->count() / 1000, std::numeric_limits<uint32_t>::max()));
  v1::OpenSessionResponse response;
  absl::StatusOr<uint64_t> id = (*daemon)->client().OpenSession(f.name, lease_ms, &response);
  if (!id.ok()) return Report((*daemon)->Error(id.status(), "sessions open"));
  env.printer().SessionOpened(response);
  return 0;
}

int RunClose(Env& env, const std::vector<std::string>& ids) {
  absl::StatusOr<Daemon*> daemon = env.Single("sessions close");
  if (!daemon.ok()) return UsageError(daemon.status());
  std::vector<uint64_t> parsed;
  for (const std::string& text : ids) {
    absl::StatusOr<uint64_t> id = ParseId(text, "session id");
    if (!id.ok()) return UsageError(id.status());
    parsed.push_back(*id);
  }
  ExitCode code = ExitCode::kOk;
  for (uint64_t id : parsed) {
    absl::StatusOr<v1::CancelCounts> counts = (*daemon)->client().CloseSession(id);
    if (!counts.ok()) {
      CliError error = (*daemon)->Error(counts.status(), "sessions close " + std::to_string(id));
      Report(error);
      if (error.code == ExitCode::kUnreachable) return ToInt(error.code);
      code = Worse(code, error.code);
      continue;
    }
    v1::CloseSessionResponse response;
    *response.mutable_counts() = *std::move(counts);
    env.printer().SessionClosed(id, response);
  }
  return ToInt(code);
}

int RunKeepAlive(Env& env, const std::string& id_text) {
  absl::StatusOr<Daemon*> daemon = env.Single("sessions keepalive");
  if (!daemon.ok()) return UsageError(daemon.status());
  absl::StatusOr<uint64_t> id = ParseId(id_text, "session id");
  if (!id.ok()) return UsageError(id.status());
  absl::StatusOr<uint32_t> lease_ms = (*daemon)->client().KeepAlive(*id);
  if (!lease_ms.ok()) return Report((*daemon)->Error(lease_ms.status(), "sessions keepalive"));
  v1::KeepAliveResponse response;
  response.set_lease_ms(*lease_ms);
  env.printer().SessionKeptAlive(*id, response);
  return 0;
}

}  // namespace

void AddSessionsCommand(CLI::App& app, Action* action) {
  CLI::App* sessions = app.add_subcommand("sessions", "Sessions: list, open, close, keepalive");
  sessions->require_subcommand(1);

  CLI::App* list = sessions->add_subcommand("list", "List live sessions");
  list->alias("ls");
  list->callback([action] { *action = RunList; });

  auto open_flags = std::make_shared<OpenFlags>();
  CLI::App* open = sessions->add_subcommand(
      "open",
      "Open a session and print its id, for `submit --session ID` (handles live in a session). "
      "It ends after --lease without a keepalive or submit, or at `sessions close`");
  open->add_option("--lease", open_flags->lease, "Lease, e.g. 30s, 10m (max 1h)")
      ->default_str("10m");
  open->add_option("--name", open_flags->name, "Client name shown in listings")
      ->default_str("asyncctl");
  open->callback([action, open_flags] {
    *action = [open_flags](Env& env) { return RunOpen(env, *open_flags); };
  });

  auto close_ids = std::make_shared<std::vector<std::string>>();
  CLI::App* close = sessions->add_subcommand(
      "close", "Close sessions: cancels their in-flight operations, closes their handles");
  close->add_option("SESSION_ID", *close_ids, "Session ids")->required();
  close->callback([action, close_ids] {
    *action = [close_ids](Env& env) { return RunClose(env, *close_ids); };
  });

  auto keep_id = std::make_shared<std::string>();
  CLI::App* keep = sessions->add_subcommand("keepalive", "Renew a session's lease");
  keep->add_option("SESSION_ID", *keep_id, "Session id")->required();
  keep->callback(
      [action, keep_id] { *action = [keep_id](Env& env) { return RunKeepAlive(env, *keep_id); }; });
}

}  // namespace asyncd::ctl
