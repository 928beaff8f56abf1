#pragma once

#include <cstdio>
#include <cstdlib>

// A broken invariant is a logged abort, never silent. Active in every build type.
#define ASYNCD_CHECK(cond)                                                             \
  do {                                                                                 \
    if (__builtin_expect(!(cond), 0)) {                                                \
      std::fprintf(stderr, "%s:%d: ASYNCD_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)
