#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "asyncd/state/v1/state.pb.h"
#include "asyncd/v1/asyncd.pb.h"
#include "daemon/convert.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace state = ::asyncd::state::v1;
namespace v1 = ::asyncd::v1;

class FileArea;

/// The stream that has taken a session's carry (a resumed resumable stream):
/// it is handed the completions of the ops the carry runs again.
class CarryTaker {
 public:
  virtual ~CarryTaker() = default;
  /// A carried op ended: `completion` is its, or null when a restart took it
  /// to the next daemon (it ran nothing). Called without the carry's lock,
  /// between Hold and Drop; must not block.
  virtual void OnCarriedEnd(uint64_t op_id, v1::Completion* completion) noexcept = 0;
  /// Keep the taker alive across an OnCarriedEnd that Release may race.
  virtual void Hold() noexcept = 0;
  virtual void Drop() noexcept = 0;
};

/// What a resumable stream leaves its session across a live restart, until
/// its stream resumes: the numbering of its messages, the messages its
/// client has not acknowledged, completions not yet numbered, and its ops.
/// In the stopping daemon the stream puts its state here (Keep) and the
/// checkpoint takes it (Fill); in the next, the restore puts it back
/// (Restore) and runs its ops again, and the resumed stream takes it all
/// (Take). Any thread; its lock is taken after a taker's, never before.
class Carry final : public core::CompletionSink, public std::enable_shared_from_this<Carry> {
 public:
  /// An op a restart cancelled before it did anything, to run again: what
  /// was left of its deadline and wait as of `noted_ns` (MonoNanos).
  struct Again {
    state::Resubmit resubmit;
    int64_t noted_ns = 0;
  };
  /// The record of an op a restart cancelled, or nullopt when it did
  /// something (or ended otherwise, or is a Close, which detached its
  /// handle first) and its completion stands. `request` is the client's
  /// Operation; `completion` the op's, filled.
  static std::optional<Again> RunAgainLater(const core::Op& op, const v1::Operation& request,
                                            const v1::Completion& completion);

  /// The stopping daemon: a resumable stream's state at a restart.
  /// `messages` are numbered, in seq order; `next_seq` follows them.
  void Keep(uint64_t next_seq, std::vector<v1::StreamResponse> messages,
            std::vector<Again> again);
  /// Whether it holds what a stream left at a restart (Keep, or Restore of
  /// such a state) and no stream has taken it since.
  bool waiting() const;
  /// Into a checkpoint's session: the numbering, and what waits for a
  /// stream (deadlines and waits as of now).
  void Fill(state::Session& out) const;

  /// The next daemon, before it serves: takes `saved`'s stream state and
  /// runs its ops again, each under its id with what was left of its
  /// deadline less `waited_ms`. INVALID_ARGUMENT for an op that does not
  /// convert; other errors as Session::Restore and
  /// Dispatcher::SubmitRestored (the ops restored before it end).
  [[nodiscard]] absl::Status Restore(const state::Session& saved, int64_t waited_ms,
                                     core::Session& session, core::Dispatcher& dispatcher,
                                     const FileArea& area, uint32_t max_op_bytes);

  /// What a resumed stream takes: the numbering, the kept messages after
  /// `resume_after`, the completions not numbered yet, and the ids of the
  /// ops still running, whose ends go to `taker` from now on (through
  /// OnCarriedEnd) until Release. INVALID_ARGUMENT when `resume_after` is
  /// past the last message numbered; FAILED_PRECONDITION for a resume
  /// (`resume_after` not 0) when no restart left anything waiting: the
  /// stream ended otherwise, and its ops with it.
  struct Taken {
    uint64_t next_seq = 1;
    std::vector<v1::StreamResponse> replay;
    std::vector<v1::Completion> undelivered;
    std::vector<uint64_t> running;
  };
  /// The taker calls it holding its own lock, which OnCarriedEnd takes: no
  /// op's end reaches it before it has adopted what it took.
  [[nodiscard]] absl::StatusOr<Taken> Take(CarryTaker* taker, uint64_t resume_after);
  /// The taker is done: ends of ops go back to the carry, and the session's
  /// next stream numbers its messages from `next_seq` on.
  void Release(CarryTaker* taker, uint64_t next_seq);

  void OnComplete(const core::Op& op) noexcept override;

 private:
  struct Running {
    v1::Operation request;
    OpBuffers buffers;
  };

  mutable std::mutex mu_;
  bool waiting_ = false;
  uint64_t next_seq_ = 1;
  std::vector<v1::StreamResponse> unacked_;
  std::vector<v1::Completion> undelivered_;
  std::vector<Again> again_;
  std::unordered_map<uint64_t, std::unique_ptr<Running>> running_;
  CarryTaker* taker_ = nullptr;
  // Held while ops run: their sink must outlive them.
  std::shared_ptr<Carry> self_;
};

}  // namespace asyncd::daemon
