/* asyncd/ring.h is C: this file compiles it as C11 with -pedantic-errors,
 * checks the documented layout at compile time, and records what the C
 * compiler laid out for ring_layout_test to compare with C++. */
#include "tests/client/ring_layout.h"

#define FIELD_SIZE(s, f) sizeof(((struct s*)0)->f)

#define CHECK_FIELD(s, f, off, size)                                         \
  _Static_assert(offsetof(struct s, f) == (off), #s "." #f " offset");     \
  _Static_assert(FIELD_SIZE(s, f) == (size), #s "." #f " size");
ASYNCD_RING_LAYOUT(CHECK_FIELD)

#define CHECK_SIZE(s, size) _Static_assert(sizeof(struct s) == (size), #s " size");
ASYNCD_RING_SIZES(CHECK_SIZE)

#define RECORD_FIELD(s, f, off, size) {#s "." #f, offsetof(struct s, f), FIELD_SIZE(s, f)},
const struct asyncd_ring_c_field asyncd_ring_c_fields[] = {ASYNCD_RING_LAYOUT(RECORD_FIELD)};
const size_t asyncd_ring_c_field_count =
    sizeof(asyncd_ring_c_fields) / sizeof(asyncd_ring_c_fields[0]);
