#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/caller.h"
#include "daemon/config.h"
#include "src/core/dispatcher.h"

namespace asyncd::daemon {

class FileAreas;

/// Where one session's paths resolve. Admins: beneath the whole root (the
/// dispatcher's). Anyone else: beneath root/<uid>, except a path that
/// begins with the path of a share the caller is a member of, which
/// resolves beneath that share. Copyable; its FileAreas must outlive it.
class FileArea {
 public:
  FileArea() = default;  // the whole root

  /// Points `request`'s paths at this area: sets params.dirfd, and for a
  /// path inside a share, params.path (and path2) to the rest beneath the
  /// share. INVALID_ARGUMENT when a path enters a share and its ".."
  /// components climb back out, or a rename's two paths are in different
  /// areas. Changes nothing on error. Pure; any thread.
  [[nodiscard]] absl::Status Place(core::OpRequest& request) const;

  /// True if `caller` reaches all this area reaches: an admin's whole root
  /// only for admins, a share only for its members. A session keeps its
  /// opener's area, so only such a caller may use it.
  bool CoveredBy(const Caller& caller) const {
    return caller.admin || (areas_ != nullptr && (shares_ & ~caller.shares) == 0);
  }
  /// Beneath the whole root: an admin's area.
  bool whole_root() const { return areas_ == nullptr; }
  /// The shares it reaches (Caller::shares bits).
  uint64_t shares() const { return shares_; }

 private:
  friend class FileAreas;
  FileArea(const FileAreas* areas, int home_fd, uint64_t shares)
      : areas_(areas), home_fd_(home_fd), shares_(shares) {}

  struct Target {
    int dirfd;
    const char* path;
    uint16_t cut = 0;  // bytes of the client's path before `path` (0: "." for a share itself)
  };
  absl::StatusOr<Target> Locate(const char* path) const;

  const FileAreas* areas_ = nullptr;
  int home_fd_ = -1;     // -1: the dispatcher's root
  uint64_t shares_ = 0;  // Caller::shares
};

/// The daemon's file areas beneath its root: one directory per uid, made on
/// first use (mode 0700, owned by the daemon), and the configured shares.
class FileAreas {
 public:
  /// Opens each share's directory beneath `root_fd` (not owned; must outlive
  /// this), making the missing ones (0700). An error names the share.
  static absl::StatusOr<std::unique_ptr<FileAreas>> Open(int root_fd,
                                                         const std::vector<ShareConfig>& shares);
  ~FileAreas();
  FileAreas(const FileAreas&) = delete;
  FileAreas& operator=(const FileAreas&) = delete;

  /// `caller`'s area, making its directory on first use.
  /// FAILED_PRECONDITION when that directory cannot be made or opened (a
  /// file in its place, no space, permissions: retrying will not help).
  /// Any thread.
  absl::StatusOr<FileArea> For(const Caller& caller);
  /// The paths of the shares `bits` (Caller::shares) names, as configured:
  /// how a checkpoint records a session's area.
  std::vector<std::string> SharePaths(uint64_t bits) const;
  /// The Caller::shares bits of the configured shares among `paths`; paths
  /// no longer configured are dropped.
  uint64_t ShareBits(const std::vector<std::string>& paths) const;

 private:
  friend class FileArea;
  struct Share {
    std::string path;                // as configured: "common", "team/build"
    std::vector<std::string> parts;  // its components
    int fd = -1;
  };
  explicit FileAreas(int root_fd) : root_fd_(root_fd) {}

  const int root_fd_;
  std::vector<Share> shares_;  // in Config::shares order (Caller::shares bits)
  std::mutex mu_;
  std::unordered_map<uint32_t, int> homes_;  // uid -> its directory (O_PATH)
};

}  // namespace asyncd::daemon
