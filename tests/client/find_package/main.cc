// Compiles and links against the installed asyncd::client package, and runs
// what works without a daemon.
#include <cstdio>

#include "asyncd/client.h"

int main() {
  namespace ac = asyncd::client;
  const std::string target = ac::NormalizeTarget("/tmp/consumer.sock");
  if (target != "unix:/tmp/consumer.sock") {
    std::fprintf(stderr, "NormalizeTarget gave %s\n", target.c_str());
    return 1;
  }
  // A channel to a socket nobody listens on: the unary call must fail with
  // UNAVAILABLE (or DEADLINE_EXCEEDED), not crash.
  ac::Client client(ac::Connect(target), {.default_timeout = std::chrono::milliseconds(500)});
  absl::StatusOr<asyncd::v1::Stats> stats = client.GetStats();
  if (stats.ok()) {
    std::fprintf(stderr, "GetStats unexpectedly succeeded\n");
    return 1;
  }
  // The ring's installed headers (asyncd/ring.h under RingClient): no ring
  // socket there, so UNAVAILABLE.
  absl::StatusOr<ac::RingClient> ring = ac::RingClient::Open(target, 1);
  if (ring.status().code() != absl::StatusCode::kUnavailable) {
    std::fprintf(stderr, "RingClient::Open gave %s\n", ring.status().ToString().c_str());
    return 1;
  }
  asyncd::v1::Operation op;
  op.mutable_nop();
  std::printf("consumer OK: %s; GetStats -> %s\n", op.ShortDebugString().c_str(),
              stats.status().ToString().c_str());
  return 0;
}
