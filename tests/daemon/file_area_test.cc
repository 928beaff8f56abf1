// Per-uid file areas (daemon/file_area.h) and [[share]] (daemon/config.h):
// a non-admin's paths get its own directory, made 0700 on first use; a path
// beginning with a share the caller is a member of (by uid, primary or
// supplementary group) goes beneath that share; a path climbing out of a
// share or a rename between areas is refused and changes nothing; an admin
// keeps the whole root. Bad [[share]] tables are refused with FILE:LINE.
#include "daemon/file_area.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "daemon/caller.h"
#include "daemon/config.h"

namespace asyncd::daemon {
namespace {

using ::testing::HasSubstr;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/asyncd-area.XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

absl::StatusOr<Config> Load(const TempDir& dir, const std::string& text) {
  const std::string file = dir.path() + "/asyncd.toml";
  std::ofstream(file) << text;
  return LoadConfigFile(file, Config{});
}

TEST(ShareConfigTest, ParsesSharesInOrder) {
  TempDir dir;
  auto c = Load(dir, "[[share]]\npath = \"common\"\nuids = [1001, 1002]\n"
                     "[[share]]\npath = \"team/build\"\ngids = [50]\ngroups = [\"root\"]\n");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->shares.size(), 2u);
  EXPECT_EQ(c->shares[0].path, "common");
  EXPECT_EQ(c->shares[0].uids, (std::vector<uint32_t>{1001, 1002}));
  EXPECT_EQ(c->shares[1].path, "team/build");
  EXPECT_EQ(c->shares[1].gids, (std::vector<uint32_t>{50}));
  EXPECT_EQ(c->shares[1].group_gids, (std::vector<uint32_t>{0}));
}

TEST(ShareConfigTest, RefusesBadSharesWithFileAndLine) {
  TempDir dir;
  const std::pair<const char*, const char*> cases[] = {
      {"[[share]]\nuids = [1]\n", ":1: [[share]] needs a path"},
      {"[[share]]\npath = \"common\"\n", "names nobody"},
      {"[[share]]\npath = \"/abs\"\nuids = [1]\n", ":2: share.path must be relative"},
      {"[[share]]\npath = \"a/../b\"\nuids = [1]\n", "share.path must be plain names"},
      {"[[share]]\npath = \"a//b\"\nuids = [1]\n", "share.path must be plain names"},
      {"[[share]]\npath = \"1001\"\nuids = [1]\n", "is uid 1001's own area"},
      {"[[share]]\npath = \"c\"\nusers = [1]\n", ":3: unknown key share.users"},
      {"[[share]]\npath = \"c\"\ngroups = [\"no-such-group-x\"]\n", "unknown group"},
      {"[[share]]\npath = \"c\"\nuids = [1]\n[[share]]\npath = \"c/d\"\nuids = [2]\n",
       ":4: share \"c/d\" overlaps share \"c\""},
      {"share = 1\n", ":1: share must be an array of tables"},
  };
  for (const auto& [text, want] : cases) {
    auto c = Load(dir, text);
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(want)) << text;
  }
}

AdminRules Rules() {
  Config config;
  config.shares = {ShareConfig{.path = "common", .uids = {1001}, .gids = {60}},
                   ShareConfig{.path = "ops", .group_gids = {70}}};
  return AdminRules::FromConfig(config, /*own_uid=*/990);
}

PeerCred Cred(uint32_t uid, uint32_t gid, std::vector<uint32_t> groups = {}) {
  return PeerCred{.uid = uid, .gid = gid, .pid = 1, .groups = std::move(groups)};
}

TEST(ShareMembershipTest, ByUidPrimaryOrSupplementaryGroup) {
  EXPECT_EQ(CallerFromPeerCred(Cred(1001, 100), Rules()).shares, 0b01u);
  EXPECT_EQ(CallerFromPeerCred(Cred(1002, 60), Rules()).shares, 0b01u);
  EXPECT_EQ(CallerFromPeerCred(Cred(1002, 100, {70}), Rules()).shares, 0b10u);
  EXPECT_EQ(CallerFromPeerCred(Cred(1002, 60, {70}), Rules()).shares, 0b11u);
  EXPECT_EQ(CallerFromPeerCred(Cred(1002, 100, {61}), Rules()).shares, 0u);
  EXPECT_EQ(CallerFromCertificate("peer", "uid:1001", Rules()).shares, 0b01u);
  EXPECT_EQ(CallerFromCertificate("peer", "uid:1002", Rules()).shares, 0u);
}

class FileAreasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_fd_ = open(dir_.path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(root_fd_, 0);
    auto areas = FileAreas::Open(root_fd_, {ShareConfig{.path = "common", .uids = {1001}},
                                            ShareConfig{.path = "team/build", .uids = {1001}}});
    ASSERT_TRUE(areas.ok()) << areas.status();
    areas_ = *std::move(areas);
  }
  void TearDown() override {
    areas_.reset();
    close(root_fd_);
  }
  FileArea AreaOf(uint32_t uid, bool admin = false) {
    Caller caller;
    caller.uid = uid;
    caller.admin = admin;
    caller.shares = uid == 1001 ? 0b11 : 0;
    auto area = areas_->For(caller);
    EXPECT_TRUE(area.ok()) << area.status();
    return area.ok() ? *area : FileArea();
  }
  // The directory an fd names, as a path relative to the root ("" = root).
  std::string Where(int fd) {
    struct stat want;
    EXPECT_EQ(fstat(fd, &want), 0);
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir_.path())) {
      struct stat st;
      if (stat(e.path().c_str(), &st) == 0 && st.st_ino == want.st_ino) {
        return std::filesystem::relative(e.path(), dir_.path()).string();
      }
    }
    return "?";
  }
  static core::OpRequest PathOp(const char* path, const char* path2 = nullptr) {
    core::OpRequest r;
    r.params.path = path;
    r.params.path2 = path2;
    return r;
  }

  TempDir dir_;
  int root_fd_ = -1;
  std::unique_ptr<FileAreas> areas_;
};

TEST_F(FileAreasTest, SharesAreMadeAtOpenAndAUidsAreaOnFirstUse) {
  EXPECT_TRUE(std::filesystem::is_directory(dir_.path() + "/common"));
  EXPECT_TRUE(std::filesystem::is_directory(dir_.path() + "/team/build"));
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/1002"));
  AreaOf(1002);
  struct stat st;
  ASSERT_EQ(stat((dir_.path() + "/1002").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  EXPECT_EQ(st.st_uid, geteuid());
}

TEST_F(FileAreasTest, APathGoesToItsShareOrTheCallersOwnArea) {
  const FileArea member = AreaOf(1001);
  const std::pair<const char*, std::pair<std::string, std::string>> cases[] = {
      {"x", {"1001", "x"}},
      {"/x", {"1001", "/x"}},
      {"commonx/y", {"1001", "commonx/y"}},
      {"common", {"common", "."}},
      {"common/", {"common", "/"}},
      {"common/a/b", {"common", "/a/b"}},
      {"/./common//a", {"common", "//a"}},
      {"common/a/../b", {"common", "/a/../b"}},
      {"team/build/out", {"team/build", "/out"}},
      {"team/other", {"1001", "team/other"}},
  };
  for (const auto& [path, want] : cases) {
    core::OpRequest r = PathOp(path);
    ASSERT_TRUE(member.Place(r).ok()) << path;
    EXPECT_EQ(Where(r.params.dirfd), want.first) << path;
    EXPECT_EQ(std::string(r.params.path), want.second) << path;
    // Listings show what the client named where the path was cut.
    EXPECT_EQ(r.shown_path, r.params.path == path ? nullptr : path) << path;
    if (r.params.path != path && want.second != ".") {
      EXPECT_EQ(r.params.path - r.params.shown_prefix, path) << path;  // a handle's name
    }
  }
  // No member: "common" is a name in its own area.
  core::OpRequest r = PathOp("common/a");
  ASSERT_TRUE(AreaOf(1002).Place(r).ok());
  EXPECT_EQ(Where(r.params.dirfd), "1002");
  EXPECT_STREQ(r.params.path, "common/a");
}

TEST_F(FileAreasTest, ClimbingOutOfAShareOrRenamingAcrossAreasIsRefusedUnchanged) {
  const FileArea member = AreaOf(1001);
  for (const char* path : {"common/..", "common/a/../../x", "team/build/../x"}) {
    core::OpRequest r = PathOp(path);
    absl::Status s = member.Place(r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << path;
    EXPECT_THAT(std::string(s.message()), HasSubstr("climbs out of share")) << path;
    EXPECT_EQ(r.params.dirfd, -1);
    EXPECT_STREQ(r.params.path, path);
  }
  for (auto [from, to] : {std::pair{"common/a", "b"}, std::pair{"a", "common/b"},
                          std::pair{"common/a", "team/build/a"}}) {
    core::OpRequest r = PathOp(from, to);
    absl::Status s = member.Place(r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << from << " " << to;
    EXPECT_THAT(std::string(s.message()), HasSubstr("different areas"));
    EXPECT_EQ(r.params.dirfd, -1);
    EXPECT_STREQ(r.params.path, from);
    EXPECT_STREQ(r.params.path2, to);
  }
  core::OpRequest r = PathOp("common/a", "/common/b");
  ASSERT_TRUE(member.Place(r).ok());
  EXPECT_EQ(Where(r.params.dirfd), "common");
  EXPECT_STREQ(r.params.path, "/a");
  EXPECT_STREQ(r.params.path2, "/b");
}

TEST_F(FileAreasTest, ASessionsAreaIsCoveredOnlyByCallersWithItsAccess) {
  Caller admin;
  admin.admin = true;
  Caller member;
  member.uid = 1001;
  member.shares = 0b11;
  Caller half = member;
  half.shares = 0b01;
  Caller none = member;
  none.shares = 0;
  const FileArea whole = AreaOf(0, /*admin=*/true);
  EXPECT_TRUE(whole.CoveredBy(admin));
  EXPECT_FALSE(whole.CoveredBy(member));
  const FileArea both = AreaOf(1001);  // a member of both shares
  EXPECT_TRUE(both.CoveredBy(member));
  EXPECT_TRUE(both.CoveredBy(admin));
  EXPECT_FALSE(both.CoveredBy(half));
  EXPECT_FALSE(both.CoveredBy(none));
  const FileArea plain = AreaOf(1002);  // no shares
  EXPECT_TRUE(plain.CoveredBy(none));
}

TEST_F(FileAreasTest, AnAdminKeepsTheWholeRoot) {
  core::OpRequest r = PathOp("1001/x");
  ASSERT_TRUE(AreaOf(0, /*admin=*/true).Place(r).ok());
  EXPECT_EQ(r.params.dirfd, -1);  // the dispatcher's root
  EXPECT_STREQ(r.params.path, "1001/x");
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/0"));
}

TEST_F(FileAreasTest, AnAreaThatCannotBeMadeIsAFailedPrecondition) {
  std::ofstream(dir_.path() + "/1003") << "a file where the directory goes";
  Caller caller;
  caller.uid = 1003;
  auto area = areas_->For(caller);
  EXPECT_EQ(area.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(area.status().message()), HasSubstr("uid 1003"));
}

}  // namespace
}  // namespace asyncd::daemon
