#pragma once

#include <grpcpp/server.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace asyncd::client::bench {

// The transport's ceiling for a load: a gRPC server that speaks the
// asyncd.v1 protocol (sessions, unary Submit, Stream) with no system call
// behind it. Reads are answered with `block_size` bytes from memory.
class ReferenceServer {
 public:
  // Serves on `listen`, a gRPC address such as unix:/path.
  static absl::StatusOr<std::unique_ptr<ReferenceServer>> Start(const std::string& listen,
                                                                uint32_t block_size);
  ~ReferenceServer();  // shuts the server down

 private:
  ReferenceServer(std::unique_ptr<grpc::Server> server, std::unique_ptr<grpc::Service> service);
  std::unique_ptr<grpc::Service> service_;  // outlives server_
  std::unique_ptr<grpc::Server> server_;
};

// asyncd-bench --mode serve: a ReferenceServer until SIGTERM or SIGINT.
// Returns the exit code.
int RunReferenceServer(const std::string& listen, uint32_t block_size);

}  // namespace asyncd::client::bench
