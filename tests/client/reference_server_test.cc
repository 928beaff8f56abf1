// asyncd-bench's reference server (the transport's ceiling in compare.sh)
// answers the client library as the daemon would, so that a load measured
// against it differs from one against the daemon only by the daemon's work:
// each op is accepted once and completes once, a read carries the bytes it
// asked for (up to the block size), a cancel is answered, and the unary
// calls a bench setup makes succeed without writing the bench file.
#include "client/bench/reference_server.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <future>
#include <map>
#include <mutex>

#include "asyncd/client.h"

namespace asyncd::client::bench {
namespace {

constexpr uint32_t kBlockSize = 4096;

class ReferenceServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    socket_ = std::filesystem::temp_directory_path() /
              ("asyncd-reference-" + std::to_string(getpid()) + ".sock");
    auto server = ReferenceServer::Start("unix:" + socket_.string(), kBlockSize);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = Connect("unix:" + socket_.string());
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove(socket_);
  }

  std::filesystem::path socket_;
  std::unique_ptr<ReferenceServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

v1::Operation Read(uint64_t tag, uint32_t length) {
  v1::Operation op;
  op.set_tag(tag);
  op.mutable_read()->set_handle(1);
  op.mutable_read()->set_offset(0);
  op.mutable_read()->set_length(length);
  return op;
}

TEST_F(ReferenceServerTest, StreamAcceptsAndCompletesEachOpOnceWithItsBytes) {
  auto stream = StreamClient::Create(channel_, "reference-test");
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::vector<v1::Operation> ops;
  std::map<uint64_t, uint32_t> want_bytes;  // by tag
  for (uint64_t tag = 1; tag <= 40; ++tag) {
    const uint32_t length = tag % 3 == 0 ? 100 : tag % 3 == 1 ? kBlockSize : 2 * kBlockSize;
    ops.push_back(Read(tag, length));
    want_bytes[tag] = std::min(length, kBlockSize);
  }
  v1::Operation nop;
  nop.set_tag(41);
  nop.mutable_nop();
  ops.push_back(nop);
  want_bytes[41] = 0;

  std::mutex mu;
  std::map<uint64_t, uint64_t> accepted_ids;  // by tag
  std::map<uint64_t, v1::Completion> completions;
  std::promise<void> all_done;
  const size_t n = ops.size();
  ASSERT_TRUE((*stream)
                  ->Submit(
                      std::move(ops),
                      [&](const v1::Completion& c) {
                        std::lock_guard lock(mu);
                        EXPECT_TRUE(completions.emplace(c.tag(), c).second) << "twice: " << c.tag();
                        if (completions.size() == n) all_done.set_value();
                      },
                      [&](const StreamClient::AcceptedOp& a) {
                        std::lock_guard lock(mu);
                        EXPECT_TRUE(accepted_ids.emplace(a.tag, a.op_id).second);
                      })
                  .ok());
  ASSERT_EQ(all_done.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  // A cancel is answered (finding nothing: every op is over) rather than left hanging.
  v1::CancelRequest cancel;
  cancel.set_op_id(accepted_ids.begin()->second);
  std::future<absl::StatusOr<v1::CancelResponse>> cancelled = (*stream)->Cancel(cancel);
  ASSERT_EQ(cancelled.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  absl::StatusOr<v1::CancelResponse> cancel_response = cancelled.get();
  ASSERT_TRUE(cancel_response.ok()) << cancel_response.status();
  EXPECT_EQ(cancel_response->outcomes_size(), 0);
  ASSERT_TRUE((*stream)->Finish().ok());

  std::lock_guard lock(mu);
  ASSERT_EQ(accepted_ids.size(), n);
  for (const auto& [tag, c] : completions) {
    SCOPED_TRACE(tag);
    EXPECT_EQ(c.outcome(), v1::OUTCOME_COMPLETED);
    EXPECT_EQ(c.error_number(), 0);
    EXPECT_NE(c.op_id(), 0u);
    EXPECT_EQ(c.op_id(), accepted_ids[tag]);
    EXPECT_EQ(c.data().size(), want_bytes[tag]);
    EXPECT_EQ(c.result(), static_cast<int32_t>(want_bytes[tag]));
  }
}

TEST_F(ReferenceServerTest, UnarySetupOpensAndReportsAFileLargeEnoughToSkipWriting) {
  Client client(channel_);
  absl::StatusOr<uint64_t> session = client.OpenSession("reference-test");
  ASSERT_TRUE(session.ok()) << session.status();
  absl::StatusOr<uint32_t> handle = client.Open(*session, "data.bin", v1::OPEN_MODE_READ_ONLY);
  ASSERT_TRUE(handle.ok()) << handle.status();
  EXPECT_NE(*handle, 0u);
  absl::StatusOr<v1::Stat> stat = client.Stat(*session, *handle);
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_GE(stat->size_bytes(), uint64_t{1} << 40);  // asyncd-bench's largest --file-size
  absl::StatusOr<std::string> data = client.Read(*session, *handle, 0, kBlockSize);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->size(), kBlockSize);
  EXPECT_TRUE(client.CloseSession(*session).ok());
}

}  // namespace
}  // namespace asyncd::client::bench
