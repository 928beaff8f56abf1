/* The byte layout asyncd/ring.h documents, as one list that the C check
 * (ring_h_check.c) and the C++ test (ring_layout_test.cc) both expand:
 * X(struct, field, offset, size). */
#ifndef ASYNCD_TESTS_CLIENT_RING_LAYOUT_H_
#define ASYNCD_TESTS_CLIENT_RING_LAYOUT_H_

#include <stddef.h>

#include "asyncd/ring.h"

#define ASYNCD_RING_LAYOUT(X)                        \
  X(asyncd_ring_setup, magic, 0, 4)                  \
  X(asyncd_ring_setup, version, 4, 4)                \
  X(asyncd_ring_setup, session_id, 8, 8)             \
  X(asyncd_ring_setup, sq_entries, 16, 4)            \
  X(asyncd_ring_setup, cq_entries, 20, 4)            \
  X(asyncd_ring_setup, buffer_bytes, 24, 8)          \
  X(asyncd_ring_setup, reserved, 32, 32)             \
  X(asyncd_ring_setup_reply, magic, 0, 4)            \
  X(asyncd_ring_setup_reply, version, 4, 4)          \
  X(asyncd_ring_setup_reply, status, 8, 4)           \
  X(asyncd_ring_setup_reply, sq_entries, 12, 4)      \
  X(asyncd_ring_setup_reply, cq_entries, 16, 4)      \
  X(asyncd_ring_setup_reply, max_op_bytes, 20, 4)    \
  X(asyncd_ring_setup_reply, region_bytes, 24, 8)    \
  X(asyncd_ring_setup_reply, sq_offset, 32, 8)       \
  X(asyncd_ring_setup_reply, cq_offset, 40, 8)       \
  X(asyncd_ring_setup_reply, buffer_offset, 48, 8)   \
  X(asyncd_ring_setup_reply, buffer_bytes, 56, 8)    \
  X(asyncd_ring_setup_reply, message, 64, 256)       \
  X(asyncd_ring_ctl, sq_head, 0, 4)                  \
  X(asyncd_ring_ctl, sq_tail, 64, 4)                 \
  X(asyncd_ring_ctl, cq_head, 128, 4)                \
  X(asyncd_ring_ctl, cq_tail, 192, 4)                \
  X(asyncd_ring_ctl, flags, 256, 4)                  \
  X(asyncd_ring_ctl, closed_status, 260, 4)          \
  X(asyncd_ring_ctl, closed_reason, 264, 4)          \
  X(asyncd_ring_ctl, client_flags, 320, 4)           \
  X(asyncd_ring_sqe, kind, 0, 1)                     \
  X(asyncd_ring_sqe, flags, 1, 1)                    \
  X(asyncd_ring_sqe, poll_events, 2, 2)              \
  X(asyncd_ring_sqe, handle, 4, 4)                   \
  X(asyncd_ring_sqe, offset, 8, 8)                   \
  X(asyncd_ring_sqe, length, 16, 4)                  \
  X(asyncd_ring_sqe, deadline_ms, 20, 4)             \
  X(asyncd_ring_sqe, buffer_offset, 24, 8)           \
  X(asyncd_ring_sqe, user_data, 32, 8)               \
  X(asyncd_ring_sqe, arg, 40, 8)                     \
  X(asyncd_ring_sqe, reserved, 48, 16)               \
  X(asyncd_ring_cqe, user_data, 0, 8)                \
  X(asyncd_ring_cqe, op_id, 8, 8)                    \
  X(asyncd_ring_cqe, result, 16, 4)                  \
  X(asyncd_ring_cqe, bytes, 20, 4)                   \
  X(asyncd_ring_cqe, outcome, 24, 1)                 \
  X(asyncd_ring_cqe, end_reason, 25, 1)              \
  X(asyncd_ring_cqe, flags, 26, 1)                   \
  X(asyncd_ring_cqe, backend, 27, 1)                 \
  X(asyncd_ring_cqe, status, 28, 2)                  \
  X(asyncd_ring_cqe, reason, 30, 2)

/* X(struct, size) */
#define ASYNCD_RING_SIZES(X)       \
  X(asyncd_ring_setup, 64)         \
  X(asyncd_ring_setup_reply, 320)  \
  X(asyncd_ring_ctl, 384)          \
  X(asyncd_ring_sqe, 64)           \
  X(asyncd_ring_cqe, 32)

/* What the C compiler made of each field: ring_h_check.c. */
struct asyncd_ring_c_field {
  const char* name;
  size_t offset;
  size_t size;
};
#ifdef __cplusplus
extern "C" {
#endif
extern const struct asyncd_ring_c_field asyncd_ring_c_fields[];
extern const size_t asyncd_ring_c_field_count;
#ifdef __cplusplus
}
#endif

#endif /* ASYNCD_TESTS_CLIENT_RING_LAYOUT_H_ */
