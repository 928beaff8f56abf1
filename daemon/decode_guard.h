#pragma once

#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <vector>

namespace asyncd::daemon {

/// gRPC answers a request that does not decode (bytes of another message,
/// or a proto3 string that is not UTF-8) with UNIMPLEMENTED, as if the
/// method did not exist. This interceptor notes the failed decode and turns
/// the call's status into INVALID_ARGUMENT, naming the method: bad input
/// gets a precise status. Unary and server-streaming calls only: on a client
/// stream gRPC reports a message that does not decode as the stream's end.
/// It costs a flag test per received message.
class DecodeGuardFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;
};

/// The interceptor creators to give grpc::ServerBuilder.
std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
DecodeGuardCreators();

}  // namespace asyncd::daemon
