#include "daemon/file_area.h"

#include <algorithm>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "daemon/convert.h"

namespace asyncd::daemon {
namespace {

// The next component of `p` (skipping '/' and "." ones), or empty at the end.
std::string_view NextComponent(const char*& p) {
  while (true) {
    while (*p == '/') ++p;
    const char* end = p;
    while (*end != '\0' && *end != '/') ++end;
    std::string_view part(p, end - p);
    p = end;
    if (part != ".") return part;
  }
}

// Where `path` continues beneath `share` when its first components are
// the share's, else nullptr.
const char* AfterShare(const char* path, const std::vector<std::string>& share) {
  for (const std::string& want : share) {
    if (NextComponent(path) != want) return nullptr;
  }
  return path;
}

// mkdir -p of `rel` beneath `dirfd` (0700, never through a symlink), then
// the directory itself as O_PATH. -errno on failure.
int MakeDirs(int dirfd, const std::string& rel) {
  int cur = dirfd;
  for (const std::string& name : std::vector<std::string>(absl::StrSplit(rel, '/'))) {
    if (mkdirat(cur, name.c_str(), 0700) < 0 && errno != EEXIST) {
      const int e = errno;
      if (cur != dirfd) close(cur);
      return -e;
    }
    const int next = openat(cur, name.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    const int e = errno;
    if (cur != dirfd) close(cur);
    if (next < 0) return -e;
    cur = next;
  }
  return cur;
}

}  // namespace

absl::StatusOr<FileArea::Target> FileArea::Locate(const char* path) const {
  for (size_t i = 0; i < areas_->shares_.size(); ++i) {
    if ((shares_ & (uint64_t{1} << i)) == 0) continue;
    const FileAreas::Share& share = areas_->shares_[i];
    const char* rest = AfterShare(path, share.parts);
    if (rest == nullptr) continue;
    // The rest must stay beneath the share: the resolver would clamp a
    // climb at the share's top, which is not where the caller pointed.
    if (ClimbsAbove(rest)) {
      return absl::InvalidArgumentError(
          absl::StrCat("path \"", path, "\" climbs out of share \"", share.path, "\""));
    }
    if (*rest == '\0') return Target{share.fd, "."};
    return Target{share.fd, rest, static_cast<uint16_t>(rest - path)};
  }
  return Target{home_fd_, path};
}

absl::Status FileArea::Place(core::OpRequest& request) const {
  if (areas_ == nullptr) return absl::OkStatus();  // the whole root
  core::OpParams& p = request.params;
  if (p.path == nullptr) {
    p.dirfd = home_fd_;
    return absl::OkStatus();
  }
  absl::StatusOr<Target> from = Locate(p.path);
  if (!from.ok()) return from.status();
  if (p.path2 != nullptr) {
    absl::StatusOr<Target> to = Locate(p.path2);
    if (!to.ok()) return to.status();
    if (to->dirfd != from->dirfd) {
      return absl::InvalidArgumentError(
          "rename: old_path and new_path are in different areas (your own files, a share): "
          "copy the data instead");
    }
    p.path2 = to->path;
  }
  p.dirfd = from->dirfd;
  if (from->path != p.path) request.shown_path = p.path;
  p.shown_prefix = from->cut;
  p.path = from->path;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<FileAreas>> FileAreas::Open(int root_fd,
                                                           const std::vector<ShareConfig>& shares) {
  std::unique_ptr<FileAreas> areas(new FileAreas(root_fd));
  for (const ShareConfig& share : shares) {
    const int fd = MakeDirs(root_fd, share.path);
    if (fd < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "share \"", share.path, "\": cannot make or open its directory: ", std::strerror(-fd)));
    }
    areas->shares_.push_back(Share{share.path, absl::StrSplit(share.path, '/'), fd});
  }
  return areas;
}

FileAreas::~FileAreas() {
  for (const Share& share : shares_) close(share.fd);
  for (const auto& [uid, fd] : homes_) close(fd);
}

absl::StatusOr<FileArea> FileAreas::For(const Caller& caller) {
  if (caller.admin) return FileArea();
  std::lock_guard lock(mu_);
  auto it = homes_.find(caller.uid);
  if (it == homes_.end()) {
    const int fd = MakeDirs(root_fd_, std::to_string(caller.uid));
    if (fd < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot make the file area of uid ", caller.uid, ": ", std::strerror(-fd)));
    }
    it = homes_.emplace(caller.uid, fd).first;
  }
  return FileArea(this, it->second, caller.shares);
}

std::vector<std::string> FileAreas::SharePaths(uint64_t bits) const {
  std::vector<std::string> paths;
  for (size_t i = 0; i < shares_.size() && i < 64; ++i) {
    if ((bits >> i) & 1) paths.push_back(shares_[i].path);
  }
  return paths;
}

uint64_t FileAreas::ShareBits(const std::vector<std::string>& paths) const {
  uint64_t bits = 0;
  for (size_t i = 0; i < shares_.size() && i < 64; ++i) {
    if (std::find(paths.begin(), paths.end(), shares_[i].path) != paths.end()) {
      bits |= uint64_t{1} << i;
    }
  }
  return bits;
}

}  // namespace asyncd::daemon
