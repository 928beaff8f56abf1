#include "asyncd/stream_client.h"

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

// The reactor owns all stream state. Lifetime: owned by the StreamClient,
// whose every exit path (failed Open, ~StreamClient) waits for OnDone to set
// kDone first, on the owner's thread or, for a StreamClient destroyed inside
// a callback, on a thread of the library's. It must never be destroyed on a
// gRPC thread: the stub holds the channel, and a channel whose last reference
// drops on the callback
// completion queue's thread shuts down and frees the queue that thread is
// still polling (gRPC 1.51 aborts in grpc_cq_internal_unref).
//
// Locking: mu_ guards everything below it. No gRPC Start* call and no user
// callback runs with mu_ held (gRPC may run reactions inline in Start*).
class StreamClient::Reactor final
    : public grpc::ClientBidiReactor<v1::StreamRequest, v1::StreamResponse> {
 public:
  enum class Phase { kOpening, kOpen, kFinishing, kDone };

  explicit Reactor(StreamOptions options) : options_(options) {}

  // Starts the call and waits for StreamOpened.
  absl::Status Open(const std::shared_ptr<grpc::Channel>& channel, std::string_view client_name,
                    uint64_t session_id) {
    stub_ = v1::Asyncd::NewStub(channel);
    auto open = std::make_unique<v1::StreamRequest>();
    open->mutable_open()->set_session_id(session_id);
    open->mutable_open()->set_client_name(std::string(client_name));
    open->mutable_open()->set_lease_ms(options_.lease_ms);
    v1::StreamRequest* first = open.get();
    {
      std::lock_guard lock(mu_);
      write_queue_.push_back(std::move(open));
      write_in_flight_ = true;
    }
    stub_->async()->Stream(&context_, this);
    // One hold for the write flow, which is driven from user threads; the
    // read flow restarts itself from OnReadDone and needs none.
    AddHold();
    StartWrite(first);
    StartRead(response_);
    StartCall();

    std::unique_lock lock(mu_);
    if (!state_cv_.wait_for(lock, options_.open_timeout,
                            [&] { return phase_ != Phase::kOpening; })) {
      lock.unlock();
      context_.TryCancel();
      lock.lock();
      state_cv_.wait(lock, [&] { return phase_ == Phase::kDone; });
      return absl::DeadlineExceededError("timed out waiting for StreamOpened");
    }
    if (phase_ == Phase::kDone) {
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
          return free_slots_.size() >= want || phase_ != Phase::kOpen || stream_failed_;
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
      if (v1::StreamRequest* next = MaybeStartWriteLocked()) {
        lock.unlock();
        StartWrite(next);
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
    if (v1::StreamRequest* next = MaybeStartWriteLocked()) {
      lock.unlock();
      StartWrite(next);
    }
    return future;
  }

  absl::Status Finish() {
    if (tls_callback_depth > 0) {
      return absl::FailedPreconditionError("StreamClient::Finish called from a callback");
    }
    bool writes_done = false;
    bool release_hold = false;
    std::unique_lock lock(mu_);
    if (phase_ == Phase::kOpen) {
      phase_ = Phase::kFinishing;
      space_cv_.notify_all();
      // With no write in flight the queue is empty (a queued message always
      // has a write started), so we can half-close now; else OnWriteDone does.
      if (!write_in_flight_ && !stream_failed_ && !writes_done_started_) {
        writes_done_started_ = true;
        writes_done = true;
      }
      release_hold = MaybeReleaseHoldLocked(writes_done);
    }
    lock.unlock();
    if (writes_done) StartWritesDone();
    if (release_hold) RemoveHold();
    lock.lock();
    state_cv_.wait(lock, [&] { return phase_ == Phase::kDone; });
    return ToAbslStatus(final_status_);
  }

  // Cancels the RPC unless it has ended. Never blocks.
  void CancelRpc() {
    {
      std::lock_guard lock(mu_);
      if (phase_ == Phase::kDone) return;
    }
    context_.TryCancel();
  }

  // Cancels the RPC unless it has ended, and waits for OnDone. Not on a
  // callback thread: OnDone may need it.
  void Shutdown() {
    CancelRpc();
    std::unique_lock lock(mu_);
    state_cv_.wait(lock, [&] { return phase_ == Phase::kDone; });
  }

  // --- reactions (gRPC threads) ---

  void OnWriteDone(bool ok) override {
    std::unique_ptr<v1::StreamRequest> written;  // freed outside the lock
    v1::StreamRequest* next = nullptr;
    bool writes_done = false;
    std::unique_lock lock(mu_);
    written = std::move(write_queue_.front());
    write_queue_.pop_front();
    write_in_flight_ = false;
    if (!ok) {
      // The stream is broken; the read side will see it and OnDone fails the
      // rest. Queued messages stay for OnDone to report as not sent.
      stream_failed_ = true;
      space_cv_.notify_all();
    } else if ((next = MaybeStartWriteLocked()) == nullptr && phase_ == Phase::kFinishing &&
               !writes_done_started_) {
      writes_done_started_ = true;
      writes_done = true;
    }
    const bool release_hold = MaybeReleaseHoldLocked(writes_done);
    lock.unlock();
    written.reset();
    if (next != nullptr) StartWrite(next);
    if (writes_done) StartWritesDone();
    if (release_hold) RemoveHold();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      std::unique_lock lock(mu_);
      stream_failed_ = true;
      space_cv_.notify_all();
      const bool release_hold = MaybeReleaseHoldLocked(false);
      lock.unlock();
      if (release_hold) RemoveHold();
      return;  // no more reads; OnDone follows
    }
    switch (response_->msg_case()) {
      case v1::StreamResponse::kOpened:
        HandleOpened();
        break;
      case v1::StreamResponse::kAccepted:
        HandleAccepted();
        break;
      case v1::StreamResponse::kCompletions:
        HandleCompletions();
        break;
      case v1::StreamResponse::kCancelResult:
        HandleCancelResult();
        break;
      default:
        break;  // a message kind from a newer daemon: ignore
    }
    read_arena_.Reset();
    response_ = NewResponse();
    StartRead(response_);
  }

  void OnDone(const grpc::Status& status) override {
    std::vector<std::pair<std::shared_ptr<Batch>, v1::Completion>> orphans;
    std::vector<PendingCancel> cancels;
    const absl::StatusCode code = status.ok() ? absl::StatusCode::kUnknown
                                              : static_cast<absl::StatusCode>(status.error_code());
    const std::string why =
        status.ok() ? std::string("stream ended OK without this completion")
                    : absl::StrCat("stream ended: ", status.error_message());
    {
      std::lock_guard lock(mu_);
      final_status_ = status;
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
      open_msg_ = nullptr;
      for (auto& [tag, pending] : pending_cancels_) cancels.push_back(std::move(pending));
      pending_cancels_.clear();
    }
    for (auto& [batch, completion] : orphans) InvokeNoThrow(batch->on_completion, completion);
    orphans.clear();
    for (PendingCancel& pending : cancels) {
      pending.promise.set_value(absl::Status(code, absl::StrCat("cancel not answered: ", why)));
    }
    {
      // The owner may destroy *this once mu_ is released: nothing after.
      std::lock_guard lock(mu_);
      phase_ = Phase::kDone;
      state_cv_.notify_all();
      space_cv_.notify_all();
    }
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

 private:
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

  absl::Status CheckAcceptingLocked() const {
    if (phase_ == Phase::kFinishing) {
      return absl::FailedPreconditionError("StreamClient::Finish was called");
    }
    if (phase_ == Phase::kDone) {
      if (final_status_.ok()) return absl::FailedPreconditionError("stream has ended");
      return ToAbslStatus(final_status_);
    }
    if (stream_failed_) return absl::UnavailableError("stream is ending");
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

  // If no write is in flight and something is queued, marks the front as in
  // flight and returns it: the caller must StartWrite it after unlocking.
  v1::StreamRequest* MaybeStartWriteLocked() {
    if (write_in_flight_ || write_queue_.empty() || stream_failed_) return nullptr;
    write_in_flight_ = true;
    v1::StreamRequest* front = write_queue_.front().get();
    if (front == open_msg_) open_msg_ = nullptr;  // no more appends once writing
    return front;
  }

  // The write-flow hold goes once no further write can start: the stream
  // failed or the half-close was issued, and no write is in flight (its
  // OnWriteDone would otherwise race with OnDone).
  bool MaybeReleaseHoldLocked(bool writes_done_now) {
    if (hold_released_ || write_in_flight_) return false;
    if (!stream_failed_ && !writes_done_now) return false;
    hold_released_ = true;
    return true;
  }

  void HandleOpened() {
    std::lock_guard lock(mu_);
    if (phase_ != Phase::kOpening) return;
    const v1::StreamOpened& opened = response_->opened();
    session_id_ = opened.session_id();
    lease_ms_ = opened.lease_ms();
    limits_ = opened.limits();
    max_batch_ops_ = limits_.max_batch_ops() != 0 ? limits_.max_batch_ops() : kDefaultMaxBatchOps;
    size_t window = limits_.max_inflight_per_session() != 0 ? limits_.max_inflight_per_session()
                                                             : kDefaultMaxInflight;
    if (options_.max_outstanding != 0) window = std::min(window, options_.max_outstanding);
    max_outstanding_ = window;
    slots_.resize(window);
    free_slots_.reserve(window);
    for (size_t i = window; i-- > 0;) free_slots_.push_back(static_cast<uint32_t>(i));
    phase_ = Phase::kOpen;
    state_cv_.notify_all();
  }

  void HandleAccepted() {
    accepted_scratch_.clear();
    {
      std::lock_guard lock(mu_);
      for (const v1::AcceptedOp& a : response_->accepted().ops()) {
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

  void HandleCompletions() {
    deliveries_.clear();
    {
      std::lock_guard lock(mu_);
      for (v1::Completion& c : *response_->mutable_completions()->mutable_completions()) {
        uint32_t i;
        Slot* slot = SlotFor(c.tag(), &i);
        if (slot == nullptr) continue;  // not ours (stale or forged tag): drop
        c.set_tag(slot->user_tag);
        deliveries_.emplace_back(std::move(slot->batch), &c);
        ReleaseSlotLocked(i);
      }
      if (space_waiters_ > 0 && !deliveries_.empty()) space_cv_.notify_all();
    }
    for (auto& [batch, c] : deliveries_) InvokeNoThrow(batch->on_completion, *c);
    deliveries_.clear();  // drops the batch references outside the lock
  }

  void HandleCancelResult() {
    v1::CancelResponse& r = *response_->mutable_cancel_result();
    std::optional<PendingCancel> pending;
    {
      std::lock_guard lock(mu_);
      auto it = pending_cancels_.find(r.request_tag());
      if (it == pending_cancels_.end()) return;
      pending.emplace(std::move(it->second));
      pending_cancels_.erase(it);
    }
    r.set_request_tag(pending->user_tag);
    pending->promise.set_value(std::move(r));
  }

  const StreamOptions options_;
  std::unique_ptr<v1::Asyncd::Stub> stub_;
  grpc::ClientContext context_;
  // Only touched by reactions, which gRPC serializes for the read flow.
  // Each message is read onto an arena that is reset after it is handled:
  // parsing a batch of completions then takes a few blocks, not an
  // allocation per completion and string (reusing one message does not
  // help: parsing clears its oneof, which frees the completions).
  v1::StreamResponse* NewResponse() {
    return google::protobuf::Arena::CreateMessage<v1::StreamResponse>(&read_arena_);
  }
  google::protobuf::Arena read_arena_;
  v1::StreamResponse* response_ = NewResponse();
  std::vector<std::pair<std::shared_ptr<Batch>, v1::Completion*>> deliveries_;
  std::vector<std::pair<Batch*, AcceptedOp>> accepted_scratch_;
  // Fixed once the stream is open.
  uint64_t session_id_ = 0;
  uint32_t lease_ms_ = 0;
  v1::Limits limits_;
  size_t max_outstanding_ = 0;
  size_t max_batch_ops_ = kDefaultMaxBatchOps;

  mutable std::mutex mu_;
  std::condition_variable state_cv_;  // phase_ changes
  std::condition_variable space_cv_;  // slots freed, or the stream stops accepting
  Phase phase_ = Phase::kOpening;
  bool stream_failed_ = false;  // a read or write came back not ok
  grpc::Status final_status_;
  std::deque<std::unique_ptr<v1::StreamRequest>> write_queue_;  // front in flight if write_in_flight_
  v1::StreamRequest* open_msg_ = nullptr;  // unsent SubmitBatch still taking ops
  bool write_in_flight_ = false;
  bool writes_done_started_ = false;
  bool hold_released_ = false;
  uint64_t batch_seq_ = 0;
  uint64_t cancel_seq_ = 0;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  int space_waiters_ = 0;
  std::unordered_map<uint64_t, PendingCancel> pending_cancels_;
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
