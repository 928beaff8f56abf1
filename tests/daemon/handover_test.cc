// The handover package (daemon/handover.h): every descriptor comes back as
// the same open file, in order, next to the checkpoint, which travels in a
// memfd nobody can change; anything but a whole package (cut short, forged,
// reordered, extended) is refused naming what is wrong, with every descriptor
// received closed; a package the kernel will not take whole is
// RESOURCE_EXHAUSTED with nothing left open. And the systemd glue: the
// descriptor store's messages as a fake $NOTIFY_SOCKET receives them, and the
// passed descriptors (fake LISTEN_* in forked children, since they are read
// once a process), where the package and the activated socket can be taken in
// either order.
#include "daemon/handover.h"

#include <dirent.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/listener.h"
#include "daemon/passed_fds.h"

namespace asyncd::daemon {
namespace {

using ::testing::HasSubstr;

// Open descriptors, as /proc/self/fd lists them.
size_t OpenFdCount() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  size_t n = 0;
  while (const dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n - 1;  // the directory's own
}

// What makes an open file itself: its inode, and its status flags.
struct Identity {
  dev_t dev;
  ino_t ino;
  int flags;
  bool operator==(const Identity&) const = default;
};

Identity IdentityOf(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return {0, 0, -1};
  return {st.st_dev, st.st_ino, fcntl(fd, F_GETFL)};
}

std::vector<Identity> IdentitiesOf(const std::vector<int>& fds) {
  std::vector<Identity> out;
  for (int fd : fds) out.push_back(IdentityOf(fd));
  return out;
}

// `n` descriptors, each an open file of its own: both ends of n/2 pipes (one
// inode, told apart by O_RDONLY/O_WRONLY), every third made O_NONBLOCK.
std::vector<int> DistinctFds(size_t n) {
  std::vector<int> fds;
  while (fds.size() < n) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe2 after " << fds.size() << ": " << std::strerror(errno);
      break;
    }
    fds.push_back(p[0]);
    if (fds.size() < n) {
      fds.push_back(p[1]);
    } else {
      close(p[1]);
    }
  }
  for (size_t i = 0; i < fds.size(); i += 3) {
    fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
  }
  return fds;
}

void CloseAll(std::vector<int>& fds) {
  for (int fd : fds) close(fd);
  fds.clear();
}

std::string RandomBytes(size_t n) {
  std::mt19937_64 rng(n);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

// Raises the soft RLIMIT_NOFILE to the hard one; returns it.
rlim_t RaiseNofile() {
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  lim.rlim_cur = lim.rlim_max;
  setrlimit(RLIMIT_NOFILE, &lim);
  return lim.rlim_cur;
}

// Runs `body` in a forked child; returns what it returned ("" = all well),
// or how the child died.
std::string InChild(const std::function<std::string()>& body) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return "pipe2 failed";
  const pid_t pid = fork();
  if (pid == 0) {
    close(out[0]);
    const std::string result = body();
    (void)!write(out[1], result.data(), result.size());
    _exit(0);
  }
  close(out[1]);
  std::string result;
  char buf[4096];
  for (ssize_t n; (n = read(out[0], buf, sizeof(buf))) > 0;) result.append(buf, n);
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    absl::StrAppend(&result, "child died: status ", status);
  }
  return result;
}

// Sends one message of any shape: `payload` and `fds` as SCM_RIGHTS.
bool SendRaw(int sock, const void* payload, size_t size, const std::vector<int>& fds) {
  return SendWithDescriptors(sock, {static_cast<const char*>(payload), size}, fds) == 0;
}

HandoverHeader Descriptors(uint32_t first, uint32_t count) {
  return HandoverHeader{.first = first, .count = count};
}

HandoverHeader End(uint32_t total, uint64_t checkpoint_size) {
  return HandoverHeader{
      .kind = HandoverKind::kEnd, .first = total, .checkpoint_size = checkpoint_size};
}

int MemfdWith(std::string_view contents, unsigned seals) {
  const int fd = memfd_create("forged", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  EXPECT_EQ(write(fd, contents.data(), contents.size()), static_cast<ssize_t>(contents.size()));
  if (seals != 0) {
    EXPECT_EQ(fcntl(fd, F_ADD_SEALS, seals), 0);
  }
  return fd;
}

constexpr unsigned kAllSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;

// A package written message by message, as a forger (or a writer that stops
// half-way) would. Every descriptor it is given is closed once sent: what is
// in flight belongs to the queue.
class Forged {
 public:
  Forged() {
    int pair[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
    writer_ = pair[0];
    reader_ = pair[1];
  }
  ~Forged() {
    if (writer_ >= 0) close(writer_);
    if (reader_ >= 0) close(reader_);
  }
  void Send(const HandoverHeader& header, std::vector<int> fds) {
    Raw(&header, sizeof(header), std::move(fds));
  }
  void Raw(const void* payload, size_t size, std::vector<int> fds) {
    EXPECT_TRUE(SendRaw(writer_, payload, size, fds)) << std::strerror(errno);
    CloseAll(fds);
  }
  // The descriptor messages of a whole package of `n` new descriptors.
  void Valid(size_t n) {
    for (size_t first = 0; first < n; first += kMaxFdsPerMessage) {
      const size_t count = std::min<size_t>(kMaxFdsPerMessage, n - first);
      Send(Descriptors(first, count), DistinctFds(count));
    }
  }
  void ValidEnd(size_t total, std::string_view checkpoint = "checkpoint") {
    Send(End(total, checkpoint.size()), {MemfdWith(checkpoint, kAllSeals)});
  }
  int writer() const { return writer_; }
  // The reading end, the writer closed: the package as a successor gets it.
  int Finish() {
    close(std::exchange(writer_, -1));
    return std::exchange(reader_, -1);
  }

 private:
  int writer_ = -1;
  int reader_ = -1;
};

// Unpacks a forged package, expecting a refusal naming `what` and nothing
// left open that was not open before the package was made.
void ExpectRefused(size_t open_before, Forged& forged, std::string_view what) {
  absl::StatusOr<Handover> got = UnpackHandover(forged.Finish());
  ASSERT_FALSE(got.ok()) << "accepted a package with " << got->fds.size() << " descriptors";
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
  EXPECT_THAT(got.status().message(), HasSubstr(what));
  EXPECT_EQ(OpenFdCount(), open_before) << "a refused package left descriptors open";
}

void ExpectRoundTrip(size_t n, size_t checkpoint_bytes) {
  SCOPED_TRACE(absl::StrCat(n, " descriptors, a ", checkpoint_bytes, "-byte checkpoint"));
  const size_t open_before = OpenFdCount();
  std::vector<int> fds = DistinctFds(n);
  const std::vector<Identity> sent = IdentitiesOf(fds);
  const std::string checkpoint = RandomBytes(checkpoint_bytes);
  absl::StatusOr<int> package = PackHandover(checkpoint, fds);
  ASSERT_TRUE(package.ok()) << package.status();
  EXPECT_EQ(fcntl(*package, F_GETFD), FD_CLOEXEC);
  EXPECT_EQ(IdentitiesOf(fds), sent) << "the caller keeps its own descriptors";
  CloseAll(fds);  // the package holds them now
  absl::StatusOr<Handover> got = UnpackHandover(*package);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(fcntl(*package, F_GETFD), -1) << "UnpackHandover closes the package";
  ASSERT_EQ(got->fds.size(), n);
  EXPECT_EQ(IdentitiesOf(got->fds), sent) << "the same open files, in the same order";
  for (int fd : got->fds) ASSERT_EQ(fcntl(fd, F_GETFD), FD_CLOEXEC);
  EXPECT_TRUE(got->sealed_checkpoint == checkpoint);
  got->Close();
  EXPECT_EQ(OpenFdCount(), open_before);
}

TEST(HandoverTest, RoundTripKeepsEveryDescriptorInOrderWithTheCheckpoint) {
  RaiseNofile();
  for (size_t n : {0, 1, 253, 254, 506, 507, 4000}) ExpectRoundTrip(n, 1 << 20);
  ExpectRoundTrip(3, 0);
}

// As many descriptors as RLIMIT_NOFILE lets the test hold (the originals
// close once packed, so the limit bounds the package, not twice over).
TEST(HandoverTest, RoundTripOfTheLargestPackageTheLimitAllows) {
  const rlim_t limit = RaiseNofile();
  const size_t n = std::min<size_t>(19000, limit > 600 ? (limit - 500) & ~size_t{1} : 0);
  ASSERT_GE(n, 2000u) << "RLIMIT_NOFILE " << limit << " is too low for this test";
  const size_t open_before = OpenFdCount();
  std::vector<int> fds = DistinctFds(n);
  const std::vector<Identity> sent = IdentitiesOf(fds);
  const std::string checkpoint = RandomBytes(1 << 20);
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<int> package = PackHandover(checkpoint, fds);
  const auto t1 = std::chrono::steady_clock::now();
  ASSERT_TRUE(package.ok()) << package.status();
  CloseAll(fds);
  const auto t2 = std::chrono::steady_clock::now();
  absl::StatusOr<Handover> got = UnpackHandover(*package);
  const auto t3 = std::chrono::steady_clock::now();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(IdentitiesOf(got->fds), sent);
  EXPECT_TRUE(got->sealed_checkpoint == checkpoint);
  const auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
  std::printf("handover of %zu descriptors and a 1 MiB checkpoint: pack %.1f ms, unpack %.1f ms\n",
              n, ms(t1 - t0), ms(t3 - t2));
  RecordProperty("descriptors", static_cast<int>(n));
  RecordProperty("pack_us", static_cast<int>(ms(t1 - t0) * 1000));
  RecordProperty("unpack_us", static_cast<int>(ms(t3 - t2) * 1000));
  *got = Handover();  // a move closes what the target held
  EXPECT_EQ(OpenFdCount(), open_before);
}

TEST(HandoverTest, HandoverMovesOwnershipAndClosesOnce) {
  std::vector<int> fds = DistinctFds(2);
  const int a = fds[0];
  Handover h;
  h.fds = fds;
  Handover moved(std::move(h));
  EXPECT_TRUE(h.fds.empty());
  Handover assigned;
  assigned = std::move(moved);
  EXPECT_TRUE(moved.fds.empty());
  EXPECT_EQ(fcntl(a, F_GETFD), FD_CLOEXEC);
  assigned.fds[0] = -1;  // taken by a restore: stays open
  assigned.Close();
  EXPECT_EQ(fcntl(a, F_GETFD), FD_CLOEXEC);
  EXPECT_EQ(fcntl(fds[1], F_GETFD), -1);
  close(a);
}

// Read as a successor would not: message by message, to see the memfd.
TEST(HandoverTest, TheCheckpointTravelsInASealedMemfd) {
  std::vector<int> fds = DistinctFds(3);
  const std::string checkpoint = RandomBytes(100000);
  absl::StatusOr<int> package = PackHandover(checkpoint, fds);
  ASSERT_TRUE(package.ok()) << package.status();
  CloseAll(fds);
  int type = 0;
  socklen_t len = sizeof(type);
  ASSERT_EQ(getsockopt(*package, SOL_SOCKET, SO_TYPE, &type, &len), 0);
  EXPECT_EQ(type, SOCK_SEQPACKET);
  int memfd = -1;
  for (int message = 0; message < 2; ++message) {
    HandoverHeader header;
    iovec iov{&header, sizeof(header)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ASSERT_EQ(recvmsg(*package, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC),
              static_cast<ssize_t>(sizeof(header)));
    const cmsghdr* c = CMSG_FIRSTHDR(&msg);
    ASSERT_NE(c, nullptr);
    const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    std::vector<int> got(k);
    std::memcpy(got.data(), CMSG_DATA(c), k * sizeof(int));
    EXPECT_EQ(header.magic, kHandoverMagic);
    EXPECT_EQ(header.version, kHandoverVersion);
    if (message == 0) {
      EXPECT_EQ(header.kind, HandoverKind::kDescriptors);
      EXPECT_EQ(header.first, 0u);
      EXPECT_EQ(header.count, 3u);
      EXPECT_EQ(k, 3u);
      CloseAll(got);
    } else {
      EXPECT_EQ(header.kind, HandoverKind::kEnd);
      EXPECT_EQ(header.first, 3u) << "the end message counts the package's descriptors";
      EXPECT_EQ(header.checkpoint_size, checkpoint.size());
      ASSERT_EQ(k, 1u);
      memfd = got[0];
    }
  }
  char byte;
  EXPECT_EQ(recv(*package, &byte, 1, MSG_DONTWAIT), 0) << "the writer's end is closed";
  close(*package);
  EXPECT_EQ(fcntl(memfd, F_GET_SEALS), static_cast<int>(kAllSeals));
  EXPECT_EQ(write(memfd, "x", 1), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(pwrite(memfd, "x", 1, 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(ftruncate(memfd, 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(mmap(nullptr, 4096, PROT_WRITE, MAP_SHARED, memfd, 0), MAP_FAILED);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(fcntl(memfd, F_ADD_SEALS, 0), -1) << "no seal may be removed or added";
  std::string read_back(checkpoint.size() + 1, '\0');
  EXPECT_EQ(pread(memfd, read_back.data(), read_back.size(), 0),
            static_cast<ssize_t>(checkpoint.size()));
  read_back.resize(checkpoint.size());
  EXPECT_TRUE(read_back == checkpoint);
  close(memfd);
}

TEST(HandoverRefusalTest, APackageCutShortBeforeItsEnd) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Valid(300);
  ExpectRefused(before, forged, "cut short: 2 messages with 300 descriptors and no end message");
}

TEST(HandoverRefusalTest, AnEmptyQueue) {
  const size_t before = OpenFdCount();
  Forged forged;
  ExpectRefused(before, forged, "cut short: 0 messages");
}

// The writer is SIGKILLed between two messages: what it queued stays, the
// end never comes.
TEST(HandoverRefusalTest, APackageWhoseWriterWasKilled) {
  const size_t before = OpenFdCount();
  Forged forged;
  std::vector<int> fds = DistinctFds(600);
  const pid_t pid = fork();
  if (pid == 0) {
    for (size_t first = 0; first < 400; first += kMaxFdsPerMessage) {
      const size_t count = std::min<size_t>(kMaxFdsPerMessage, 400 - first);
      const HandoverHeader header = Descriptors(first, count);
      SendRaw(forged.writer(), &header, sizeof(header),
              std::vector<int>(fds.begin() + first, fds.begin() + first + count));
    }
    raise(SIGKILL);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  CloseAll(fds);
  ExpectRefused(before, forged, "cut short: 2 messages with 400 descriptors");
}

TEST(HandoverRefusalTest, WrongMagic) {
  const size_t before = OpenFdCount();
  Forged forged;
  HandoverHeader header = Descriptors(0, 3);
  header.magic = 0xdeadbeef;
  forged.Send(header, DistinctFds(3));
  forged.ValidEnd(3);
  ExpectRefused(before, forged, "handover message 0: wrong magic 0xdeadbeef");
}

TEST(HandoverRefusalTest, AnotherVersion) {
  const size_t before = OpenFdCount();
  Forged forged;
  HandoverHeader header = Descriptors(0, 3);
  header.version = kHandoverVersion + 1;
  forged.Send(header, DistinctFds(3));
  forged.ValidEnd(3);
  ExpectRefused(before, forged, "format version 2, this daemon reads 1");
}

TEST(HandoverRefusalTest, AGapInTheIndexes) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Send(Descriptors(0, 3), DistinctFds(3));
  forged.Send(Descriptors(5, 2), DistinctFds(2));
  forged.ValidEnd(7);
  ExpectRefused(before, forged,
                "handover message 1: starts at descriptor index 5 where 3 was next: a gap");
}

TEST(HandoverRefusalTest, MessagesOutOfOrder) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Send(Descriptors(3, 2), DistinctFds(2));
  forged.Send(Descriptors(0, 3), DistinctFds(3));
  forged.ValidEnd(5);
  ExpectRefused(before, forged, "handover message 0: starts at descriptor index 3 where 0");
}

TEST(HandoverRefusalTest, AnExtraMessageAfterTheEnd) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Valid(10);
  forged.ValidEnd(10);
  forged.Send(Descriptors(10, 2), DistinctFds(2));
  ExpectRefused(before, forged, "handover message 2: an extra message after the end message");
}

TEST(HandoverRefusalTest, ATruncatedHeader) {
  const size_t before = OpenFdCount();
  Forged forged;
  const HandoverHeader header = Descriptors(0, 2);
  forged.Raw(&header, 10, DistinctFds(2));
  forged.ValidEnd(2);
  ExpectRefused(before, forged, "handover message 0: a truncated header (10 of 24 bytes)");
}

TEST(HandoverRefusalTest, DescriptorsWithoutAHeader) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Valid(5);
  forged.Raw("", 0, DistinctFds(4));
  forged.ValidEnd(5);
  ExpectRefused(before, forged, "handover message 1: carries 4 descriptors but no header");
}

TEST(HandoverRefusalTest, MoreThanAHeader) {
  const size_t before = OpenFdCount();
  Forged forged;
  char payload[sizeof(HandoverHeader) + 8] = {};
  const HandoverHeader header = Descriptors(0, 2);
  std::memcpy(payload, &header, sizeof(header));
  forged.Raw(payload, sizeof(payload), DistinctFds(2));
  ExpectRefused(before, forged, "handover message 0: longer than a 24-byte header");
}

TEST(HandoverRefusalTest, ACountThatIsNotWhatTheMessageCarries) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Send(Descriptors(0, 3), DistinctFds(2));
  forged.ValidEnd(3);
  ExpectRefused(before, forged, "the header counts 3 descriptors, the message carries 2");
}

TEST(HandoverRefusalTest, AnEndMessageCountingOtherDescriptors) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Valid(4);
  forged.ValidEnd(6);
  ExpectRefused(before, forged, "the end message counts 6 descriptors in the package, 4 arrived");
}

TEST(HandoverRefusalTest, AnEndMessageWithoutItsMemfd) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Valid(4);
  forged.Send(End(4, 0), {});
  ExpectRefused(before, forged, "carries 0 descriptors, not 0 and 1 (the checkpoint's memfd)");
}

TEST(HandoverRefusalTest, AnUnsealedMemfd) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Valid(4);
  forged.Send(End(4, 5), {MemfdWith("hello", F_SEAL_SHRINK | F_SEAL_GROW)});
  ExpectRefused(before, forged, "the checkpoint's memfd is not sealed (seals 0x6");
}

TEST(HandoverRefusalTest, AMemfdOfAnotherSize) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Send(End(0, 20), {MemfdWith("0123456789", kAllSeals)});
  ExpectRefused(before, forged, "the checkpoint's memfd holds 10 bytes, the end message says 20");
}

TEST(HandoverRefusalTest, AnEndMessageCarryingSomethingElse) {
  const size_t before = OpenFdCount();
  Forged forged;
  forged.Send(End(0, 0), DistinctFds(1));
  ExpectRefused(before, forged, "the end message's descriptor is not a memfd");
}

TEST(HandoverRefusalTest, SomethingOtherThanAPackageSocket) {
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  close(p[1]);
  absl::StatusOr<Handover> got = UnpackHandover(p[0]);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(got.status().message(), HasSubstr("is not a SOCK_SEQPACKET socket"));
  EXPECT_EQ(fcntl(p[0], F_GETFD), -1) << "UnpackHandover takes the descriptor, even to refuse it";
}

// With too little room under RLIMIT_NOFILE the kernel installs what fits,
// closes the rest and flags MSG_CTRUNC: a package missing descriptors.
TEST(HandoverRefusalTest, DescriptorsCutShortByTheReceiversLimit) {
  const std::string failure = InChild([]() -> std::string {
    std::vector<int> fds = DistinctFds(600);
    absl::StatusOr<int> package = PackHandover("checkpoint", fds);
    if (!package.ok()) return std::string(package.status().message());
    CloseAll(fds);
    const size_t before = OpenFdCount();
    const rlimit low = {200, 200};
    if (setrlimit(RLIMIT_NOFILE, &low) != 0) return "setrlimit failed";
    absl::StatusOr<Handover> got = UnpackHandover(*package);
    if (got.ok()) return "accepted a package cut short by MSG_CTRUNC";
    if (got.status().code() != absl::StatusCode::kInvalidArgument ||
        got.status().message().find("MSG_CTRUNC") == std::string::npos ||
        got.status().message().find("RLIMIT_NOFILE (200)") == std::string::npos) {
      return got.status().ToString();
    }
    if (OpenFdCount() != before - 1) {
      return absl::StrCat(OpenFdCount(), " descriptors open after, ", before - 1, " expected");
    }
    return "";
  });
  EXPECT_EQ(failure, "");
}

// A user without CAP_SYS_RESOURCE may have no more descriptors in flight
// than its RLIMIT_NOFILE: the child drops root (uid 65534, no capabilities)
// and packs more than that.
TEST(HandoverResourceTest, MoreDescriptorsInFlightThanTheLimitIsResourceExhausted) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to become a user without the capability";
  const std::string failure = InChild([]() -> std::string {
    // Above the limit to come, so the package's own socket and memfd still fit;
    // room for that first (a soft limit of 1024 refuses descriptor 1024).
    rlimit room{};
    getrlimit(RLIMIT_NOFILE, &room);
    room.rlim_cur = room.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &room) != 0 || room.rlim_cur < 1024 + 800) {
      return absl::StrCat("needs RLIMIT_NOFILE of 1824, has ", room.rlim_max);
    }
    std::vector<int> fds = DistinctFds(800);
    for (int& fd : fds) {
      const int high = fcntl(fd, F_DUPFD_CLOEXEC, 1024);
      close(std::exchange(fd, high));
    }
    if (setgroups(0, nullptr) != 0 || setresgid(65534, 65534, 65534) != 0 ||
        setresuid(65534, 65534, 65534) != 0) {
      return absl::StrCat("cannot become uid 65534: ", std::strerror(errno));
    }
    prctl(PR_SET_DUMPABLE, 1);  // our own /proc/self/fd stays ours to read
    const rlimit low = {300, 300};
    if (setrlimit(RLIMIT_NOFILE, &low) != 0) return "setrlimit failed";
    const size_t before = OpenFdCount();
    absl::StatusOr<int> package = PackHandover("checkpoint", fds);
    if (package.ok()) return "packed 800 descriptors in flight under a limit of 300";
    const std::string message(package.status().message());
    if (package.status().code() != absl::StatusCode::kResourceExhausted ||
        message.find("of 800 descriptors") == std::string::npos ||
        message.find("ETOOMANYREFS") == std::string::npos ||
        message.find("RLIMIT_NOFILE, 300") == std::string::npos) {
      return package.status().ToString();
    }
    if (OpenFdCount() != before) {
      return absl::StrCat("after ", message, ": ", OpenFdCount(), " descriptors open, ", before,
                          " before");
    }
    return "";
  });
  EXPECT_EQ(failure, "");
}

TEST(HandoverResourceTest, InvalidDescriptorsAreRefusedBeforeAnythingIsMade) {
  const size_t before = OpenFdCount();
  const std::vector<int> fds = {0, -1};
  absl::StatusOr<int> package = PackHandover("checkpoint", fds);
  ASSERT_FALSE(package.ok());
  EXPECT_EQ(package.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(package.status().message(), HasSubstr("descriptor 1 of 2 is -1"));
  EXPECT_EQ(OpenFdCount(), before);
}

// A unix datagram socket in a temporary directory, playing systemd's.
class FakeNotifySocket {
 public:
  FakeNotifySocket() {
    char tmpl[] = "/tmp/asyncd-notify.XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/notify";
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path_.c_str());
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    setenv("NOTIFY_SOCKET", path_.c_str(), 1);
  }
  ~FakeNotifySocket() {
    unsetenv("NOTIFY_SOCKET");
    close(fd_);
    std::filesystem::remove_all(dir_);
  }
  // The next message: its text and the descriptors it carried.
  std::pair<std::string, std::vector<int>> Receive() {
    char text[4096];
    iovec iov{text, sizeof(text)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n = recvmsg(fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) return {absl::StrCat("recvmsg: ", std::strerror(errno)), {}};
    std::vector<int> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const size_t at = fds.size();
      fds.resize(at + k);
      std::memcpy(fds.data() + at, CMSG_DATA(c), k * sizeof(int));
    }
    return {std::string(text, n), fds};
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_, path_;
  int fd_ = -1;
};

TEST(DescriptorStoreTest, PushSendsTheDescriptorNamedAndRemoveDropsIt) {
  FakeNotifySocket systemd;
  std::vector<int> fds = DistinctFds(1);
  ASSERT_TRUE(PushToDescriptorStore(fds[0], kHandoverFdName).ok());
  auto [text, passed] = systemd.Receive();
  // FDPOLL=0, or systemd drops the package at the POLLHUP it shows at once.
  EXPECT_EQ(text, "FDSTORE=1\nFDPOLL=0\nFDNAME=asyncd-handover");
  ASSERT_EQ(passed.size(), 1u);
  EXPECT_EQ(IdentityOf(passed[0]), IdentityOf(fds[0]));
  EXPECT_NE(fcntl(fds[0], F_GETFD), -1) << "the caller keeps its descriptor";
  CloseAll(passed);
  RemoveFromDescriptorStore(kHandoverFdName);
  auto [removal, none] = systemd.Receive();
  EXPECT_EQ(removal, "FDSTOREREMOVE=1\nFDNAME=asyncd-handover");
  EXPECT_TRUE(none.empty());
  CloseAll(fds);
}

TEST(DescriptorStoreTest, RefusesWithoutSystemdAndNamesItsErrors) {
  std::vector<int> fds = DistinctFds(1);
  unsetenv("NOTIFY_SOCKET");
  absl::Status s = PushToDescriptorStore(fds[0], kHandoverFdName);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("$NOTIFY_SOCKET is unset"));
  RemoveFromDescriptorStore(kHandoverFdName);  // a no-op, not a crash
  {
    FakeNotifySocket systemd;
    s = PushToDescriptorStore(fds[0], "a:b");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("not a valid FDNAME"));
    EXPECT_EQ(PushToDescriptorStore(fds[0], "two\nlines").code(),
              absl::StatusCode::kInvalidArgument);
    // Nobody listens there any more.
    setenv("NOTIFY_SOCKET", (systemd.dir() + "/gone").c_str(), 1);
    s = PushToDescriptorStore(fds[0], kHandoverFdName);
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
    EXPECT_THAT(s.message(), HasSubstr(std::strerror(ENOENT)));
  }
  CloseAll(fds);
}

// A listening unix stream socket, as a .socket unit passes one.
int ListeningSocket(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(listen(fd, 8), 0);
  return fd;
}

// In a forked child (LISTEN_* are read once a process): places `fds` at 3,
// 4, ... as systemd does, with LISTEN_FDNAMES `names`, then runs `body`.
std::string WithPassedFds(const std::vector<int>& fds, const std::string& names,
                          const std::function<std::string()>& body) {
  return InChild([&]() -> std::string {
    const int n = static_cast<int>(fds.size());
    std::vector<int> moved;
    for (int fd : fds) moved.push_back(fcntl(fd, F_DUPFD_CLOEXEC, 3 + n));
    for (int i = 0; i < n; ++i) {
      if (dup2(moved[i], 3 + i) != 3 + i) return "dup2 failed";
      close(moved[i]);
    }
    setenv("LISTEN_FDS", std::to_string(n).c_str(), 1);
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    if (!names.empty()) setenv("LISTEN_FDNAMES", names.c_str(), 1);
    return body();
  });
}

class PassedFdsTest : public ::testing::Test {
 protected:
  PassedFdsTest() {
    char tmpl[] = "/tmp/asyncd-passed.XXXXXX";
    dir_ = mkdtemp(tmpl);
    listening_ = ListeningSocket(dir_ + "/asyncd.sock");
    int pair[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
    package_writer_ = pair[0];
    package_ = pair[1];
  }
  ~PassedFdsTest() override {
    close(listening_);
    close(package_);
    close(package_writer_);
    std::filesystem::remove_all(dir_);
  }
  std::string dir_;
  int listening_ = -1;
  int package_ = -1;  // a package's receiving end: a socket, but not a listener
  int package_writer_ = -1;
};

TEST_F(PassedFdsTest, TakesThePackageByNameOnceAndOnlyUnderLISTEN_PID) {
  const Identity package = IdentityOf(package_);
  EXPECT_EQ(WithPassedFds({listening_, package_}, "asyncd.socket:asyncd-handover",
                          [&]() -> std::string {
                            const std::optional<int> fd = TakePassedFd(kHandoverFdName);
                            if (fd != 4) return "the package was not fd 4";
                            if (!(IdentityOf(*fd) == package)) return "fd 4 is not the package";
                            if (TakePassedFd(kHandoverFdName)) return "taken twice";
                            if (std::getenv("LISTEN_FDS") != nullptr) return "LISTEN_FDS is set";
                            if (UntakenPassedFds().size() != 1) return "not one left";
                            return "";
                          }),
            "");
  // Another process's LISTEN_PID: nothing is ours.
  EXPECT_EQ(InChild([&]() -> std::string {
              setenv("LISTEN_FDS", "1", 1);
              setenv("LISTEN_PID", std::to_string(getppid()).c_str(), 1);
              setenv("LISTEN_FDNAMES", "asyncd-handover", 1);
              return TakePassedFd(kHandoverFdName) ? "took another process's descriptor" : "";
            }),
            "");
  EXPECT_EQ(InChild([]() -> std::string {
              unsetenv("LISTEN_FDS");
              unsetenv("LISTEN_PID");
              return TakePassedFd(kHandoverFdName) ? "took a descriptor nobody passed" : "";
            }),
            "");
}

// Socket activation and the handover share the LISTEN_FDS range: each takes
// its own whichever goes first and wherever systemd put it.
TEST_F(PassedFdsTest, TheListenerAndThePackageAreTakenInEitherOrder) {
  for (const bool package_first : {true, false}) {
    for (const bool take_package_first : {true, false}) {
      SCOPED_TRACE(absl::StrCat(package_first ? "package at fd 3" : "package at fd 4",
                                take_package_first ? ", taken first" : ", taken second"));
      const int listener_fd = package_first ? 4 : 3;
      const int package_fd = package_first ? 3 : 4;
      const std::vector<int> fds = package_first ? std::vector<int>{package_, listening_}
                                                 : std::vector<int>{listening_, package_};
      const std::string names =
          package_first ? "asyncd-handover:asyncd.socket" : "asyncd.socket:asyncd-handover";
      EXPECT_EQ(WithPassedFds(fds, names,
                              [&]() -> std::string {
                                std::optional<int> package, listener;
                                if (take_package_first) package = TakePassedFd(kHandoverFdName);
                                listener = TakeActivatedSocket();
                                if (!take_package_first) package = TakePassedFd(kHandoverFdName);
                                if (listener != listener_fd) {
                                  return absl::StrCat("listener ", listener.value_or(-1));
                                }
                                if (package != package_fd) {
                                  return absl::StrCat("package ", package.value_or(-1));
                                }
                                if (TakeActivatedSocket() || TakePassedFd(kHandoverFdName)) {
                                  return "a descriptor was taken twice";
                                }
                                if (fcntl(3, F_GETFD) < 0 || fcntl(4, F_GETFD) < 0) {
                                  return "a passed descriptor was closed";
                                }
                                return "";
                              }),
                "");
    }
  }
}

TEST_F(PassedFdsTest, ANonSocketIsLeftForAdoptToRefuseOnlyWhenNoSocketCame) {
  const int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  EXPECT_EQ(WithPassedFds({null, listening_}, "",
                          []() -> std::string {
                            const std::optional<int> fd = TakeActivatedSocket();
                            return fd == 4
                                       ? ""
                                       : absl::StrCat("took ", fd.value_or(-1), ", not the socket");
                          }),
            "");
  EXPECT_EQ(WithPassedFds({null, package_}, "unknown:asyncd-handover",
                          []() -> std::string {
                            const std::optional<int> fd = TakeActivatedSocket();
                            return fd == 3
                                       ? ""
                                       : absl::StrCat("took ", fd.value_or(-1), ", not the stray");
                          }),
            "");
  EXPECT_EQ(WithPassedFds({package_}, "asyncd-handover",
                          []() -> std::string {
                            return TakeActivatedSocket() ? "took the package for a listener" : "";
                          }),
            "");
  close(null);
}

}  // namespace
}  // namespace asyncd::daemon
