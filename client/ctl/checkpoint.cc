// asyncctl checkpoint: the daemon's whole state, taken without stopping it.

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "client/ctl/command.h"

namespace asyncd::ctl {
namespace {

// Writes `text` to `path` whole or not at all (a new temporary file, mode
// 0600, renamed over it), readable by its owner only: a checkpoint names
// every user's files. mkstemp: nothing planted at the temporary name is
// followed or reused.
absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  std::string tmp = path + ".XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return absl::InternalError(tmp + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return absl::InternalError(tmp + ": " + std::strerror(error));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(path + ": " + std::strerror(error));
  }
  return absl::OkStatus();
}

int RunCheckpoint(Env& env, const std::string& write_path) {
  absl::StatusOr<Daemon*> daemon = env.Single("checkpoint");
  if (!daemon.ok()) return UsageError(daemon.status());
  absl::StatusOr<::asyncd::state::v1::Checkpoint> cp = (*daemon)->client().GetCheckpoint();
  if (!cp.ok()) return Report((*daemon)->Error(cp.status(), "checkpoint"));
  if (write_path.empty()) {
    env.printer().Checkpoint(*cp);
    return 0;
  }
  if (absl::Status s = WriteFileAtomically(write_path, ToJson(*cp, /*pretty=*/true) + "\n");
      !s.ok()) {
    std::cerr << "asyncctl: checkpoint: " << s.message() << std::endl;
    return ToInt(ExitCode::kOpError);
  }
  size_t handles = 0;
  size_t ops = 0;
  for (const auto& s : cp->sessions()) {
    handles += static_cast<size_t>(s.handles_size());
    ops += static_cast<size_t>(s.ops_size());
  }
  std::cout << "checkpoint written to " << write_path << ": " << cp->sessions_size()
            << " sessions, " << handles << " handles, " << ops << " outstanding operations\n";
  return 0;
}

}  // namespace

void AddCheckpointCommand(CLI::App& app, Action* action) {
  auto write_path = std::make_shared<std::string>();
  CLI::App* checkpoint = app.add_subcommand(
      "checkpoint",
      "Print the daemon's whole state (admin), taken without stopping it: every session, "
      "handle and outstanding operation, the id counters and the recent history. "
      "-o json prints it all as JSON");
  checkpoint->add_option("-w,--write", *write_path,
                         "Write it as JSON to FILE instead (mode 0600, replaced whole)");
  checkpoint->callback([action, write_path] {
    *action = [write_path](Env& env) { return RunCheckpoint(env, *write_path); };
  });
}

}  // namespace asyncd::ctl
