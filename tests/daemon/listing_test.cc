// Listing (daemon/listing.h) over a real core::Registry and Dispatcher with
// the fake backend holding the ops: ListOperations pages through many ops
// in id order, each once, with the page size bounds, the filter and the
// owner rule; GetOperation finds an op in flight or in the history, refuses
// another uid's; ListHistory lists recent or slowest finished ops.
#include "daemon/listing.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "daemon/observer.h"
#include "tests/mocks/fake_backend.h"

namespace asyncd::daemon {
namespace {

using mocks::FakeBackend;

class ListingTest : public ::testing::Test {
 protected:
  ListingTest() {
    dispatcher_.SetBackends({&backend_});
    dispatcher_.SetObserver(&observer_);
    db_ = *registry_.OpenSession({"db", 1000, 1000, 11});
    web_ = *registry_.OpenSession({"web", 1001, 1001, 22});
  }
  ~ListingTest() override { backend_.CompleteAll(0); }

  std::vector<core::OpId> Submit(core::Session& session, core::OpKind kind, int n) {
    std::vector<core::OpId> ids;
    for (int i = 0; i < n; ++i) {
      absl::StatusOr<core::OpId> id = dispatcher_.Submit(session, {.kind = kind});
      EXPECT_TRUE(id.ok()) << id.status();
      if (id.ok()) ids.push_back(*id);
    }
    return ids;
  }
  v1::ListOperationsResponse List(const Caller& caller, uint32_t page_size,
                                  const std::string& token = "") {
    v1::ListOperationsRequest req;
    req.set_page_size(page_size);
    req.set_page_token(token);
    v1::ListOperationsResponse resp;
    absl::Status s = listing_.ListOperations(caller, req, &resp);
    EXPECT_TRUE(s.ok()) << s;
    return resp;
  }

  static Caller User(uint32_t uid) { return Caller{.uid = uid, .gid = uid}; }
  static Caller Admin() { return Caller{.uid = 0, .gid = 0, .admin = true}; }

  core::Registry registry_{core::Registry::Options{.max_ops_per_session = 4096}};
  core::Dispatcher dispatcher_{registry_, -1};
  FakeBackend backend_{dispatcher_, {.completion = FakeBackend::Completion::kHeld}};
  Observer observer_{800, 10};
  Listing listing_{registry_, observer_.history()};
  std::shared_ptr<core::Session> db_;   // uid 1000
  std::shared_ptr<core::Session> web_;  // uid 1001
};

TEST_F(ListingTest, PagesWalkEveryOpOnceInIdOrder) {
  Submit(*db_, core::OpKind::kTimeout, 150);
  Submit(*web_, core::OpKind::kMkdir, 100);
  std::vector<uint64_t> seen;
  std::vector<int> page_sizes;
  std::string token;
  do {
    v1::ListOperationsResponse page = List(Admin(), 100, token);
    EXPECT_EQ(page.total_matched(), 250u);  // exact at the end; estimated, evenly, before
    page_sizes.push_back(page.ops_size());
    for (const v1::OperationInfo& op : page.ops()) seen.push_back(op.op_id());
    token = page.next_page_token();
  } while (!token.empty() && page_sizes.size() < 10);
  EXPECT_EQ(page_sizes, (std::vector<int>{100, 100, 50}));
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  EXPECT_EQ(std::set<uint64_t>(seen.begin(), seen.end()).size(), 250u);
}

TEST_F(ListingTest, TokenIsTheLastIdReturned) {
  Submit(*db_, core::OpKind::kTimeout, 3);
  v1::ListOperationsResponse page = List(Admin(), 2);
  ASSERT_EQ(page.ops_size(), 2);
  EXPECT_TRUE(page.next_page_token().starts_with(std::to_string(page.ops(1).op_id()) + "."));
  EXPECT_TRUE(List(Admin(), 3).next_page_token().empty());
}

TEST_F(ListingTest, PageSizeZeroIsTheDefaultAndLargeOnesAreCut) {
  Submit(*db_, core::OpKind::kTimeout, 1100);
  EXPECT_EQ(List(Admin(), 0).ops_size(), static_cast<int>(Listing::kDefaultPageSize));
  EXPECT_EQ(List(Admin(), 5000).ops_size(), static_cast<int>(Listing::kMaxPageSize));
}

TEST_F(ListingTest, BadPageTokenIsInvalid) {
  v1::ListOperationsRequest req;
  req.set_page_token("next please");
  v1::ListOperationsResponse resp;
  absl::Status s = listing_.ListOperations(Admin(), req, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "page_token: not a token from this daemon");
}

TEST_F(ListingTest, BadFilterIsInvalid) {
  v1::ListOperationsRequest req;
  req.mutable_filter()->set_handle(1);
  v1::ListOperationsResponse resp;
  absl::Status s = listing_.ListOperations(Admin(), req, &resp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "selector.handle: requires selector.session_id");
}

TEST_F(ListingTest, NonAdminSeesOnlyItsOwnOps) {
  Submit(*db_, core::OpKind::kTimeout, 3);
  Submit(*web_, core::OpKind::kTimeout, 4);
  v1::ListOperationsResponse page = List(User(1001), 100);
  EXPECT_EQ(page.total_matched(), 4u);
  ASSERT_EQ(page.ops_size(), 4);
  for (const v1::OperationInfo& op : page.ops()) {
    EXPECT_EQ(op.uid(), 1001u);
    EXPECT_EQ(op.client(), "web");
    EXPECT_EQ(op.pid(), 22u);
  }
}

TEST_F(ListingTest, FilterSelectsAndTotalCountsEveryMatch) {
  Submit(*db_, core::OpKind::kTimeout, 5);
  Submit(*db_, core::OpKind::kMkdir, 2);
  v1::ListOperationsRequest req;
  req.mutable_filter()->add_kinds(v1::OP_KIND_TIMEOUT);
  req.set_page_size(2);
  v1::ListOperationsResponse resp;
  ASSERT_TRUE(listing_.ListOperations(Admin(), req, &resp).ok());
  EXPECT_GE(resp.total_matched(), 3u);  // an estimate: the page stopped early
  ASSERT_EQ(resp.ops_size(), 2);
  EXPECT_EQ(resp.ops(0).kind(), v1::OP_KIND_TIMEOUT);
  // Page by page to the end, the last page's total is exact.
  int pages = 1;
  while (!resp.next_page_token().empty()) {
    req.set_page_token(resp.next_page_token());
    resp.Clear();
    ASSERT_TRUE(listing_.ListOperations(Admin(), req, &resp).ok());
    for (const v1::OperationInfo& op : resp.ops()) EXPECT_EQ(op.kind(), v1::OP_KIND_TIMEOUT);
    ++pages;
  }
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(resp.total_matched(), 5u);
}

// A token is good only for the filter it was issued for.
TEST_F(ListingTest, TokenReusedWithAnotherFilterIsInvalid) {
  Submit(*db_, core::OpKind::kTimeout, 5);
  v1::ListOperationsRequest req;
  req.set_page_size(2);
  v1::ListOperationsResponse resp;
  ASSERT_TRUE(listing_.ListOperations(Admin(), req, &resp).ok());
  ASSERT_FALSE(resp.next_page_token().empty());
  req.set_page_token(resp.next_page_token());
  req.mutable_filter()->add_kinds(v1::OP_KIND_TIMEOUT);
  v1::ListOperationsResponse other;
  const absl::Status s = listing_.ListOperations(Admin(), req, &other);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(other.ops_size(), 0);
}

// A finished op is never listed, even between its end and its slot's
// retirement.
TEST_F(ListingTest, FinishedOpIsNeverListed) {
  Submit(*db_, core::OpKind::kTimeout, 1);
  std::vector<core::Op*> held = backend_.TakeHeld();
  ASSERT_EQ(held.size(), 1u);
  core::Op& op = *held[0];
  ASSERT_TRUE(op.TryStart(1));
  op.Finish(0, 2);  // terminal, not yet retired
  EXPECT_EQ(List(Admin(), 10).ops_size(), 0);
  EXPECT_EQ(List(Admin(), 10).total_matched(), 0u);
  op.session->Retire(op);
}

TEST_F(ListingTest, TimelineOnlyOnRequest) {
  Submit(*db_, core::OpKind::kTimeout, 1);
  v1::ListOperationsRequest req;
  v1::ListOperationsResponse plain;
  ASSERT_TRUE(listing_.ListOperations(Admin(), req, &plain).ok());
  ASSERT_EQ(plain.ops_size(), 1);
  EXPECT_EQ(plain.ops(0).timeline_size(), 0);
  req.set_include_timeline(true);
  v1::ListOperationsResponse detailed;
  ASSERT_TRUE(listing_.ListOperations(Admin(), req, &detailed).ok());
  ASSERT_EQ(detailed.ops_size(), 1);
  EXPECT_GT(detailed.ops(0).timeline_size(), 0);
}

TEST_F(ListingTest, GetOperationInFlightHasItsTimeline) {
  const core::OpId id = Submit(*db_, core::OpKind::kTimeout, 1)[0];
  v1::GetOperationRequest req;
  req.set_op_id(id.value);
  v1::OperationInfo info;
  ASSERT_TRUE(listing_.GetOperation(User(1000), req, &info).ok());
  EXPECT_EQ(info.op_id(), id.value);
  EXPECT_EQ(info.state(), v1::OP_STATE_QUEUED);  // held in the backend's queue, not started
  EXPECT_EQ(info.client(), "db");
  EXPECT_GT(info.timeline_size(), 0);
}

TEST_F(ListingTest, GetOperationFindsAFinishedOpInTheHistory) {
  const core::OpId id = Submit(*db_, core::OpKind::kNop, 1)[0];
  backend_.CompleteAll(0);
  v1::GetOperationRequest req;
  req.set_op_id(id.value);
  v1::OperationInfo info;
  ASSERT_TRUE(listing_.GetOperation(User(1000), req, &info).ok());
  EXPECT_EQ(info.op_id(), id.value);
  EXPECT_EQ(info.state(), v1::OP_STATE_COMPLETED);
  EXPECT_EQ(info.outcome(), v1::OUTCOME_COMPLETED);
}

TEST_F(ListingTest, GetOperationOfAnotherUidIsDenied) {
  const core::OpId live = Submit(*db_, core::OpKind::kTimeout, 1)[0];
  const core::OpId done = Submit(*db_, core::OpKind::kNop, 1)[0];
  ASSERT_TRUE(backend_.CompleteOne(backend_.held().back(), 0));
  for (core::OpId id : {live, done}) {
    v1::GetOperationRequest req;
    req.set_op_id(id.value);
    v1::OperationInfo info;
    EXPECT_EQ(listing_.GetOperation(User(1001), req, &info).code(),
              absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(info.op_id(), 0u);
    EXPECT_TRUE(listing_.GetOperation(Admin(), req, &info).ok());
  }
}

TEST_F(ListingTest, GetOperationOfZeroOrUnknownOps) {
  v1::GetOperationRequest req;
  v1::OperationInfo info;
  absl::Status zero = listing_.GetOperation(Admin(), req, &info);
  EXPECT_EQ(zero.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(zero.message(), "op_id: 0 is not an operation");
  req.set_op_id(987654321);
  absl::Status unknown = listing_.GetOperation(Admin(), req, &info);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(unknown.message(), "operation 987654321 is neither in flight nor in the history");
}

TEST_F(ListingTest, HistoryListsRecentOpsNewestFirst) {
  const std::vector<core::OpId> ids = Submit(*db_, core::OpKind::kNop, 3);
  for (core::Op* op : backend_.held()) ASSERT_TRUE(backend_.CompleteOne(op, 0));
  v1::ListHistoryRequest req;
  req.set_limit(2);
  v1::ListHistoryResponse resp;
  ASSERT_TRUE(listing_.ListHistory(Admin(), req, &resp).ok());
  ASSERT_EQ(resp.ops_size(), 2);
  EXPECT_EQ(resp.ops(0).op_id(), ids[2].value);
  EXPECT_EQ(resp.ops(1).op_id(), ids[1].value);
}

TEST_F(ListingTest, HistoryListsTheSlowest) {
  const std::vector<core::OpId> ids = Submit(*db_, core::OpKind::kNop, 2);
  const std::vector<core::Op*> held = backend_.held();
  ASSERT_TRUE(backend_.CompleteOne(held[1], 0));  // the second finishes first: faster
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_TRUE(backend_.CompleteOne(held[0], 0));
  v1::ListHistoryRequest req;
  req.set_slowest(true);
  v1::ListHistoryResponse resp;
  ASSERT_TRUE(listing_.ListHistory(Admin(), req, &resp).ok());
  ASSERT_EQ(resp.ops_size(), 2);
  EXPECT_EQ(resp.ops(0).op_id(), ids[0].value);
}

TEST_F(ListingTest, HistoryKeepsNonAdminsToTheirOwnOps) {
  Submit(*db_, core::OpKind::kNop, 2);
  Submit(*web_, core::OpKind::kNop, 1);
  backend_.CompleteAll(0);
  v1::ListHistoryResponse resp;
  ASSERT_TRUE(listing_.ListHistory(User(1001), v1::ListHistoryRequest(), &resp).ok());
  ASSERT_EQ(resp.ops_size(), 1);
  EXPECT_EQ(resp.ops(0).uid(), 1001u);
}

}  // namespace
}  // namespace asyncd::daemon
