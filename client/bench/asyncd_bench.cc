// asyncd-bench: a closed-loop load generator for asyncd, built on the client
// library. Stream mode keeps --queue-depth ops outstanding per stream,
// submitted in SubmitBatches of --batch; unary mode runs --threads workers,
// each with one Submit call in flight. Latency is per op, from the moment the
// op is handed to the library to the moment its completion is delivered.
//
// Reference and helper modes (for tests/bench/compare.sh):
//   health  like unary, but each call is a bare grpc.health.v1.Health/Check
//           (GenericStub, hand-encoded empty request): the cost of a unary
//           RPC on the same server with no operation behind it.
//   hold    submits --queue-depth reads of --block-size at the file position
//           (offset -1) on --file (e.g. a FIFO nobody writes), waits until
//           the daemon has accepted them all, prints one line, keeps them
//           blocked for --duration, then drops the stream (the daemon
//           cancels them). No data file is prepared.
// Ring modes use the local shared-memory ring (RingClient) of a session of
// their own:
//   ring         like stream: --queue-depth ops in flight per ring (one per
//                --connections), submitted --batch at a time; reads and
//                writes use a block of the ring's buffer area each.
//   ring-cancel  rounds of --queue-depth reads blocked on --file (a FIFO
//                nobody writes), listed, then cancelled one at a time with the
//                Cancel RPC (as `asyncctl ops cancel`): the latency from the
//                RPC to the reaped CANCELLED completion.
// --list-every (stream and ring modes) runs an operator beside the load that
// lists every in-flight op (ListOperations, all pages) at that period.
//
// Exit codes: 0 success, 1 setup or run failure, 2 bad flags.

#include <string.h>  // strerrorname_np

#include <grpcpp/generic/generic_stub.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asyncd/client.h"
#include "client/bench/bench_util.h"
#include "client/bench/reference_server.h"

namespace asyncd::client::bench {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t NowNs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
          .count());
}

struct Config {
  std::string target;
  std::string mode = "stream";
  std::string mix_spec = "nop=1";
  std::vector<MixEntry> mix;
  uint32_t queue_depth = 64;
  uint32_t batch = 16;
  std::string duration_spec = "10s";
  std::string warmup_spec = "1s";
  std::chrono::nanoseconds duration{};
  std::chrono::nanoseconds warmup{};
  uint32_t connections = 1;
  bool coalesce = false;
  uint32_t block_size = 4096;
  std::string file = "asyncd-bench.dat";
  uint64_t file_size = 64ull << 20;
  uint64_t timeout_us = 100;
  std::string output = "text";
  std::string list_every_spec = "0";
  std::chrono::nanoseconds list_every{};
};

// What the --list-every operator did during the run.
struct ListerStats {
  uint64_t lists = 0;
  uint64_t listed_ops = 0;
  uint64_t errors = 0;
  LatencyHistogram latency;  // one full listing (all pages)
};

// Per stream or per unary worker; touched by one thread at a time (the
// stream's callback thread, or the worker), merged at the end.
struct Stats {
  LatencyHistogram latency;
  // The daemon's own view of each op (Completion.duration_us: accepted to
  // finished, in ns here); the rest of `latency` is transport and client.
  LatencyHistogram daemon;
  std::array<uint64_t, 8> outcomes{};    // by v1::Outcome (7 = unknown values)
  std::array<uint64_t, 256> errnos{};    // COMPLETED with error_number, by errno
  std::array<uint64_t, 17> rpc_errors{};  // unary: gRPC status codes
  uint64_t measured_ops = 0;             // completed ops submitted inside the window

  void Merge(const Stats& o) {
    latency.Merge(o.latency);
    daemon.Merge(o.daemon);
    for (size_t i = 0; i < outcomes.size(); ++i) outcomes[i] += o.outcomes[i];
    for (size_t i = 0; i < errnos.size(); ++i) errnos[i] += o.errnos[i];
    for (size_t i = 0; i < rpc_errors.size(); ++i) rpc_errors[i] += o.rpc_errors[i];
    measured_ops += o.measured_ops;
  }
};

// The measurement window, in NowNs() time.
struct Window {
  uint64_t start_ns;  // end of warmup
  uint64_t end_ns;
  bool Contains(uint64_t t) const { return t >= start_ns && t < end_ns; }
};

void RecordCompletion(Stats& stats, const v1::Completion& c, uint64_t submitted_ns,
                      uint64_t now_ns, const Window& window) {
  if (!window.Contains(submitted_ns)) return;
  ++stats.measured_ops;
  stats.latency.Record(now_ns - submitted_ns);
  stats.daemon.Record(c.duration_us() * 1000);
  const int outcome = c.outcome();
  ++stats.outcomes[outcome >= 0 && outcome < 7 ? outcome : 7];
  if (c.outcome() == v1::OUTCOME_COMPLETED && c.error_number() != 0) {
    ++stats.errnos[static_cast<uint32_t>(c.error_number()) & 255];
  }
}

// Builds ops of the mix. One per stream or worker.
class OpFactory {
 public:
  OpFactory(const Config& config, uint32_t handle, uint64_t seed)
      : config_(config), picker_(config.mix), handle_(handle), random_(seed),
        blocks_(std::max<uint64_t>(1, config.file_size / config.block_size)),
        write_data_(config.block_size, 'x') {}

  void Fill(v1::Operation& op) {
    switch (picker_.Pick(random_.Next())) {
      case BenchOp::kNop:
        op.mutable_nop();
        break;
      case BenchOp::kRead: {
        v1::Read* read = op.mutable_read();
        read->set_handle(handle_);
        read->set_offset(RandomOffset());
        read->set_length(config_.block_size);
        break;
      }
      case BenchOp::kWrite: {
        v1::Write* write = op.mutable_write();
        write->set_handle(handle_);
        write->set_offset(RandomOffset());
        write->set_data(write_data_);
        break;
      }
      case BenchOp::kTimeout:
        op.mutable_timeout()->set_duration_us(config_.timeout_us);
        break;
    }
  }

  // The same mix as a ring entry: a read or write moves the block at
  // `buffer_offset` of the ring's buffer area.
  void FillRing(asyncd_ring_sqe* sqe, uint64_t buffer_offset, uint64_t user_data) {
    switch (picker_.Pick(random_.Next())) {
      case BenchOp::kNop:
        RingClient::PrepNop(sqe, user_data);
        break;
      case BenchOp::kRead:
        RingClient::PrepRead(sqe, handle_, RandomOffset(), config_.block_size, buffer_offset,
                             user_data);
        break;
      case BenchOp::kWrite:
        RingClient::PrepWrite(sqe, handle_, RandomOffset(), config_.block_size, buffer_offset,
                              user_data);
        break;
      case BenchOp::kTimeout:
        RingClient::PrepTimeout(sqe, std::chrono::microseconds(config_.timeout_us), user_data);
        break;
    }
  }

 private:
  int64_t RandomOffset() {
    return static_cast<int64_t>((random_.Next() % blocks_) * config_.block_size);
  }

  const Config& config_;
  MixPicker picker_;
  uint32_t handle_;
  FastRandom random_;
  uint64_t blocks_;
  std::string write_data_;
};

bool NeedsFile(const Config& config) {
  MixPicker picker(config.mix);
  return picker.Has(BenchOp::kRead) || picker.Has(BenchOp::kWrite);
}

v1::OpenMode FileAccess(const Config& config) {
  return MixPicker(config.mix).Has(BenchOp::kWrite) ? v1::OPEN_MODE_READ_WRITE
                                                    : v1::OPEN_MODE_READ_ONLY;
}

// Creates the data file (through the daemon) and fills it to --file-size.
absl::Status PrepareFile(Client& client, const Config& config) {
  absl::StatusOr<uint64_t> session = client.OpenSession("asyncd-bench-setup");
  if (!session.ok()) return session.status();
  absl::Status result = [&]() -> absl::Status {
    absl::StatusOr<uint32_t> handle =
        client.Open(*session, config.file, v1::OPEN_MODE_READ_WRITE, {.create = true});
    if (!handle.ok()) return handle.status();
    absl::StatusOr<v1::Stat> stat = client.Stat(*session, *handle);
    if (!stat.ok()) return stat.status();
    const std::string chunk(1 << 20, 'a');
    for (uint64_t off = stat->size_bytes(); off < config.file_size;) {
      const uint64_t n = std::min<uint64_t>(chunk.size(), config.file_size - off);
      absl::StatusOr<uint64_t> written = client.Write(
          *session, *handle, static_cast<int64_t>(off), std::string_view(chunk).substr(0, n));
      if (!written.ok()) return written.status();
      if (*written == 0) return absl::DataLossError("write of the bench file made no progress");
      off += *written;
    }
    return client.Close(*session, *handle);
  }();
  (void)client.CloseSession(*session);
  return result;
}

// --- stream mode ---

class StreamWorker {
 public:
  StreamWorker(const Config& config, const Window& window, uint32_t index)
      : config_(config), window_(window), index_(index) {}

  absl::Status Setup(const std::shared_ptr<grpc::Channel>& channel) {
    absl::StatusOr<std::unique_ptr<StreamClient>> stream = StreamClient::Create(
        channel, "asyncd-bench", 0,
        {.max_outstanding = config_.queue_depth, .coalesce = config_.coalesce});
    if (!stream.ok()) return stream.status();
    stream_ = std::move(*stream);
    uint32_t handle = 0;
    if (NeedsFile(config_)) {
      v1::Operation op;
      op.mutable_open()->set_path(config_.file);
      op.mutable_open()->set_access(FileAccess(config_));
      v1::Completion c = stream_->SubmitOne(std::move(op)).get();
      if (absl::Status s = CompletionToStatus(c, "open " + config_.file); !s.ok()) return s;
      handle = c.handle();
    }
    factory_ = std::make_unique<OpFactory>(config_, handle, 0x1234567 + index_);
    return absl::OkStatus();
  }

  void Start() { thread_ = std::thread([this] { Run(); }); }

  absl::Status Join() {
    thread_.join();
    absl::Status finish = stream_->Finish();
    return run_status_.ok() ? finish : run_status_;
  }

  const Stats& stats() const { return stats_; }

 private:
  void Run() {
    const int64_t batch = config_.batch;
    const int64_t limit = static_cast<int64_t>(config_.queue_depth) - batch;
    auto on_completion = [this](const v1::Completion& c) {
      RecordCompletion(stats_, c, c.tag(), NowNs(), window_);
      const int64_t left = outstanding_.fetch_sub(1) - 1;
      if (left <= static_cast<int64_t>(config_.queue_depth) - config_.batch &&
          driver_waiting_.load()) {
        std::lock_guard lock(mu_);
        cv_.notify_one();
      }
    };
    while (NowNs() < window_.end_ns) {
      // Wait for room for a whole batch, so that the op's clock starts when
      // it is really submitted, not while the driver waits for the window.
      if (outstanding_.load() > limit) {
        std::unique_lock lock(mu_);
        driver_waiting_.store(true);
        cv_.wait_for(lock, std::chrono::milliseconds(10),
                     [&] { return outstanding_.load() <= limit; });
        driver_waiting_.store(false);
        continue;
      }
      std::vector<v1::Operation> ops(static_cast<size_t>(batch));
      for (v1::Operation& op : ops) factory_->Fill(op);
      const uint64_t now = NowNs();
      for (v1::Operation& op : ops) op.set_tag(now);
      outstanding_.fetch_add(batch);
      if (absl::Status s = stream_->Submit(std::move(ops), on_completion); !s.ok()) {
        outstanding_.fetch_sub(batch);
        run_status_ = s;
        return;
      }
    }
  }

  const Config& config_;
  const Window& window_;
  const uint32_t index_;
  std::unique_ptr<StreamClient> stream_;
  std::unique_ptr<OpFactory> factory_;
  std::thread thread_;
  absl::Status run_status_;
  Stats stats_;  // written by the stream's callback thread only
  std::atomic<int64_t> outstanding_{0};
  std::atomic<bool> driver_waiting_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

// --- unary mode ---

class UnaryWorker {
 public:
  UnaryWorker(Client& client, const Config& config, const Window& window, uint32_t index)
      : client_(client), config_(config), window_(window), index_(index) {}

  absl::Status Setup() {
    absl::StatusOr<uint64_t> session = client_.OpenSession("asyncd-bench");
    if (!session.ok()) return session.status();
    session_ = *session;
    uint32_t handle = 0;
    if (NeedsFile(config_)) {
      absl::StatusOr<uint32_t> h = client_.Open(session_, config_.file, FileAccess(config_));
      if (!h.ok()) return h.status();
      handle = *h;
    }
    factory_ = std::make_unique<OpFactory>(config_, handle, 0x7654321 + index_);
    return absl::OkStatus();
  }

  void Start() { thread_ = std::thread([this] { Run(); }); }

  absl::Status Join() {
    thread_.join();
    (void)client_.CloseSession(session_);
    return absl::OkStatus();
  }

  const Stats& stats() const { return stats_; }

 private:
  void Run() {
    v1::Operation op;
    while (NowNs() < window_.end_ns) {
      op.Clear();
      factory_->Fill(op);
      const uint64_t start = NowNs();
      absl::StatusOr<v1::Completion> c = client_.Submit(session_, op);
      const uint64_t end = NowNs();
      if (c.ok()) {
        RecordCompletion(stats_, *c, start, end, window_);
      } else if (window_.Contains(start)) {
        ++stats_.rpc_errors[std::min<size_t>(static_cast<size_t>(c.status().code()), 16)];
      }
    }
  }

  Client& client_;
  const Config& config_;
  const Window& window_;
  const uint32_t index_;
  uint64_t session_ = 0;
  std::unique_ptr<OpFactory> factory_;
  std::thread thread_;
  Stats stats_;
};

// --- ring mode ---

void RecordRingCompletion(Stats& stats, const asyncd_ring_cqe& c, uint64_t submitted_ns,
                          uint64_t now_ns, const Window& window) {
  if (!window.Contains(submitted_ns)) return;
  ++stats.measured_ops;
  stats.latency.Record(now_ns - submitted_ns);
  ++stats.outcomes[c.outcome < 7 ? c.outcome : 7];
  if (c.outcome == v1::OUTCOME_COMPLETED && c.result < 0) {
    ++stats.errnos[static_cast<uint32_t>(-c.result) & 255];
  }
}

// A session with a ring of its own, the file opened through gRPC.
struct RingSession {
  uint64_t session = 0;
  uint32_t handle = 0;
  std::optional<RingClient> ring;
};

// Opens a session (and --file when `with_file`), then a ring holding
// --queue-depth ops in flight, each with a block of its own in the buffer.
absl::StatusOr<RingSession> OpenRingSession(Client& client, const Config& config,
                                            std::string_view name, bool with_file,
                                            v1::OpenMode access) {
  if (config.queue_depth > ASYNCD_RING_MAX_CQ_ENTRIES) {
    return absl::InvalidArgumentError(absl::StrCat("--queue-depth over ",
                                                   ASYNCD_RING_MAX_CQ_ENTRIES, " for a ring"));
  }
  RingSession rs;
  absl::StatusOr<uint64_t> session = client.OpenSession(name);
  if (!session.ok()) return session.status();
  rs.session = *session;
  if (with_file) {
    absl::StatusOr<uint32_t> handle = client.Open(rs.session, config.file, access);
    if (!handle.ok()) return handle.status();
    rs.handle = *handle;
  }
  const uint32_t cq = std::bit_ceil(config.queue_depth);
  const uint32_t sq = std::min(cq, ASYNCD_RING_MAX_SQ_ENTRIES);
  const uint64_t buffer = with_file ? uint64_t{config.queue_depth} * config.block_size : 1;
  absl::StatusOr<RingClient> ring = RingClient::Open(
      config.target, rs.session,
      {.sq_entries = sq,
       .cq_entries = cq,
       .buffer_bytes = (buffer + ASYNCD_RING_BUFFER_ALIGN - 1) / ASYNCD_RING_BUFFER_ALIGN *
                       ASYNCD_RING_BUFFER_ALIGN});
  if (!ring.ok()) return ring.status();
  rs.ring.emplace(*std::move(ring));
  return rs;
}

// Keeps --queue-depth ops in flight on one ring, submitted --batch at a
// time, reaped on one thread. user_data is the op's slot: its block of the
// buffer area and its submission time.
class RingWorker {
 public:
  RingWorker(Client& client, const Config& config, const Window& window, uint32_t index)
      : client_(client), config_(config), window_(window), index_(index) {}

  absl::Status Setup() {
    absl::StatusOr<RingSession> rs =
        OpenRingSession(client_, config_, "asyncd-bench-ring", NeedsFile(config_),
                        FileAccess(config_));
    if (!rs.ok()) return rs.status();
    rs_ = *std::move(rs);
    std::fill(rs_.ring->buffer().begin(), rs_.ring->buffer().end(), uint8_t{'x'});
    factory_ = std::make_unique<OpFactory>(config_, rs_.handle, 0x2468ace + index_);
    return absl::OkStatus();
  }

  void Start() { thread_ = std::thread([this] { Run(); }); }

  absl::Status Join() {
    thread_.join();
    rs_.ring.reset();  // ends the ring before its session
    (void)client_.CloseSession(rs_.session);
    return run_status_;
  }

  const Stats& stats() const { return stats_; }

 private:
  void Run() {
    RingClient& ring = *rs_.ring;
    const uint32_t depth = config_.queue_depth;
    const uint32_t batch = config_.batch;
    std::vector<uint32_t> free_slots(depth);
    for (uint32_t i = 0; i < depth; ++i) free_slots[i] = depth - 1 - i;
    std::vector<uint64_t> submitted_ns(depth);
    // Past the window, nothing more is submitted and what is in flight is
    // reaped (for at most 10 s: a daemon that stops answering is an error).
    const uint64_t give_up_ns = window_.end_ns + 10'000'000'000ull;
    while (true) {
      const uint64_t now = NowNs();
      const bool submitting = now < window_.end_ns;
      if (!submitting && free_slots.size() == depth) return;
      if (now > give_up_ns) {
        run_status_ = absl::DeadlineExceededError("ops still in flight 10 s after the run");
        return;
      }
      // Only whole batches, so that an op's clock starts when it is really
      // submitted (as stream mode does).
      while (submitting && free_slots.size() >= batch) {
        uint32_t n = 0;
        for (; n < batch; ++n) {
          asyncd_ring_sqe* sqe = ring.GetSqe();
          if (sqe == nullptr) break;
          const uint32_t slot = free_slots.back();
          free_slots.pop_back();
          factory_->FillRing(sqe, uint64_t{slot} * config_.block_size, slot);
          submitted_ns[slot] = now;
        }
        ring.Submit();
        if (n < batch) break;  // the daemon has not taken the last ones yet
      }
      const uint64_t reaped_at = NowNs();
      const uint32_t reaped = ring.ForEachCompletion([&](const asyncd_ring_cqe& c) {
        const uint32_t slot = static_cast<uint32_t>(c.user_data);
        RecordRingCompletion(stats_, c, submitted_ns[slot], reaped_at, window_);
        free_slots.push_back(slot);
      });
      ring.Advance(reaped);
      if (reaped > 0) continue;
      // Spin a while before sleeping, as the daemon's poller does: a
      // completion is usually microseconds away, and each sleep costs the
      // daemon a pipe write and both sides a wake-up.
      for (const uint64_t until = NowNs() + kSpinNs; ring.Ready() == 0 && NowNs() < until;) {
        CpuRelax();
      }
      if (ring.Ready() > 0) continue;
      if (absl::Status s = ring.Wait(1, std::chrono::milliseconds(100));
          !s.ok() && !absl::IsDeadlineExceeded(s)) {
        run_status_ = s;
        return;
      }
    }
  }

  static constexpr uint64_t kSpinNs = 50'000;

  static void CpuRelax() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }

  Client& client_;
  const Config& config_;
  const Window& window_;
  const uint32_t index_;
  RingSession rs_;
  std::unique_ptr<OpFactory> factory_;
  std::thread thread_;
  absl::Status run_status_;
  Stats stats_;
};

// --- health mode: the bare unary RPC ---

// One Health/Check in flight per worker, issued the way the generated sync
// stub issues Submit (one call, a completion queue, the calling thread waits
// on it), so the two differ only in what the server does for them.
class HealthWorker {
 public:
  HealthWorker(const Config& config, const Window& window)
      : config_(config), window_(window) {}

  absl::Status Setup(const std::shared_ptr<grpc::Channel>& channel) {
    stub_ = std::make_unique<grpc::GenericStub>(channel);
    // HealthCheckRequest{service = ""} encodes to zero bytes.
    grpc::Slice empty("");
    request_ = grpc::ByteBuffer(&empty, 1);
    grpc::Status s = CallOnce();
    if (!s.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                          "Health/Check: " + s.error_message());
    }
    return absl::OkStatus();
  }

  void Start() { thread_ = std::thread([this] { Run(); }); }
  void Join() { thread_.join(); }
  const Stats& stats() const { return stats_; }

 private:
  grpc::Status CallOnce() {
    grpc::ClientContext ctx;
    grpc::ByteBuffer response;
    grpc::Status status;
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
        stub_->PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", request_, &cq_);
    call->StartCall();
    call->Finish(&response, &status, this);
    void* tag = nullptr;
    bool ok = false;
    if (!cq_.Next(&tag, &ok) || !ok) return grpc::Status(grpc::StatusCode::INTERNAL, "cq");
    return status;
  }

  void Run() {
    while (NowNs() < window_.end_ns) {
      const uint64_t start = NowNs();
      grpc::Status s = CallOnce();
      const uint64_t end = NowNs();
      if (!window_.Contains(start)) continue;
      if (s.ok()) {
        ++stats_.measured_ops;
        stats_.latency.Record(end - start);
        ++stats_.outcomes[v1::OUTCOME_COMPLETED];
      } else {
        ++stats_.rpc_errors[std::min<size_t>(static_cast<size_t>(s.error_code()), 16)];
      }
    }
  }

  const Config& config_;
  const Window& window_;
  std::unique_ptr<grpc::GenericStub> stub_;
  grpc::ByteBuffer request_;
  grpc::CompletionQueue cq_;
  std::thread thread_;
  Stats stats_;
};

// --- --list-every: an operator listing everything in flight ---

class Lister {
 public:
  Lister(const Config& config, const Window& window) : config_(config), window_(window) {}

  void Start() {
    client_ = std::make_unique<Client>(Connect(config_.target));
    thread_ = std::thread([this] { Run(); });
  }
  void Join() { thread_.join(); }
  const ListerStats& stats() const { return stats_; }

 private:
  void Run() {
    v1::OpSelector all;  // no criteria: every op the caller may see
    uint64_t next = window_.start_ns;
    const uint64_t period = static_cast<uint64_t>(config_.list_every.count());
    while (next < window_.end_ns) {
      const uint64_t now = NowNs();
      if (now < next) std::this_thread::sleep_for(std::chrono::nanoseconds(next - now));
      const uint64_t start = NowNs();
      absl::StatusOr<std::vector<v1::OperationInfo>> ops = client_->ListAll(all);
      const uint64_t end = NowNs();
      if (ops.ok()) {
        ++stats_.lists;
        stats_.listed_ops += ops->size();
        stats_.latency.Record(end - start);
      } else {
        ++stats_.errors;
      }
      next += period;
      if (next < end) next = end;  // a listing longer than the period: no burst to catch up
    }
  }

  const Config& config_;
  const Window& window_;
  std::unique_ptr<Client> client_;
  std::thread thread_;
  ListerStats stats_;
};

// --- hold mode: many blocked ops, for memory accounting ---

int RunHold(const Config& config) {
  std::shared_ptr<grpc::Channel> channel = Connect(config.target);
  absl::StatusOr<std::unique_ptr<StreamClient>> stream = StreamClient::Create(
      channel, "asyncd-bench-hold", 0,
      {.max_outstanding = config.queue_depth, .when_full = WhenFull::kFailFast});
  if (!stream.ok()) {
    std::fprintf(stderr, "asyncd-bench: opening the stream: %s\n",
                 stream.status().ToString().c_str());
    return 1;
  }
  v1::Operation open;
  open.mutable_open()->set_path(config.file);
  open.mutable_open()->set_access(v1::OPEN_MODE_READ_ONLY);
  v1::Completion opened = (*stream)->SubmitOne(std::move(open)).get();
  if (absl::Status s = CompletionToStatus(opened, "open " + config.file); !s.ok()) {
    std::fprintf(stderr, "asyncd-bench: %s\n", s.ToString().c_str());
    return 1;
  }
  const size_t window = (*stream)->max_outstanding();
  if (window < config.queue_depth) {
    std::fprintf(stderr, "asyncd-bench: the daemon allows %zu ops in flight per session, "
                 "fewer than --queue-depth %u (raise limits.max_inflight_per_session)\n",
                 window, config.queue_depth);
    return 1;
  }
  std::atomic<uint64_t> accepted{0}, rejected{0}, completed{0};
  auto on_accepted = [&](const StreamClient::AcceptedOp& a) {
    (a.op_id != 0 ? accepted : rejected).fetch_add(1, std::memory_order_relaxed);
  };
  std::mutex first_mu;
  std::string first_error;  // why the first op that ended early ended
  auto on_completion = [&](const v1::Completion& c) {
    if (completed.fetch_add(1, std::memory_order_relaxed) == 0) {
      std::lock_guard lock(first_mu);
      first_error = c.message().empty() ? c.error_name() : c.message();
    }
  };
  const uint64_t start = NowNs();
  for (uint32_t done = 0; done < config.queue_depth;) {
    const uint32_t n = std::min(config.batch, config.queue_depth - done);
    std::vector<v1::Operation> ops(n);
    for (v1::Operation& op : ops) {
      v1::Read* read = op.mutable_read();
      read->set_handle(opened.handle());
      read->set_offset(-1);
      read->set_length(config.block_size);
    }
    if (absl::Status s = (*stream)->Submit(std::move(ops), on_completion, on_accepted); !s.ok()) {
      std::fprintf(stderr, "asyncd-bench: submit: %s\n", s.ToString().c_str());
      return 1;
    }
    done += n;
  }
  while (accepted.load() + rejected.load() < config.queue_depth &&
         NowNs() - start < 120'000'000'000ull) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const double setup_s = static_cast<double>(NowNs() - start) / 1e9;
  if (config.output == "json") {
    std::printf("{\"mode\":\"hold\",\"submitted\":%u,\"accepted\":%llu,\"rejected\":%llu,"
                "\"completed\":%llu,\"setup_s\":%.3f}\n",
                config.queue_depth, static_cast<unsigned long long>(accepted.load()),
                static_cast<unsigned long long>(rejected.load()),
                static_cast<unsigned long long>(completed.load()), setup_s);
  } else {
    std::printf("holding: submitted %u accepted %llu rejected %llu completed %llu (%.2f s)\n",
                config.queue_depth, static_cast<unsigned long long>(accepted.load()),
                static_cast<unsigned long long>(rejected.load()),
                static_cast<unsigned long long>(completed.load()), setup_s);
  }
  std::fflush(stdout);
  {
    std::lock_guard lock(first_mu);
    if (!first_error.empty()) std::fprintf(stderr, "asyncd-bench: hold: first early end: %s\n",
                                           first_error.c_str());
  }
  std::this_thread::sleep_for(config.duration);
  stream->reset();  // cancels the RPC: the daemon cancels the blocked reads
  return accepted.load() == config.queue_depth ? 0 : 1;
}

// --- ring-cancel mode: how fast a cancel reaches a blocked ring op ---

// Rounds of --queue-depth reads at the file position of --file (a FIFO
// nobody writes) through a ring; each round lists them (ListOperations of
// the session: the op id by its tag, the ring's user_data) and cancels them
// one at a time with the Cancel RPC, as `asyncctl ops cancel` does. The
// latency of one cancel: from sending the RPC to reaping the op's
// CANCELLED completion, on a thread of its own that sleeps in Wait.
int RunRingCancel(const Config& config) {
  Client client(Connect(config.target), {.default_timeout = std::chrono::seconds(30)});
  absl::StatusOr<RingSession> rs = OpenRingSession(client, config, "asyncd-bench-ring-cancel",
                                                   true, v1::OPEN_MODE_READ_ONLY);
  if (!rs.ok()) {
    std::fprintf(stderr, "asyncd-bench: ring-cancel setup: %s\n", rs.status().ToString().c_str());
    return 1;
  }
  RingClient& ring = *rs->ring;
  const uint32_t depth = config.queue_depth;
  // By slot: when its cancel was sent, when its completion was reaped.
  std::vector<std::atomic<uint64_t>> reaped_ns(depth);
  std::atomic<uint64_t> reaped_total{0}, cancelled{0};
  std::atomic<bool> stop{false};
  absl::Status reap_status;
  std::thread reaper([&] {
    while (!stop.load()) {
      absl::Status s = ring.Wait(1, std::chrono::milliseconds(50));
      if (!s.ok() && !absl::IsDeadlineExceeded(s)) {
        reap_status = s;
        return;
      }
      const uint64_t now = NowNs();
      ring.Advance(ring.ForEachCompletion([&](const asyncd_ring_cqe& c) {
        if (c.outcome == v1::OUTCOME_CANCELLED) cancelled.fetch_add(1);
        reaped_ns[c.user_data % depth].store(now, std::memory_order_release);
        reaped_total.fetch_add(1);
      }));
    }
  });

  LatencyHistogram latency, rpc;
  uint64_t errors = 0;
  std::string first_error;
  auto fail = [&](const std::string& what) {
    if (errors++ == 0) first_error = what;
  };
  const uint64_t end_ns = NowNs() + static_cast<uint64_t>(config.duration.count());
  uint64_t round = 0;
  for (; round == 0 || NowNs() < end_ns; ++round) {
    for (uint32_t i = 0; i < depth; ++i) reaped_ns[i].store(0);
    for (uint32_t i = 0; i < depth; ++i) {
      asyncd_ring_sqe* sqe = ring.GetSqe();
      while (sqe == nullptr) {  // the daemon has not taken the last ones yet
        ring.Submit();
        std::this_thread::yield();
        sqe = ring.GetSqe();
      }
      RingClient::PrepRead(sqe, rs->handle, -1, config.block_size,
                           uint64_t{i} * config.block_size, round * depth + i);
    }
    ring.Submit();
    // The ops by tag, once all are listed in flight.
    std::vector<uint64_t> op_ids(depth);
    v1::OpSelector mine;
    mine.set_session_id(rs->session);
    size_t listed = 0;
    for (int attempt = 0; attempt < 1000 && listed < depth; ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      absl::StatusOr<std::vector<v1::OperationInfo>> ops = client.ListAll(mine);
      if (!ops.ok()) {
        fail("ListOperations: " + ops.status().ToString());
        continue;
      }
      listed = 0;
      for (const v1::OperationInfo& op : *ops) {
        if (op.tag() / depth != round) continue;
        op_ids[op.tag() % depth] = op.op_id();
        ++listed;
      }
    }
    if (listed < depth) {
      fail(absl::StrCat("round ", round, ": ", listed, " of ", depth, " reads listed"));
      break;
    }
    for (uint32_t i = 0; i < depth; ++i) {
      const uint64_t sent = NowNs();
      absl::StatusOr<v1::CancelResponse> answer = client.Cancel(op_ids[i]);
      rpc.Record(NowNs() - sent);
      if (!answer.ok()) {
        fail("Cancel: " + answer.status().ToString());
        continue;
      }
      uint64_t reaped = 0;
      while ((reaped = reaped_ns[i].load(std::memory_order_acquire)) == 0 &&
             NowNs() - sent < 10'000'000'000ull) {
        std::this_thread::yield();
      }
      if (reaped == 0) {
        fail(absl::StrCat("op ", op_ids[i], ": no completion 10 s after its cancel"));
        continue;
      }
      latency.Record(reaped - sent);
    }
  }
  stop.store(true);
  reaper.join();
  rs->ring.reset();
  (void)client.CloseSession(rs->session);
  if (!reap_status.ok()) fail("reaping: " + reap_status.ToString());
  const uint64_t cancels = uint64_t{round} * depth;
  auto us = [](const LatencyHistogram& h, double p) { return h.Percentile(p) / 1000.0; };
  if (config.output == "json") {
    std::printf("{\"mode\":\"ring-cancel\",\"queue_depth\":%u,\"rounds\":%llu,\"cancels\":%llu,"
                "\"cancelled\":%llu,\"errors\":%llu,"
                "\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"mean\":%.1f,"
                "\"min\":%.1f,\"max\":%.1f},\"cancel_rpc_us\":{\"p50\":%.1f,\"p99\":%.1f}}\n",
                depth, static_cast<unsigned long long>(round),
                static_cast<unsigned long long>(cancels),
                static_cast<unsigned long long>(cancelled.load()),
                static_cast<unsigned long long>(errors), us(latency, 50), us(latency, 99),
                us(latency, 99.9), latency.mean() / 1000.0, latency.min() / 1000.0,
                latency.max() / 1000.0, us(rpc, 50), us(rpc, 99));
  } else {
    std::printf("asyncd-bench  mode=ring-cancel  target=%s  file=%s\n",
                NormalizeTarget(config.target).c_str(), config.file.c_str());
    std::printf("  %llu rounds of %u blocked ring reads, each cancelled by the Cancel RPC\n",
                static_cast<unsigned long long>(round), depth);
    std::printf("cancels    %llu  cancelled %llu  errors %llu\n",
                static_cast<unsigned long long>(cancels),
                static_cast<unsigned long long>(cancelled.load()),
                static_cast<unsigned long long>(errors));
    std::printf("cancel us  p50 %.1f  p99 %.1f  p999 %.1f  mean %.1f  min %.1f  max %.1f  "
                "(Cancel sent to CANCELLED reaped)\n",
                us(latency, 50), us(latency, 99), us(latency, 99.9), latency.mean() / 1000.0,
                latency.min() / 1000.0, latency.max() / 1000.0);
    std::printf("rpc us     p50 %.1f  p99 %.1f  (the Cancel call's round trip)\n", us(rpc, 50),
                us(rpc, 99));
  }
  if (errors > 0) std::fprintf(stderr, "asyncd-bench: ring-cancel: %s\n", first_error.c_str());
  return errors == 0 && cancelled.load() == cancels ? 0 : 1;
}

// --- report ---

constexpr std::array<std::string_view, 8> kOutcomeNames = {
    "unspecified", "completed", "cancelled", "timed_out", "failed", "rejected", "?", "unknown"};

std::string ErrnoName(int e) {
  const char* name = strerrorname_np(e);
  return name != nullptr ? name : "E" + std::to_string(e);
}

std::string CodeName(size_t code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

void Report(const Config& config, const std::string& target, const Stats& s, double seconds,
            const ListerStats* lister = nullptr) {
  const double ops_per_s = seconds > 0 ? static_cast<double>(s.measured_ops) / seconds : 0;
  auto us = [&](double p) { return static_cast<double>(s.latency.Percentile(p)) / 1000.0; };
  const uint64_t completed_ok =
      s.outcomes[v1::OUTCOME_COMPLETED] -
      [&] { uint64_t n = 0; for (uint64_t e : s.errnos) n += e; return n; }();
  uint64_t completed_errno = s.outcomes[v1::OUTCOME_COMPLETED] - completed_ok;
  const bool queued = config.mode == "stream" || config.mode == "ring";
  const uint32_t concurrency =
      queued ? config.connections * config.queue_depth : config.connections;

  if (config.output == "json") {
    std::printf("{\"mode\":\"%s\",\"target\":\"%s\",\"mix\":\"%s\",\"connections\":%u,"
                "\"queue_depth\":%u,\"batch\":%u,\"coalesce\":%s,\"outstanding\":%u,\"block_size\":%u,"
                "\"duration_s\":%.3f,\"ops\":%llu,\"ops_per_s\":%.1f,"
                "\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"mean\":%.1f,"
                "\"min\":%.1f,\"max\":%.1f},",
                config.mode.c_str(), target.c_str(), config.mix_spec.c_str(), config.connections,
                queued ? config.queue_depth : 1, queued ? config.batch : 1, config.coalesce ? "true" : "false",
                concurrency, config.block_size,
                seconds, static_cast<unsigned long long>(s.measured_ops), ops_per_s, us(50),
                us(99), us(99.9), s.latency.mean() / 1000.0, s.latency.min() / 1000.0,
                s.latency.max() / 1000.0);
    std::printf("\"outcomes\":{\"completed_ok\":%llu,\"completed_errno\":%llu",
                static_cast<unsigned long long>(completed_ok),
                static_cast<unsigned long long>(completed_errno));
    for (size_t i = 2; i < kOutcomeNames.size(); ++i) {
      if (i == 6) continue;
      std::printf(",\"%s\":%llu", std::string(kOutcomeNames[i]).c_str(),
                  static_cast<unsigned long long>(s.outcomes[i]));
    }
    std::printf(",\"unspecified\":%llu},\"errnos\":{",
                static_cast<unsigned long long>(s.outcomes[0]));
    const char* sep = "";
    for (size_t e = 0; e < s.errnos.size(); ++e) {
      if (s.errnos[e] == 0) continue;
      std::printf("%s\"%s\":%llu", sep, ErrnoName(static_cast<int>(e)).c_str(),
                  static_cast<unsigned long long>(s.errnos[e]));
      sep = ",";
    }
    std::printf("},\"rpc_errors\":{");
    sep = "";
    for (size_t c = 0; c < s.rpc_errors.size(); ++c) {
      if (s.rpc_errors[c] == 0) continue;
      std::printf("%s\"%s\":%llu", sep, CodeName(c).c_str(),
                  static_cast<unsigned long long>(s.rpc_errors[c]));
      sep = ",";
    }
    std::printf("}");
    if (s.daemon.count() > 0) {
      std::printf(",\"daemon_us\":{\"p50\":%.1f,\"p99\":%.1f,\"mean\":%.1f}",
                  s.daemon.Percentile(50) / 1000.0, s.daemon.Percentile(99) / 1000.0,
                  s.daemon.mean() / 1000.0);
    }
    if (lister != nullptr) {
      std::printf(",\"lister\":{\"period_ms\":%.1f,\"lists\":%llu,\"listed_ops\":%llu,"
                  "\"errors\":%llu,\"list_p50_us\":%.1f,\"list_max_us\":%.1f}",
                  std::chrono::duration<double, std::milli>(config.list_every).count(),
                  static_cast<unsigned long long>(lister->lists),
                  static_cast<unsigned long long>(lister->listed_ops),
                  static_cast<unsigned long long>(lister->errors),
                  lister->latency.Percentile(50) / 1000.0, lister->latency.max() / 1000.0);
    }
    std::printf("}\n");
    return;
  }

  std::printf("asyncd-bench  mode=%s  target=%s  mix=%s\n", config.mode.c_str(), target.c_str(),
              config.mix_spec.c_str());
  if (config.mode == "stream") {
    std::printf("  streams=%u  queue-depth=%u  batch=%u%s  (%u ops outstanding)\n",
                config.connections, config.queue_depth, config.batch,
                config.coalesce ? " (coalescing)" : "", concurrency);
  } else if (config.mode == "ring") {
    std::printf("  rings=%u  queue-depth=%u  batch=%u  (%u ops outstanding)\n",
                config.connections, config.queue_depth, config.batch, concurrency);
  } else {
    std::printf("  unary workers=%u  (%u ops outstanding; --queue-depth/--batch unused)\n",
                config.connections, concurrency);
  }
  std::printf("  measured %.2f s after %.2f s warmup, block size %u\n", seconds,
              std::chrono::duration<double>(config.warmup).count(), config.block_size);
  std::printf("ops        %llu\n", static_cast<unsigned long long>(s.measured_ops));
  std::printf("ops/s      %.1f\n", ops_per_s);
  std::printf("latency us p50 %.1f  p99 %.1f  p999 %.1f  mean %.1f  min %.1f  max %.1f\n", us(50),
              us(99), us(99.9), s.latency.mean() / 1000.0, s.latency.min() / 1000.0,
              s.latency.max() / 1000.0);
  if (s.daemon.count() > 0) {
    std::printf("daemon us  p50 %.1f  p99 %.1f  mean %.1f  (accepted to finished, per the daemon)\n",
                s.daemon.Percentile(50) / 1000.0, s.daemon.Percentile(99) / 1000.0,
                s.daemon.mean() / 1000.0);
  }
  std::printf("outcomes   completed_ok %llu  completed_errno %llu", 
              static_cast<unsigned long long>(completed_ok),
              static_cast<unsigned long long>(completed_errno));
  for (size_t i = 2; i < kOutcomeNames.size(); ++i) {
    if (i == 6 || s.outcomes[i] == 0) continue;
    std::printf("  %s %llu", std::string(kOutcomeNames[i]).c_str(),
                static_cast<unsigned long long>(s.outcomes[i]));
  }
  if (s.outcomes[0] != 0) {
    std::printf("  unspecified %llu", static_cast<unsigned long long>(s.outcomes[0]));
  }
  std::printf("\n");
  for (size_t e = 0; e < s.errnos.size(); ++e) {
    if (s.errnos[e] != 0) {
      std::printf("  errno %s: %llu\n", ErrnoName(static_cast<int>(e)).c_str(),
                  static_cast<unsigned long long>(s.errnos[e]));
    }
  }
  for (size_t c = 0; c < s.rpc_errors.size(); ++c) {
    if (s.rpc_errors[c] != 0) {
      std::printf("  rpc error %s: %llu\n", CodeName(c).c_str(),
                  static_cast<unsigned long long>(s.rpc_errors[c]));
    }
  }
  if (lister != nullptr) {
    std::printf("lister     every %.1f ms: %llu listings, %llu ops listed, %llu errors, "
                "listing p50 %.1f us max %.1f us\n",
                std::chrono::duration<double, std::milli>(config.list_every).count(),
                static_cast<unsigned long long>(lister->lists),
                static_cast<unsigned long long>(lister->listed_ops),
                static_cast<unsigned long long>(lister->errors),
                lister->latency.Percentile(50) / 1000.0, lister->latency.max() / 1000.0);
  }
}

int Run(Config& config) {
  if (config.mode == "hold") return RunHold(config);
  if (config.mode == "ring-cancel") return RunRingCancel(config);
  if (config.mode == "serve") return RunReferenceServer(NormalizeTarget(config.target),
                                                        config.block_size);
  const std::string target = NormalizeTarget(config.target);
  std::shared_ptr<grpc::Channel> setup_channel = Connect(config.target);
  Client client(setup_channel, {.default_timeout = std::chrono::seconds(30)});
  if (NeedsFile(config)) {
    if (absl::Status s = PrepareFile(client, config); !s.ok()) {
      std::fprintf(stderr, "asyncd-bench: preparing %s: %s\n", config.file.c_str(),
                   s.ToString().c_str());
      return 1;
    }
  }

  Window window{};
  Stats total;
  double seconds = 0;
  auto start_window = [&] {
    const uint64_t now = NowNs();
    window.start_ns = now + static_cast<uint64_t>(config.warmup.count());
    window.end_ns = window.start_ns + static_cast<uint64_t>(config.duration.count());
    seconds = std::chrono::duration<double>(config.duration).count();
  };

  // With the workers set up: the window, the --list-every operator beside
  // them, the report.
  auto run_load = [&](auto& workers, const char* what) {
    start_window();
    std::unique_ptr<Lister> lister;
    if (config.list_every.count() > 0) {
      lister = std::make_unique<Lister>(config, window);
      lister->Start();
    }
    for (auto& w : workers) w->Start();
    int rc = 0;
    for (auto& w : workers) {
      if (absl::Status s = w->Join(); !s.ok()) {
        std::fprintf(stderr, "asyncd-bench: %s ended: %s\n", what, s.ToString().c_str());
        rc = 1;
      }
      total.Merge(w->stats());
    }
    if (lister != nullptr) lister->Join();
    Report(config, target, total, seconds, lister != nullptr ? &lister->stats() : nullptr);
    return rc;
  };

  if (config.mode == "stream") {
    // One channel per stream: separate HTTP/2 connections, as separate
    // client processes would have.
    std::vector<std::unique_ptr<StreamWorker>> workers;
    for (uint32_t i = 0; i < config.connections; ++i) {
      auto w = std::make_unique<StreamWorker>(config, window, i);
      if (absl::Status s = w->Setup(Connect(config.target)); !s.ok()) {
        std::fprintf(stderr, "asyncd-bench: opening stream %u: %s\n", i, s.ToString().c_str());
        return 1;
      }
      workers.push_back(std::move(w));
    }
    return run_load(workers, "stream");
  }

  if (config.mode == "ring") {
    std::vector<std::unique_ptr<RingWorker>> workers;
    for (uint32_t i = 0; i < config.connections; ++i) {
      auto w = std::make_unique<RingWorker>(client, config, window, i);
      if (absl::Status s = w->Setup(); !s.ok()) {
        std::fprintf(stderr, "asyncd-bench: opening ring %u: %s\n", i, s.ToString().c_str());
        return 1;
      }
      workers.push_back(std::move(w));
    }
    return run_load(workers, "ring");
  }

  if (config.mode == "health") {
    std::vector<std::unique_ptr<HealthWorker>> workers;
    for (uint32_t i = 0; i < config.connections; ++i) {
      auto w = std::make_unique<HealthWorker>(config, window);
      if (absl::Status s = w->Setup(Connect(config.target)); !s.ok()) {
        std::fprintf(stderr, "asyncd-bench: health worker %u: %s\n", i, s.ToString().c_str());
        return 1;
      }
      workers.push_back(std::move(w));
    }
    start_window();
    for (auto& w : workers) w->Start();
    for (auto& w : workers) {
      w->Join();
      total.Merge(w->stats());
    }
    Report(config, target, total, seconds);
    return 0;
  }

  std::vector<std::unique_ptr<Client>> clients;
  std::vector<std::unique_ptr<UnaryWorker>> workers;
  for (uint32_t i = 0; i < config.connections; ++i) {
    clients.push_back(std::make_unique<Client>(Connect(config.target)));
    auto w = std::make_unique<UnaryWorker>(*clients.back(), config, window, i);
    if (absl::Status s = w->Setup(); !s.ok()) {
      std::fprintf(stderr, "asyncd-bench: unary worker %u setup: %s\n", i, s.ToString().c_str());
      return 1;
    }
    workers.push_back(std::move(w));
  }
  start_window();
  for (auto& w : workers) w->Start();
  for (auto& w : workers) {
    (void)w->Join();
    total.Merge(w->stats());
  }
  Report(config, target, total, seconds);
  return 0;
}

}  // namespace
}  // namespace asyncd::client::bench

int main(int argc, char** argv) {
  using namespace asyncd::client::bench;
  Config config;
  CLI::App app{"asyncd-bench: load generator for the asyncd daemon"};
  app.add_option("--target,--socket", config.target,
                 "unix:/path, a socket path, or host:port (default: the default socket)");
  app.add_option("--mode", config.mode,
                 "stream (bidi Stream, batched), unary (Submit RPC), health (bare "
                 "Health/Check RPCs, the reference for unary), hold (keep --queue-depth "
                 "reads blocked on --file for --duration), serve (be the reference "
                 "server on --target: the protocol without system calls), ring (the "
                 "local shared-memory ring: --queue-depth ops in flight per ring, submitted "
                 "--batch at a time) or ring-cancel (rounds of --queue-depth ring reads "
                 "blocked on --file, e.g. a FIFO, each cancelled by the Cancel RPC: the "
                 "latency from the RPC to the reaped completion)")
      ->check(CLI::IsMember({"stream", "unary", "health", "hold", "serve", "ring", "ring-cancel"}));
  app.add_option("--mix", config.mix_spec, "op kinds and weights, e.g. nop=1 or read=3,nop=1 "
                                           "(nop, read, write, timeout)");
  app.add_option("--queue-depth,-q", config.queue_depth, "ops outstanding per stream or ring")
      ->check(CLI::Range(1u, 1u << 20));
  app.add_flag("--coalesce", config.coalesce,
               "let the library merge batches queued behind a write (then --batch is the "
               "ops per Submit call, not per SubmitBatch message)");
  app.add_option("--batch,-b", config.batch, "ops per SubmitBatch (stream mode) or per ring "
                                             "Submit (ring mode)")
      ->check(CLI::Range(1u, 1u << 20));
  app.add_option("--duration,-d", config.duration_spec, "measured time, e.g. 10s, 500ms");
  app.add_option("--warmup", config.warmup_spec, "unmeasured time before it");
  app.add_option("--connections,--threads,-c", config.connections,
                 "parallel streams (stream mode), rings (ring mode) or unary worker threads "
                 "(unary mode)")
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--block-size", config.block_size, "bytes per read/write")
      ->check(CLI::Range(1u, 1u << 24));
  app.add_option("--file", config.file, "data file for read/write, relative to the daemon root");
  app.add_option("--file-size", config.file_size, "data file size in bytes")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40));
  app.add_option("--timeout-us", config.timeout_us, "duration of timeout ops");
  app.add_option("--list-every", config.list_every_spec,
                 "stream and ring modes: list all in-flight ops (ListOperations) at this period, "
                 "e.g. 100ms, beside the load (0 = off)");
  app.add_option("--output,-o", config.output, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto mix = ParseMix(config.mix_spec);
  auto duration = ParseDuration(config.duration_spec);
  auto warmup = ParseDuration(config.warmup_spec);
  auto list_every = ParseDuration(config.list_every_spec);
  for (const absl::Status& s :
       {mix.status(), duration.status(), warmup.status(), list_every.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "asyncd-bench: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  config.mix = *mix;
  config.duration = *duration;
  config.warmup = *warmup;
  config.list_every = *list_every;
  if (config.duration.count() <= 0) {
    std::fprintf(stderr, "asyncd-bench: --duration must be > 0\n");
    return 2;
  }
  config.batch = std::min(config.batch, config.queue_depth);
  if (config.file_size < config.block_size) config.file_size = config.block_size;
  return Run(config);
}
