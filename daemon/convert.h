#pragma once

#include <linux/stat.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "asyncd/v1/asyncd.pb.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

/// Per-op storage the daemon lends the backend until the completion: read
/// data goes straight into the Completion's bytes field, statx into `stx`.
struct OpBuffers {
  v1::Completion completion;
  struct statx stx;
};

/// True if `path`'s ".." components, taken lexically, climb above where it
/// starts ("..", "a/../../b"). Pure.
[[nodiscard]] bool ClimbsAbove(std::string_view path);

/// Validates `op` and fills `out` (params borrow from `op` and `buffers`,
/// which must outlive the operation). INVALID_ARGUMENT names the bad field;
/// RESOURCE_EXHAUSTED for a payload over `max_op_bytes`. Changes nothing.
[[nodiscard]] absl::Status ToOpRequest(const v1::Operation& op, uint32_t max_op_bytes,
                                       int64_t call_deadline_ns, OpBuffers& buffers,
                                       core::OpRequest& out);

/// Completion.result of an op that ended in terminal `state`: its result,
/// -ECANCELED or -ETIMEDOUT, or for a completed poll its PollEvents bits.
int32_t CompletionResult(core::OpState state, core::OpKind kind, int64_t result);

/// Fills buffers.completion from a finished op (terminal, not yet retired).
void FillCompletion(const core::Op& op, OpBuffers& buffers);

/// A Completion for an operation refused before it was accepted.
void FillRejected(const absl::Status& status, uint64_t tag, v1::Completion& out);

v1::OpKind ToProto(core::OpKind kind);
/// The state the API shows for an op in core `state` on `backend`: waiting
/// in a backend's queue is QUEUED; taken by io_uring is DISPATCHED (the
/// kernel does not say when it starts an op); taken by a thread is RUNNING.
v1::OpState ToProto(core::OpState state, core::BackendKind backend);
v1::Backend ToProto(core::BackendKind backend);
v1::EndReason ToProto(core::EndReason reason);
v1::CancelResult ToProto(core::CancelResult result);
v1::Outcome OutcomeOf(core::OpState terminal);
core::OpKind FromProto(v1::OpKind kind);  // kNop for unknown values
core::OpState FromProto(v1::OpState state);

/// The errno's symbolic name ("ENOENT"), or "E<n>".
std::string ErrnoName(int error);

/// The event that ends an op in terminal state `s` (completed, cancelled,
/// timed out, failed).
v1::EventType TerminalEvent(core::OpState s);

/// MonoNanos() to Unix nanoseconds; 0 stays 0 (never happened).
int64_t ToUnixNanos(int64_t mono_ns);

/// The finished op `info` shows (a predecessor's history, with its
/// timeline), as ToOperationInfo would show it again. False for an op that
/// is not finished. Pure.
[[nodiscard]] bool FromOperationInfo(const v1::OperationInfo& info, core::OpSnapshot& out);

/// The snapshot of a live or finished op as the API shows it; its age counts
/// up to `now_mono_ns` while it runs. The timeline only on request.
void ToOperationInfo(const core::OpSnapshot& s, uint32_t uid, uint32_t pid,
                     std::string_view client, bool include_timeline, int64_t now_mono_ns,
                     v1::OperationInfo& out);

}  // namespace asyncd::daemon
