// RingClient against a fake daemon on a real SOCK_SEQPACKET socket, which
// answers the handshake as told and then plays the daemon's side of the
// shared memory by hand: Open maps a refusal to its status and message and
// survives answers that break the protocol; Submit publishes the tail and
// writes the submit eventfd only when the daemon sleeps; every completion is
// reaped once, in order; Wait sleeps and wakes as asyncd/ring.h prescribes;
// Advance wakes a daemon holding overflowed completions; Closed reports the
// daemon's status and reason, or the socket's end.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>
#include <vector>

#include "asyncd/client.h"

namespace asyncd::client {
namespace {

using namespace std::chrono_literals;

constexpr uint32_t kSq = 8;
constexpr uint32_t kCq = 16;
constexpr uint64_t kBufferBytes = 2 * ASYNCD_RING_BUFFER_ALIGN;

// What the fake daemon answers to the setup message.
enum class Answer {
  kRing,            // OK, three descriptors
  kRefuse,          // status and message, no descriptors
  kBadMagic,        // a whole reply with the wrong magic
  kShort,           // 16 bytes
  kTwoDescriptors,  // OK with the completion pipe missing
  kRegionTooSmall,  // OK, but the layout does not fit region_bytes
  kHangUp,          // closes the socket without a word
  kSilence,         // never answers
};

class FakeRingDaemon {
 public:
  FakeRingDaemon() {
    path_ = (std::filesystem::temp_directory_path() /
             ("asyncd-ring-test-" + std::to_string(getpid()) + ".sock.ring"))
                .string();
    std::filesystem::remove(path_);
    listener_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    EXPECT_EQ(bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(listener_, 4), 0);
  }
  ~FakeRingDaemon() {
    if (server_.joinable()) server_.join();
    if (region_ != nullptr) munmap(region_, region_bytes_);
    for (int fd : {listener_, conn_, memfd_, submit_fd_, completion_fd_, completion_read_fd_}) {
      if (fd >= 0) close(fd);
    }
    std::filesystem::remove(path_);
  }

  // Answers the next connection in the background.
  void Serve(Answer answer, uint32_t status = 0, std::string message = "") {
    server_ = std::thread([this, answer, status, message] { Answer1(answer, status, message); });
  }
  // Waits until the answer has gone out.
  void Join() {
    if (server_.joinable()) server_.join();
  }

  const std::string& path() const { return path_; }
  const asyncd_ring_setup& setup() const { return setup_; }

  // --- the daemon's side of the shared memory ---

  asyncd_ring_ctl& ctl() { return *static_cast<asyncd_ring_ctl*>(region_); }
  uint32_t Load(uint32_t& word) {
    return std::atomic_ref<uint32_t>(word).load(std::memory_order_acquire);
  }
  void Store(uint32_t& word, uint32_t v) {
    std::atomic_ref<uint32_t>(word).store(v, std::memory_order_release);
  }
  void SetFlags(uint32_t flags) { Store(ctl().flags, flags); }

  // Copies the entries published since the last call and moves sq_head.
  std::vector<asyncd_ring_sqe> Take() {
    const uint32_t tail = Load(ctl().sq_tail);
    std::vector<asyncd_ring_sqe> taken;
    auto* sqes = reinterpret_cast<asyncd_ring_sqe*>(base() + kSqOffset);
    for (; sq_head_ != tail; ++sq_head_) taken.push_back(sqes[sq_head_ & (kSq - 1)]);
    Store(ctl().sq_head, sq_head_);
    return taken;
  }

  // Posts one completion if the ring has room, waking a waiting client.
  bool Post(const asyncd_ring_cqe& cqe) {
    if (cq_tail_ - Load(ctl().cq_head) == kCq) return false;
    reinterpret_cast<asyncd_ring_cqe*>(base() + CqOffset())[cq_tail_ & (kCq - 1)] = cqe;
    Store(ctl().cq_tail, ++cq_tail_);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (Load(ctl().client_flags) & ASYNCD_RING_CQ_WAITING) {
      EXPECT_EQ(write(completion_fd_, "", 1), 1);
    }
    return true;
  }

  // Reads (and so resets) the submit eventfd: how often the client rang.
  uint64_t Rings() {
    uint64_t count = 0;
    return read(submit_fd_, &count, sizeof(count)) == 8 ? count : 0;
  }

  void Close(uint32_t status, uint32_t reason) {
    Store(ctl().closed_status, status);
    Store(ctl().closed_reason, reason);
    SetFlags(Load(ctl().flags) | ASYNCD_RING_CLOSED);
    EXPECT_EQ(write(completion_fd_, "", 1), 1);
    HangUp();
  }
  void HangUp() {
    if (conn_ >= 0) close(conn_);
    conn_ = -1;
  }
  // The client's end of the lifeline is closed (within `wait`).
  bool ClientGone(std::chrono::milliseconds wait) {
    pollfd p{conn_, POLLIN, 0};
    char byte;
    return poll(&p, 1, static_cast<int>(wait.count())) == 1 &&
           recv(conn_, &byte, 1, MSG_DONTWAIT) == 0;
  }

 private:
  static constexpr uint64_t kSqOffset = sizeof(asyncd_ring_ctl);
  static constexpr uint64_t CqOffset() { return kSqOffset + kSq * sizeof(asyncd_ring_sqe); }
  static constexpr uint64_t BufferOffset() {
    return (CqOffset() + kCq * sizeof(asyncd_ring_cqe) + ASYNCD_RING_BUFFER_ALIGN - 1) /
           ASYNCD_RING_BUFFER_ALIGN * ASYNCD_RING_BUFFER_ALIGN;
  }
  uint8_t* base() { return static_cast<uint8_t*>(region_); }

  void Answer1(Answer answer, uint32_t status, const std::string& message) {
    conn_ = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(conn_, 0);
    ASSERT_EQ(recv(conn_, &setup_, sizeof(setup_), 0), static_cast<ssize_t>(sizeof(setup_)));
    if (answer == Answer::kHangUp) return HangUp();
    if (answer == Answer::kSilence) return;
    asyncd_ring_setup_reply reply{};
    reply.magic = answer == Answer::kBadMagic ? 0xdeadbeef : ASYNCD_RING_MAGIC;
    reply.version = ASYNCD_RING_VERSION;
    reply.status = answer == Answer::kRefuse ? status : 0;
    std::snprintf(reply.message, sizeof(reply.message), "%s", message.c_str());
    if (answer != Answer::kRing && answer != Answer::kTwoDescriptors &&
        answer != Answer::kRegionTooSmall) {
      const size_t n = answer == Answer::kShort ? 16 : sizeof(reply);
      ASSERT_EQ(send(conn_, &reply, n, MSG_NOSIGNAL), static_cast<ssize_t>(n));
      return;
    }
    region_bytes_ = BufferOffset() + kBufferBytes;
    memfd_ = memfd_create("asyncd-ring-test", MFD_CLOEXEC);
    ASSERT_EQ(ftruncate(memfd_, static_cast<off_t>(region_bytes_)), 0);
    region_ = mmap(nullptr, region_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
    ASSERT_NE(region_, MAP_FAILED);
    submit_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int pipe_fds[2];
    ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK), 0);
    completion_read_fd_ = pipe_fds[0];
    completion_fd_ = pipe_fds[1];
    reply.sq_entries = kSq;
    reply.cq_entries = kCq;
    reply.max_op_bytes = 1 << 20;
    reply.region_bytes = answer == Answer::kRegionTooSmall ? CqOffset() : region_bytes_;
    reply.sq_offset = kSqOffset;
    reply.cq_offset = CqOffset();
    reply.buffer_offset = BufferOffset();
    reply.buffer_bytes = kBufferBytes;
    const int fds[3] = {memfd_, submit_fd_, completion_read_fd_};
    const size_t nfds = answer == Answer::kTwoDescriptors ? 2 : 3;
    iovec iov{&reply, sizeof(reply)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(fds))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    std::memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    ASSERT_EQ(sendmsg(conn_, &msg, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof(reply)));
  }

  std::string path_;
  int listener_ = -1;
  int conn_ = -1;
  int memfd_ = -1;
  int submit_fd_ = -1;
  int completion_fd_ = -1;       // the completion pipe's write end, as the daemon's
  int completion_read_fd_ = -1;  // its read end, the client's
  void* region_ = nullptr;
  size_t region_bytes_ = 0;
  uint32_t sq_head_ = 0;
  uint32_t cq_tail_ = 0;
  asyncd_ring_setup setup_{};
  std::thread server_;
};

asyncd_ring_cqe Cqe(uint64_t user_data, int32_t result = 0) {
  asyncd_ring_cqe cqe{};
  cqe.user_data = user_data;
  cqe.op_id = user_data + 1000;
  cqe.result = result;
  cqe.outcome = v1::OUTCOME_COMPLETED;
  return cqe;
}

TEST(RingSocketPathTest, IsTheGrpcSocketWithRingAppended) {
  EXPECT_EQ(*RingSocketPath("unix:/run/asyncd/asyncd.sock"), "/run/asyncd/asyncd.sock.ring");
  EXPECT_EQ(*RingSocketPath("unix:///tmp/a.sock"), "/tmp/a.sock.ring");
  EXPECT_EQ(*RingSocketPath("/tmp/a.sock"), "/tmp/a.sock.ring");
  EXPECT_EQ(*RingSocketPath("rel.sock"), "rel.sock.ring");
  EXPECT_EQ(RingSocketPath("localhost:5000").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RingSocketPath("unix-abstract:asyncd").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RingClientOpenTest, NoSocketIsUnavailable) {
  const std::string path = std::filesystem::temp_directory_path() / "asyncd-no-such-ring.sock";
  auto ring = RingClient::Open("unix:" + path, 1);
  EXPECT_EQ(ring.status().code(), absl::StatusCode::kUnavailable) << ring.status();
  EXPECT_NE(ring.status().message().find(path + ".ring"), std::string_view::npos)
      << ring.status();
}

TEST(RingClientOpenTest, RefusalKeepsTheDaemonsStatusAndMessage) {
  FakeRingDaemon fake;
  fake.Serve(Answer::kRefuse, static_cast<uint32_t>(absl::StatusCode::kPermissionDenied),
             "session 7 belongs to uid 1234");
  auto ring = RingClient::Open("", 7,
                               {.ring_socket = fake.path(), .sq_entries = 64, .cq_entries = 256,
                                .buffer_bytes = 1 << 16});
  fake.Join();
  EXPECT_EQ(ring.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ring.status().message(), "session 7 belongs to uid 1234");
  const asyncd_ring_setup& setup = fake.setup();
  EXPECT_EQ(setup.magic, ASYNCD_RING_MAGIC);
  EXPECT_EQ(setup.version, ASYNCD_RING_VERSION);
  EXPECT_EQ(setup.session_id, 7u);
  EXPECT_EQ(setup.sq_entries, 64u);
  EXPECT_EQ(setup.cq_entries, 256u);
  EXPECT_EQ(setup.buffer_bytes, uint64_t{1} << 16);
  for (uint64_t r : setup.reserved) EXPECT_EQ(r, 0u);
}

TEST(RingClientOpenTest, AnswersThatBreakTheProtocolAreErrors) {
  const struct {
    Answer answer;
    absl::StatusCode code;
  } cases[] = {
      {Answer::kBadMagic, absl::StatusCode::kInternal},
      {Answer::kShort, absl::StatusCode::kInternal},
      {Answer::kTwoDescriptors, absl::StatusCode::kInternal},
      {Answer::kRegionTooSmall, absl::StatusCode::kInternal},
      {Answer::kHangUp, absl::StatusCode::kUnavailable},
      {Answer::kSilence, absl::StatusCode::kDeadlineExceeded},
  };
  for (const auto& c : cases) {
    FakeRingDaemon fake;
    fake.Serve(c.answer);
    auto ring = RingClient::Open("", 1, {.ring_socket = fake.path(), .setup_timeout = 200ms});
    fake.Join();
    EXPECT_EQ(ring.status().code(), c.code)
        << "answer " << static_cast<int>(c.answer) << ": " << ring.status();
  }
}

class RingClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_.Serve(Answer::kRing);
    auto ring = RingClient::Open("", 5, {.ring_socket = fake_.path()});
    fake_.Join();
    ASSERT_TRUE(ring.ok()) << ring.status();
    ring_.emplace(*std::move(ring));
  }

  FakeRingDaemon fake_;
  std::optional<RingClient> ring_;
};

TEST_F(RingClientTest, MapsTheLayoutTheDaemonSent) {
  EXPECT_EQ(ring_->sq_entries(), kSq);
  EXPECT_EQ(ring_->cq_entries(), kCq);
  EXPECT_EQ(ring_->max_op_bytes(), 1u << 20);
  ASSERT_EQ(ring_->buffer().size(), kBufferBytes);
  ring_->buffer()[0] = 0x5a;  // writable, shared
  EXPECT_TRUE(ring_->Closed().ok());
}

TEST_F(RingClientTest, SubmitPublishesPreparedEntriesAndRingsOnlyASleepingDaemon) {
  // Entries hold what an earlier lap left: each Prep starts from zero.
  std::vector<asyncd_ring_sqe*> got;
  while (asyncd_ring_sqe* sqe = ring_->GetSqe()) {
    std::memset(sqe, 0xff, sizeof(*sqe));
    got.push_back(sqe);
  }
  ASSERT_EQ(got.size(), kSq);
  RingClient::PrepNop(got[0], 100);
  RingClient::PrepRead(got[1], 3, -1, 4096, 8192, 101);
  RingClient::PrepWrite(got[2], 3, 4096, 10, 0, 102);
  RingClient::PrepFsync(got[3], 3, RingClient::Sync::kDataOnly, 103);
  RingClient::PrepPoll(got[4], 4, v1::POLL_EVENTS_READABLE, 104);
  RingClient::PrepTimeout(got[5], 1500us, 105);
  RingClient::PrepCancel(got[6], 101, 106);
  RingClient::PrepNop(got[7], 107);
  RingClient::SetDeadline(got[7], 250ms);
  EXPECT_EQ(ring_->Submit(), kSq);
  EXPECT_EQ(fake_.Rings(), 0u);  // the daemon was awake
  EXPECT_EQ(ring_->Submit(), 0u);

  std::vector<asyncd_ring_sqe> taken = fake_.Take();
  ASSERT_EQ(taken.size(), kSq);
  asyncd_ring_sqe want[kSq] = {};
  const uint8_t kinds[kSq] = {ASYNCD_RING_OP_NOP,  ASYNCD_RING_OP_READ,    ASYNCD_RING_OP_WRITE,
                              ASYNCD_RING_OP_FSYNC, ASYNCD_RING_OP_POLL,   ASYNCD_RING_OP_TIMEOUT,
                              ASYNCD_RING_OP_CANCEL, ASYNCD_RING_OP_NOP};
  for (uint32_t i = 0; i < kSq; ++i) {
    want[i].kind = kinds[i];
    want[i].user_data = 100 + i;
  }
  want[1].handle = 3, want[1].offset = -1, want[1].length = 4096, want[1].buffer_offset = 8192;
  want[2].handle = 3, want[2].offset = 4096, want[2].length = 10;
  want[3].handle = 3, want[3].flags = ASYNCD_RING_SQE_DATASYNC;
  want[4].handle = 4, want[4].poll_events = v1::POLL_EVENTS_READABLE;
  want[5].arg = 1500;
  want[6].arg = 101;
  want[7].deadline_ms = 250;
  for (uint32_t i = 0; i < kSq; ++i) {
    EXPECT_EQ(std::memcmp(&taken[i], &want[i], sizeof(want[i])), 0) << "entry " << i;
  }

  // Room again once the daemon took them; a sleeping daemon is rung once
  // per Submit, however many entries it carries.
  fake_.SetFlags(ASYNCD_RING_NEED_WAKEUP);
  for (int i = 0; i < 3; ++i) RingClient::PrepNop(ring_->GetSqe(), 200 + i);
  EXPECT_EQ(ring_->Submit(), 3u);
  EXPECT_EQ(fake_.Rings(), 1u);
  EXPECT_EQ(fake_.Take().size(), 3u);
}

TEST_F(RingClientTest, ReapsEveryCompletionOnceInOrder) {
  uint64_t next = 0;
  std::vector<uint64_t> reaped;
  // Over several laps of the completion ring, mixing both ways to reap.
  for (int lap = 0; lap < 5; ++lap) {
    for (uint32_t i = 0; i < kCq; ++i) ASSERT_TRUE(fake_.Post(Cqe(next++)));
    EXPECT_FALSE(fake_.Post(Cqe(999)));  // full until reaped
    EXPECT_EQ(ring_->Ready(), kCq);
    asyncd_ring_cqe batch[5];
    const uint32_t n = ring_->PeekBatch(batch);
    ASSERT_EQ(n, 5u);
    EXPECT_EQ(ring_->Ready(), kCq);  // peeking consumes nothing
    for (uint32_t i = 0; i < n; ++i) reaped.push_back(batch[i].user_data);
    ring_->Advance(n);
    const uint32_t rest = ring_->ForEachCompletion([&](const asyncd_ring_cqe& cqe) {
      EXPECT_EQ(cqe.op_id, cqe.user_data + 1000);
      reaped.push_back(cqe.user_data);
    });
    EXPECT_EQ(rest, kCq - 5);
    ring_->Advance(rest);
    EXPECT_EQ(ring_->Ready(), 0u);
  }
  ASSERT_EQ(reaped.size(), next);
  for (uint64_t i = 0; i < next; ++i) EXPECT_EQ(reaped[i], i);
  EXPECT_EQ(fake_.Rings(), 0u);  // nothing overflowed: no wake-up
}

TEST_F(RingClientTest, AdvanceWakesADaemonHoldingOverflowedCompletions) {
  for (uint32_t i = 0; i < kCq; ++i) ASSERT_TRUE(fake_.Post(Cqe(i)));
  fake_.SetFlags(ASYNCD_RING_CQ_OVERFLOW);
  ring_->Advance(ring_->ForEachCompletion([](const asyncd_ring_cqe&) {}));
  EXPECT_EQ(fake_.Rings(), 1u);
  EXPECT_TRUE(fake_.Post(Cqe(kCq)));
}

TEST_F(RingClientTest, WaitTimesOutThenWakesForCompletions) {
  EXPECT_EQ(ring_->Wait(1, 20ms).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(fake_.ctl().client_flags & ASYNCD_RING_CQ_WAITING, 0u);  // cleared after waking
  EXPECT_EQ(ring_->Wait(0, 1ms).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ring_->Wait(kCq + 1, 1ms).code(), absl::StatusCode::kInvalidArgument);

  // The fake posts only once the client sleeps, so the wake-up must come
  // through the completion pipe.
  std::thread daemon([&] {
    for (uint64_t i = 0; i < 3; ++i) {
      while (!(fake_.Load(fake_.ctl().client_flags) & ASYNCD_RING_CQ_WAITING)) {
        std::this_thread::yield();
      }
      fake_.Post(Cqe(i));
    }
  });
  EXPECT_TRUE(ring_->Wait(3, 10s).ok());
  daemon.join();
  EXPECT_EQ(ring_->Ready(), 3u);
  EXPECT_TRUE(ring_->Wait(2, 0ns).ok());  // already there: no sleep needed
}

TEST_F(RingClientTest, ClosedReportsTheDaemonsStatusAndReason) {
  ASSERT_TRUE(fake_.Post(Cqe(1)));
  fake_.Close(static_cast<uint32_t>(absl::StatusCode::kUnavailable), ASYNCD_RING_REASON_RESTART);
  const absl::Status closed = ring_->Closed();
  EXPECT_EQ(closed.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(closed.message()),
              ::testing::HasSubstr(std::string(RingClient::ReasonText(ASYNCD_RING_REASON_RESTART))));
  EXPECT_TRUE(ring_->Wait(1, 1s).ok());  // what was posted is still reaped
  ring_->Advance(1);
  EXPECT_EQ(ring_->Wait(1, 10s), closed);
}

TEST_F(RingClientTest, WaitReapsCompletionsPostedAfterTheClosedFlag) {
  // The daemon sets CLOSED first, then posts what was in flight, then
  // closes the socket: Wait must not give up at the flag.
  fake_.SetFlags(ASYNCD_RING_CLOSED);
  EXPECT_FALSE(ring_->Closed().ok());
  std::thread daemon([&] {
    while (!(fake_.Load(fake_.ctl().client_flags) & ASYNCD_RING_CQ_WAITING)) {
      std::this_thread::yield();
    }
    fake_.Post(Cqe(9));
    fake_.HangUp();
  });
  EXPECT_TRUE(ring_->Wait(1, 10s).ok());
  daemon.join();
  EXPECT_EQ(ring_->Ready(), 1u);
  ring_->Advance(1);
  EXPECT_FALSE(ring_->Wait(1, 10s).ok());
}

TEST_F(RingClientTest, TheSocketsEndAloneMeansClosed) {
  EXPECT_TRUE(ring_->Closed().ok());
  fake_.HangUp();  // a daemon that died sets no flag
  EXPECT_EQ(ring_->Wait(1, 10s).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ring_->Closed().code(), absl::StatusCode::kUnavailable);
}

TEST_F(RingClientTest, MovingKeepsTheRingAndDestroyingEndsIt) {
  RingClient moved = *std::move(ring_);
  ring_.reset();
  RingClient::PrepNop(moved.GetSqe(), 1);
  EXPECT_EQ(moved.Submit(), 1u);
  EXPECT_EQ(fake_.Take().size(), 1u);
  EXPECT_FALSE(fake_.ClientGone(0ms));
  { RingClient gone = std::move(moved); }
  EXPECT_TRUE(fake_.ClientGone(10s));
}

TEST(RingClientStatusTest, CompletionsAndReasons) {
  asyncd_ring_cqe cqe = Cqe(1, 4096);
  EXPECT_TRUE(RingClient::ToStatus(cqe).ok());
  cqe.result = -EBADF;
  EXPECT_EQ(RingClient::ToStatus(cqe).code(), absl::StatusCode::kFailedPrecondition);
  cqe.outcome = v1::OUTCOME_CANCELLED;
  cqe.result = -ECANCELED;
  EXPECT_EQ(RingClient::ToStatus(cqe).code(), absl::StatusCode::kCancelled);
  cqe.flags = ASYNCD_RING_CQE_CANCEL_ANSWER;
  cqe.result = v1::CANCEL_RESULT_CANCELLED;
  EXPECT_TRUE(RingClient::ToStatus(cqe).ok());
  cqe = {};
  cqe.outcome = v1::OUTCOME_REJECTED;
  cqe.status = static_cast<uint16_t>(absl::StatusCode::kResourceExhausted);
  cqe.reason = ASYNCD_RING_REASON_TOO_LONG;
  const absl::Status rejected = RingClient::ToStatus(cqe);
  EXPECT_EQ(rejected.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(rejected.message().find("max_op_bytes"), std::string_view::npos) << rejected;

  for (uint16_t r = ASYNCD_RING_REASON_NONE; r <= ASYNCD_RING_REASON_BAD_HANDLE; ++r) {
    EXPECT_NE(RingClient::ReasonText(r), RingClient::ReasonText(999)) << r;
  }
}

}  // namespace
}  // namespace asyncd::client
