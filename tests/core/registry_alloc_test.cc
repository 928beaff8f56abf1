// Registering and retiring an operation allocates nothing once the session's
// slab exists: the steady-state hot path of the registry and the dispatcher
// never calls the allocator. Counted by replacing global operator new.
#include <fcntl.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include <gtest/gtest.h>

#include "src/core/dispatcher.h"
#include "tests/mocks/fake_backend.h"

namespace {
std::atomic<bool> counting{false};
std::atomic<uint64_t> allocations{0};
}  // namespace

void* operator new(size_t n) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
// GCC cannot see that the operator new these pair with is the malloc above.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace asyncd::core {
namespace {

class NullSink : public CompletionSink {
 public:
  void OnComplete(const Op&) noexcept override {}
};

TEST(RegistryAllocTest, RegisterAndRetireAllocateNothingInSteadyState) {
  Registry registry;
  auto session = *registry.OpenSession({"alloc", 0, 0, 0});
  std::vector<Op*> warm;
  for (int i = 0; i < 64; ++i) {
    warm.push_back(*session->Register(OpKind::kRead, CancelSafety::kAlways, 1, "", 1));
  }
  for (Op* op : warm) {
    op->Finish(0, 2);
    session->Retire(*op);
  }
  counting = true;
  for (int i = 0; i < 10000; ++i) {
    Op* op = *session->Register(OpKind::kRead, CancelSafety::kAlways, 1, "some/path", 1);
    ASSERT_TRUE(op->TryStart(1));
    op->Finish(4096, 2);
    session->Retire(*op);
  }
  counting = false;
  EXPECT_EQ(allocations.load(), 0u);
}

TEST(RegistryAllocTest, DispatcherSubmitAndCompleteAllocateNothingInSteadyState) {
  Registry registry;
  Dispatcher dispatcher(registry, AT_FDCWD);
  // Completes ops at once, on the submitting thread.
  mocks::FakeBackend backend(dispatcher);
  dispatcher.SetBackends({&backend});
  auto session = *registry.OpenSession({"alloc", 0, 0, 0});
  NullSink sink;
  std::vector<OpRequest> batch(32, OpRequest{.kind = OpKind::kNop, .sink = &sink});
  std::vector<absl::StatusOr<OpId>> ids(batch.size());
  dispatcher.SubmitBatch(*session, batch, ids);  // warm: the first slab
  allocations = 0;
  counting = true;
  for (int i = 0; i < 1000; ++i) dispatcher.SubmitBatch(*session, batch, ids);
  counting = false;
  EXPECT_EQ(allocations.load(), 0u);
  for (const auto& id : ids) EXPECT_TRUE(id.ok());
  EXPECT_EQ(session->live_ops(), 0u);
}

}  // namespace
}  // namespace asyncd::core
