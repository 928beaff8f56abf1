// libFuzzer target for the local ring's consumer (daemon/ring_entry.h): the
// part of the daemon that reads memory a client writes. The input is a
// geometry (SQ and CQ sizes, buffer area, max_op_bytes) and then steps, each
// one of: bytes written anywhere in the control block or the SQ, an sq_tail
// or cq_head set to any value, a pass of the consumer (take as the Ring does,
// under the admission rule, check each entry), ops ending (their completions
// posted), a flush of the overflow.
//
// Invariants (a violation aborts, and libFuzzer reports it):
//   - nothing crashes or reads outside the region (ASan, UBSan: the region
//     is allocated to its exact size);
//   - a pass takes at most what is ready, what fits the admission rule and
//     its batch, and gives up on an impossible tail;
//   - an accepted READ or WRITE points inside the buffer area, length
//     within max_op_bytes;
//   - no completion is ever refused by the CQ (the overflow suffices), and
//     once the client reaps, every entry taken has exactly one.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "daemon/ring_entry.h"

namespace {

using asyncd::daemon::CheckRingEntry;
using asyncd::daemon::PublishSqHead;
using asyncd::daemon::RingCq;
using asyncd::daemon::RingEntry;
using asyncd::daemon::RingEntryLimits;
using asyncd::daemon::RingSq;
using asyncd::daemon::TakeRingEntries;

#define INVARIANT(cond)                                                          \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "invariant broken: %s (line %d)\n", #cond, __LINE__); \
      std::abort();                                                              \
    }                                                                            \
  } while (0)

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  template <typename T>
  T Take() {
    T v{};
    const size_t n = std::min(sizeof v, size_ - std::min(pos_, size_));
    std::memcpy(&v, data_ + pos_, n);
    pos_ += sizeof v;
    return v;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

constexpr uint32_t kBatch = 128;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  const uint32_t sq_size = 1u << (in.Take<uint8_t>() % 13);  // 1..4096
  const uint32_t cq_size = sq_size << (in.Take<uint8_t>() % 3);
  const uint64_t buffer_bytes = static_cast<uint64_t>(in.Take<uint8_t>() % 5) * 4096;
  const uint32_t max_op_bytes = in.Take<uint16_t>() + 1;
  const size_t region_bytes = sizeof(asyncd_ring_ctl) + sq_size * sizeof(asyncd_ring_sqe) +
                              cq_size * sizeof(asyncd_ring_cqe);
  // Exact sizes: ASan sees any read or write past them.
  auto* region = static_cast<uint8_t*>(std::calloc(1, region_bytes));
  auto* buffer = static_cast<uint8_t*>(std::malloc(buffer_bytes != 0 ? buffer_bytes : 1));
  auto* ctl = reinterpret_cast<asyncd_ring_ctl*>(region);
  auto* sqes = reinterpret_cast<asyncd_ring_sqe*>(region + sizeof(asyncd_ring_ctl));
  auto* cqes = reinterpret_cast<asyncd_ring_cqe*>(region + sizeof(asyncd_ring_ctl) +
                                                  sq_size * sizeof(asyncd_ring_sqe));
  std::vector<asyncd_ring_cqe> overflow(cq_size);
  std::vector<asyncd_ring_sqe> taken(sq_size);
  RingSq sq{ctl, sqes, sq_size, 0};
  RingCq cq(ctl, cqes, cq_size, overflow.data());
  const RingEntryLimits limits{
      .max_op_bytes = max_op_bytes, .buffer = buffer, .buffer_bytes = buffer_bytes, .now_ns = 1};
  uint64_t taken_total = 0;
  std::deque<uint64_t> inflight;  // user_data of accepted ops
  bool broken = false;

  auto post = [&](uint64_t user_data) {
    asyncd_ring_cqe c{};
    c.user_data = user_data;
    INVARIANT(cq.Post(c));
  };
  for (int steps = 0; !in.empty() && steps < 10000; ++steps) {
    switch (in.Take<uint8_t>() % 6) {
      case 0: {  // the client scribbles on the control block or the SQ
        const uint32_t at =
            in.Take<uint32_t>() %
            static_cast<uint32_t>(sizeof(asyncd_ring_ctl) + sq_size * sizeof(asyncd_ring_sqe) - 7);
        const uint64_t v = in.Take<uint64_t>();
        std::memcpy(region + at, &v, sizeof v);
        break;
      }
      case 1:
        ctl->sq_tail = in.Take<uint32_t>();
        break;
      case 2:
        ctl->cq_head = in.Take<uint32_t>();
        break;
      case 3: {  // a pass of the consumer
        if (broken) break;
        const uint64_t held = taken_total - cq.posted();
        INVARIANT(held <= cq_size);
        const uint32_t room = cq_size - static_cast<uint32_t>(held);
        const uint32_t ready = ctl->sq_tail - sq.head;
        const int n = TakeRingEntries(sq, std::min(kBatch, room), taken.data());
        if (n < 0) {
          INVARIANT(ready > sq_size);
          broken = true;  // the Ring closes here
          break;
        }
        INVARIANT(static_cast<uint32_t>(n) <= std::min({kBatch, room, sq_size}));
        PublishSqHead(sq, static_cast<uint32_t>(n));
        taken_total += static_cast<uint32_t>(n);
        for (int i = 0; i < n; ++i) {
          const RingEntry e = CheckRingEntry(taken[i], limits);
          if (e.kind != RingEntry::Kind::kOp) {
            post(taken[i].user_data);  // a refusal, or a cancel's answer
            continue;
          }
          const auto& p = e.request.params;
          if (e.request.kind == asyncd::core::OpKind::kRead ||
              e.request.kind == asyncd::core::OpKind::kWrite) {
            INVARIANT(p.len <= max_op_bytes);
            INVARIANT(static_cast<uint8_t*>(p.buf) >= buffer);
            INVARIANT(static_cast<uint8_t*>(p.buf) + p.len <= buffer + buffer_bytes);
            if (p.len > 0) {  // as the kernel would, the whole range
              std::memset(p.buf, 0x5a, p.len);
            }
          }
          inflight.push_back(taken[i].user_data);
        }
        break;
      }
      case 4: {  // ops end
        for (uint8_t k = in.Take<uint8_t>(); k > 0 && !inflight.empty(); --k) {
          post(inflight.front());
          inflight.pop_front();
        }
        break;
      }
      case 5:
        (void)cq.Flush();  // false for an impossible cq_head: the Ring closes then
        (void)cq.Publish();
        break;
    }
  }
  // Every op ends and the client reaps everything: every entry taken has
  // exactly one completion in the CQ.
  while (!inflight.empty()) {
    post(inflight.front());
    inflight.pop_front();
  }
  for (uint32_t guard = 0; cq.overflowed() > 0; ++guard) {
    INVARIANT(guard <= cq_size);
    (void)cq.Publish();
    ctl->cq_head = ctl->cq_tail;
    INVARIANT(cq.Flush());
  }
  INVARIANT(cq.posted() == taken_total);
  std::free(buffer);
  std::free(region);
  return 0;
}
