#pragma once

// One daemon as asyncctl names it: the asyncd::client::Client that talks to it
// (channel, TLS and the per-call deadline are the library's), the name the
// user gave it, and the classification of failed calls into exit codes.

#include <chrono>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "asyncd/connection.h"
#include "asyncd/unary_client.h"
#include "client/ctl/exit_code.h"

namespace asyncd::ctl {

class Daemon {
 public:
  /// `target` as client::Connect takes it ("" = the default socket);
  /// `display` is how the user named it (the socket path for --socket).
  /// Every call's deadline is now + `timeout`, plus the CallOptions
  /// extra_time of calls that take longer by design. `tls` applies to TCP
  /// targets only. Does not connect: gRPC connects on the first call.
  Daemon(std::string_view target, std::string display, std::chrono::microseconds timeout,
         const client::TlsOptions& tls = {});

  const std::string& display() const { return display_; }
  client::Client& client() { return client_; }

  /// Classifies a failed call: "cannot reach asyncd at <display>: <why>"
  /// (exit 3) when the transport never connected or broke, else
  /// "<what>: <CODE>: <message>" (exit 1).
  CliError Error(const absl::Status& status, std::string_view what) const;

 private:
  std::string target_;  // normalized (client::NormalizeTarget)
  std::string display_;
  client::Client client_;
};

}  // namespace asyncd::ctl
