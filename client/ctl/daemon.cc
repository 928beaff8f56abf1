#include "client/ctl/daemon.h"

#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace asyncd::ctl {
namespace {

// A CLI run is short: do not wait out gRPC's reconnect backoff between calls.
constexpr std::chrono::milliseconds kReconnectBackoff(100);

// The socket path of a "unix:" target, or "" for other schemes.
std::string UnixPath(const std::string& target) {
  constexpr std::string_view kScheme = "unix:";
  if (target.compare(0, kScheme.size(), kScheme) != 0) return "";
  std::string path = target.substr(kScheme.size());
  if (path.compare(0, 2, "//") == 0) path.erase(0, 2);  // unix:///abs -> /abs
  return path;
}

// Why a unix socket cannot be connected to, from a direct connect(2); ""
// if it can (then gRPC's own message is the better explanation).
std::string ProbeUnixSocket(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return "socket path too long";
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path.data(), path.size());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return strerror(errno);
  std::string why;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    why = errno == ENOENT ? "no socket at " + path : strerror(errno);
  }
  close(fd);
  return why;
}

}  // namespace

Daemon::Daemon(std::string_view target, std::string display, std::chrono::microseconds timeout,
               const client::TlsOptions& tls)
    : target_(client::NormalizeTarget(target)),
      display_(std::move(display)),
      client_(client::Connect(target_,
                              client::ConnectOptions{
                                  .tls = tls,
                                  .initial_reconnect_backoff = kReconnectBackoff,
                              }),
              {.default_timeout = timeout}) {}

CliError Daemon::Error(const absl::Status& status, std::string_view what) const {
  // absl::StatusCode and grpc::StatusCode share the google.rpc.Code numbering.
  const auto code = static_cast<grpc::StatusCode>(status.code());
  const std::string message(status.message());
  grpc_connectivity_state state = client_.channel()->GetState(/*try_to_connect=*/false);
  Transport transport =
      state == GRPC_CHANNEL_READY ? Transport::kConnected : Transport::kNotConnected;
  ExitCode exit_code = ExitCodeForRpc(code, transport);
  if (exit_code == ExitCode::kUnreachable) {
    std::string why;
    if (std::string path = UnixPath(target_); !path.empty()) why = ProbeUnixSocket(path);
    if (why.empty()) why = std::string(StatusCodeName(code)) + ": " + message;
    return {exit_code, "cannot reach asyncd at " + display_ + ": " + why};
  }
  std::string line = std::string(what) + ": " + std::string(StatusCodeName(code)) + ": " + message;
  if (code == grpc::StatusCode::UNAVAILABLE && message.find("drain") == std::string::npos) {
    line += " (the daemon at " + display_ + " is draining or shutting down)";
  }
  return {exit_code, line};
}

}  // namespace asyncd::ctl
