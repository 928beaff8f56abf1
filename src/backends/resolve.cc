#include "src/backends/resolve.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace asyncd::backends {

namespace {

constexpr int kMaxLinks = 40;  // the kernel's MAXSYMLINKS

int Openat2(int root_fd, const char* path, uint64_t flags, uint64_t mode) {
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  // openat2 rejects a mode without a flag that creates a file.
  how.mode = (flags & (O_CREAT | __O_TMPFILE)) != 0 ? mode : 0;
  how.resolve = kConfinedResolve;
  const long fd = ::syscall(SYS_openat2, root_fd, path, &how, sizeof(how));
  return fd < 0 ? -errno : static_cast<int>(fd);
}

// An owned descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

struct DirId {
  dev_t dev;
  ino_t ino;
  bool operator==(const DirId&) const = default;
};

// The userspace twin of openat2(kConfinedResolve); see OpenBeneath.
class Walk {
 public:
  Walk(int root_fd, const char* path, uint64_t flags, uint64_t mode)
      : root_fd_(root_fd), rest_(path), flags_(flags), mode_(mode) {}

  int Run() {
    if (rest_.empty()) return -ENOENT;
    struct stat st;
    if (::fstat(root_fd_, &st) < 0) return -errno;
    dirs_.push_back({st.st_dev, st.st_ino});
    for (;;) {
      while (pos_ < rest_.size() && rest_[pos_] == '/') ++pos_;
      if (pos_ == rest_.size()) return OpenFinal(".");  // "/", or a trailing slash: cur itself
      size_t end = rest_.find('/', pos_);
      if (end == std::string::npos) end = rest_.size();
      const std::string name = rest_.substr(pos_, end - pos_);
      pos_ = end;
      size_t next = end;
      while (next < rest_.size() && rest_[next] == '/') ++next;
      const bool last = next == rest_.size();
      const bool trailing_slash = last && end < rest_.size();
      int r;
      if (name == ".") {
        r = 0;
      } else if (name == "..") {
        r = Up();
      } else if (!last || trailing_slash) {
        // A name with a trailing slash can only be a directory, which O_CREAT
        // does not make: openat2 refuses it before looking.
        if (trailing_slash && (flags_ & O_CREAT) != 0) return -EISDIR;
        r = Down(name);
      } else {
        r = OpenLast(name);
        if (r >= 0) return r;
        if (r == kFollowed) r = 0;
      }
      if (r < 0) return r;
    }
  }

 private:
  // OpenLast's answer when the last component was a symlink now spliced in.
  static constexpr int kFollowed = -100000;

  int cur() const { return cur_.get() >= 0 ? cur_.get() : root_fd_; }

  // `..`: the directory the walk came through, clamped at the root.
  int Up() {
    if (dirs_.size() == 1) return 0;
    Fd up(::openat(cur(), "..", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (up.get() < 0) return -errno;
    struct stat st;
    if (::fstat(up.get(), &st) < 0) return -errno;
    dirs_.pop_back();
    // Moved by a rename since the walk passed through: its parent now may
    // be anywhere, even outside the root.
    if (DirId{st.st_dev, st.st_ino} != dirs_.back()) return -EAGAIN;
    cur_ = dirs_.size() == 1 ? Fd() : std::move(up);
    return 0;
  }

  // Into a directory (following a symlink).
  int Down(const std::string& name) {
    Fd next(::openat(cur(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (next.get() < 0) return -errno;
    struct stat st;
    if (::fstat(next.get(), &st) < 0) return -errno;
    if (S_ISLNK(st.st_mode)) return Follow(next.get());
    if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
    dirs_.push_back({st.st_dev, st.st_ino});
    cur_ = std::move(next);
    return 0;
  }

  // The last component, opened with the caller's flags unless it is a
  // symlink to follow: the descriptor, kFollowed, or -errno.
  int OpenLast(const std::string& name) {
    const int fd = ::openat(cur(), name.c_str(), static_cast<int>(flags_ | O_NOFOLLOW | O_CLOEXEC),
                            static_cast<mode_t>(mode_));
    // O_CREAT|O_EXCL never follows a final symlink either: it exists.
    if ((flags_ & O_NOFOLLOW) != 0 || (flags_ & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL)) {
      return fd < 0 ? -errno : fd;
    }
    // O_PATH|O_NOFOLLOW opens a symlink itself; other flags fail on one
    // (ELOOP, or ENOTDIR with O_DIRECTORY): then look at what is there.
    if (fd >= 0 && (flags_ & O_PATH) == 0) return fd;
    const int err = fd < 0 ? errno : 0;
    Fd link(fd >= 0 ? fd : ::openat(cur(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    struct stat st;
    if (link.get() < 0 || ::fstat(link.get(), &st) < 0 || !S_ISLNK(st.st_mode)) {
      return fd >= 0 ? link.Release() : -err;
    }
    const int r = Follow(link.get());
    return r < 0 ? r : kFollowed;
  }

  // Puts the target of the symlink `link` in place of the component just
  // consumed; an absolute target restarts from the root.
  int Follow(int link) {
    if (++links_ > kMaxLinks) return -ELOOP;
    struct statfs fs;
    if (::fstatfs(link, &fs) < 0) return -errno;
    if (fs.f_type == PROC_SUPER_MAGIC) return -ELOOP;
    char target[PATH_MAX];
    const ssize_t n = ::readlinkat(link, "", target, sizeof(target));
    if (n < 0) return -errno;
    if (n == 0) return -ENOENT;
    if (static_cast<size_t>(n) == sizeof(target)) return -ENAMETOOLONG;
    rest_ = std::string(target, static_cast<size_t>(n)) + rest_.substr(pos_);
    pos_ = 0;
    if (target[0] == '/') {
      cur_.Reset();
      dirs_.resize(1);
    }
    return 0;
  }

  int OpenFinal(const char* name) {
    const int fd = ::openat(cur(), name, static_cast<int>(flags_ | O_CLOEXEC),
                            static_cast<mode_t>(mode_));
    return fd < 0 ? -errno : fd;
  }

  const int root_fd_;
  std::string rest_;  // the path still to walk, from pos_
  size_t pos_ = 0;
  const uint64_t flags_;
  const uint64_t mode_;
  Fd cur_;                   // the directory reached; none = the root
  std::vector<DirId> dirs_;  // from the root to cur
  int links_ = 0;
};

}  // namespace

std::string_view Name(PathResolver resolver) {
  return resolver == PathResolver::kOpenat2 ? "openat2" : "userspace";
}

ResolverProbe ProbeResolver(int root_fd) {
  ResolverProbe probe;
  const int fd = Openat2(root_fd, ".", O_PATH, 0);
  if (fd >= 0) {
    ::close(fd);
    return probe;
  }
  probe.resolver = PathResolver::kUserspace;
  switch (-fd) {
    case ENOSYS:
      probe.reason = "openat2: ENOSYS (refused by a seccomp filter, or the kernel predates 5.6)";
      break;
    case EPERM:
      probe.reason = "openat2: EPERM (refused by a seccomp filter or a security module)";
      break;
    default:
      probe.reason = absl::StrCat("openat2: ", std::strerror(-fd));
  }
  return probe;
}

int OpenBeneath(PathResolver resolver, int root_fd, const char* path, uint64_t flags,
                uint64_t mode) {
  if (path == nullptr) return -EINVAL;
  if (resolver == PathResolver::kUserspace && std::strlen(path) >= PATH_MAX) return -ENAMETOOLONG;
  const uint64_t create = (flags & (O_CREAT | __O_TMPFILE)) != 0 ? mode : 0;
  int fd = -EAGAIN;
  for (int attempt = 0; attempt < kLookupAttempts && fd == -EAGAIN; ++attempt) {
    fd = resolver == PathResolver::kOpenat2 ? Openat2(root_fd, path, flags, create)
                                            : Walk(root_fd, path, flags, create).Run();
  }
  return fd;
}

ParentDir::~ParentDir() { Reset(); }

ParentDir::ParentDir(ParentDir&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {
  std::memcpy(name_, other.name_, sizeof(name_));
}

ParentDir& ParentDir::operator=(ParentDir&& other) noexcept {
  if (this != &other) {
    Reset();
    fd_ = std::exchange(other.fd_, -1);
    std::memcpy(name_, other.name_, sizeof(name_));
  }
  return *this;
}

void ParentDir::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  name_[0] = '\0';
}

int OpenParentBeneath(PathResolver resolver, int root_fd, const char* path, ParentDir& out) {
  out.Reset();
  if (path == nullptr) return -EINVAL;
  size_t len = std::strlen(path);
  if (len == 0) return -ENOENT;
  if (len >= PATH_MAX) return -ENAMETOOLONG;
  while (len > 1 && path[len - 1] == '/') --len;  // "a/b/" names b
  size_t name_start = len;
  while (name_start > 0 && path[name_start - 1] != '/') --name_start;
  const size_t name_len = len - name_start;
  // "/" alone, "." and ".." name the root or a directory relative to the
  // parent, never an entry in it: nothing to unlink, create or rename there.
  if (name_len == 0 || (name_len == 1 && path[name_start] == '.') ||
      (name_len == 2 && path[name_start] == '.' && path[name_start + 1] == '.')) {
    return -EINVAL;
  }
  if (name_len > NAME_MAX) return -ENAMETOOLONG;

  char dir[PATH_MAX];
  if (name_start == 0) {
    dir[0] = '.';
    dir[1] = '\0';
  } else {
    std::memcpy(dir, path, name_start);  // keeps the trailing '/': "/" for "/x"
    dir[name_start] = '\0';
  }
  const int fd = OpenBeneath(resolver, root_fd, dir, O_PATH | O_DIRECTORY, 0);
  if (fd < 0) return fd;
  out.fd_ = fd;
  std::memcpy(out.name_, path + name_start, name_len);
  out.name_[name_len] = '\0';
  return 0;
}

}  // namespace asyncd::backends
