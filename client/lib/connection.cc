#include "asyncd/connection.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/lib/string_compat.h"
#include "src/common/runtime_paths.h"

namespace asyncd::client {
namespace {

using internal::ToAbsl;

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// gRPC target schemes we pass through untouched.
constexpr std::string_view kSchemes[] = {"unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:"};

}  // namespace

namespace {

// True if something accepts connections on unix socket `path` now. A
// non-blocking connect completes at once (or EAGAIN: a full backlog) when
// a daemon listens, and is refused for a stale socket file.
bool Listening(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return false;
  std::copy(path.begin(), path.end(), addr.sun_path);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 ||
                  errno == EAGAIN;
  ::close(fd);
  return ok;
}

}  // namespace

std::string DefaultSocketPath() {
  std::string own = common::DefaultSocketPath();
  const char* env = std::getenv("ASYNCD_SOCKET");
  if (own == common::kSystemSocketPath || (env != nullptr && *env != '\0')) return own;
  // No per-user daemon: a member of group asyncd reaches the system one.
  return Listening(own) ? own : common::kSystemSocketPath;
}

std::string NormalizeTarget(std::string_view target) {
  if (target.empty()) return "unix:" + DefaultSocketPath();
  for (std::string_view scheme : kSchemes) {
    if (StartsWith(target, scheme)) return std::string(target);
  }
  if (StartsWith(target, "~/")) {
    const char* home = std::getenv("HOME");
    return absl::StrCat("unix:", home != nullptr ? home : "", ToAbsl(target.substr(1)));
  }
  // Anything with a '/' is a path ("host:port" never contains one), and so is
  // anything without a ':' (a TCP target needs a port).
  if (target.find('/') != std::string_view::npos || target.find(':') == std::string_view::npos) {
    return absl::StrCat("unix:", ToAbsl(target));
  }
  return std::string(target);
}

bool IsUnixTarget(std::string_view normalized_target) {
  return StartsWith(normalized_target, "unix:") || StartsWith(normalized_target, "unix-abstract:");
}

absl::StatusOr<TlsOptions> ReadTls(const std::string& ca_file, const std::string& cert_file,
                                   const std::string& key_file) {
  auto read = [](const char* what, const std::string& path) -> absl::StatusOr<std::string> {
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat(what, ": cannot read ", path));
    std::stringstream text;
    text << in.rdbuf();
    if (text.str().find("-----BEGIN ") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", path, " is not PEM"));
    }
    return text.str();
  };
  if (ca_file.empty()) return absl::InvalidArgumentError("TLS needs a CA file (--tls-ca)");
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its key (--tls-cert with --tls-key)");
  }
  TlsOptions tls;
  absl::StatusOr<std::string> ca = read("CA", ca_file);
  if (!ca.ok()) return ca.status();
  tls.root_certs = *std::move(ca);
  if (!cert_file.empty()) {
    absl::StatusOr<std::string> cert = read("client certificate", cert_file);
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = read("client key", key_file);
    if (!key.ok()) return key.status();
    tls.cert_chain = *std::move(cert);
    tls.private_key = *std::move(key);
  }
  return tls;
}

std::shared_ptr<grpc::ChannelCredentials> ChannelCredentialsFor(std::string_view normalized_target,
                                                                const TlsOptions& tls) {
  // Unix sockets: the daemon authenticates by SO_PEERCRED.
  if (IsUnixTarget(normalized_target) || !tls.enabled()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.root_certs;
  options.pem_cert_chain = tls.cert_chain;
  options.pem_private_key = tls.private_key;
  return grpc::SslCredentials(options);
}

std::shared_ptr<grpc::Channel> Connect(std::string_view target, const TlsOptions& tls) {
  return Connect(target, ConnectOptions{.tls = tls});
}

std::shared_ptr<grpc::Channel> Connect(std::string_view target, const ConnectOptions& options) {
  const std::string normalized = NormalizeTarget(target);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  if (options.initial_reconnect_backoff.count() > 0) {
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
                static_cast<int>(std::min<int64_t>(options.initial_reconnect_backoff.count(),
                                                   std::numeric_limits<int>::max())));
  }
  return grpc::CreateCustomChannel(normalized, ChannelCredentialsFor(normalized, options.tls),
                                   args);
}

absl::Status ToAbslStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share the google.rpc.Code numbering.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::Status CompletionToStatus(const v1::Completion& c, std::string_view what) {
  auto describe = [&](std::string_view fallback) {
    std::string msg(what);
    std::string_view detail = c.message().empty() ? fallback : std::string_view(c.message());
    if (!detail.empty()) absl::StrAppend(&msg, msg.empty() ? "" : ": ", ToAbsl(detail));
    return msg;
  };
  switch (c.outcome()) {
    case v1::OUTCOME_COMPLETED:
      if (c.error_number() == 0) return absl::OkStatus();
      return absl::ErrnoToStatus(c.error_number(), describe(c.error_name()));
    case v1::OUTCOME_CANCELLED:
      return absl::CancelledError(describe("cancelled"));
    case v1::OUTCOME_TIMED_OUT:
      return absl::DeadlineExceededError(describe("timed out"));
    case v1::OUTCOME_FAILED:
      if (c.error_number() != 0) return absl::ErrnoToStatus(c.error_number(), describe("failed"));
      return absl::InternalError(describe("failed"));
    case v1::OUTCOME_REJECTED:
      if (c.status_code() != 0) {
        return absl::Status(static_cast<absl::StatusCode>(c.status_code()), describe("rejected"));
      }
      return absl::UnknownError(describe("rejected"));
    default:
      if (c.status_code() != 0) {
        return absl::Status(static_cast<absl::StatusCode>(c.status_code()),
                            describe("outcome unknown"));
      }
      return absl::UnknownError(describe("outcome unknown"));
  }
}

}  // namespace asyncd::client
