#pragma once

// What asyncctl's commands share: the global flags, the run-time Env built
// from them, and the registration function of each noun (one file each:
// ops.cc, sessions.cc, stats.cc, drain.cc, checkpoint.cc, health.cc,
// submit.cc).

#include <CLI/CLI.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "asyncd/unary_client.h"
#include "client/ctl/daemon.h"
#include "client/ctl/exit_code.h"
#include "client/ctl/printer.h"

namespace asyncd::ctl {

/// The global flags as parsed by CLI11.
struct GlobalFlags {
  std::vector<std::string> sockets;  // --socket PATH (repeatable)
  std::vector<std::string> targets;  // --target ADDR (repeatable)
  std::string tls_ca;                // --tls-ca FILE: TLS for --target (TCP) daemons
  std::string tls_cert;              // --tls-cert FILE: client certificate (mutual TLS)
  std::string tls_key;               // --tls-key FILE
  std::string timeout = "5s";        // --timeout
  std::string output = "table";      // -o
};

/// Everything a command needs to run, resolved from GlobalFlags after parsing.
class Env {
 public:
  /// Resolves the flags: the daemons to talk to (--socket paths, then
  /// --target addresses; neither: client::DefaultSocketPath(), i.e.
  /// $ASYNCD_SOCKET, a listening per-user daemon, else the system one), the
  /// timeout, the printer. Errors: usage.
  static absl::StatusOr<std::unique_ptr<Env>> Create(const GlobalFlags& flags);

  std::vector<std::unique_ptr<Daemon>>& daemons() { return daemons_; }
  bool multi() const { return daemons_.size() > 1; }

  /// The one daemon for commands whose arguments (op ids, session ids,
  /// handles) only mean something to one daemon. Usage error if several
  /// were given.
  [[nodiscard]] absl::StatusOr<Daemon*> Single(std::string_view command);

  Printer& printer() { return *printer_; }
  OutputFormat format() const { return format_; }
  std::chrono::microseconds timeout() const { return timeout_; }

 private:
  std::vector<std::unique_ptr<Daemon>> daemons_;
  std::unique_ptr<Printer> printer_;
  OutputFormat format_ = OutputFormat::kTable;
  std::chrono::microseconds timeout_{0};
};

/// A chosen command, run after parsing; returns the process exit code.
using Action = std::function<int(Env&)>;

/// Each noun adds its subcommands to `app`; the callback of the one the user
/// chose stores its action in `*action`.
void AddOpsCommand(CLI::App& app, Action* action);
void AddSessionsCommand(CLI::App& app, Action* action);
void AddStatsCommand(CLI::App& app, Action* action);
void AddDrainCommand(CLI::App& app, Action* action);
void AddCheckpointCommand(CLI::App& app, Action* action);
void AddHealthCommand(CLI::App& app, Action* action);
void AddSubmitCommand(CLI::App& app, Action* action);

/// Reports a usage error found after parsing (bad duration, conflicting
/// selectors) and returns 2.
int UsageError(const absl::Status& status);

/// Runs `call` against every daemon's client (in parallel when several),
/// collecting each answer or its classified error (reported on stderr at
/// once, one line per daemon). Returns the worst exit code. `call` must be
/// thread-safe across distinct clients.
template <typename Response>
ExitCode ForEachDaemon(Env& env, std::string_view what,
                       const std::function<absl::StatusOr<Response>(client::Client&)>& call,
                       std::vector<TargetResult<Response>>* results) {
  auto& daemons = env.daemons();
  results->assign(daemons.size(), {});
  std::vector<absl::Status> statuses(daemons.size());
  auto run = [&](size_t i) {
    (*results)[i].target = daemons[i]->display();
    absl::StatusOr<Response> response = call(daemons[i]->client());
    if (response.ok()) {
      (*results)[i].response = *std::move(response);
    } else {
      statuses[i] = response.status();
    }
  };
  if (daemons.size() == 1) {
    run(0);
  } else {
    std::vector<std::thread> threads;
    for (size_t i = 0; i < daemons.size(); ++i) threads.emplace_back(run, i);
    for (auto& t : threads) t.join();
  }
  ExitCode worst = ExitCode::kOk;
  for (size_t i = 0; i < daemons.size(); ++i) {
    if (statuses[i].ok()) continue;
    CliError error = daemons[i]->Error(statuses[i], what);
    if (env.multi() && error.code != ExitCode::kUnreachable) {
      error.message = daemons[i]->display() + ": " + error.message;
    }
    Report(error);
    worst = Worse(worst, error.code);
    (*results)[i].error = std::move(error);
  }
  return worst;
}

}  // namespace asyncd::ctl
