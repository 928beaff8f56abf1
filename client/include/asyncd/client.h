#pragma once

// The asyncd C++ client library (namespace asyncd::client).
//
//   asyncd/connection.h     Connect(), NormalizeTarget(), status conversions
//   asyncd/unary_client.h   Client: synchronous wrapper over the unary RPCs,
//                           Watch and the gRPC health check
//   asyncd/stream_client.h  StreamClient: asynchronous batched submission over
//                           the bidirectional Stream RPC
//   asyncd/ring_client.h    RingClient: batch submit and reap through the local
//                           shared-memory ring (asyncd/ring.h), same host only
//
// Link the CMake target asyncd::client (find_package(asyncd)).

#include "asyncd/connection.h"     // IWYU pragma: export
#include "asyncd/ring_client.h"    // IWYU pragma: export
#include "asyncd/stream_client.h"  // IWYU pragma: export
#include "asyncd/unary_client.h"   // IWYU pragma: export
