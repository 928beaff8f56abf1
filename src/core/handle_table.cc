#include "src/core/handle_table.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace asyncd::core {

HandleTable::HandleTable(uint32_t max_handles) : max_handles_(std::min(max_handles, 0xffffu)) {}

HandleTable::~HandleTable() {
  for (Entry& e : entries_) {
    if (e.fd >= 0) ::close(e.fd);
  }
}

HandleTable::Entry* HandleTable::Find(uint32_t handle) {
  uint32_t index = handle & 0xffff;
  uint16_t gen = static_cast<uint16_t>(handle >> 16);
  if (index == 0 || index > entries_.size()) return nullptr;
  Entry& e = entries_[index - 1];
  if (e.gen != gen || e.fd < 0) return nullptr;
  return &e;
}

HandleTable::FdTraits HandleTable::Inspect(int fd) {
  struct stat st;
  const int fl = fcntl(fd, F_GETFL);
  return FdTraits{.stream = fstat(fd, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) &&
                            !S_ISBLK(st.st_mode),
                  .nonblock = fl >= 0 && (fl & O_NONBLOCK) != 0,
                  .status_flags = fl >= 0 ? fl : 0};
}

void HandleTable::OpenLocked(Entry& e, int fd, const FdTraits& traits,
                             std::unique_ptr<const std::string> path) {
  e.fd = fd;
  e.refs = 0;
  e.open = true;
  e.stream = traits.stream;
  e.nonblock = traits.nonblock;
  e.status_flags = traits.status_flags;
  e.path = std::move(path);
  ++open_;
}

absl::StatusOr<uint32_t> HandleTable::Insert(int fd, std::string_view path) {
  const FdTraits traits = Inspect(fd);
  auto owned_path = std::make_unique<const std::string>(path);
  std::lock_guard lock(mu_);
  if (closed_) {
    // An open that finished after its session ended: the descriptor goes now,
    // not with the session's memory.
    ::close(fd);
    return absl::FailedPreconditionError("the session has ended");
  }
  uint32_t index;
  if (!free_.empty()) {
    index = free_.back();
    free_.pop_back();
  } else if (entries_.size() < max_handles_) {
    entries_.emplace_back();
    index = static_cast<uint32_t>(entries_.size());
  } else {
    ::close(fd);
    return absl::ResourceExhaustedError(
        absl::StrCat("session holds the maximum of ", max_handles_, " handles"));
  }
  Entry& e = entries_[index - 1];
  OpenLocked(e, fd, traits, std::move(owned_path));
  return (uint32_t{e.gen} << 16) | index;
}

absl::Status HandleTable::Restore(std::span<const uint32_t> slot_generations,
                                  std::span<const RestoredHandle> handles) {
  if (slot_generations.size() > max_handles_) {
    return absl::InvalidArgumentError(
        absl::StrCat(slot_generations.size(), " handle slots, over the limit of ", max_handles_));
  }
  for (size_t i = 0; i < slot_generations.size(); ++i) {
    if (slot_generations[i] > kGenMask) {
      return absl::InvalidArgumentError(absl::StrCat("handle slot ", i + 1, " has generation ",
                                                     slot_generations[i], ", over 15 bits"));
    }
  }
  std::vector<bool> named(slot_generations.size());
  std::vector<int> fds;
  fds.reserve(handles.size());
  for (const RestoredHandle& h : handles) {
    const uint32_t slot = h.handle & 0xffff;
    if (slot == 0 || slot > slot_generations.size() ||
        h.handle >> 16 != slot_generations[slot - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("handle ", h.handle, " is not the handle of any of the slots"));
    }
    if (named[slot - 1]) {
      return absl::InvalidArgumentError(absl::StrCat("handle slot ", slot, " named twice"));
    }
    named[slot - 1] = true;
    if (h.fd < 0) {
      return absl::InvalidArgumentError(absl::StrCat("handle ", h.handle, ": no descriptor"));
    }
    fds.push_back(h.fd);
  }
  // One descriptor in two handles would be closed twice.
  std::sort(fds.begin(), fds.end());
  if (auto twice = std::adjacent_find(fds.begin(), fds.end()); twice != fds.end()) {
    return absl::InvalidArgumentError(absl::StrCat("descriptor ", *twice, " named twice"));
  }
  std::vector<FdTraits> traits;
  traits.reserve(handles.size());
  for (const RestoredHandle& h : handles) traits.push_back(Inspect(h.fd));

  std::lock_guard lock(mu_);
  if (!entries_.empty() || closed_) {
    return absl::FailedPreconditionError("handles are restored only into an unused table");
  }
  entries_.resize(slot_generations.size());
  for (size_t i = 0; i < slot_generations.size(); ++i) {
    entries_[i].gen = static_cast<uint16_t>(slot_generations[i]);
  }
  for (size_t i = 0; i < handles.size(); ++i) {
    OpenLocked(entries_[(handles[i].handle & 0xffff) - 1], handles[i].fd, traits[i],
               std::make_unique<const std::string>(handles[i].path));
  }
  // Lowest slot on top: Insert takes it first.
  for (uint32_t slot = static_cast<uint32_t>(entries_.size()); slot > 0; --slot) {
    if (entries_[slot - 1].fd < 0) free_.push_back(slot);
  }
  return absl::OkStatus();
}

absl::StatusOr<HandleTable::Use> HandleTable::Acquire(uint32_t handle) {
  std::lock_guard lock(mu_);
  Entry* e = Find(handle);
  if (e == nullptr || !e->open) {
    return absl::NotFoundError(absl::StrCat("unknown handle ", handle));
  }
  ++e->refs;
  return Use{e->fd, e->stream, e->nonblock, *e->path};
}

void HandleTable::Release(uint32_t handle) {
  int to_close = -1;
  {
    std::lock_guard lock(mu_);
    Entry* e = Find(handle);
    if (e == nullptr || e->refs == 0) return;
    if (--e->refs == 0 && !e->open) {
      to_close = e->fd;
      FreeLocked(*e);
    }
  }
  if (to_close >= 0) ::close(to_close);
}

absl::StatusOr<int> HandleTable::Detach(uint32_t handle) {
  std::lock_guard lock(mu_);
  Entry* e = Find(handle);
  if (e == nullptr || !e->open) {
    return absl::NotFoundError(absl::StrCat("unknown handle ", handle));
  }
  e->open = false;
  --open_;
  if (e->refs > 0) --e->refs;
  if (e->refs > 0) return -1;
  int fd = e->fd;
  FreeLocked(*e);
  return fd;
}

void HandleTable::CloseAll() {
  std::vector<int> to_close;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    for (uint32_t i = 0; i < entries_.size(); ++i) {
      Entry& e = entries_[i];
      if (e.fd < 0 || !e.open) continue;
      e.open = false;
      --open_;
      if (e.refs == 0) {
        to_close.push_back(e.fd);
        FreeLocked(e);
      }
    }
  }
  for (int fd : to_close) ::close(fd);
}

void HandleTable::FreeLocked(Entry& e) {
  e.fd = -1;
  e.path.reset();
  e.gen = (e.gen + 1) & kGenMask;  // 0 is fine: index >= 1 keeps a handle nonzero
  free_.push_back(static_cast<uint32_t>(&e - entries_.data()) + 1);
}

void HandleTable::List(std::vector<Listed>* open, std::vector<uint32_t>* slot_generations) const {
  std::lock_guard lock(mu_);
  slot_generations->reserve(entries_.size());
  for (uint32_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    slot_generations->push_back(e.gen);
    if (e.fd < 0 || !e.open) continue;
    open->push_back(Listed{(uint32_t{e.gen} << 16) | (i + 1), e.fd, e.stream, e.status_flags,
                           e.path ? *e.path : std::string()});
  }
}

uint32_t HandleTable::open_count() const {
  std::lock_guard lock(mu_);
  return open_;
}

}  // namespace asyncd::core
