#include "src/core/op.h"

#include <cerrno>
#include <utility>
#include <vector>

#include "src/core/check.h"
#include "src/core/registry.h"

namespace asyncd::core {

namespace {

struct DeferredCompletions {
  int depth = 0;
  std::vector<std::pair<CompletionSink*, uint64_t>> items;
  std::vector<uint64_t> cookies;  // one sink's, handed to OnDeferred
};
thread_local DeferredCompletions tls_deferred;

}  // namespace

CompletionBatch::CompletionBatch() noexcept { ++tls_deferred.depth; }

CompletionBatch::~CompletionBatch() {
  DeferredCompletions& d = tls_deferred;
  if (--d.depth > 0) return;
  // Few sinks per batch: take the first one's cookies, keep the rest in order.
  while (!d.items.empty()) {
    CompletionSink* const sink = d.items.front().first;
    d.cookies.clear();
    size_t kept = 0;
    for (const auto& item : d.items) {
      if (item.first == sink) {
        d.cookies.push_back(item.second);
      } else {
        d.items[kept++] = item;
      }
    }
    d.items.resize(kept);
    sink->OnDeferred(d.cookies);  // depth is 0: completions it causes are not deferred
  }
}

bool CompletionBatch::Defer(CompletionSink* sink, uint64_t cookie) noexcept {
  DeferredCompletions& d = tls_deferred;
  if (d.depth == 0) return false;
  d.items.emplace_back(sink, cookie);
  return true;
}

OpId Op::id() const {
  return OpId::Make(session->index(), slot_index, generation());
}

void Op::MarkDispatched(BackendKind b, int64_t now_ns) {
  head->backend.store(b, std::memory_order_relaxed);
  dispatched_ns.store(now_ns, std::memory_order_relaxed);
  uint64_t w = head->word.load(std::memory_order_relaxed);
  for (;;) {
    ASYNCD_CHECK(OpWord::State(w) == OpState::kQueued);
    if (head->word.compare_exchange_weak(w, OpWord::WithState(w, OpState::kDispatched),
                                   std::memory_order_acq_rel, std::memory_order_relaxed)) {
      return;
    }
  }
}

bool Op::TryStart(int64_t now_ns) {
  uint64_t w = head->word.load(std::memory_order_relaxed);
  for (;;) {
    const OpState s = OpWord::State(w);
    ASYNCD_CHECK(s == OpState::kQueued || s == OpState::kDispatched);
    if (OpWord::EndRequested(w)) return false;
    if (head->word.compare_exchange_weak(w, OpWord::WithState(w, OpState::kRunning),
                                   std::memory_order_acq_rel, std::memory_order_relaxed)) {
      started_ns.store(now_ns, std::memory_order_relaxed);
      return true;
    }
  }
}

bool Op::TryStartOrResume(int64_t now_ns) {
  const uint64_t w = head->word.load(std::memory_order_acquire);
  if (OpWord::State(w) == OpState::kRunning) return !OpWord::EndRequested(w);
  return TryStart(now_ns);
}

CancelResult Op::RequestEnd(uint32_t gen, EndReason reason, int64_t now_ns) {
  const bool deadline = reason == EndReason::kDeadline;
  const uint64_t asked = deadline ? OpWord::kDeadlinePassed : OpWord::kCancelAsked;
  uint64_t w = head->word.load(std::memory_order_acquire);
  for (;;) {
    const OpState s = OpWord::State(w);
    if (OpWord::Gen(w) != gen || s == OpState::kFree) return CancelResult::kNotFound;
    if (IsTerminal(s)) return CancelResult::kAlreadyDone;
    uint64_t desired = w | asked;
    CancelResult answer;
    if (OpWord::EndRequested(w)) {
      // Already ending: as cancelled, unless its deadline got there first.
      answer = OpWord::Reason(w) == EndReason::kDeadline && !deadline ? CancelResult::kAlreadyDone
                                                                       : CancelResult::kCancelled;
    } else if (s == OpState::kRunning &&
               head->safety.load(std::memory_order_relaxed) == CancelSafety::kOnlyBeforeStart) {
      answer = CancelResult::kNotCancellable;
    } else {
      desired = (desired & ~OpWord::kReasonMask) | OpWord::kEndRequested |
                (static_cast<uint64_t>(reason) << OpWord::kReasonShift);
      answer = CancelResult::kCancelled;
    }
    if (desired == w) return answer;
    if (head->word.compare_exchange_weak(w, desired, std::memory_order_acq_rel,
                                   std::memory_order_acquire)) {
      if (!deadline && !OpWord::CancelAsked(w)) {
        cancel_requested_ns.store(now_ns, std::memory_order_relaxed);
      }
      return answer;
    }
  }
}

OpState Op::Finish(int64_t res, int64_t now_ns) {
  result.store(static_cast<int32_t>(res), std::memory_order_relaxed);
  if (res > 0 && (head->kind.load(std::memory_order_relaxed) == OpKind::kRead ||
                  head->kind.load(std::memory_order_relaxed) == OpKind::kWrite)) {
    bytes_done.store(static_cast<uint32_t>(res), std::memory_order_relaxed);
  }
  finished_ns.store(now_ns, std::memory_order_relaxed);
  uint64_t w = head->word.load(std::memory_order_relaxed);
  for (;;) {
    const OpState s = OpWord::State(w);
    ASYNCD_CHECK(!IsTerminal(s) && s != OpState::kFree);  // exactly one terminal transition
    OpState end = OpState::kCompleted;
    if (OpWord::EndRequested(w)) {
      end = OpWord::Reason(w) == EndReason::kDeadline ? OpState::kTimedOut : OpState::kCancelled;
    }
    if (head->word.compare_exchange_weak(w, OpWord::WithState(w, end), std::memory_order_acq_rel,
                                   std::memory_order_relaxed)) {
      return end;
    }
  }
}

OpState Op::Fail(int error, int64_t now_ns) {
  result.store(-error, std::memory_order_relaxed);
  finished_ns.store(now_ns, std::memory_order_relaxed);
  uint64_t w = head->word.load(std::memory_order_relaxed);
  for (;;) {
    ASYNCD_CHECK(!IsTerminal(OpWord::State(w)) && OpWord::State(w) != OpState::kFree);
    if (head->word.compare_exchange_weak(w, OpWord::WithState(w, OpState::kFailed),
                                   std::memory_order_acq_rel, std::memory_order_relaxed)) {
      return OpState::kFailed;
    }
  }
}

void Op::SetTarget(std::string_view t) {
  if (t.empty()) {
    for (auto& word : target) word.store(0, std::memory_order_relaxed);
    return;
  }
  char buf[kTargetBytes] = {};
  if (t.size() > kTargetBytes) {
    // Keep the tail: the file name says more than the leading directories.
    t = t.substr(t.size() - (kTargetBytes - 3));
    std::memcpy(buf, "...", 3);
    std::memcpy(buf + 3, t.data(), t.size());
  } else {
    std::memcpy(buf, t.data(), t.size());
  }
  for (size_t i = 0; i < kTargetBytes / 8; ++i) {
    uint64_t v;
    std::memcpy(&v, buf + i * 8, 8);
    target[i].store(v, std::memory_order_relaxed);
  }
}

bool Op::ReadTarget(char* out) const {
  for (size_t i = 0; i < kTargetBytes / 8; ++i) {
    const uint64_t v = target[i].load(std::memory_order_relaxed);
    std::memcpy(out + i * 8, &v, 8);
  }
  out[kTargetBytes] = '\0';
  return out[0] != '\0';
}

}  // namespace asyncd::core
