#include "daemon/decode_guard.h"

#include <string>

namespace asyncd::daemon {
namespace {

using grpc::experimental::InterceptionHookPoints;

class DecodeGuard final : public grpc::experimental::Interceptor {
 public:
  explicit DecodeGuard(const char* method) : method_(method) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      undecodable_ = true;
    }
    if (undecodable_ &&
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      methods->ModifySendStatus(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          std::string("request: not a valid message for ") + method_ +
              " (bytes of another message, or a string field that is not UTF-8)"));
    }
    methods->Proceed();
  }

 private:
  const char* const method_;
  bool undecodable_ = false;
};

}  // namespace

grpc::experimental::Interceptor* DecodeGuardFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  // A call with one request has it or failed to decode it; on a client
  // stream a missing message is also its end, which gRPC does not tell
  // apart from a failed decode.
  using Type = grpc::experimental::ServerRpcInfo::Type;
  if (info->type() == Type::BIDI_STREAMING || info->type() == Type::CLIENT_STREAMING) {
    return nullptr;
  }
  return new DecodeGuard(info->method());
}

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
DecodeGuardCreators() {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(std::make_unique<DecodeGuardFactory>());
  return creators;
}

}  // namespace asyncd::daemon
