#include "asyncd/stream_client.h"

#include <grpcpp/alarm.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/lib/string_compat.h"

namespace asyncd::client {
namespace {

using internal::ToStd;

// Defaults from the Limits message, used when the daemon reports 0.
constexpr uint32_t kDefaultMaxBatchOps = 1024;
constexpr uint32_t kDefaultMaxInflight = 4096;

// > 0 while this thread runs a StreamClient callback. Submit must not block
// there and Finish/~StreamClient must not wait there.
thread_local int tls_callback_depth = 0;

struct CallbackScope {
  CallbackScope() { ++tls_callback_depth; }
  ~CallbackScope() { --tls_callback_depth; }
};

// Runs a user callback; nothing it throws escapes into gRPC.
template <typename F, typename... Args>
void InvokeNoThrow(const F& f, Args&&... args) noexcept {
  CallbackScope scope;
  try {
    f(std::forward<Args>(args)...);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "asyncd::client::StreamClient: callback threw: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "asyncd::client::StreamClient: callback threw a non-std exception\n");
  }
}

// Operation.kind field numbers follow OpKind values + 9 (see the proto).
v1::OpKind KindOf(const v1::Operation& op) {
  const int field = static_cast<int>(op.kind_case());
  if (field == 0) return v1::OP_KIND_UNSPECIFIED;
  return v1::OpKind_IsValid(field - 9) ? static_cast<v1::OpKind>(field - 9)
                                       : v1::OP_KIND_UNSPECIFIED;
}

v1::Completion Synthesized(uint64_t tag, uint64_t op_id, v1::OpKind kind, v1::Outcome outcome,
                           absl::StatusCode code, std::string_view why) {
  v1::Completion c;
  c.set_tag(tag);
  c.set_op_id(op_id);
  c.set_kind(kind);
  c.set_outcome(outcome);
  c.set_status_code(static_cast<int32_t>(code));
  c.set_message(std::string(why));
  return c;
}

}  // namespace

// The reactor owns all stream state, across the Stream RPCs of a resuming
// stream; each RPC is a Call (the grpc::ClientBidiReactor), one at a time,
// whose reactions it forwards here. Lifetime: owned by the StreamClient,
// whose every exit path (failed Open, ~StreamClient) waits for Ended() first
// (the last Call done, no alarm pending), on the owner's thread or, for a
// StreamClient destroyed inside a callback, on a thread of the library's. It
// must never be destroyed on a gRPC thread: the stub holds the channel, and
// a channel whose last reference drops on the callback completion queue's
// thread shuts down and frees the queue that thread is still polling (gRPC
// 1.51 aborts in grpc_cq_internal_unref). A Call is freed by the Reactor
// (when the next one starts, or with it), never in its own OnDone.
//
// Locking: mu_ guards everything below it. No gRPC Start* call, no alarm
// Set or Cancel and no user callback runs with mu_ held (gRPC may run
// reactions inline in Start*).
class StreamClient::Reactor final {
 public:
  enum class Phase { kOpening, kOpen, kFinishing, kDone };

  explicit Reactor(StreamOptions options) : options_(std::move(options)) {}

  // Starts the call and waits for StreamOpened.
  absl::Status Open(const std::shared_ptr<grpc::Channel>& channel, std::string_view client_name,
                    uint64_t session_id) {
    channel_ = channel;
    stub_ = v1::Asyncd::NewStub(channel);
    client_name_ = std::string(client_name);
    auto open = std::make_unique<v1::StreamRequest>();
    open->mutable_open()->set_session_id(session_id);
    open->mutable_open()->set_client_name(client_name_);
    open->mutable_open()->set_lease_ms(options_.lease_ms);
    open->mutable_open()->set_resumable(options_.resume.has_value());
    StartCall(std::move(open), std::nullopt);

    std::unique_lock lock(mu_);
    if (!state_cv_.wait_for(lock, options_.open_timeout,
                            [&] { return phase_ != Phase::kOpening; })) {
      std::shared_ptr<Call> call = call_;
      lock.unlock();
      call->context().TryCancel();
      lock.lock();
      state_cv_.wait(lock, [&] { return EndedLocked(); });
      return absl::DeadlineExceededError("timed out waiting for StreamOpened");
    }
    if (phase_ == Phase::kDone) {
      state_cv_.wait(lock, [&] { return EndedLocked(); });
      if (!final_status_.ok()) return ToAbslStatus(final_status_);
      return absl::InternalError("stream ended before StreamOpened");
    }
    return absl::OkStatus();
  }

  absl::Status Submit(std::vector<v1::Operation>& ops, CompletionCallback on_completion,
                      AcceptedCallback on_accepted) {
    if (ops.empty()) return absl::OkStatus();
    if (!on_completion) return absl::InvalidArgumentError("on_completion must be set");
    auto batch = std::make_shared<Batch>(Batch{std::move(on_completion), std::move(on_accepted)});
    const bool may_block = options_.when_full == WhenFull::kBlock && tls_callback_depth == 0;
    const size_t n = ops.size();

    std::unique_lock lock(mu_);
    if (absl::Status s = CheckAcceptingLocked(); !s.ok()) return s;
    if (!may_block && free_slots_.size() < n) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "stream window full: ", n, " ops submitted, ", free_slots_.size(), " of ",
          max_outstanding_, " slots free"));
    }
    size_t pos = 0;
    while (pos < n) {
      const size_t want = std::min(n - pos, max_outstanding_);
      if (free_slots_.size() < want) {
        ++space_waiters_;
        space_cv_.wait(lock, [&] {
          return free_slots_.size() >= want || phase_ != Phase::kOpen || ClosedLocked();
        });
        --space_waiters_;
      }
      if (absl::Status s = CheckAcceptingLocked(); !s.ok()) {
        if (pos == 0) return s;
        // Part of the call is queued: keep the promise of one callback per op
        // by rejecting the rest here.
        lock.unlock();
        for (size_t i = pos; i < n; ++i) {
          v1::Completion c = Synthesized(ops[i].tag(), 0, KindOf(ops[i]), v1::OUTCOME_REJECTED,
                                         s.code(), absl::StrCat("not sent: ", s.message()));
          if (batch->on_accepted) InvokeNoThrow(batch->on_accepted, AcceptedOp{i, ops[i].tag(), 0});
          InvokeNoThrow(batch->on_completion, c);
        }
        return absl::OkStatus();
      }
      if (!options_.coalesce) open_msg_ = nullptr;  // this chunk starts its own message
      for (size_t i = pos; i < pos + want; ++i) EnqueueLocked(ops[i], i, batch);
      pos += want;
      if (Actions actions = PumpLocked(); actions.any()) {
        lock.unlock();
        Run(actions);
        lock.lock();
      }
    }
    return absl::OkStatus();
  }

  std::future<absl::StatusOr<v1::CancelResponse>> Cancel(v1::CancelRequest& request) {
    std::promise<absl::StatusOr<v1::CancelResponse>> promise;
    auto future = promise.get_future();
    std::unique_lock lock(mu_);
    if (absl::Status s = CheckAcceptingLocked(); !s.ok()) {
      lock.unlock();
      promise.set_value(s);
      return future;
    }
    const uint64_t tag = ++cancel_seq_;
    pending_cancels_.emplace(tag, PendingCancel{request.request_tag(), std::move(promise)});
    request.set_request_tag(tag);
    auto msg = std::make_unique<v1::StreamRequest>();
    *msg->mutable_cancel() = std::move(request);
    write_queue_.push_back(std::move(msg));
    open_msg_ = nullptr;  // later submits go after the cancel
    Actions actions = PumpLocked();
    lock.unlock();
    Run(actions);
    return future;
  }

  absl::Status Finish() {
    if (tls_callback_depth > 0) {
      return absl::FailedPreconditionError("StreamClient::Finish called from a callback");
    }
    Actions actions;
    std::unique_lock lock(mu_);
    if (phase_ == Phase::kOpen) {
      phase_ = Phase::kFinishing;
      space_cv_.notify_all();
      // Half-closes now if nothing is left to write; else once it is written
      // (a resuming stream: on the next RPC).
      actions = PumpLocked();
    }
    lock.unlock();
    Run(actions);
    lock.lock();
    state_cv_.wait(lock, [&] { return EndedLocked(); });
    return ToAbslStatus(final_status_);
  }

  // Cancels the RPC, or stops resuming, unless the stream has ended. Never
  // blocks.
  void CancelRpc() {
    std::shared_ptr<Call> call;
    std::shared_ptr<grpc::Alarm> alarm;
    {
      std::lock_guard lock(mu_);
      if (phase_ == Phase::kDone) return;
      cancel_requested_ = true;
      if (call_live_) call = call_;
      alarm = alarm_;
    }
    if (call != nullptr) call->context().TryCancel();
    if (alarm != nullptr) alarm->Cancel();  // a backoff then ends the stream
  }

  // Cancels the RPC unless it has ended, and waits for the end. Not on a
  // callback thread: the end may need it.
  void Shutdown() {
    CancelRpc();
    std::unique_lock lock(mu_);
    state_cv_.wait(lock, [&] { return EndedLocked(); });
  }

  // --- accessors (fixed after Open) ---
  uint64_t session_id() const { return session_id_; }
  uint32_t lease_ms() const { return lease_ms_; }
  const v1::Limits& limits() const { return limits_; }
  size_t max_outstanding() const { return max_outstanding_; }
  size_t outstanding() const {
    std::lock_guard lock(mu_);
    return slots_.size() - free_slots_.size();
  }
  size_t resumes() const {
    std::lock_guard lock(mu_);
    return resumes_;
  }

 private:
  // One Stream RPC of a StreamClient: forwards its reactions to the Reactor.
  class Call final : public grpc::ClientBidiReactor<v1::StreamRequest, v1::StreamResponse> {
   public:
    explicit Call(Reactor* owner) : owner_(owner) {}

    grpc::ClientContext& context() { return context_; }

    // Binds the RPC and starts its read flow and its write flow's hold;
    // StartCall follows.
    void Bind(v1::Asyncd::Stub& stub) {
      stub.async()->Stream(&context_, this);
      AddHold();
      StartRead(response_);
    }

    void OnWriteDone(bool ok) override { owner_->OnWriteDone(ok); }

    void OnReadDone(bool ok) override {
      if (!ok) {
        owner_->OnReadFailed();
        return;
      }
      owner_->OnRead(*response_);
      read_arena_.Reset();
      response_ = NewResponse();
      StartRead(response_);
    }

    void OnDone(const grpc::Status& status) override { owner_->OnCallDone(status); }

   private:
    // Each message is read onto an arena that is reset after it is handled:
    // parsing a batch of completions then takes a few blocks, not an
    // allocation per completion and string (reusing one message does not
    // help: parsing clears its oneof, which frees the completions).
    v1::StreamResponse* NewResponse() {
      return google::protobuf::Arena::CreateMessage<v1::StreamResponse>(&read_arena_);
    }

    Reactor* const owner_;
    grpc::ClientContext context_;
    google::protobuf::Arena read_arena_;
    v1::StreamResponse* response_ = NewResponse();
  };

  enum class AlarmKind {
    kBackoff,      // the wait before the next resume attempt
    kOpenTimeout,  // a resume attempt's wait for StreamOpened
  };

  struct Batch {
    CompletionCallback on_completion;
    AcceptedCallback on_accepted;
  };
  // One outstanding op. Tag on the wire = generation << 32 | slot index, so
  // a stale or forged tag never reaches a reused slot.
  struct Slot {
    uint32_t generation = 0;
    bool in_use = false;
    v1::OpKind kind = v1::OP_KIND_UNSPECIFIED;
    size_t index = 0;
    uint64_t user_tag = 0;
    uint64_t op_id = 0;
    std::shared_ptr<Batch> batch;
  };
  struct PendingCancel {
    uint64_t user_tag;
    std::promise<absl::StatusOr<v1::CancelResponse>> promise;
  };
  // What to do on the current Call once mu_ is released (PumpLocked). The
  // Call stays alive meanwhile: it holds a hold until remove_hold, the last
  // action, has run.
  struct Actions {
    Call* call = nullptr;
    v1::StreamRequest* write = nullptr;
    bool writes_done = false;
    bool remove_hold = false;
    bool any() const { return call != nullptr; }
  };

  // --- reactions of the current Call (gRPC threads) ---

  void OnWriteDone(bool ok) {
    std::unique_ptr<v1::StreamRequest> written;  // freed outside the lock
    Actions actions;
    {
      std::lock_guard lock(mu_);
      written = std::move(in_flight_);
      write_in_flight_ = false;
      if (!ok) {
        // The RPC is broken; the read side will see it and OnCallDone ends
        // or resumes the stream. Queued messages stay for either.
        call_failed_ = true;
        space_cv_.notify_all();
      }
      // Written, maybe read: a resuming stream keeps it until it is answered
      // (the answer may have come already), to send it again if the daemon
      // never read it.
      if (options_.resume && !in_flight_answered_ &&
          (written->has_cancel() || (written->has_submit() && written->submit().ops_size() > 0))) {
        sent_.push_back(std::move(written));
      }
      actions = PumpLocked();
    }
    written.reset();
    Run(actions);
  }

  void OnReadFailed() {
    Actions actions;
    {
      std::lock_guard lock(mu_);
      call_failed_ = true;
      space_cv_.notify_all();
      actions = PumpLocked();
    }
    Run(actions);  // no more reads; OnCallDone follows
  }

  void OnRead(v1::StreamResponse& response) {
    switch (response.msg_case()) {
      case v1::StreamResponse::kOpened:
        HandleOpened(response.opened());
        return;
      case v1::StreamResponse::kAccepted:
        if (TakeSeq(response.seq())) HandleAccepted(response.accepted());
        break;
      case v1::StreamResponse::kCompletions:
        if (TakeSeq(response.seq())) HandleCompletions(*response.mutable_completions());
        break;
      case v1::StreamResponse::kCancelResult:
        HandleCancelResult(*response.mutable_cancel_result());
        break;
      default:
        return;  // a message kind from a newer daemon: ignore
    }
    // An ack, or writes a replay's end let through.
    Actions actions;
    {
      std::lock_guard lock(mu_);
      actions = PumpLocked();
    }
    Run(actions);
  }

  void OnCallDone(const grpc::Status& done) {
    grpc::Status status = done;
    std::optional<std::chrono::system_clock::time_point> retry_at;
    {
      std::lock_guard lock(mu_);
      call_live_ = false;
      if (open_timed_out_) {
        status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "timed out waiting for StreamOpened");
      }
      // A stopping daemon whose gRPC server has begun to shut down cancels
      // the calls still open: CANCELLED that this client did not ask for.
      const grpc::StatusCode code = status.error_code();
      const bool resumable =
          options_.resume && phase_ != Phase::kOpening &&
          (code == grpc::StatusCode::UNAVAILABLE ||
           (code == grpc::StatusCode::CANCELLED && !cancel_requested_));
      if (resumable && cancel_requested_) {
        // The owner stopped it, whatever this RPC's own end.
        status = grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled while resuming");
      } else if (resumable) {
        const RetryPolicy& policy = *options_.resume;
        const auto now = std::chrono::steady_clock::now();
        if (!resume_deadline_.has_value()) {
          resume_deadline_ = now + policy.budget;
          backoff_ = policy.initial_backoff;
        }
        if (now < *resume_deadline_) {
          const auto wait =
              std::min<std::chrono::steady_clock::duration>(backoff_, *resume_deadline_ - now);
          retry_at = std::chrono::system_clock::now() + wait;
          backoff_ = std::min(backoff_ * 2, policy.max_backoff);
        } else {
          status =
              grpc::Status(status.error_code(),
                           absl::StrCat("stopped resuming the stream after ", policy.budget.count(),
                                        " ms: ", status.error_message()));
        }
      }
    }
    if (retry_at.has_value()) {
      ArmAlarm(*retry_at, AlarmKind::kBackoff, 0);
      return;
    }
    End(status);
  }

  // --- alarms (gRPC threads) ---

  // Arms the one alarm (none other is pending: a backoff runs between RPCs,
  // an open timeout during one). Each alarm calls OnAlarm exactly once.
  void ArmAlarm(std::chrono::system_clock::time_point when, AlarmKind kind, uint64_t attempt) {
    auto alarm = std::make_shared<grpc::Alarm>();
    std::shared_ptr<grpc::Alarm> previous;
    {
      std::lock_guard lock(mu_);
      ++alarms_pending_;
      previous = std::exchange(alarm_, alarm);
    }
    if (previous != nullptr) previous->Cancel();  // an open timeout whose RPC ended
    alarm->Set(when, [this, kind, attempt](bool fired) { OnAlarm(kind, attempt, fired); });
    bool cancel;
    {
      std::lock_guard lock(mu_);
      cancel = cancel_requested_;  // CancelRpc may have run before Set
    }
    if (cancel) alarm->Cancel();
  }

  void OnAlarm(AlarmKind kind, uint64_t attempt, bool fired) {
    if (kind == AlarmKind::kOpenTimeout) {
      std::shared_ptr<Call> call;
      {
        std::lock_guard lock(mu_);
        if (fired && attempt == attempt_ && call_live_ && !call_opened_) {
          open_timed_out_ = true;
          call = call_;
        }
      }
      if (call != nullptr) call->context().TryCancel();
    } else {
      bool resume;
      {
        std::lock_guard lock(mu_);
        resume = fired && !cancel_requested_;
      }
      if (resume) {
        StartResumeCall();
      } else {
        End(grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled while resuming"));
      }
    }
    // The owner may destroy *this once mu_ is released: nothing after.
    std::lock_guard lock(mu_);
    --alarms_pending_;
    state_cv_.notify_all();
  }

  // --- calls ---

  // Starts a Stream RPC whose first message is `open`; `open_timeout` bounds
  // its wait for StreamOpened (the first RPC's is bounded by Open instead).
  void StartCall(std::unique_ptr<v1::StreamRequest> open,
                 std::optional<std::chrono::milliseconds> open_timeout) {
    auto call = std::make_shared<Call>(this);
    std::shared_ptr<Call> previous;  // done; freed outside the lock
    Actions actions;
    uint64_t attempt;
    {
      std::lock_guard lock(mu_);
      previous = std::exchange(call_, call);
      attempt = ++attempt_;
      call_live_ = true;
      call_opened_ = false;
      call_failed_ = false;
      open_timed_out_ = false;
      writes_done_started_ = false;
      hold_released_ = false;
      gated_ = false;
      // Acks for the last RPC are moot: the open says what was received.
      control_.clear();
      ack_msg_ = nullptr;
      control_.push_back(std::move(open));
      actions = PumpLocked();  // the open
    }
    previous.reset();
    if (open_timeout.has_value()) {
      // Armed before the RPC starts, so that HandleOpened finds it to cancel.
      ArmAlarm(std::chrono::system_clock::now() + *open_timeout, AlarmKind::kOpenTimeout, attempt);
    }
    // One hold for the write flow, which is driven from user threads; the
    // read flow restarts itself from OnReadDone and needs none.
    call->Bind(*stub_);
    Run(actions);
    call->StartCall();
  }

  void StartResumeCall() {
    auto open = std::make_unique<v1::StreamRequest>();
    std::chrono::steady_clock::duration left;
    {
      std::lock_guard lock(mu_);
      open->mutable_open()->set_session_id(session_id_);
      open->mutable_open()->set_client_name(client_name_);
      open->mutable_open()->set_resumable(true);
      open->mutable_open()->set_resume_after(last_seq_);
      left = *resume_deadline_ - std::chrono::steady_clock::now();
    }
    // gRPC waits up to its own reconnect backoff (1 s, growing) before
    // trying the socket again: the policy's backoff governs instead.
    grpc::experimental::ChannelResetConnectionBackoff(channel_.get());
    const auto timeout = std::max(
        std::chrono::milliseconds(1),
        std::min(options_.open_timeout, std::chrono::ceil<std::chrono::milliseconds>(left)));
    StartCall(std::move(open), timeout);
  }

  // Ends the stream with `status`: completions of what is outstanding are
  // synthesized, pending cancels fail. No RPC is running.
  void End(const grpc::Status& status) {
    std::vector<std::pair<std::shared_ptr<Batch>, v1::Completion>> orphans;
    std::vector<PendingCancel> cancels;
    std::shared_ptr<grpc::Alarm> alarm;
    const absl::StatusCode code = status.ok() ? absl::StatusCode::kUnknown
                                              : static_cast<absl::StatusCode>(status.error_code());
    const std::string why =
        status.ok() ? std::string("stream ended OK without this completion")
                    : absl::StrCat("stream ended: ", status.error_message());
    {
      std::lock_guard lock(mu_);
      ending_ = true;
      final_status_ = status;
      alarm = alarm_;
      // Ops still in the write queue never reached the daemon.
      std::unordered_set<uint64_t> unsent;
      for (const auto& msg : write_queue_) {
        if (!msg->has_submit()) continue;
        for (const v1::Operation& op : msg->submit().ops()) unsent.insert(op.tag());
      }
      for (uint32_t i = 0; i < slots_.size(); ++i) {
        Slot& slot = slots_[i];
        if (!slot.in_use) continue;
        const bool was_sent = unsent.count(TagOf(i)) == 0;
        orphans.emplace_back(
            std::move(slot.batch),
            Synthesized(slot.user_tag, slot.op_id, slot.kind,
                        was_sent ? v1::OUTCOME_UNSPECIFIED : v1::OUTCOME_REJECTED, code,
                        was_sent ? why : absl::StrCat("not sent: ", why)));
        ReleaseSlotLocked(i);
      }
      write_queue_.clear();
      control_.clear();
      sent_.clear();
      open_msg_ = nullptr;
      ack_msg_ = nullptr;
      for (auto& [tag, pending] : pending_cancels_) cancels.push_back(std::move(pending));
      pending_cancels_.clear();
      space_cv_.notify_all();
    }
    if (alarm != nullptr) alarm->Cancel();  // an open timeout left
    for (auto& [batch, completion] : orphans) InvokeNoThrow(batch->on_completion, completion);
    orphans.clear();
    for (PendingCancel& pending : cancels) {
      pending.promise.set_value(absl::Status(code, absl::StrCat("cancel not answered: ", why)));
    }
    {
      // The owner may destroy *this once mu_ is released and no alarm is
      // pending: nothing after.
      std::lock_guard lock(mu_);
      phase_ = Phase::kDone;
      state_cv_.notify_all();
      space_cv_.notify_all();
    }
  }

  bool EndedLocked() const { return phase_ == Phase::kDone && alarms_pending_ == 0; }

  // --- writes ---

  // Decides the current Call's next step: the next message to write, else
  // the half-close, and the release of the write flow's hold once no further
  // write can start on it (its RPC failed or half-closed) and none is in
  // flight (its OnWriteDone would otherwise race with OnDone).
  Actions PumpLocked() {
    Actions actions;
    if (!call_live_) return actions;
    if (!write_in_flight_ && !call_failed_ && !writes_done_started_) {
      if (std::unique_ptr<v1::StreamRequest> next = NextMessageLocked()) {
        write_in_flight_ = true;
        in_flight_ = std::move(next);
        in_flight_answered_ = false;
        actions.write = in_flight_.get();
      } else if (phase_ == Phase::kFinishing && call_opened_ && !gated_) {
        writes_done_started_ = true;
        actions.writes_done = true;
      }
    }
    if (!hold_released_ && !write_in_flight_ && (call_failed_ || writes_done_started_)) {
      hold_released_ = true;
      actions.remove_hold = true;
    }
    if (actions.write != nullptr || actions.writes_done || actions.remove_hold) {
      actions.call = call_.get();
    }
    return actions;
  }

  void Run(const Actions& actions) {
    if (actions.write != nullptr) actions.call->StartWrite(actions.write);
    if (actions.writes_done) actions.call->StartWritesDone();
    if (actions.remove_hold) actions.call->RemoveHold();
  }

  // The open, a replay's end marker and acks first; then, once the RPC is
  // open and past a replay, submits and cancels in order; else, when there
  // is nothing else to write, an ack of what was received.
  std::unique_ptr<v1::StreamRequest> NextMessageLocked() {
    std::unique_ptr<v1::StreamRequest> next;
    if (!control_.empty()) {
      next = std::move(control_.front());
      control_.pop_front();
      if (next.get() == ack_msg_) ack_msg_ = nullptr;
    } else if (!call_opened_ || gated_) {
      return nullptr;
    } else if (!write_queue_.empty()) {
      next = std::move(write_queue_.front());
      write_queue_.pop_front();
      if (next.get() == open_msg_) open_msg_ = nullptr;  // no more appends once writing
    } else if (last_seq_ > acked_seq_) {
      next = std::make_unique<v1::StreamRequest>();
      next->set_ack(last_seq_);
      acked_seq_ = last_seq_;
      unacked_completions_ = 0;
    }
    return next;
  }

  // Acknowledges every message received, ahead of queued submits.
  void QueueAckLocked() {
    if (ack_msg_ == nullptr) {
      auto msg = std::make_unique<v1::StreamRequest>();
      ack_msg_ = msg.get();
      control_.push_back(std::move(msg));
    }
    ack_msg_->set_ack(last_seq_);
    acked_seq_ = last_seq_;
    unacked_completions_ = 0;
  }

  // --- slots ---

  uint64_t TagOf(uint32_t index) const {
    return (uint64_t{slots_[index].generation} << 32) | index;
  }
  // The slot a wire tag names, or null if it names none in use.
  Slot* SlotFor(uint64_t tag, uint32_t* index) {
    const uint32_t i = static_cast<uint32_t>(tag);
    if (i >= slots_.size()) return nullptr;
    Slot& slot = slots_[i];
    if (!slot.in_use || slot.generation != static_cast<uint32_t>(tag >> 32)) return nullptr;
    *index = i;
    return &slot;
  }
  void ReleaseSlotLocked(uint32_t i) {
    Slot& slot = slots_[i];
    slot.in_use = false;
    slot.batch.reset();
    ++slot.generation;
    free_slots_.push_back(i);
  }

  // Whether the stream will end without taking more: it is ending, or its
  // RPC failed and it will not resume.
  bool ClosedLocked() const { return ending_ || (call_failed_ && !options_.resume); }

  absl::Status CheckAcceptingLocked() const {
    if (phase_ == Phase::kFinishing) {
      return absl::FailedPreconditionError("StreamClient::Finish was called");
    }
    if (phase_ == Phase::kDone) {
      if (final_status_.ok()) return absl::FailedPreconditionError("stream has ended");
      return ToAbslStatus(final_status_);
    }
    if (ClosedLocked()) return absl::UnavailableError("stream is ending");
    return absl::OkStatus();
  }

  // Takes a free slot for `op`, rewrites its tag and appends it to the
  // SubmitBatch being assembled (coalescing with earlier unsent ops).
  void EnqueueLocked(v1::Operation& op, size_t index, const std::shared_ptr<Batch>& batch) {
    const uint32_t i = free_slots_.back();
    free_slots_.pop_back();
    Slot& slot = slots_[i];
    slot.in_use = true;
    slot.kind = KindOf(op);
    slot.index = index;
    slot.user_tag = op.tag();
    slot.op_id = 0;
    slot.batch = batch;
    op.set_tag(TagOf(i));
    if (open_msg_ == nullptr ||
        open_msg_->submit().ops_size() >= static_cast<int>(max_batch_ops_)) {
      auto msg = std::make_unique<v1::StreamRequest>();
      msg->mutable_submit()->set_batch_tag(++batch_seq_);
      open_msg_ = msg.get();
      write_queue_.push_back(std::move(msg));
    }
    *open_msg_->mutable_submit()->add_ops() = std::move(op);
  }

  // --- reads ---

  // Whether a message numbered `seq` is new (0: not numbered, always new).
  bool TakeSeq(uint64_t seq) {
    if (seq == 0) return true;
    std::lock_guard lock(mu_);
    if (seq <= last_seq_) return false;  // replayed, and already had
    last_seq_ = seq;
    return true;
  }

  // The sent submit (batch_tag) or cancel (request_tag) answered now, maybe
  // before its OnWriteDone.
  void ForgetSentLocked(bool cancel, uint64_t tag) {
    auto answered = [&](const v1::StreamRequest& msg) {
      return cancel ? msg.has_cancel() && msg.cancel().request_tag() == tag
                    : msg.has_submit() && msg.submit().batch_tag() == tag;
    };
    if (in_flight_ != nullptr && answered(*in_flight_)) {
      in_flight_answered_ = true;
      return;
    }
    for (auto it = sent_.begin(); it != sent_.end(); ++it) {
      if (answered(**it)) {
        sent_.erase(it);
        return;
      }
    }
  }

  void HandleOpened(const v1::StreamOpened& opened) {
    std::shared_ptr<grpc::Alarm> open_timeout;
    Actions actions;
    {
      std::lock_guard lock(mu_);
      if (call_opened_) return;
      call_opened_ = true;
      if (phase_ == Phase::kOpening) {
        session_id_ = opened.session_id();
        lease_ms_ = opened.lease_ms();
        limits_ = opened.limits();
        max_batch_ops_ =
            limits_.max_batch_ops() != 0 ? limits_.max_batch_ops() : kDefaultMaxBatchOps;
        const size_t inflight = limits_.max_inflight_per_session() != 0
                                    ? limits_.max_inflight_per_session()
                                    : kDefaultMaxInflight;
        ack_every_ = std::max<size_t>(1, inflight / 4);
        size_t window = inflight;
        if (options_.max_outstanding != 0) window = std::min(window, options_.max_outstanding);
        max_outstanding_ = window;
        slots_.resize(window);
        free_slots_.reserve(window);
        for (size_t i = window; i-- > 0;) free_slots_.push_back(static_cast<uint32_t>(i));
        phase_ = Phase::kOpen;
        state_cv_.notify_all();
        return;
      }
      // A resumed RPC. The open acknowledged everything received.
      ++resumes_;
      resume_deadline_.reset();
      acked_seq_ = last_seq_;
      unacked_completions_ = 0;
      open_timeout = alarm_;
      if (!sent_.empty()) {
        // Whether those were read shows in the replay, which ends before the
        // `accepted` of any batch sent now: send an empty one and wait for
        // it before sending anything else.
        auto marker = std::make_unique<v1::StreamRequest>();
        marker_tag_ = ++batch_seq_;
        marker->mutable_submit()->set_batch_tag(marker_tag_);
        control_.push_back(std::move(marker));
        gated_ = true;
      }
      actions = PumpLocked();
    }
    if (open_timeout != nullptr) open_timeout->Cancel();
    Run(actions);
  }

  void HandleAccepted(const v1::Accepted& accepted) {
    accepted_scratch_.clear();
    {
      std::lock_guard lock(mu_);
      if (options_.resume) {
        ForgetSentLocked(false, accepted.batch_tag());
        if (gated_ && accepted.batch_tag() == marker_tag_) {
          // The replay is over: what is still unanswered was never read.
          // Send it again, in its order, before anything queued since.
          gated_ = false;
          for (auto it = sent_.rbegin(); it != sent_.rend(); ++it) {
            write_queue_.push_front(std::move(*it));
          }
          sent_.clear();
        }
      }
      for (const v1::AcceptedOp& a : accepted.ops()) {
        uint32_t i;
        Slot* slot = SlotFor(a.tag(), &i);
        if (slot == nullptr) continue;
        slot->op_id = a.op_id();
        if (slot->batch->on_accepted) {
          accepted_scratch_.push_back({slot->batch.get(), {slot->index, slot->user_tag, a.op_id()}});
        }
      }
    }
    // Batches stay alive: their slots are held until the completions arrive,
    // which are read only after this returns.
    for (auto& [batch, op] : accepted_scratch_) InvokeNoThrow(batch->on_accepted, op);
  }

  void HandleCompletions(v1::CompletionBatch& completions) {
    deliveries_.clear();
    {
      std::lock_guard lock(mu_);
      for (v1::Completion& c : *completions.mutable_completions()) {
        uint32_t i;
        Slot* slot = SlotFor(c.tag(), &i);
        if (slot == nullptr) continue;  // not ours (stale or forged tag): drop
        c.set_tag(slot->user_tag);
        deliveries_.emplace_back(std::move(slot->batch), &c);
        ReleaseSlotLocked(i);
      }
      if (space_waiters_ > 0 && !deliveries_.empty()) space_cv_.notify_all();
      if (last_seq_ > acked_seq_) {
        unacked_completions_ += completions.completions_size();
        if (unacked_completions_ >= ack_every_) QueueAckLocked();
      }
    }
    for (auto& [batch, c] : deliveries_) InvokeNoThrow(batch->on_completion, *c);
    deliveries_.clear();  // drops the batch references outside the lock
  }

  void HandleCancelResult(v1::CancelResponse& r) {
    std::optional<PendingCancel> pending;
    {
      std::lock_guard lock(mu_);
      if (options_.resume) ForgetSentLocked(true, r.request_tag());
      auto it = pending_cancels_.find(r.request_tag());
      if (it == pending_cancels_.end()) return;
      pending.emplace(std::move(it->second));
      pending_cancels_.erase(it);
    }
    r.set_request_tag(pending->user_tag);
    pending->promise.set_value(std::move(r));
  }

  const StreamOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Asyncd::Stub> stub_;
  std::string client_name_;
  // Only touched by reactions, which gRPC serializes for the read flow (and
  // one RPC's reads end before the next RPC starts).
  std::vector<std::pair<std::shared_ptr<Batch>, v1::Completion*>> deliveries_;
  std::vector<std::pair<Batch*, AcceptedOp>> accepted_scratch_;
  // Fixed once the stream is open.
  uint64_t session_id_ = 0;
  uint32_t lease_ms_ = 0;
  v1::Limits limits_;
  size_t max_outstanding_ = 0;
  size_t max_batch_ops_ = kDefaultMaxBatchOps;
  size_t ack_every_ = 1;

  mutable std::mutex mu_;
  std::condition_variable state_cv_;  // phase_ or alarms_pending_ changes
  std::condition_variable space_cv_;  // slots freed, or the stream stops accepting
  Phase phase_ = Phase::kOpening;
  bool ending_ = false;            // End has begun
  bool cancel_requested_ = false;  // CancelRpc: do not resume
  grpc::Status final_status_;
  // The current RPC (or the last one, done), and its state.
  std::shared_ptr<Call> call_;
  uint64_t attempt_ = 0;      // RPCs started
  bool call_live_ = false;    // its OnDone has not run
  bool call_opened_ = false;  // its StreamOpened arrived
  bool call_failed_ = false;  // a read or write came back not ok
  bool open_timed_out_ = false;
  bool write_in_flight_ = false;
  bool writes_done_started_ = false;
  bool hold_released_ = false;
  std::unique_ptr<v1::StreamRequest> in_flight_;  // the write in flight
  bool in_flight_answered_ = false;               // its accepted or cancel_result came
  // Messages to write: control_ (open, marker, ack) before write_queue_
  // (submits and cancels, in the caller's order).
  std::deque<std::unique_ptr<v1::StreamRequest>> control_;
  std::deque<std::unique_ptr<v1::StreamRequest>> write_queue_;
  v1::StreamRequest* open_msg_ = nullptr;  // unsent SubmitBatch still taking ops
  v1::StreamRequest* ack_msg_ = nullptr;   // unsent ack in control_
  uint64_t batch_seq_ = 0;
  uint64_t cancel_seq_ = 0;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  int space_waiters_ = 0;
  std::unordered_map<uint64_t, PendingCancel> pending_cancels_;
  // Resuming: numbering, and what was written and not answered yet.
  uint64_t last_seq_ = 0;   // the last numbered message received
  uint64_t acked_seq_ = 0;  // the last acknowledged (or resumed after)
  size_t unacked_completions_ = 0;
  std::deque<std::unique_ptr<v1::StreamRequest>> sent_;  // in write order
  bool gated_ = false;  // a resumed RPC waits for marker_tag_'s accepted
  uint64_t marker_tag_ = 0;
  std::optional<std::chrono::steady_clock::time_point> resume_deadline_;  // while resuming
  std::chrono::milliseconds backoff_{0};
  size_t resumes_ = 0;
  std::shared_ptr<grpc::Alarm> alarm_;  // the last armed
  int alarms_pending_ = 0;              // armed, OnAlarm not yet returned
};

absl::StatusOr<std::unique_ptr<StreamClient>> StreamClient::Create(
    std::shared_ptr<grpc::Channel> channel, std::string_view client_name, uint64_t session_id,
    StreamOptions options) {
  if (channel == nullptr) return absl::InvalidArgumentError("channel is null");
  auto reactor = std::make_shared<Reactor>(options);
  if (absl::Status s = reactor->Open(channel, client_name, session_id); !s.ok()) {
    return s;
  }
  return std::unique_ptr<StreamClient>(new StreamClient(std::move(reactor)));
}

StreamClient::StreamClient(std::shared_ptr<Reactor> reactor) : reactor_(std::move(reactor)) {}

StreamClient::~StreamClient() {
  if (tls_callback_depth == 0) {
    reactor_->Shutdown();
    return;
  }
  // Waiting here could wait on this very thread, and the reactor must not be
  // freed on a gRPC thread: cancel now, then wait and free on a new thread.
  // Until OnDone has run, that thread's reference is what keeps it alive.
  reactor_->CancelRpc();
  try {
    std::thread([reactor = reactor_] { reactor->Shutdown(); }).detach();
  } catch (const std::system_error& e) {
    // No thread to free it on: leak the stream's state rather than free it
    // on a gRPC thread or abort.
    std::fprintf(stderr,
                 "asyncd::client::StreamClient: leaking a stream destroyed in a callback: %s\n",
                 e.what());
    static_cast<void>(new std::shared_ptr<Reactor>(reactor_));
  }
}

uint64_t StreamClient::session_id() const { return reactor_->session_id(); }
uint32_t StreamClient::lease_ms() const { return reactor_->lease_ms(); }
const v1::Limits& StreamClient::limits() const { return reactor_->limits(); }
size_t StreamClient::max_outstanding() const { return reactor_->max_outstanding(); }
size_t StreamClient::outstanding() const { return reactor_->outstanding(); }
size_t StreamClient::resumes() const { return reactor_->resumes(); }

absl::Status StreamClient::Submit(std::vector<v1::Operation> ops, CompletionCallback on_completion,
                                  AcceptedCallback on_accepted) {
  return reactor_->Submit(ops, std::move(on_completion), std::move(on_accepted));
}

std::future<v1::Completion> StreamClient::SubmitOne(v1::Operation op) {
  auto promise = std::make_shared<std::promise<v1::Completion>>();
  std::future<v1::Completion> future = promise->get_future();
  const uint64_t tag = op.tag();
  const v1::OpKind kind = KindOf(op);
  std::vector<v1::Operation> ops;
  ops.push_back(std::move(op));
  absl::Status s = reactor_->Submit(
      ops, [promise](const v1::Completion& c) { promise->set_value(c); }, nullptr);
  if (!s.ok()) {
    promise->set_value(Synthesized(tag, 0, kind, v1::OUTCOME_REJECTED, s.code(), ToStd(s.message())));
  }
  return future;
}

std::future<absl::StatusOr<v1::CancelResponse>> StreamClient::Cancel(v1::CancelRequest request) {
  return reactor_->Cancel(request);
}

absl::Status StreamClient::Finish() { return reactor_->Finish(); }

}  // namespace asyncd::client
