#include "client/ctl/connection.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/stub_options.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <future>

#include "asyncd/connection.h"

namespace asyncd::ctl {
namespace {

// Responses (a page of 1000 ops, a 1 MiB read) can exceed gRPC's 4 MiB
// default; the daemon's own cap is max_message_bytes (16 MiB by default).
constexpr int kMaxReceiveBytes = 64 << 20;

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

std::string ByteBufferToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

}  // namespace

std::string SocketTarget(const std::string& path) { return "unix:" + path; }

Connection::Connection(std::string target, std::string display, std::chrono::microseconds timeout,
                       const client::TlsOptions* tls)
    : target_(std::move(target)), display_(std::move(display)), timeout_(timeout) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxReceiveBytes);
  // A CLI run is short: do not wait out reconnect backoff between calls.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  const client::TlsOptions no_tls;
  channel_ = grpc::CreateCustomChannel(
      target_, client::ChannelCredentialsFor(target_, tls != nullptr ? *tls : no_tls), args);
  stub_ = v1::Asyncd::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Connection::NewContext(CallKind kind,
                                                            std::chrono::microseconds extra) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (kind == CallKind::kUnary) {
    ctx->set_deadline(std::chrono::system_clock::now() + timeout_ + extra);
  }
  return ctx;
}

grpc::Status Connection::CheckHealth(const std::string& service, HealthStatus* status) {
  // HealthCheckRequest { string service = 1; }
  std::string request_bytes;
  {
    google::protobuf::io::StringOutputStream raw(&request_bytes);
    google::protobuf::io::CodedOutputStream out(&raw);
    if (!service.empty()) {
      out.WriteTag(google::protobuf::internal::WireFormatLite::MakeTag(
          1, google::protobuf::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
      out.WriteVarint32(static_cast<uint32_t>(service.size()));
      out.WriteString(service);
    }
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::GenericStub generic(channel_);
  std::unique_ptr<grpc::ClientContext> ctx = NewContext();
  std::promise<grpc::Status> done;
  generic.UnaryCall(ctx.get(), "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status result = done.get_future().get();
  if (!result.ok()) return result;
  // HealthCheckResponse { ServingStatus status = 1; } (unknown fields skipped)
  std::string bytes = ByteBufferToString(response);
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  *status = HealthStatus::kUnknown;
  while (uint32_t tag = in.ReadTag()) {
    if (tag == google::protobuf::internal::WireFormatLite::MakeTag(
                   1, google::protobuf::internal::WireFormatLite::WIRETYPE_VARINT)) {
      uint32_t value = 0;
      if (!in.ReadVarint32(&value)) break;
      *status = value <= 3 ? static_cast<HealthStatus>(value) : HealthStatus::kUnknown;
    } else if (!google::protobuf::internal::WireFormatLite::SkipField(&in, tag)) {
      return grpc::Status(grpc::StatusCode::INTERNAL, "malformed HealthCheckResponse");
    }
  }
  return grpc::Status::OK;
}

CliError Connection::Error(const grpc::Status& status, std::string_view what) const {
  grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/false);
  Transport transport =
      state == GRPC_CHANNEL_READY ? Transport::kConnected : Transport::kNotConnected;
  ExitCode code = ExitCodeForRpc(status.error_code(), transport);
  if (code == ExitCode::kUnreachable) {
    std::string why;
    if (std::string path = UnixPath(target_); !path.empty()) why = ProbeUnixSocket(path);
    if (why.empty()) {
      why = std::string(StatusCodeName(status.error_code())) + ": " + status.error_message();
    }
    return {code, "cannot reach asyncd at " + display_ + ": " + why};
  }
  std::string message = std::string(what) + ": " +
                        std::string(StatusCodeName(status.error_code())) + ": " +
                        status.error_message();
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE &&
      status.error_message().find("drain") == std::string::npos) {
    message += " (the daemon at " + display_ + " is draining or shutting down)";
  }
  return {code, message};
}

}  // namespace asyncd::ctl
