// asyncctl health: the standard grpc.health.v1 Health/Check (fleet-capable).

#include "client/ctl/command.h"

namespace asyncd::ctl {
namespace {

int RunHealth(Env& env, const std::string& service) {
  std::function<absl::StatusOr<client::HealthStatus>(client::Client&)> call =
      [&service](client::Client& c) { return c.CheckHealth(service); };
  std::vector<TargetResult<client::HealthStatus>> results;
  ExitCode code = ForEachDaemon(env, "health", call, &results);
  env.printer().Health(results);
  for (const auto& r : results) {
    if (!r.error && r.response != client::HealthStatus::kServing) {
      code = Worse(code, ExitCode::kOpError);
    }
  }
  return ToInt(code);
}

}  // namespace

void AddHealthCommand(CLI::App& app, Action* action) {
  auto service = std::make_shared<std::string>();
  CLI::App* health = app.add_subcommand(
      "health", "gRPC health check; exit 0 only if SERVING (1 otherwise, 3 if unreachable)");
  health->add_option("--service", *service,
                     "Service to check (default: the server as a whole; e.g. asyncd.v1.Asyncd)");
  health->callback(
      [action, service] { *action = [service](Env& env) { return RunHealth(env, *service); }; });
}

}  // namespace asyncd::ctl
