#pragma once

#include <limits.h>
#include <linux/openat2.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace asyncd::backends {

/// Resolution flags for every path an op names: `..`, absolute paths and
/// symlinks all stay beneath the root directory, and /proc magic links
/// (which could reach anything) are refused.
inline constexpr uint64_t kConfinedResolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;

/// openat2 answers EAGAIN when any rename in the system raced with a lookup
/// through "..", the walk when a directory it passed through moved: a
/// lookup is tried this many times before its caller sees EAGAIN.
inline constexpr int kLookupAttempts = 8;

/// How paths are confined beneath the root.
enum class PathResolver : uint8_t {
  /// The kernel: openat2(kConfinedResolve).
  kOpenat2,
  /// A walk in user space with the same semantics, for where openat2 is
  /// refused: kernels before 5.6, and seccomp filters that cannot inspect
  /// its arguments (systemd's RestrictSUIDSGID=, container runtimes'
  /// default profiles) and answer ENOSYS or EPERM.
  kUserspace,
};

std::string_view Name(PathResolver resolver);  // "openat2", "userspace"

struct ResolverProbe {
  PathResolver resolver = PathResolver::kOpenat2;
  /// Why openat2 is not used, e.g. "openat2: ENOSYS (refused by a seccomp
  /// filter, or the kernel predates 5.6)"; empty when it is.
  std::string reason;
};

/// Asks the kernel for openat2(root_fd, ".", O_PATH, kConfinedResolve):
/// kOpenat2 if it works, else kUserspace with the reason. Blocks briefly.
ResolverProbe ProbeResolver(int root_fd);

/// Opens `path` beneath `root_fd` with flags | O_CLOEXEC (and `mode` when
/// they create) as openat2(kConfinedResolve) does, through `resolver`.
/// Returns the new descriptor or -errno (-EAGAIN only after kLookupAttempts
/// lookups raced with renames). Blocks (path lookup); any thread.
///
/// The userspace walk opens each component with openat(O_PATH|O_NOFOLLOW)
/// relative to the directory before it, so every step is a child of a
/// directory already beneath the root. A symlink is read (readlinkat) and
/// its target walked in its place: an absolute target from the root, `..`
/// clamped at the root. `..` elsewhere must lead back to the directory the
/// walk came through (same device and inode), else a rename moved it and
/// the lookup fails with -EAGAIN, as the kernel's does. More than 40 links
/// give -ELOOP. Every symlink on procfs is refused with -ELOOP: that is
/// where magic links live, and a walk in user space cannot tell them from
/// the ordinary ones there.
[[nodiscard]] int OpenBeneath(PathResolver resolver, int root_fd, const char* path,
                              uint64_t flags, uint64_t mode);

/// An open O_PATH directory confined beneath a root, plus the last component
/// of the path that named it. Owns the descriptor. Move-only.
class ParentDir {
 public:
  ParentDir() = default;
  ~ParentDir();
  ParentDir(ParentDir&& other) noexcept;
  ParentDir& operator=(ParentDir&& other) noexcept;
  ParentDir(const ParentDir&) = delete;
  ParentDir& operator=(const ParentDir&) = delete;

  int fd() const { return fd_; }
  /// The last path component, NUL-terminated; never empty, "." or "..".
  const char* name() const { return name_; }

 private:
  friend int OpenParentBeneath(PathResolver resolver, int root_fd, const char* path,
                               ParentDir& out);
  void Reset();

  int fd_ = -1;
  char name_[NAME_MAX + 1] = {};
};

/// Opens the directory that contains `path`, resolved beneath `root_fd`
/// (OpenBeneath: a leading '/' means the root, `..` cannot climb out,
/// symlinks in the directory part are followed inside the root), and stores
/// its last component in `out`. The caller then operates on `out.name()`
/// relative to `out.fd()` with a call that does not follow the last
/// component (unlinkat, renameat2, mkdirat), so nothing escapes the root.
///
/// Returns 0 or -errno: -EINVAL when the last component is "." or ".." (or
/// path is null), -ENOENT for an empty path, -ENAMETOOLONG, or what the
/// lookup reported. Trailing slashes are ignored ("a/b/" names "b" in "a").
/// Blocks (path lookup); any thread.
[[nodiscard]] int OpenParentBeneath(PathResolver resolver, int root_fd, const char* path,
                                    ParentDir& out);

}  // namespace asyncd::backends
