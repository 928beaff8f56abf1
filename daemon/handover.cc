#include "daemon/handover.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"

namespace asyncd::daemon {
namespace {

constexpr unsigned kCheckpointSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;

// One descriptor, closed when it goes out of scope unless released.
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Descriptors received in one message, closed unless moved on.
struct ReceivedFds {
  std::vector<int> fds;
  ReceivedFds() = default;
  ReceivedFds(const ReceivedFds&) = delete;
  ReceivedFds& operator=(const ReceivedFds&) = delete;
  ~ReceivedFds() {
    for (int fd : fds) close(fd);
  }
};

// The checkpoint in a memfd nobody can change any more: a successor trusts
// what it reads there without copying it first.
absl::StatusOr<int> SealedMemfd(std::string_view contents) {
  UniqueFd memfd(memfd_create("asyncd-checkpoint", MFD_ALLOW_SEALING | MFD_CLOEXEC));
  if (memfd.get() < 0) return absl::ErrnoToStatus(errno, "handover: memfd_create");
  for (size_t done = 0; done < contents.size();) {
    const ssize_t n = write(memfd.get(), contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::ErrnoToStatus(
          n < 0 ? errno : EIO, absl::StrCat("handover: writing the checkpoint to its memfd (", done,
                                            " of ", contents.size(), " bytes)"));
    }
    done += static_cast<size_t>(n);
  }
  if (fcntl(memfd.get(), F_ADD_SEALS, kCheckpointSeals) != 0) {
    return absl::ErrnoToStatus(errno, "handover: sealing the checkpoint's memfd");
  }
  return memfd.release();
}

// Every queued message is charged to the sender's SO_SNDBUF until it is
// read, so that bounds the package. Privileged, the FORCE options go past
// net.core.wmem_max/rmem_max; otherwise the kernel caps the plain ones there.
void RaiseBuffers(int sender, int receiver) {
  constexpr int kAsFarAsAllowed = std::numeric_limits<int>::max() / 2;
  if (setsockopt(sender, SOL_SOCKET, SO_SNDBUFFORCE, &kAsFarAsAllowed, sizeof(int)) != 0) {
    setsockopt(sender, SOL_SOCKET, SO_SNDBUF, &kAsFarAsAllowed, sizeof(int));
  }
  if (setsockopt(receiver, SOL_SOCKET, SO_RCVBUFFORCE, &kAsFarAsAllowed, sizeof(int)) != 0) {
    setsockopt(receiver, SOL_SOCKET, SO_RCVBUF, &kAsFarAsAllowed, sizeof(int));
  }
}

std::span<const char> AsBytes(const HandoverHeader& header) {
  return {reinterpret_cast<const char*>(&header), sizeof(header)};
}

absl::Status SendError(int err, int sock, size_t packed, size_t total) {
  const std::string progress =
      absl::StrCat("handover: packed ", packed, " of ", total, " descriptors");
  if (err == EAGAIN || err == EWOULDBLOCK) {
    int sndbuf = 0;
    socklen_t len = sizeof(sndbuf);
    getsockopt(sock, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len);
    return absl::ResourceExhaustedError(
        absl::StrCat(progress, ", then the socket queue was full (EAGAIN at SO_SNDBUF ", sndbuf,
                     " bytes)", packed == total ? ", before the checkpoint" : ""));
  }
  if (err == ETOOMANYREFS) {
    rlimit nofile{};
    getrlimit(RLIMIT_NOFILE, &nofile);
    return absl::ResourceExhaustedError(absl::StrCat(
        progress, packed == total ? ", but not the checkpoint" : "",
        ": the kernel refuses more descriptors in flight (ETOOMANYREFS: without "
        "CAP_SYS_RESOURCE a user's descriptors in flight are bounded by RLIMIT_NOFILE, ",
        nofile.rlim_cur, ")"));
  }
  return absl::ErrnoToStatus(err, absl::StrCat(progress, "; sendmsg"));
}

absl::Status Refuse(size_t message, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("handover message ", message, ": ", what));
}

// The end message's memfd, checked, and read whole.
absl::StatusOr<std::string> ReadCheckpoint(int memfd, uint64_t size) {
  const int seals = fcntl(memfd, F_GET_SEALS);
  if (seals < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("handover: the end message's descriptor is not a memfd (F_GET_SEALS: ",
                     std::strerror(errno), ")"));
  }
  if ((static_cast<unsigned>(seals) & kCheckpointSeals) != kCheckpointSeals) {
    return absl::InvalidArgumentError(
        absl::StrCat("handover: the checkpoint's memfd is not sealed (seals 0x", absl::Hex(seals),
                     ", needs shrink, grow, write and seal: 0x", absl::Hex(kCheckpointSeals), ")"));
  }
  struct stat st {};
  if (fstat(memfd, &st) != 0) return absl::ErrnoToStatus(errno, "handover: fstat of the memfd");
  if (static_cast<uint64_t>(st.st_size) != size) {
    return absl::InvalidArgumentError(absl::StrCat("handover: the checkpoint's memfd holds ",
                                                   st.st_size, " bytes, the end message says ",
                                                   size));
  }
  std::string checkpoint(size, '\0');
  for (size_t done = 0; done < size;) {
    const ssize_t n = pread(memfd, checkpoint.data() + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::ErrnoToStatus(
          n < 0 ? errno : EIO,
          absl::StrCat("handover: reading the checkpoint (", done, " of ", size, " bytes)"));
    }
    done += static_cast<size_t>(n);
  }
  return checkpoint;
}

}  // namespace

int SendWithDescriptors(int sock, std::span<const char> payload, std::span<const int> fds) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  if (fds.size() > kMaxFdsPerMessage) return EINVAL;
  iovec iov{const_cast<char*>(payload.data()), payload.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    // A SOCK_SEQPACKET message goes whole or not at all.
    if (sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

absl::StatusOr<int> PackHandover(std::string_view sealed_checkpoint, std::span<const int> fds) {
  if (fds.size() >= std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("handover: ", fds.size(), " descriptors"));
  }
  for (size_t i = 0; i < fds.size(); ++i) {
    if (fds[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("handover: descriptor ", i, " of ", fds.size(), " is ", fds[i]));
    }
  }
  // The memfd first: failing there costs nothing in flight.
  absl::StatusOr<int> sealed = SealedMemfd(sealed_checkpoint);
  if (!sealed.ok()) return sealed.status();
  const UniqueFd memfd(*sealed);
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
    return absl::ErrnoToStatus(errno, "handover: socketpair");
  }
  // Closing the receiver on an error drops whatever was queued (the kernel
  // closes descriptors in flight with it).
  const UniqueFd sender(pair[0]);
  UniqueFd receiver(pair[1]);
  RaiseBuffers(sender.get(), receiver.get());
  HandoverHeader header;
  for (size_t first = 0; first < fds.size(); first += kMaxFdsPerMessage) {
    const size_t count = std::min<size_t>(kMaxFdsPerMessage, fds.size() - first);
    header.first = static_cast<uint32_t>(first);
    header.count = static_cast<uint32_t>(count);
    if (int err = SendWithDescriptors(sender.get(), AsBytes(header), fds.subspan(first, count)); err != 0) {
      return SendError(err, sender.get(), first, fds.size());
    }
  }
  header.kind = HandoverKind::kEnd;
  header.first = static_cast<uint32_t>(fds.size());
  header.count = 0;
  header.checkpoint_size = sealed_checkpoint.size();
  const int memfd_fd = memfd.get();
  if (int err = SendWithDescriptors(sender.get(), AsBytes(header), std::span(&memfd_fd, 1)); err != 0) {
    return SendError(err, sender.get(), fds.size(), fds.size());
  }
  return receiver.release();
}

Handover::Handover(Handover&& other) noexcept
    : sealed_checkpoint(std::move(other.sealed_checkpoint)), fds(std::exchange(other.fds, {})) {}

Handover& Handover::operator=(Handover&& other) noexcept {
  if (this != &other) {
    Close();
    sealed_checkpoint = std::move(other.sealed_checkpoint);
    fds = std::exchange(other.fds, {});
  }
  return *this;
}

void Handover::Close() {
  for (int fd : fds) {
    if (fd >= 0) close(fd);
  }
  fds.clear();
}

absl::StatusOr<Handover> UnpackHandover(int fd) {
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("handover: descriptor ", fd));
  const UniqueFd sock(fd);
  int type = 0;
  socklen_t type_len = sizeof(type);
  if (getsockopt(sock.get(), SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 ||
      type != SOCK_SEQPACKET) {
    return absl::InvalidArgumentError(
        absl::StrCat("handover: descriptor ", fd, " is not a SOCK_SEQPACKET socket"));
  }
  Handover out;  // closes what it holds on every refusal
  std::optional<UniqueFd> memfd;
  uint64_t checkpoint_size = 0;
  size_t message = 0;  // the index of the message being read
  for (;;) {
    HandoverHeader header;
    iovec iov{&header, sizeof(header)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n = recvmsg(sock.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;  // the writer is alive, but done
      return absl::ErrnoToStatus(errno, absl::StrCat("handover: recvmsg of message ", message));
    }
    // Own what arrived before judging it: a refused message's descriptors
    // close with it.
    ReceivedFds got;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const size_t at = got.fds.size();
      got.fds.resize(at + k);
      std::memcpy(got.fds.data() + at, CMSG_DATA(c), k * sizeof(int));
    }
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
      rlimit nofile{};
      getrlimit(RLIMIT_NOFILE, &nofile);
      return Refuse(message, absl::StrCat("its descriptors were cut short (MSG_CTRUNC, ",
                                          got.fds.size(), " arrived): too little room under ",
                                          "RLIMIT_NOFILE (", nofile.rlim_cur, "), or more than ",
                                          kMaxFdsPerMessage, " in one message"));
    }
    // A zero-length message reads as the end of the queue: SOCK_SEQPACKET
    // tells them apart only by the descriptors one may carry.
    if (n == 0 && got.fds.empty()) break;
    if (memfd.has_value()) return Refuse(message, "an extra message after the end message");
    if (n == 0) {
      return Refuse(message,
                    absl::StrCat("carries ", got.fds.size(), " descriptors but no header"));
    }
    if ((msg.msg_flags & MSG_TRUNC) != 0) {
      return Refuse(message, absl::StrCat("longer than a ", sizeof(header), "-byte header"));
    }
    if (static_cast<size_t>(n) < sizeof(header)) {
      return Refuse(message,
                    absl::StrCat("a truncated header (", n, " of ", sizeof(header), " bytes)"));
    }
    if (header.magic != kHandoverMagic) {
      return Refuse(message, absl::StrCat("wrong magic 0x", absl::Hex(header.magic),
                                          ": not a handover package"));
    }
    if (header.version != kHandoverVersion) {
      return Refuse(message, absl::StrCat("format version ", header.version, ", this daemon reads ",
                                          kHandoverVersion));
    }
    if (header.kind == HandoverKind::kDescriptors) {
      if (header.first != out.fds.size()) {
        return Refuse(message,
                      absl::StrCat("starts at descriptor index ", header.first, " where ",
                                   out.fds.size(), " was next: a gap or overlap in the indexes"));
      }
      if (header.count == 0 || header.count > kMaxFdsPerMessage) {
        return Refuse(message,
                      absl::StrCat("a count of ", header.count, ", not 1..", kMaxFdsPerMessage));
      }
      if (header.count != got.fds.size()) {
        return Refuse(message, absl::StrCat("the header counts ", header.count,
                                            " descriptors, the message carries ", got.fds.size()));
      }
      if (header.checkpoint_size != 0) {
        return Refuse(message, "a checkpoint size outside the end message");
      }
      out.fds.insert(out.fds.end(), got.fds.begin(), got.fds.end());
      got.fds.clear();
    } else if (header.kind == HandoverKind::kEnd) {
      if (header.first != out.fds.size()) {
        return Refuse(message,
                      absl::StrCat("the end message counts ", header.first,
                                   " descriptors in the package, ", out.fds.size(), " arrived"));
      }
      if (header.count != 0 || got.fds.size() != 1) {
        return Refuse(message, absl::StrCat("the end message counts ", header.count,
                                            " and carries ", got.fds.size(),
                                            " descriptors, not 0 and 1 (the checkpoint's memfd)"));
      }
      memfd.emplace(got.fds[0]);
      got.fds.clear();
      checkpoint_size = header.checkpoint_size;
    } else {
      return Refuse(message, absl::StrCat("unknown kind ", static_cast<int>(header.kind)));
    }
    ++message;
  }
  if (!memfd.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("handover package cut short: ", message, " messages with ", out.fds.size(),
                     " descriptors and no end message (its writer stopped before finishing)"));
  }
  absl::StatusOr<std::string> checkpoint = ReadCheckpoint(memfd->get(), checkpoint_size);
  if (!checkpoint.ok()) return checkpoint.status();
  out.sealed_checkpoint = *std::move(checkpoint);
  return out;
}

namespace {

// systemd's rule for FDNAME: 1..255 printable ASCII characters, no ':'
// (LISTEN_FDNAMES separates names with it); no newline either, which would
// start another assignment in the message.
bool ValidFdName(std::string_view name) {
  return !name.empty() && name.size() <= 255 && std::all_of(name.begin(), name.end(), [](char c) {
    return c >= ' ' && c <= '~' && c != ':';
  });
}

}  // namespace

absl::Status PushToDescriptorStore(int fd, std::string_view name) {
  const char* notify_socket = std::getenv("NOTIFY_SOCKET");
  if (notify_socket == nullptr || *notify_socket == '\0') {
    return absl::FailedPreconditionError(
        "no descriptor store: not started by systemd ($NOTIFY_SOCKET is unset)");
  }
  if (!ValidFdName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("descriptor store: \"", std::string(name),
                     "\" is not a valid FDNAME (1..255 printable ASCII, no ':')"));
  }
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("descriptor store: descriptor ", fd));
  // FDPOLL=0: systemd would otherwise drop it at its first POLLHUP, which a
  // package shows from the start (its sending end is closed).
  const std::string state = absl::StrCat("FDSTORE=1\nFDPOLL=0\nFDNAME=", std::string(name));
  const int r = sd_pid_notify_with_fds(0, /*unset_environment=*/0, state.c_str(), &fd, 1);
  if (r < 0) {
    return absl::InternalError(absl::StrCat("descriptor store: sending ", std::string(name),
                                            " to systemd (", notify_socket,
                                            "): ", std::strerror(-r)));
  }
  return absl::OkStatus();
}

void RemoveFromDescriptorStore(std::string_view name) {
  if (!ValidFdName(name)) {
    spdlog::warn("descriptor store: not removing \"{}\": not a valid FDNAME", name);
    return;
  }
  sd_notify(/*unset_environment=*/0,
            absl::StrCat("FDSTOREREMOVE=1\nFDNAME=", std::string(name)).c_str());
}

}  // namespace asyncd::daemon
