// Path confinement beneath the root (resolve.h), for both resolvers: the
// kernel's openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) and the userspace
// walk that replaces it where openat2 is refused. The walk must give the
// same answer as openat2 for every path: the differential test compares
// them on thousands of random paths through a tree of directories, files
// and symlinks. The escape and rename-race suites run through the backends
// in conformance_test.cc.
#include "src/backends/resolve.h"

#include <fcntl.h>
#include <ftw.h>
#include <linux/stat.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "src/backends/syscalls.h"

namespace asyncd::backends {
namespace {

using core::OpKind;

class TempRoot {
 public:
  TempRoot() {
    char tmpl[] = "/tmp/asyncd-resolve-XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) dir_ = tmpl;
    fd_ = ::open(dir_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  }
  ~TempRoot() {
    if (fd_ >= 0) ::close(fd_);
    ::nftw(
        dir_.c_str(),
        [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }, 16,
        FTW_DEPTH | FTW_PHYS);
  }
  int fd() const { return fd_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int fd_ = -1;
};

// What a descriptor names, or the error: results compare across resolvers.
struct Outcome {
  int error = 0;  // errno, or 0
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator==(const Outcome&) const = default;
};

Outcome Describe(int fd) {
  Outcome o;
  if (fd < 0) {
    o.error = -fd;
    return o;
  }
  struct stat st;
  if (::fstat(fd, &st) == 0) {
    o.dev = st.st_dev;
    o.ino = st.st_ino;
  }
  ::close(fd);
  return o;
}

std::string Show(const Outcome& o) {
  return o.error != 0 ? std::string(strerrorname_np(o.error)) : "ino " + std::to_string(o.ino);
}

class ResolveTest : public ::testing::TestWithParam<PathResolver> {
 protected:
  void SetUp() override {
    if (GetParam() == PathResolver::kOpenat2 &&
        ProbeResolver(root_.fd()).resolver != PathResolver::kOpenat2) {
      GTEST_SKIP() << "openat2 is refused here: " << ProbeResolver(root_.fd()).reason;
    }
  }

  int Open(const char* path, uint64_t flags, uint64_t mode = 0) {
    return OpenBeneath(GetParam(), root_.fd(), path, flags, mode);
  }
  int64_t Run(OpKind kind, core::OpParams p) {
    core::OpHead head;
    core::Op op;
    op.head = &head;
    op.head->kind.store(kind, std::memory_order_relaxed);
    p.dirfd = root_.fd();
    op.params = p;
    return RunBlocking(op, BlockingContext{.resolver = GetParam()});
  }
  bool ExistsInRoot(const char* path) {
    struct stat st;
    return ::fstatat(root_.fd(), path, &st, AT_SYMLINK_NOFOLLOW) == 0;
  }
  void Link(const char* target, const char* name) {
    ASSERT_EQ(::symlinkat(target, root_.fd(), name), 0) << name << ": " << std::strerror(errno);
  }

  TempRoot root_;
};

INSTANTIATE_TEST_SUITE_P(Resolvers, ResolveTest,
                         ::testing::Values(PathResolver::kOpenat2, PathResolver::kUserspace),
                         [](const auto& info) { return std::string(Name(info.param)); });

TEST_P(ResolveTest, OpenParentBeneathSplitsAndRejects) {
  ASSERT_EQ(::mkdirat(root_.fd(), "a", 0700), 0);
  const PathResolver r = GetParam();
  ParentDir p;
  ASSERT_EQ(OpenParentBeneath(r, root_.fd(), "a/b/", p), 0);
  EXPECT_STREQ(p.name(), "b");
  EXPECT_GE(p.fd(), 0);
  ASSERT_EQ(OpenParentBeneath(r, root_.fd(), "/top", p), 0);
  EXPECT_STREQ(p.name(), "top");
  ASSERT_EQ(OpenParentBeneath(r, root_.fd(), "plain", p), 0);
  EXPECT_STREQ(p.name(), "plain");
  EXPECT_EQ(OpenParentBeneath(r, root_.fd(), "a/..", p), -EINVAL);
  EXPECT_EQ(OpenParentBeneath(r, root_.fd(), "..", p), -EINVAL);
  EXPECT_EQ(OpenParentBeneath(r, root_.fd(), ".", p), -EINVAL);
  EXPECT_EQ(OpenParentBeneath(r, root_.fd(), "/", p), -EINVAL);
  EXPECT_EQ(OpenParentBeneath(r, root_.fd(), "", p), -ENOENT);
  EXPECT_EQ(OpenParentBeneath(r, root_.fd(), nullptr, p), -EINVAL);
  EXPECT_EQ(OpenParentBeneath(r, root_.fd(), "missing/x", p), -ENOENT);
  EXPECT_EQ(p.fd(), -1);
  ParentDir moved;
  ASSERT_EQ(OpenParentBeneath(r, root_.fd(), "a/c", moved), 0);
  ParentDir q(std::move(moved));
  EXPECT_EQ(moved.fd(), -1);
  EXPECT_STREQ(q.name(), "c");
}

TEST_P(ResolveTest, DotDotAndAbsolutePathsStayInside) {
  core::OpParams p;
  p.path = "../../escaped";
  p.mode = 0700;
  ASSERT_EQ(Run(OpKind::kMkdir, p), 0);
  EXPECT_TRUE(ExistsInRoot("escaped"));
  p.path = "/abs";
  ASSERT_EQ(Run(OpKind::kMkdir, p), 0);
  EXPECT_TRUE(ExistsInRoot("abs"));
  p.path = "../abs";
  p.path2 = "/../renamed";
  ASSERT_EQ(Run(OpKind::kRename, p), 0);
  EXPECT_TRUE(ExistsInRoot("renamed"));
  p.path = "renamed";
  p.flags = AT_REMOVEDIR;
  ASSERT_EQ(Run(OpKind::kUnlink, p), 0);
  EXPECT_FALSE(ExistsInRoot("renamed"));
}

TEST_P(ResolveTest, SymlinksResolveInsideTheRoot) {
  // "out" points at the real /tmp; inside the root it means <root>/tmp.
  Link("/tmp", "out");
  Link("/etc/passwd", "pw");
  struct statx sx;
  core::OpParams p;
  p.buf = &sx;
  p.path = "pw";
  EXPECT_EQ(Run(OpKind::kStatx, p), -ENOENT);  // would be the host's /etc/passwd
  p.flags = AT_SYMLINK_NOFOLLOW;
  ASSERT_EQ(Run(OpKind::kStatx, p), 0);
  EXPECT_TRUE(S_ISLNK(sx.stx_mode));

  core::OpParams m;
  m.path = "out/created-through-link";
  m.mode = 0700;
  EXPECT_EQ(Run(OpKind::kMkdir, m), -ENOENT);  // <root>/tmp does not exist
  ASSERT_EQ(::mkdirat(root_.fd(), "tmp", 0700), 0);
  ASSERT_EQ(Run(OpKind::kMkdir, m), 0);
  EXPECT_TRUE(ExistsInRoot("tmp/created-through-link"));

  core::OpParams o;
  o.path = "pw";
  o.flags = O_RDONLY;
  EXPECT_EQ(Run(OpKind::kOpen, o), -ENOENT);
  o.path = "/proc/self/root/etc/passwd";
  EXPECT_LT(Run(OpKind::kOpen, o), 0);

  core::OpParams u;
  u.path = "out/../../pw";  // the link itself, inside the root
  ASSERT_EQ(Run(OpKind::kUnlink, u), 0);
  EXPECT_FALSE(ExistsInRoot("pw"));
  EXPECT_EQ(::access("/etc/passwd", F_OK), 0);
}

// The kernel follows at most 40 symlinks in one lookup (MAXSYMLINKS); the
// 41st gives ELOOP, and so does a loop.
TEST_P(ResolveTest, FortyLinksAreFollowedAndTheFortyFirstIsEloop) {
  ASSERT_EQ(::close(::openat(root_.fd(), "target", O_WRONLY | O_CREAT | O_CLOEXEC, 0600)), 0);
  // l0 -> l1 -> ... -> l40 -> target: opening l1 follows 40 links, l0 41.
  for (int i = 0; i <= 40; ++i) {
    const std::string next = i == 40 ? "target" : "l" + std::to_string(i + 1);
    Link(next.c_str(), ("l" + std::to_string(i)).c_str());
  }
  const int fd = Open("l1", O_RDONLY);
  EXPECT_GE(fd, 0) << std::strerror(-fd);
  if (fd >= 0) ::close(fd);
  EXPECT_EQ(Open("l0", O_RDONLY), -ELOOP);
  Link("loop_b", "loop_a");
  Link("loop_a", "loop_b");
  EXPECT_EQ(Open("loop_a", O_RDONLY), -ELOOP);
  EXPECT_EQ(Open("loop_a/x", O_RDONLY), -ELOOP);
}

// Creating through a dangling symlink creates its target, inside the root;
// O_EXCL does not follow it; O_NOFOLLOW refuses it.
TEST_P(ResolveTest, CreateThroughADanglingLinkStaysInside) {
  Link("/made-by-link", "dangling");
  const int fd = Open("dangling", O_WRONLY | O_CREAT, 0600);
  ASSERT_GE(fd, 0) << std::strerror(-fd);
  ::close(fd);
  EXPECT_TRUE(ExistsInRoot("made-by-link"));
  EXPECT_NE(::access("/made-by-link", F_OK), 0);
  EXPECT_EQ(Open("dangling", O_WRONLY | O_CREAT | O_EXCL, 0600), -EEXIST);
  EXPECT_EQ(Open("dangling", O_WRONLY | O_NOFOLLOW), -ELOOP);
  EXPECT_EQ(Open("new-dir/", O_WRONLY | O_CREAT, 0600), -EISDIR);
}

// /proc/*/fd/* and /proc/self/exe would reach anything: with the real root
// as the root, both resolvers refuse them with ELOOP.
TEST_P(ResolveTest, MagicLinksAreRefused) {
  const int slash = ::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(slash, 0);
  const int probe = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(probe, 0);
  const std::string fd_link = "proc/self/fd/" + std::to_string(probe);
  for (const std::string& path : {fd_link, std::string("/proc/self/exe"),
                                  std::string("proc/thread-self/cwd/x")}) {
    const int fd = OpenBeneath(GetParam(), slash, path.c_str(), O_RDONLY, 0);
    EXPECT_EQ(fd, -ELOOP) << path;
    if (fd >= 0) ::close(fd);
  }
  ::close(probe);
  ::close(slash);
}

// A tree of directories, files and symlinks of every shape: absolute,
// relative, climbing, looping, dangling, to files and to directories.
void MakeTree(int r) {
  for (const char* d : {"a", "a/b", "a/b/c", "e"}) ASSERT_EQ(::mkdirat(r, d, 0755), 0) << d;
  for (const char* f : {"f", "a/f", "a/b/c/f"}) {
    ASSERT_EQ(::close(::openat(r, f, O_WRONLY | O_CREAT | O_CLOEXEC, 0644)), 0) << f;
  }
  const std::vector<std::pair<const char*, const char*>> links = {
      {"/a/b", "l_abs"},         {"a/b/c", "l_rel"},        {"../../a", "l_up"},
      {"l_loop", "l_loop"},      {"a/", "l_dir"},           {"f", "l_file"},
      {"nowhere/x", "l_dangling"}, {"../l_rel", "a/l_back"}, {"/", "a/b/l_root"},
      {"..", "a/b/c/l_dotdot"},  {"/../../..", "l_climb"},  {"l_abs/../f", "l_via"},
      {"/e/new", "l_new"}};
  for (const auto& [target, name] : links) ASSERT_EQ(::symlinkat(target, r, name), 0) << name;
}

// Random paths over the tree's names, "..", "." and empty components.
std::vector<std::string> RandomPaths(int count, uint32_t seed) {
  static const std::vector<std::string> kTokens = {
      "a", "b", "c", "e", "f", "..", ".", "", "l_abs", "l_rel", "l_up", "l_loop", "l_dir",
      "l_file", "l_dangling", "l_back", "l_root", "l_dotdot", "l_climb", "l_via", "l_new",
      "missing"};
  std::mt19937 rng(seed);
  std::vector<std::string> paths = {"/", ".", "..", "/..", "a/b/c/l_dotdot/..", "l_file/",
                                    "l_dir/", "f/.", "f/..", "a//b///c", "l_loop/", "l_via"};
  for (int i = 0; i < count; ++i) {
    std::string p = rng() % 4 == 0 ? "/" : "";
    const int n = 1 + static_cast<int>(rng() % 6);
    for (int k = 0; k < n; ++k) {
      if (k > 0) p += '/';
      p += kTokens[rng() % kTokens.size()];
    }
    if (rng() % 5 == 0) p += '/';
    paths.push_back(p);
  }
  return paths;
}

// Every entry under `dir`, with its type: what a create changed.
std::set<std::string> ListTree(const std::string& dir) {
  static thread_local std::set<std::string>* out;
  static thread_local size_t prefix;
  std::set<std::string> entries;
  out = &entries;
  prefix = dir.size();
  ::nftw(
      dir.c_str(),
      [](const char* path, const struct stat* st, int, struct FTW*) {
        out->insert(std::string(path + prefix) + ":" + std::to_string(st->st_mode & S_IFMT));
        return 0;
      },
      16, FTW_PHYS);
  return entries;
}

// The userspace walk gives openat2's answer (the same file, or the same
// errno) for every path through the tree, with and without following a
// final symlink, for reading, writing and O_PATH.
TEST(ResolverDifferentialTest, UserspaceOpensWhatOpenat2Opens) {
  TempRoot root;
  ASSERT_GE(root.fd(), 0);
  if (ProbeResolver(root.fd()).resolver != PathResolver::kOpenat2) {
    GTEST_SKIP() << "openat2 is refused here, nothing to compare with";
  }
  ASSERT_NO_FATAL_FAILURE(MakeTree(root.fd()));
  const std::vector<uint64_t> flag_sets = {O_RDONLY, O_PATH, O_PATH | O_NOFOLLOW,
                                           O_RDONLY | O_DIRECTORY, O_RDONLY | O_NOFOLLOW,
                                           O_WRONLY};
  int compared = 0;
  for (const std::string& p : RandomPaths(4000, 20261204)) {
    for (uint64_t flags : flag_sets) {
      const int r = root.fd();
      const Outcome kernel = Describe(OpenBeneath(PathResolver::kOpenat2, r, p.c_str(), flags, 0));
      const Outcome walk = Describe(OpenBeneath(PathResolver::kUserspace, r, p.c_str(), flags, 0));
      EXPECT_EQ(walk, kernel) << "path \"" << p << "\" flags 0" << std::oct << flags << std::dec
                              << ": openat2 " << Show(kernel) << ", userspace " << Show(walk);
      ++compared;
    }
  }
  EXPECT_GT(compared, 20000);
}

// Creating: the same random paths with O_CREAT (and O_EXCL, O_TRUNC), each
// resolver in a tree of its own: the same errno, or the same entry made.
TEST(ResolverDifferentialTest, UserspaceCreatesWhatOpenat2Creates) {
  TempRoot kernel_root, walk_root;
  ASSERT_GE(kernel_root.fd(), 0);
  ASSERT_GE(walk_root.fd(), 0);
  if (ProbeResolver(kernel_root.fd()).resolver != PathResolver::kOpenat2) {
    GTEST_SKIP() << "openat2 is refused here, nothing to compare with";
  }
  ASSERT_NO_FATAL_FAILURE(MakeTree(kernel_root.fd()));
  ASSERT_NO_FATAL_FAILURE(MakeTree(walk_root.fd()));
  const std::vector<uint64_t> flag_sets = {O_WRONLY | O_CREAT, O_WRONLY | O_CREAT | O_EXCL,
                                           O_RDWR | O_CREAT | O_TRUNC};
  for (const std::string& p : RandomPaths(1500, 4122026)) {
    for (uint64_t flags : flag_sets) {
      const int k = OpenBeneath(PathResolver::kOpenat2, kernel_root.fd(), p.c_str(), flags, 0600);
      const int w = OpenBeneath(PathResolver::kUserspace, walk_root.fd(), p.c_str(), flags, 0600);
      EXPECT_EQ(w < 0 ? w : 0, k < 0 ? k : 0)
          << "path \"" << p << "\" flags 0" << std::oct << flags << std::dec;
      if (k >= 0) ::close(k);
      if (w >= 0) ::close(w);
    }
    ASSERT_EQ(ListTree(walk_root.dir()), ListTree(kernel_root.dir())) << "after \"" << p << "\"";
  }
}

}  // namespace
}  // namespace asyncd::backends
