// asyncctl drain: stop accepting work and wait for in-flight operations.

#include "client/ctl/command.h"
#include "client/ctl/duration.h"
#include "client/ctl/interrupt.h"

namespace asyncd::ctl {
namespace {

int RunDrain(Env& env, const std::string& grace_text) {
  absl::StatusOr<Daemon*> daemon = env.Single("drain");
  if (!daemon.ok()) return UsageError(daemon.status());
  absl::StatusOr<std::chrono::microseconds> grace = ParseDuration(grace_text);
  if (!grace.ok()) return UsageError(grace.status());
  // 0 would mean the daemon's default (10s); ask for the least it takes.
  int64_t grace_ms = std::max<int64_t>(1, (grace->count() + 999) / 1000);
  if (grace_ms > 3600000) {
    return UsageError(absl::InvalidArgumentError("--grace: at most 1h"));
  }
  client::CallCanceller canceller;
  // Ctrl-C stops waiting; the drain goes on in the daemon.
  InterruptScope scope([&canceller] { canceller.Cancel(); });
  // The drain may take its grace by design; --timeout bounds the rest.
  absl::StatusOr<v1::DrainResponse> response = (*daemon)->client().Drain(
      static_cast<uint32_t>(grace_ms),
      {.extra_time = std::chrono::milliseconds(grace_ms), .canceller = &canceller});
  if (!response.ok()) {
    CliError error = (*daemon)->Error(response.status(), "drain");
    if (Interrupted() || response.status().code() == absl::StatusCode::kDeadlineExceeded) {
      error.message += " (the drain goes on in the daemon)";
    }
    return Report(error);
  }
  env.printer().Drain(*response);
  return 0;
}

}  // namespace

void AddDrainCommand(CLI::App& app, Action* action) {
  auto grace = std::make_shared<std::string>("10s");
  CLI::App* drain = app.add_subcommand(
      "drain",
      "Drain the daemon (admin): refuse new work, cancel waits at once, give bounded "
      "operations --grace to finish, then cancel them; waits until all have ended. The "
      "daemon then exits; prints where the manifest of what was in flight is");
  drain->add_option("--grace", *grace, "How long bounded operations may take, e.g. 10s")
      ->default_str("10s");
  drain->callback(
      [action, grace] { *action = [grace](Env& env) { return RunDrain(env, *grace); }; });
}

}  // namespace asyncd::ctl
