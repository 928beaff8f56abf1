#pragma once

// One daemon as asyncctl talks to it: channel, stubs, the per-call deadline
// (applied here and nowhere else) and the classification of RPC failures
// into asyncctl's exit codes.

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/generic/generic_stub.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "asyncd/v1/asyncd.grpc.pb.h"
#include "client/ctl/exit_code.h"

namespace asyncd::client {
struct TlsOptions;
}  // namespace asyncd::client

namespace asyncd::ctl {

/// How a call's deadline is set (see Connection::NewContext).
enum class CallKind {
  /// Unary RPCs: deadline = now + --timeout (+ extra).
  kUnary,
  /// Streams that run until Ctrl-C or a count (Watch): no deadline; a
  /// transport failure still fails the first read at once (no
  /// wait-for-ready).
  kStream,
};

/// grpc.health.v1 HealthCheckResponse.ServingStatus.
enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };

inline std::string_view HealthStatusName(HealthStatus s) {
  switch (s) {
    case HealthStatus::kServing:
      return "SERVING";
    case HealthStatus::kNotServing:
      return "NOT_SERVING";
    case HealthStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
    default:
      return "UNKNOWN";
  }
}

class Connection {
 public:
  /// `target` is a gRPC target ("unix:/run/asyncd/asyncd.sock",
  /// "dns:host:port"); `display` is how the user named it (the socket path
  /// for --socket). Creating the channel does not connect.
  /// `tls` (may be null: none) applies to TCP targets only (see
  /// client::ChannelCredentialsFor); only read during construction.
  Connection(std::string target, std::string display, std::chrono::microseconds timeout,
             const client::TlsOptions* tls = nullptr);

  const std::string& target() const { return target_; }
  const std::string& display() const { return display_; }

  v1::Asyncd::Stub& stub() { return *stub_; }

  /// A context for one call. The single place asyncctl sets a deadline:
  /// kUnary calls get now + --timeout + `extra` (extra covers time the call
  /// is expected to take by design: drain's grace, a submitted timeout's
  /// duration); kStream calls get none.
  std::unique_ptr<grpc::ClientContext> NewContext(
      CallKind kind = CallKind::kUnary,
      std::chrono::microseconds extra = std::chrono::microseconds(0)) const;

  /// grpc.health.v1.Health/Check for `service` ("" = the whole server).
  /// Blocks for the call. The health messages are encoded by hand: Debian's
  /// gRPC ships no generated health stubs, and they are two scalar fields.
  grpc::Status CheckHealth(const std::string& service, HealthStatus* status);

  /// Classifies a failed call: "cannot reach asyncd at <display>: <why>"
  /// (exit 3) when the transport never connected or broke, else
  /// "<what>: <CODE>: <message>" (exit 1).
  CliError Error(const grpc::Status& status, std::string_view what) const;

 private:
  std::string target_;
  std::string display_;
  std::chrono::microseconds timeout_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Asyncd::Stub> stub_;
};

/// Turns --socket PATH into the gRPC target "unix:PATH".
std::string SocketTarget(const std::string& path);

}  // namespace asyncd::ctl
