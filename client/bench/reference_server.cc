// A read is answered with block_size bytes copied from memory (the daemon
// copies as much, from the page cache), everything else succeeds at once,
// and each SubmitBatch gets its Accepted message and then all its
// completions in one CompletionBatch: the fewest messages the protocol
// allows. asyncd-bench measured against it is what gRPC alone costs for the
// same client, messages and payload bytes.

#include "client/bench/reference_server.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "asyncd/v1/asyncd.grpc.pb.h"

namespace asyncd::client::bench {
namespace {

constexpr uint64_t kSessionId = 1;
constexpr uint32_t kHandle = 1;
constexpr int kMaxMessageBytes = 64 << 20;

v1::Limits ReferenceLimits() {
  v1::Limits limits;
  limits.set_max_batch_ops(1024);
  limits.set_max_op_bytes(1 << 20);
  limits.set_max_inflight_per_session(1 << 20);
  limits.set_max_message_bytes(kMaxMessageBytes);
  return limits;
}

// The completion of `op`, as the daemon would fill it for a success.
void Answer(const v1::Operation& op, uint64_t op_id, const std::string& data,
            v1::Completion& c) {
  c.set_tag(op.tag());
  c.set_op_id(op_id);
  c.set_outcome(v1::OUTCOME_COMPLETED);
  c.set_backend(v1::BACKEND_IO_URING);
  switch (op.kind_case()) {
    case v1::Operation::kOpen:
      c.set_handle(kHandle);
      c.set_result(static_cast<int32_t>(kHandle));
      break;
    case v1::Operation::kRead: {
      const size_t n = std::min<size_t>(op.read().length(), data.size());
      c.set_data(data.data(), n);
      c.set_result(static_cast<int32_t>(n));
      c.set_bytes_done(n);
      break;
    }
    case v1::Operation::kWrite:
      c.set_result(static_cast<int32_t>(op.write().data().size()));
      c.set_bytes_done(op.write().data().size());
      break;
    case v1::Operation::kStatx:
      // Reported as large as any bench file, so that none is written.
      c.mutable_stat()->set_size_bytes(uint64_t{1} << 50);
      break;
    default:
      break;
  }
}

class ReferenceService final : public v1::Asyncd::CallbackService {
 public:
  explicit ReferenceService(uint32_t block_size) : data_(block_size, 'r') {}

  grpc::ServerUnaryReactor* OpenSession(grpc::CallbackServerContext* ctx,
                                        const v1::OpenSessionRequest*,
                                        v1::OpenSessionResponse* response) override {
    response->set_session_id(kSessionId);
    *response->mutable_limits() = ReferenceLimits();
    return Done(ctx);
  }
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* ctx,
                                         const v1::CloseSessionRequest*,
                                         v1::CloseSessionResponse*) override {
    return Done(ctx);
  }
  grpc::ServerUnaryReactor* Submit(grpc::CallbackServerContext* ctx,
                                   const v1::SubmitRequest* request,
                                   v1::Completion* response) override {
    Answer(request->op(), ++next_id_, data_, *response);
    return Done(ctx);
  }
  grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>* Stream(
      grpc::CallbackServerContext*) override {
    return new StreamCall(this);
  }

 private:
  static grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx) {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  class StreamCall final : public grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse> {
   public:
    explicit StreamCall(ReferenceService* service) : service_(service) { StartRead(&in_); }

    void OnReadDone(bool ok) override {
      std::lock_guard lock(mu_);
      if (!ok) {
        read_closed_ = true;
        MaybeFinishLocked();
        return;
      }
      if (in_.has_open()) {
        auto& out = Queue();
        out.mutable_opened()->set_session_id(kSessionId);
        *out.mutable_opened()->mutable_limits() = ReferenceLimits();
      } else if (in_.has_submit()) {
        const v1::SubmitBatch& batch = in_.submit();
        v1::Accepted* accepted = Queue().mutable_accepted();
        accepted->set_batch_tag(batch.batch_tag());
        v1::CompletionBatch* completions = Queue().mutable_completions();
        for (const v1::Operation& op : batch.ops()) {
          const uint64_t id = ++service_->next_id_;
          v1::AcceptedOp* a = accepted->add_ops();
          a->set_tag(op.tag());
          a->set_op_id(id);
          Answer(op, id, service_->data_, *completions->add_completions());
        }
      } else if (in_.has_cancel()) {
        // Every op completed as it was accepted: a cancel finds none.
        Queue().mutable_cancel_result()->set_request_tag(in_.cancel().request_tag());
      }
      WriteNextLocked();
      StartRead(&in_);
    }

    void OnWriteDone(bool ok) override {
      std::lock_guard lock(mu_);
      writing_ = false;
      out_.pop_front();
      if (!ok) broken_ = true;
      WriteNextLocked();
      MaybeFinishLocked();
    }

    void OnDone() override { delete this; }

   private:
    v1::StreamResponse& Queue() { return out_.emplace_back(); }

    void WriteNextLocked() {
      if (writing_ || broken_ || out_.empty()) return;
      writing_ = true;
      StartWrite(&out_.front());
    }

    void MaybeFinishLocked() {
      if (finished_ || !read_closed_ || writing_) return;
      if (!broken_ && !out_.empty()) return;
      finished_ = true;
      Finish(grpc::Status::OK);
    }

    ReferenceService* const service_;
    v1::StreamRequest in_;
    std::mutex mu_;
    std::deque<v1::StreamResponse> out_;  // front() is being written
    bool writing_ = false;
    bool read_closed_ = false;
    bool broken_ = false;
    bool finished_ = false;
  };

  const std::string data_;
  std::atomic<uint64_t> next_id_{0};
};

}  // namespace

ReferenceServer::ReferenceServer(std::unique_ptr<grpc::Server> server,
                                 std::unique_ptr<grpc::Service> service)
    : service_(std::move(service)), server_(std::move(server)) {}

ReferenceServer::~ReferenceServer() { server_->Shutdown(); }

absl::StatusOr<std::unique_ptr<ReferenceServer>> ReferenceServer::Start(const std::string& listen,
                                                                         uint32_t block_size) {
  auto service = std::make_unique<ReferenceService>(block_size);
  grpc::ServerBuilder builder;
  builder.RegisterService(service.get());
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) return absl::UnavailableError("cannot serve on " + listen);
  return std::unique_ptr<ReferenceServer>(
      new ReferenceServer(std::move(server), std::move(service)));
}

int RunReferenceServer(const std::string& listen, uint32_t block_size) {
  // Blocked before gRPC starts its threads, which inherit the mask.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  absl::StatusOr<std::unique_ptr<ReferenceServer>> server =
      ReferenceServer::Start(listen, block_size);
  if (!server.ok()) {
    std::fprintf(stderr, "asyncd-bench: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  std::printf("serving on %s\n", listen.c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  return 0;
}

}  // namespace asyncd::client::bench
