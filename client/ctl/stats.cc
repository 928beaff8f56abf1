// asyncctl stats: daemon counters and capabilities (fleet-capable).

#include "client/ctl/command.h"

namespace asyncd::ctl {
namespace {

int RunStats(Env& env) {
  std::function<absl::StatusOr<v1::Stats>(client::Client&)> call = [](client::Client& c) {
    return c.GetStats();
  };
  std::vector<TargetResult<v1::Stats>> results;
  ExitCode code = ForEachDaemon(env, "stats", call, &results);
  env.printer().Stats(results);
  return ToInt(code);
}

}  // namespace

void AddStatsCommand(CLI::App& app, Action* action) {
  CLI::App* stats = app.add_subcommand(
      "stats", "Daemon counters, io_uring capabilities and latency per kind (-o wide: limits)");
  stats->callback([action] { *action = RunStats; });
}

}  // namespace asyncd::ctl
