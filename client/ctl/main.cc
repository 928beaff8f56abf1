// asyncctl: the operator CLI of asyncd.
//
// Layout (after etcdctl's ctlv3/command): one file per noun (ops.cc,
// sessions.cc, stats.cc, drain.cc, health.cc, submit.cc) registering CLI11
// subcommands; output through the Printer chosen by -o (printer.h); every
// connection and RPC through the client library, asyncd::client, which
// applies the deadline (one Daemon per --socket/--target, daemon.h); fixed
// exit codes (exit_code.h).

#include <CLI/CLI.hpp>
#include <iostream>
#include <string>
#include <string_view>

#include "asyncd/connection.h"
#include "client/ctl/command.h"
#include "client/ctl/interrupt.h"

namespace asyncd::ctl {
namespace {

constexpr const char* kFooter = R"(Daemons:
  --socket PATH and --target ADDR (gRPC target, e.g. unix:/run/asyncd/asyncd.sock)
  repeat for a fleet view: ops list, ops history, sessions list, stats and
  health query every daemon and add a DAEMON column (-o json: a JSON array of
  {"target", "response"|"error"}). Other commands take exactly one daemon.
  Default: $ASYNCD_SOCKET; else, when not root, a per-user daemon's socket
  ($XDG_RUNTIME_DIR/asyncd/asyncd.sock) if one listens there; else the
  system daemon's /run/asyncd/asyncd.sock (members of group asyncd may use it).

Ids: operation ids print as 0x<hex>; ids are accepted as 0x<hex> or decimal.
Durations: 500ms, 30s, 2m, 1h30m, 1.5s, 250us, 2d.

Exit codes:
  0  ok
  1  operation error: the daemon refused or failed the request (NOT_FOUND,
     PERMISSION_DENIED, cancel refused, draining, a submitted op failed, ...)
  2  usage error (bad flag, argument or duration)
  3  cannot reach the daemon (no socket, connection refused or broken)
Errors are one line on stderr; results go to stdout.)";

int Main(int argc, char** argv) {
  InstallInterruptHandler();

  CLI::App app("asyncctl: list, inspect and cancel asyncd operations", "asyncctl");
  app.fallthrough();  // global flags may follow the subcommand (inherited)
  app.require_subcommand(1);
  app.set_version_flag("--version", "asyncctl " ASYNCD_VERSION " (API asyncd.v1)");

  // --help shows the default socket computed for whoever runs it. Only
  // then: finding it probes (and would wake) a per-user daemon's socket.
  bool wants_help = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    wants_help = wants_help || arg == "-h" || arg == "--help";
  }
  const std::string default_socket =
      wants_help ? client::DefaultSocketPath() : "(see Daemons below)";

  GlobalFlags flags;
  app.add_option("--socket", flags.sockets,
                 "Daemon unix socket (repeatable); default " + default_socket)
      ->type_name("PATH")
      ->allow_extra_args(false);
  app.add_option("--target", flags.targets, "Daemon gRPC target (repeatable)")
      ->type_name("ADDR")
      ->allow_extra_args(false);
  app.add_option("--tls-ca", flags.tls_ca,
                 "CA bundle (PEM) that signed the daemon's certificate: TLS for --target "
                 "host:port")
      ->type_name("FILE");
  app.add_option("--tls-cert", flags.tls_cert, "Client certificate (PEM) for mutual TLS")
      ->type_name("FILE");
  app.add_option("--tls-key", flags.tls_key, "Key (PEM) of --tls-cert")->type_name("FILE");
  app.add_option("--timeout", flags.timeout, "Deadline of each RPC, e.g. 5s, 500ms")
      ->type_name("DURATION")
      ->default_str("5s");
  app.add_option("-o,--output", flags.output, "Output format: table, wide or json")
      ->type_name("FORMAT")
      ->default_str("table");

  Action action;
  AddOpsCommand(app, &action);
  AddSessionsCommand(app, &action);
  AddStatsCommand(app, &action);
  AddDrainCommand(app, &action);
  AddCheckpointCommand(app, &action);
  AddHealthCommand(app, &action);
  AddSubmitCommand(app, &action);
  // Set last, so subcommands (which inherit settings at creation) do not
  // repeat it: their help shows their own flags.
  app.footer(kFooter);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return Report({ExitCode::kUsage, e.what() + std::string(" (see --help)")});
  }
  if (!action) return Report({ExitCode::kUsage, "no command given (see --help)"});

  absl::StatusOr<std::unique_ptr<Env>> env = Env::Create(flags);
  if (!env.ok()) return UsageError(env.status());
  int code = action(**env);
  std::cout << std::flush;
  return code;
}

}  // namespace
}  // namespace asyncd::ctl

int main(int argc, char** argv) { return asyncd::ctl::Main(argc, argv); }
