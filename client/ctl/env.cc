#include <iostream>

#include "absl/status/status.h"
#include "asyncd/connection.h"
#include "client/ctl/command.h"
#include "client/ctl/duration.h"

namespace asyncd::ctl {
namespace {

// --socket is always a unix socket path, even one that looks like host:port.
std::string SocketTarget(const std::string& path) { return "unix:" + path; }

}  // namespace

absl::StatusOr<std::unique_ptr<Env>> Env::Create(const GlobalFlags& flags) {
  auto env = std::make_unique<Env>();
  absl::StatusOr<std::chrono::microseconds> timeout = ParseDuration(flags.timeout);
  if (!timeout.ok())
    return absl::InvalidArgumentError("--timeout: " + std::string(timeout.status().message()));
  if (timeout->count() == 0) return absl::InvalidArgumentError("--timeout must be > 0");
  env->timeout_ = *timeout;
  absl::StatusOr<OutputFormat> format = ParseOutputFormat(flags.output);
  if (!format.ok()) return format.status();
  env->format_ = *format;
  for (const std::string& path : flags.sockets) {
    if (path.empty()) return absl::InvalidArgumentError("--socket: empty path");
    env->daemons_.push_back(std::make_unique<Daemon>(SocketTarget(path), path, env->timeout_));
  }
  client::TlsOptions tls;
  if (!flags.tls_ca.empty() || !flags.tls_cert.empty() || !flags.tls_key.empty()) {
    absl::StatusOr<client::TlsOptions> read =
        client::ReadTls(flags.tls_ca, flags.tls_cert, flags.tls_key);
    if (!read.ok()) return absl::InvalidArgumentError(std::string(read.status().message()));
    tls = *std::move(read);
  }
  for (const std::string& target : flags.targets) {
    if (target.empty()) return absl::InvalidArgumentError("--target: empty address");
    env->daemons_.push_back(std::make_unique<Daemon>(target, target, env->timeout_, tls));
  }
  if (env->daemons_.empty()) {
    // The library's default: $ASYNCD_SOCKET, a listening per-user daemon,
    // else the system one.
    env->daemons_.push_back(
        std::make_unique<Daemon>(/*target=*/"", client::DefaultSocketPath(), env->timeout_));
  }
  env->printer_ = NewPrinter(env->format_, std::cout, env->multi());
  return env;
}

absl::StatusOr<Daemon*> Env::Single(std::string_view command) {
  if (daemons_.size() != 1) {
    return absl::InvalidArgumentError(std::string(command) +
                                      " talks to one daemon; give one --socket or --target "
                                      "(several are for list, history, stats and health)");
  }
  return daemons_.front().get();
}

int UsageError(const absl::Status& status) {
  return Report({ExitCode::kUsage, std::string(status.message()) + " (see --help)"});
}

}  // namespace asyncd::ctl
