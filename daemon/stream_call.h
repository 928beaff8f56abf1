#pragma once

#include <google/protobuf/arena.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asyncd/v1/asyncd.grpc.pb.h"
#include "daemon/caller.h"
#include "daemon/carry.h"
#include "daemon/convert.h"
#include "daemon/session_table.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

namespace v1 = ::asyncd::v1;

class Service;

/// Stream: batches in, batches out. Backend threads append completions to an
/// ordered outbox; one write is in flight at a time. Reading pauses while the
/// stream holds max_inflight_per_session undelivered ops (flow control). A
/// session the stream opened ends with it. Callbacks never block and hold
/// mu_ only within themselves; cancels are issued without it (a backend may
/// complete a cancelled op on the cancelling thread). Deletes itself after
/// OnDone once no completion is being delivered.
///
/// A resumable stream numbers what it writes after `opened` and keeps each
/// message until the client acks it. At a live restart it stops reading,
/// and once its ops have ended (those the restart cancelled before they did
/// anything are to run again) it leaves its state to the session's Carry,
/// which a stream resuming the session takes back (and the ops the carry
/// runs again, whose ends it then delivers). Lock order: the session's
/// listener lock, then mu_, then the carry's.
class StreamCall final : public grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>,
                         public core::CompletionSink,
                         public SessionListener,
                         public CarryTaker {
 public:
  /// Identifies the caller and starts the first read. `service` outlives
  /// every call; `ctx` is gRPC's, valid until OnDone. gRPC thread.
  StreamCall(Service* service, grpc::CallbackServerContext* ctx);

  /// A message arrived (open, submit, cancel) or the client half-closed.
  /// A bad message ends the stream with its status and cancels its ops.
  /// gRPC thread.
  void OnReadDone(bool ok) override;
  /// A message was written (or the client is gone: its ops are cancelled).
  /// gRPC thread.
  void OnWriteDone(bool ok) override;
  /// The call was cancelled: cancels its ops. gRPC thread.
  void OnCancel() override;
  /// An op ended: its completion goes to the outbox, now or at the end of
  /// the backend's completion batch (OnDeferred). Backend thread.
  void OnComplete(const core::Op& op) noexcept override;
  /// Delivers the completions of ops OnComplete deferred. Backend thread.
  void OnDeferred(std::span<const uint64_t> cookies) noexcept override;
  /// gRPC is done with the call: detaches from the session (ending it if the
  /// stream opened it). gRPC thread.
  void OnDone() override;
  /// The session was closed under the stream: it takes no more work, and
  /// ends FAILED_PRECONDITION once its ops' completions are delivered (a
  /// pending read does not hold it). Closing thread.
  void OnSessionEnded() noexcept override;
  void OnDraining(bool restart) noexcept override;
  /// An op the session's carry runs again ended. Any thread.
  void OnCarriedEnd(uint64_t op_id, v1::Completion* completion) noexcept override;
  void Hold() noexcept override { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Drop() noexcept override { Unref(); }

 private:
  // A received message, parsed onto an arena (one allocation per block, not
  // per op); its strings (paths, write data) are borrowed by its ops until the
  // last one completes. Pooled: the arena keeps its first block, small so that
  // an idle stream holds little (the batch it reads into and kSpareBatches).
  struct Batch {
    static constexpr size_t kFirstBlock = 4 << 10;
    Batch() : arena(ArenaOptions(first_block)) {
      request = google::protobuf::Arena::CreateMessage<v1::StreamRequest>(&arena);
    }
    static google::protobuf::ArenaOptions ArenaOptions(char* block) {
      google::protobuf::ArenaOptions o;
      o.initial_block = block;
      o.initial_block_size = kFirstBlock;
      o.max_block_size = 256 << 10;
      return o;
    }
    void Reset() {
      arena.Reset();
      request = google::protobuf::Arena::CreateMessage<v1::StreamRequest>(&arena);
    }
    alignas(16) char first_block[kFirstBlock];
    google::protobuf::Arena arena;
    v1::StreamRequest* request;
    uint32_t users = 0;  // HandleSubmit and each op still running; under mu_
  };
  struct OpCtx {
    OpBuffers buffers;
    const v1::Operation* request = nullptr;  // in `batch`, for a resumable stream
    std::optional<Carry::Again> again;       // a restart cancelled it: run it again
    uint64_t tag = 0;
    uint64_t op_id = 0;
    uint64_t charged = 0;  // Budget bytes, until its completion is written or dropped
    Batch* batch = nullptr;
    bool linked = false;  // in live_: submitted and not yet completed
    OpCtx* prev = nullptr;
    OpCtx* next = nullptr;
  };
  // Pools are bounded: a burst leaves at most this much behind.
  static constexpr size_t kSpareCtxs = 256;
  static constexpr size_t kKeptReadBuffer = 16 << 10;  // per pooled ctx
  static constexpr size_t kSpareBatches = 2;
  static constexpr size_t kSpareMessages = 2;  // per message kind
  static constexpr uint64_t kRecycledMessageData = 1 << 20;
  struct Outgoing {
    std::unique_ptr<v1::StreamResponse> msg;
    bool ready = true;
    uint32_t completions = 0;  // in msg, not yet handed to gRPC (flow control)
    uint64_t data_bytes = 0;   // read data in msg (message size cap)
    uint64_t charged = 0;      // Budget bytes released once msg is written
  };
  // A resumable stream's message written and not acknowledged yet; its
  // Budget bytes stay charged until it is.
  struct Unacked {
    std::unique_ptr<v1::StreamResponse> msg;
    uint32_t completions = 0;
    uint64_t charged = 0;
  };
  // Messages are reused per kind, clearing the inner message only: clearing
  // a oneof frees its message, and with it every element kept for reuse.
  enum MessageKind { kCompletionsKind, kAcceptedKind };

  ~StreamCall() override;
  void Unref(int n = 1);
  void DeliverLocked(OpCtx* ctx);
  absl::Status Handle();
  absl::Status HandleOpen(const v1::StreamOpen& open);
  // Resumable: takes the session's carry (what a restart left, if any).
  absl::Status TakeCarryLocked(const v1::StreamOpen& open);
  absl::Status HandleAck(uint64_t seq);
  // At a restart, once the ops have ended: leaves the state to the carry.
  void CarryOverLocked();
  absl::Status HandleSubmit();
  void Link(OpCtx* c);
  void Unlink(OpCtx* c);
  void AppendCompletionLocked(v1::Completion& c, uint64_t charged);
  void WriteNextLocked();
  // --- pools (under mu_) ---
  std::unique_ptr<v1::StreamResponse> TakeMessageLocked(MessageKind kind);
  void RecycleMessageLocked(std::unique_ptr<v1::StreamResponse> msg, uint64_t data_bytes);
  Batch* TakeBatchLocked();
  void ReleaseBatchLocked(Batch* b);
  void FreeCtxLocked(OpCtx* ctx);
  void MaybeReadLocked();
  std::vector<uint64_t> LiveIdsLocked() const;
  static void CancelIds(core::Dispatcher& dispatcher, const std::vector<uint64_t>& ids);
  void MaybeFinishLocked();
  void ReleaseLeaseLocked();  // once: the stream stops pausing the lease
  void LetGoOfCarryLocked();  // once: a resumable stream leaves the session's carry

  Service* const service_;
  grpc::CallbackServerContext* const ctx_;
  const Caller caller_;
  std::shared_ptr<SessionMeta> meta_;
  Batch* in_;  // read into; only the read flow changes it (under mu_ when it does)
  std::unique_ptr<v1::StreamResponse> current_;  // being written
  uint64_t current_data_bytes_ = 0;
  // HandleSubmit's per-batch vectors, kept (reads are one at a time).
  std::vector<OpCtx*> scratch_ctxs_;
  std::vector<core::OpRequest> scratch_requests_;
  std::vector<int> scratch_index_;
  std::vector<absl::Status> scratch_rejected_;
  std::vector<absl::StatusOr<core::OpId>> scratch_ids_;
  std::vector<uint64_t> scratch_op_ids_;

  std::mutex mu_;
  std::deque<Outgoing> outbox_;
  std::vector<OpCtx*> free_ctx_;
  bool submitting_ = false;  // HandleSubmit holds ctxs: FreeCtxLocked must not delete
  std::vector<Batch*> spare_batches_;
  std::vector<std::unique_ptr<v1::StreamResponse>> spare_messages_[2];
  OpCtx* live_ = nullptr;
  size_t inflight_ = 0;
  size_t undelivered_ = 0;        // completions in outbox_
  uint64_t current_charged_ = 0;  // Budget bytes of current_, released by OnWriteDone
  bool reading_ = true;
  bool writing_ = false;
  bool half_closed_ = false;
  bool broken_ = false;
  bool finished_ = false;
  bool lease_released_ = false;
  bool session_ended_ = false;  // closed under us: finish without waiting for a read
  bool draining_ = false;       // the daemon drains: finish once the ops are done, reading meanwhile
  // Resumable streams (set by HandleOpen before any op).
  bool resumable_ = false;
  std::shared_ptr<Carry> carry_;
  uint64_t next_seq_ = 1;
  std::deque<Unacked> unacked_;
  size_t unacked_completions_ = 0;
  uint64_t acked_ = 0;                  // the highest seq the client acked
  uint32_t current_completions_ = 0;    // in current_
  std::vector<uint64_t> carried_live_;  // the carry's ops this stream delivers
  std::vector<Carry::Again> again_;     // ops a restart cancelled, to run again
  std::atomic<bool> restarting_{false};  // a live restart: read no more, carry over
  bool carried_ = false;                 // the state went to the carry
  bool let_go_ = false;                  // LetGoOfCarryLocked ran
  grpc::Status end_status_ = grpc::Status::OK;
  std::atomic<int> refs_{1};  // OnDone's; each OnComplete holds one more until delivered
};

}  // namespace asyncd::daemon
