// asyncctl selectors: filter flags become an OpSelector, bad values are
// usage errors, and cancel's guard holds: nothing selected needs --all, and
// --all cannot be mixed with other criteria (the API's rule, checked before
// any RPC).

#include "client/ctl/selector.h"

#include <gtest/gtest.h>

namespace asyncd::ctl {
namespace {

TEST(SelectorTest, EmptyListsEverything) {
  absl::StatusOr<v1::OpSelector> sel = BuildSelector({}, SelectorUse::kList);
  ASSERT_TRUE(sel.ok()) << sel.status();
  EXPECT_EQ(sel->ByteSizeLong(), 0u);
}

TEST(SelectorTest, AllCriteria) {
  SelectorFlags f;
  f.session = "0x10000";
  f.client = "bench";
  f.kinds = {"read", "write,poll"};
  f.states = {"running", "QUEUED"};
  f.backend = "uring";
  f.older_than = "1m30s";
  f.handle = "h:7";
  absl::StatusOr<v1::OpSelector> sel = BuildSelector(f, SelectorUse::kList);
  ASSERT_TRUE(sel.ok()) << sel.status();
  EXPECT_EQ(sel->session_id(), 65536u);
  EXPECT_EQ(sel->client(), "bench");
  ASSERT_EQ(sel->kinds_size(), 3);
  EXPECT_EQ(sel->kinds(0), v1::OP_KIND_READ);
  EXPECT_EQ(sel->kinds(1), v1::OP_KIND_WRITE);
  EXPECT_EQ(sel->kinds(2), v1::OP_KIND_POLL);
  ASSERT_EQ(sel->states_size(), 2);
  EXPECT_EQ(sel->states(0), v1::OP_STATE_RUNNING);
  EXPECT_EQ(sel->states(1), v1::OP_STATE_QUEUED);
  EXPECT_EQ(sel->backend(), v1::BACKEND_IO_URING);
  EXPECT_EQ(sel->older_than_ms(), 90000u);
  EXPECT_EQ(sel->handle(), 7u);
  EXPECT_FALSE(sel->all());
}

TEST(SelectorTest, OlderThanRoundsUpToMs) {
  SelectorFlags f;
  f.older_than = "1500us";
  EXPECT_EQ(BuildSelector(f, SelectorUse::kList)->older_than_ms(), 2u);
}

TEST(SelectorTest, HandleNeedsSession) {
  SelectorFlags f;
  f.handle = "3";
  absl::StatusOr<v1::OpSelector> sel = BuildSelector(f, SelectorUse::kList);
  ASSERT_FALSE(sel.ok());
  EXPECT_NE(sel.status().message().find("--session"), std::string_view::npos);
}

TEST(SelectorTest, StatesMustFitTheRpc) {
  SelectorFlags live;
  live.states = {"completed"};
  EXPECT_FALSE(BuildSelector(live, SelectorUse::kList).ok());
  EXPECT_TRUE(BuildSelector(live, SelectorUse::kWatch).ok());  // selects the terminal event
  EXPECT_TRUE(BuildSelector(live, SelectorUse::kHistory).ok());
  SelectorFlags done;
  done.states = {"running"};
  EXPECT_FALSE(BuildSelector(done, SelectorUse::kHistory).ok());
  EXPECT_TRUE(BuildSelector(done, SelectorUse::kWatch).ok());
}

TEST(SelectorTest, BadValuesAreErrors) {
  auto fails = [](SelectorFlags f) { return !BuildSelector(f, SelectorUse::kList).ok(); };
  SelectorFlags f;
  f.session = "x";
  EXPECT_TRUE(fails(f));
  f = {};
  f.kinds = {"frobnicate"};
  EXPECT_TRUE(fails(f));
  f = {};
  f.backend = "gpu";
  EXPECT_TRUE(fails(f));
  f = {};
  f.older_than = "30";
  EXPECT_TRUE(fails(f));
  f = {};
  f.states = {"unspecified"};
  EXPECT_TRUE(fails(f));
}

TEST(SelectorTest, CancelNeedsAllWhenNothingSelected) {
  absl::StatusOr<v1::OpSelector> none = BuildSelector({}, SelectorUse::kCancel);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("--all"), std::string_view::npos);

  SelectorFlags all;
  all.all = true;
  absl::StatusOr<v1::OpSelector> sel = BuildSelector(all, SelectorUse::kCancel);
  ASSERT_TRUE(sel.ok()) << sel.status();
  EXPECT_TRUE(sel->all());

  SelectorFlags kind;
  kind.kinds = {"poll"};
  sel = BuildSelector(kind, SelectorUse::kCancel);
  ASSERT_TRUE(sel.ok());
  EXPECT_FALSE(sel->all());
}

TEST(SelectorTest, CancelAllExcludesOtherCriteria) {
  SelectorFlags f;
  f.all = true;
  f.older_than = "10s";
  EXPECT_FALSE(BuildSelector(f, SelectorUse::kCancel).ok());
}

TEST(SelectorTest, HasCriteriaIgnoresAll) {
  SelectorFlags f;
  EXPECT_FALSE(HasCriteria(f));
  f.all = true;
  EXPECT_FALSE(HasCriteria(f));
  f.client = "x";
  EXPECT_TRUE(HasCriteria(f));
}

}  // namespace
}  // namespace asyncd::ctl
