// asyncd/ring.h lays its structs out as it documents, in C++ and in C alike:
// every field at its offset with its size (checked at compile time here and
// in ring_h_check.c, which compiles the header as C11), and the C compiler's
// layout equal to the C++ compiler's field by field.
#include <gtest/gtest.h>

#include <cstddef>
#include <string>

#include "tests/client/ring_layout.h"

namespace asyncd::client {
namespace {

#define FIELD_SIZE(s, f) sizeof(static_cast<s*>(nullptr)->f)
#define CHECK_FIELD(s, f, off, size)                                   \
  static_assert(offsetof(s, f) == (off), #s "." #f " offset");         \
  static_assert(FIELD_SIZE(s, f) == (size), #s "." #f " size");
ASYNCD_RING_LAYOUT(CHECK_FIELD)
#define CHECK_SIZE(s, size) static_assert(sizeof(s) == (size), #s " size");
ASYNCD_RING_SIZES(CHECK_SIZE)

struct CxxField {
  const char* name;
  size_t offset;
  size_t size;
};
#define RECORD_FIELD(s, f, off, size) {#s "." #f, offsetof(s, f), FIELD_SIZE(s, f)},
constexpr CxxField kCxxFields[] = {ASYNCD_RING_LAYOUT(RECORD_FIELD)};

TEST(RingLayoutTest, CLaysOutEveryFieldAsCxxDoes) {
  ASSERT_EQ(asyncd_ring_c_field_count, std::size(kCxxFields));
  for (size_t i = 0; i < std::size(kCxxFields); ++i) {
    const CxxField& cxx = kCxxFields[i];
    const asyncd_ring_c_field& c = asyncd_ring_c_fields[i];
    EXPECT_EQ(std::string(c.name), cxx.name);
    EXPECT_EQ(c.offset, cxx.offset) << cxx.name;
    EXPECT_EQ(c.size, cxx.size) << cxx.name;
  }
}

}  // namespace
}  // namespace asyncd::client
