// The standard gRPC health check (grpc.health.v1.Health/Check). Debian's
// gRPC ships no generated health stubs, and the messages are two scalar
// fields: they are encoded by hand over a generic stub.
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/stub_options.h>

#include <future>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "asyncd/unary_client.h"

namespace asyncd::client {
namespace {

using google::protobuf::internal::WireFormatLite;

std::string ByteBufferToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

}  // namespace

std::string_view HealthStatusName(HealthStatus status) {
  switch (status) {
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

absl::StatusOr<HealthStatus> Client::CheckHealth(std::string_view service) {
  // HealthCheckRequest { string service = 1; }
  std::string request_bytes;
  {
    google::protobuf::io::StringOutputStream raw(&request_bytes);
    google::protobuf::io::CodedOutputStream out(&raw);
    if (!service.empty()) {
      out.WriteTag(WireFormatLite::MakeTag(1, WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
      out.WriteVarint32(static_cast<uint32_t>(service.size()));
      out.WriteRaw(service.data(), static_cast<int>(service.size()));
    }
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::GenericStub generic(channel_);
  grpc::ClientContext context;
  const CallOptions options;
  if (!Prepare(context, DeadlineFor(options), options))
    return absl::CancelledError("cancelled before the call");
  absl::Cleanup unbind = [&] { Unbind(context, options); };
  std::promise<grpc::Status> done;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&done](grpc::Status s) { done.set_value(std::move(s)); });
  if (grpc::Status status = done.get_future().get(); !status.ok()) return ToAbslStatus(status);
  // HealthCheckResponse { ServingStatus status = 1; } (unknown fields skipped)
  const std::string bytes = ByteBufferToString(response);
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  HealthStatus result = HealthStatus::kUnknown;
  while (uint32_t tag = in.ReadTag()) {
    if (tag == WireFormatLite::MakeTag(1, WireFormatLite::WIRETYPE_VARINT)) {
      uint32_t value = 0;
      if (!in.ReadVarint32(&value)) break;
      result = value <= 3 ? static_cast<HealthStatus>(value) : HealthStatus::kUnknown;
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return absl::InternalError("malformed HealthCheckResponse");
    }
  }
  return result;
}

}  // namespace asyncd::client
