// asyncctl submit <kind> ...: run one operation by hand.
//
// Without --session, submit opens a session for the one operation and closes
// it afterwards, which also closes any handle the operation opened. Handles
// are session-scoped, so multi-step use needs a session that outlives the
// command:
//   S=$(asyncctl sessions open --lease 10m)
//   asyncctl submit --session $S open data.txt --access rw --create   # prints handle: H
//   asyncctl submit --session $S write --handle H --data hello
//   asyncctl submit --session $S read --handle H --len 5
//   asyncctl sessions close $S

#include <condition_variable>
#include <iostream>
#include <mutex>
#include <thread>

#include "client/ctl/command.h"
#include "client/ctl/duration.h"
#include "client/ctl/format.h"
#include "client/ctl/interrupt.h"

namespace asyncd::ctl {
namespace {

struct CommonFlags {
  std::string session;   // --session ID; empty: a session just for this op
  std::string deadline;  // --deadline DURATION (Operation.deadline_ms)
  uint64_t tag = 0;
};

// What a kind's subcommand contributes: a way to fill the Operation from its
// flags (a usage error if they are bad) and an estimate of how long the call
// runs by design (a timeout's duration), added to the call's deadline.
struct Built {
  v1::Operation op;
  std::chrono::microseconds expected{0};
  bool raw_output = false;  // read --raw: write the data bytes to stdout
};
using Builder = std::function<absl::Status(Built*)>;

absl::StatusOr<uint32_t> ParseMode(const std::string& text) {
  uint32_t mode = 0;
  for (char ch : text) {
    if (ch < '0' || ch > '7' || mode > 07777) {
      return absl::InvalidArgumentError("invalid mode \"" + text + "\": expected octal, e.g. 0644");
    }
    mode = mode * 8 + static_cast<uint32_t>(ch - '0');
  }
  if (text.empty() || mode > 07777) {
    return absl::InvalidArgumentError("invalid mode \"" + text + "\": expected 0..07777");
  }
  return mode;
}

absl::Status CheckHandle(const std::string& text, uint32_t* out) {
  if (text.empty()) return absl::InvalidArgumentError("--handle is required");
  absl::StatusOr<uint32_t> h = ParseHandle(text);
  if (!h.ok()) return h.status();
  *out = *h;
  return absl::OkStatus();
}

absl::Status CheckLength(const std::string& text, uint64_t max, uint64_t* out) {
  if (text.empty()) return absl::InvalidArgumentError("--len is required");
  absl::StatusOr<uint64_t> n = ParseUint(text, "--len");
  if (!n.ok()) return n.status();
  if (*n > max) return absl::InvalidArgumentError("--len too large");
  *out = *n;
  return absl::OkStatus();
}

// Renews a session's lease while a Submit waits: in-flight operations do not
// hold a lease, so a `submit timeout 1m` would otherwise lose its session
// (and be cancelled) when the lease (30s by default) runs out.
class LeaseKeeper {
 public:
  LeaseKeeper(client::Client& c, uint64_t session_id, std::chrono::milliseconds lease)
      : thread_([this, &c, session_id, lease] { Run(c, session_id, lease); }) {}

  ~LeaseKeeper() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  void Run(client::Client& c, uint64_t session_id, std::chrono::milliseconds lease) {
    // Unknown lease (a caller's session): renew soon and learn it.
    std::chrono::milliseconds period =
        lease.count() > 0 ? lease / 3 : std::chrono::milliseconds(1000);
    std::unique_lock<std::mutex> lock(mu_);
    while (!cv_.wait_for(lock, period, [this] { return stop_; })) {
      lock.unlock();
      absl::StatusOr<uint32_t> lease_ms = c.KeepAlive(session_id);
      lock.lock();
      if (!lease_ms.ok()) return;  // the Submit will report what is wrong
      // 0: a stream holds the session and no lease runs; check now and then.
      period = *lease_ms == 0 ? std::chrono::milliseconds(10000)
                              : std::max(std::chrono::milliseconds(*lease_ms / 3),
                                         std::chrono::milliseconds(30));
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

int Run(Env& env, const CommonFlags& common, const Builder& build) {
  absl::StatusOr<Daemon*> daemon = env.Single("submit");
  if (!daemon.ok()) return UsageError(daemon.status());
  Daemon& d = **daemon;
  client::Client& c = d.client();
  Built built;
  if (absl::Status s = build(&built); !s.ok()) return UsageError(s);
  built.op.set_tag(common.tag);
  std::chrono::microseconds extra = built.expected;
  if (!common.deadline.empty()) {
    absl::StatusOr<std::chrono::microseconds> d = ParseDuration(common.deadline);
    if (!d.ok()) return UsageError(d.status());
    int64_t ms = (d->count() + 999) / 1000;
    if (ms == 0 || ms > std::numeric_limits<uint32_t>::max()) {
      return UsageError(absl::InvalidArgumentError("--deadline: 1ms..49d"));
    }
    built.op.set_deadline_ms(static_cast<uint32_t>(ms));
    // The op ends by its deadline: the call may need that long, no longer.
    std::chrono::microseconds deadline(ms * 1000);
    extra = built.expected.count() == 0 ? deadline : std::min(built.expected, deadline);
  }

  uint64_t session_id = 0;
  std::chrono::milliseconds lease(0);
  bool temporary = common.session.empty();
  if (temporary) {
    v1::OpenSessionResponse opened;
    absl::StatusOr<uint64_t> id = c.OpenSession("asyncctl", /*lease_ms=*/0, &opened);
    if (!id.ok()) return Report(d.Error(id.status(), "submit: open session"));
    session_id = *id;
    lease = std::chrono::milliseconds(opened.lease_ms());
  } else {
    absl::StatusOr<uint64_t> id = ParseId(common.session, "session id");
    if (!id.ok()) return UsageError(id.status());
    session_id = *id;
  }

  absl::StatusOr<v1::Completion> submitted;
  {
    client::CallCanceller canceller;
    // Ctrl-C cancels the call, which cancels the operation (RPC_CANCELLED).
    InterruptScope scope([&canceller] { canceller.Cancel(); });
    LeaseKeeper keeper(c, session_id, lease);
    submitted = c.Submit(session_id, built.op, {.extra_time = extra, .canceller = &canceller});
  }
  if (temporary) {
    // Best effort; the lease ends it anyway.
    static_cast<void>(c.CloseSession(session_id));
  }
  if (!submitted.ok()) {
    if (Interrupted()) {
      return Report({ExitCode::kOpError, "submit: interrupted; the operation was cancelled"});
    }
    return Report(d.Error(submitted.status(), "submit"));
  }
  const v1::Completion& completion = *submitted;

  if (built.raw_output && completion.outcome() == v1::OUTCOME_COMPLETED &&
      completion.error_number() == 0) {
    std::cout << completion.data() << std::flush;
  } else {
    env.printer().Completion(completion);
  }
  if (temporary && completion.kind() == v1::OP_KIND_OPEN && completion.handle() != 0) {
    std::cerr << "asyncctl: note: handle " << completion.handle() << " belonged to temporary "
              << "session " << session_id << ", now closed; use `asyncctl sessions open` and "
              << "`submit --session ID` to keep handles" << std::endl;
  }
  bool ok = completion.outcome() == v1::OUTCOME_COMPLETED && completion.error_number() == 0;
  return ToInt(ok ? ExitCode::kOk : ExitCode::kOpError);
}

// Registers one kind's subcommand. `setup` adds its flags and returns the
// builder that reads them (the flags live in shared_ptrs the builder holds).
void AddKind(CLI::App* submit, Action* action, std::shared_ptr<CommonFlags> common,
             const std::string& name, const std::string& help,
             const std::function<Builder(CLI::App*)>& setup) {
  CLI::App* cmd = submit->add_subcommand(name, help);
  Builder builder = setup(cmd);
  cmd->callback([action, common, builder] {
    *action = [common, builder](Env& env) { return Run(env, *common, builder); };
  });
}

}  // namespace

void AddSubmitCommand(CLI::App& app, Action* action) {
  auto common = std::make_shared<CommonFlags>();
  CLI::App* submit = app.add_subcommand(
      "submit",
      "Run one operation by hand and print its completion (exit 1 unless it completed "
      "without an errno). Without --session it runs in a temporary session, closed "
      "afterwards with its handles; for several steps use `sessions open` and --session");
  submit->require_subcommand(1);
  submit->add_option("--session", common->session,
                     "Run in this session (from `asyncctl sessions open`); handles live there");
  submit->add_option("--deadline", common->deadline,
                     "Operation deadline, e.g. 2s (it ends TIMED_OUT); also bounds the call");
  submit->add_option("--tag", common->tag, "Operation tag (echoed in listings)");
  submit->footer(
      "Paths are relative to the daemon's root. The call's deadline is --timeout (plus the "
      "operation's own duration for `timeout`, or its --deadline): a poll or a read on a pipe "
      "that should wait longer needs --deadline or a larger --timeout.");

  AddKind(submit, action, common, "nop", "Do nothing (latency probe)", [](CLI::App*) -> Builder {
    return [](Built* b) {
      b->op.mutable_nop();
      return absl::OkStatus();
    };
  });

  AddKind(submit, action, common, "open", "Open a file; prints the new handle",
          [](CLI::App* cmd) -> Builder {
            struct F {
              std::string path, access = "r", mode;
              bool create = false, exclusive = false, truncate = false, append = false,
                   directory = false, nonblock = false, no_follow = false;
            };
            auto f = std::make_shared<F>();
            cmd->add_option("PATH", f->path, "Path beneath the daemon's root")->required();
            cmd->add_option("--access", f->access, "r, w or rw")->default_str("r");
            cmd->add_flag("--create", f->create, "O_CREAT");
            cmd->add_flag("--exclusive", f->exclusive, "O_EXCL (with --create)");
            cmd->add_flag("--truncate", f->truncate, "O_TRUNC");
            cmd->add_flag("--append", f->append, "O_APPEND");
            cmd->add_flag("--directory", f->directory, "O_DIRECTORY");
            cmd->add_flag("--nonblock", f->nonblock, "O_NONBLOCK");
            cmd->add_flag("--no-follow", f->no_follow, "O_NOFOLLOW");
            cmd->add_option("--mode", f->mode, "Permission bits for --create, octal (0644)");
            return [f](Built* b) {
              v1::Open* o = b->op.mutable_open();
              o->set_path(f->path);
              absl::StatusOr<v1::OpenMode> access = ParseEnum<v1::OpenMode>(f->access, "--access");
              if (!access.ok()) return access.status();
              o->set_access(*access);
              o->set_create(f->create);
              o->set_exclusive(f->exclusive);
              o->set_truncate(f->truncate);
              o->set_append(f->append);
              o->set_directory(f->directory);
              o->set_nonblock(f->nonblock);
              o->set_no_follow(f->no_follow);
              if (!f->mode.empty()) {
                absl::StatusOr<uint32_t> mode = ParseMode(f->mode);
                if (!mode.ok()) return mode.status();
                o->set_mode(*mode);
              }
              return absl::OkStatus();
            };
          });

  AddKind(submit, action, common, "close", "Close a handle", [](CLI::App* cmd) -> Builder {
    auto handle = std::make_shared<std::string>();
    cmd->add_option("--handle", *handle, "Handle")->required();
    return [handle](Built* b) {
      uint32_t h = 0;
      if (absl::Status s = CheckHandle(*handle, &h); !s.ok()) return s;
      b->op.mutable_close()->set_handle(h);
      return absl::OkStatus();
    };
  });

  AddKind(submit, action, common, "read", "Read up to --len bytes from a handle",
          [](CLI::App* cmd) -> Builder {
            struct F {
              std::string handle, len;
              int64_t offset = 0;
              bool raw = false;
            };
            auto f = std::make_shared<F>();
            cmd->add_option("--handle", f->handle, "Handle")->required();
            cmd->add_option("--len", f->len, "Bytes to read")->required();
            cmd->add_option("--offset", f->offset,
                            "Byte offset; -1 = current position (pipes, sockets)")
                ->default_str("0");
            cmd->add_flag("--raw", f->raw, "Write only the data bytes to stdout");
            return [f](Built* b) {
              v1::Read* r = b->op.mutable_read();
              uint32_t h = 0;
              uint64_t len = 0;
              if (absl::Status s = CheckHandle(f->handle, &h); !s.ok()) return s;
              if (absl::Status s = CheckLength(f->len, UINT32_MAX, &len); !s.ok()) return s;
              if (f->offset < -1) return absl::InvalidArgumentError("--offset must be >= -1");
              r->set_handle(h);
              r->set_length(static_cast<uint32_t>(len));
              r->set_offset(f->offset);
              b->raw_output = f->raw;
              return absl::OkStatus();
            };
          });

  AddKind(submit, action, common, "write", "Write --data to a handle",
          [](CLI::App* cmd) -> Builder {
            struct F {
              std::string handle, data;
              int64_t offset = 0;
            };
            auto f = std::make_shared<F>();
            cmd->add_option("--handle", f->handle, "Handle")->required();
            cmd->add_option("--data", f->data, "Bytes to write (as given)")->required();
            cmd->add_option("--offset", f->offset, "Byte offset; -1 = current position")
                ->default_str("0");
            return [f](Built* b) {
              uint32_t h = 0;
              if (absl::Status s = CheckHandle(f->handle, &h); !s.ok()) return s;
              if (f->offset < -1) return absl::InvalidArgumentError("--offset must be >= -1");
              v1::Write* w = b->op.mutable_write();
              w->set_handle(h);
              w->set_data(f->data);
              w->set_offset(f->offset);
              return absl::OkStatus();
            };
          });

  AddKind(submit, action, common, "fsync", "Flush a handle to stable storage",
          [](CLI::App* cmd) -> Builder {
            auto handle = std::make_shared<std::string>();
            auto datasync = std::make_shared<bool>(false);
            cmd->add_option("--handle", *handle, "Handle")->required();
            cmd->add_flag("--datasync", *datasync, "fdatasync");
            return [handle, datasync](Built* b) {
              uint32_t h = 0;
              if (absl::Status s = CheckHandle(*handle, &h); !s.ok()) return s;
              b->op.mutable_fsync()->set_handle(h);
              b->op.mutable_fsync()->set_datasync(*datasync);
              return absl::OkStatus();
            };
          });

  AddKind(submit, action, common, "truncate", "Set a handle's file size (ftruncate)",
          [](CLI::App* cmd) -> Builder {
            auto handle = std::make_shared<std::string>();
            auto len = std::make_shared<std::string>();
            cmd->add_option("--handle", *handle, "Handle")->required();
            cmd->add_option("--len", *len, "New size in bytes")->required();
            return [handle, len](Built* b) {
              uint32_t h = 0;
              uint64_t n = 0;
              if (absl::Status s = CheckHandle(*handle, &h); !s.ok()) return s;
              if (absl::Status s = CheckLength(*len, INT64_MAX, &n); !s.ok()) return s;
              b->op.mutable_ftruncate()->set_handle(h);
              b->op.mutable_ftruncate()->set_length(static_cast<int64_t>(n));
              return absl::OkStatus();
            };
          });

  AddKind(submit, action, common, "fallocate",
          "Allocate (default), --punch-hole or --zero-range a byte range of a handle",
          [](CLI::App* cmd) -> Builder {
            struct F {
              std::string handle, offset = "0", len;
              bool keep_size = false, punch_hole = false, zero_range = false;
            };
            auto f = std::make_shared<F>();
            cmd->add_option("--handle", f->handle, "Handle")->required();
            cmd->add_option("--offset", f->offset, "Start of the range in bytes")->default_str("0");
            cmd->add_option("--len", f->len, "Length of the range in bytes")->required();
            cmd->add_flag("--keep-size", f->keep_size, "Do not change the file size");
            cmd->add_flag("--punch-hole", f->punch_hole, "Deallocate the range (with --keep-size)");
            cmd->add_flag("--zero-range", f->zero_range, "Zero the range");
            return [f](Built* b) {
              uint32_t h = 0;
              uint64_t len = 0;
              if (absl::Status s = CheckHandle(f->handle, &h); !s.ok()) return s;
              if (absl::Status s = CheckLength(f->len, INT64_MAX, &len); !s.ok()) return s;
              absl::StatusOr<uint64_t> offset = ParseUint(f->offset, "--offset");
              if (!offset.ok()) return offset.status();
              if (*offset > INT64_MAX) return absl::InvalidArgumentError("--offset too large");
              v1::Fallocate* fa = b->op.mutable_fallocate();
              fa->set_handle(h);
              fa->set_offset(static_cast<int64_t>(*offset));
              fa->set_length(static_cast<int64_t>(len));
              fa->set_mode((f->keep_size ? v1::FALLOCATE_MODE_KEEP_SIZE : 0) |
                           (f->punch_hole ? v1::FALLOCATE_MODE_PUNCH_HOLE : 0) |
                           (f->zero_range ? v1::FALLOCATE_MODE_ZERO_RANGE : 0));
              return absl::OkStatus();
            };
          });

  AddKind(submit, action, common, "stat", "File metadata of PATH or --handle (statx)",
          [](CLI::App* cmd) -> Builder {
            struct F {
              std::string path, handle;
              bool no_follow = false;
            };
            auto f = std::make_shared<F>();
            cmd->add_option("PATH", f->path, "Path beneath the daemon's root");
            cmd->add_option("--handle", f->handle, "Handle instead of a path");
            cmd->add_flag("--no-follow", f->no_follow, "Describe a final symlink itself");
            return [f](Built* b) {
              v1::Statx* st = b->op.mutable_statx();
              if (f->path.empty() == f->handle.empty()) {
                return absl::InvalidArgumentError("stat needs exactly one of PATH or --handle");
              }
              if (!f->handle.empty()) {
                uint32_t h = 0;
                if (absl::Status s = CheckHandle(f->handle, &h); !s.ok()) return s;
                st->set_handle(h);
              } else {
                st->set_path(f->path);
              }
              st->set_no_follow(f->no_follow);
              return absl::OkStatus();
            };
          });

  AddKind(submit, action, common, "unlink", "Remove a file (or an empty directory with --dir)",
          [](CLI::App* cmd) -> Builder {
            auto path = std::make_shared<std::string>();
            auto dir = std::make_shared<bool>(false);
            cmd->add_option("PATH", *path, "Path beneath the daemon's root")->required();
            cmd->add_flag("--dir", *dir, "rmdir semantics");
            return [path, dir](Built* b) {
              b->op.mutable_unlink()->set_path(*path);
              b->op.mutable_unlink()->set_directory(*dir);
              return absl::OkStatus();
            };
          });

  AddKind(submit, action, common, "rename", "Rename OLD to NEW", [](CLI::App* cmd) -> Builder {
    struct F {
      std::string from, to;
      bool no_replace = false;
    };
    auto f = std::make_shared<F>();
    cmd->add_option("OLD", f->from, "Existing path")->required();
    cmd->add_option("NEW", f->to, "New path")->required();
    cmd->add_flag("--no-replace", f->no_replace, "Fail with EEXIST if NEW exists");
    return [f](Built* b) {
      v1::Rename* r = b->op.mutable_rename();
      r->set_old_path(f->from);
      r->set_new_path(f->to);
      r->set_no_replace(f->no_replace);
      return absl::OkStatus();
    };
  });

  AddKind(submit, action, common, "mkdir", "Create a directory", [](CLI::App* cmd) -> Builder {
    auto path = std::make_shared<std::string>();
    auto mode = std::make_shared<std::string>();
    cmd->add_option("PATH", *path, "Path beneath the daemon's root")->required();
    cmd->add_option("--mode", *mode, "Permission bits, octal (0755)");
    return [path, mode](Built* b) {
      b->op.mutable_mkdir()->set_path(*path);
      if (!mode->empty()) {
        absl::StatusOr<uint32_t> m = ParseMode(*mode);
        if (!m.ok()) return m.status();
        b->op.mutable_mkdir()->set_mode(*m);
      }
      return absl::OkStatus();
    };
  });

  AddKind(submit, action, common, "poll",
          "Wait until a handle is ready (waits forever: see "
          "--deadline)",
          [](CLI::App* cmd) -> Builder {
            auto handle = std::make_shared<std::string>();
            auto events = std::make_shared<std::vector<std::string>>();
            cmd->add_option("--handle", *handle, "Handle")->required();
            cmd->add_option("--events", *events, "in, out (repeatable or comma-separated)")
                ->required()
                ->delimiter(',');
            return [handle, events](Built* b) {
              uint32_t h = 0;
              if (absl::Status s = CheckHandle(*handle, &h); !s.ok()) return s;
              uint32_t bits = 0;
              for (const std::string& e : *events) {
                absl::StatusOr<v1::PollEvents> bit = ParseEnum<v1::PollEvents>(e, "--events");
                if (!bit.ok()) return bit.status();
                bits |= static_cast<uint32_t>(*bit);
              }
              b->op.mutable_poll()->set_handle(h);
              b->op.mutable_poll()->set_events(bits);
              return absl::OkStatus();
            };
          });

  AddKind(submit, action, common, "timeout", "Wait DURATION (e.g. 5s), then complete",
          [](CLI::App* cmd) -> Builder {
            auto duration = std::make_shared<std::string>();
            cmd->add_option("DURATION", *duration, "How long, e.g. 500ms, 5s, 2m")->required();
            return [duration](Built* b) {
              absl::StatusOr<std::chrono::microseconds> d = ParseDuration(*duration);
              if (!d.ok()) return d.status();
              b->op.mutable_timeout()->set_duration_us(static_cast<uint64_t>(d->count()));
              b->expected = *d;
              return absl::OkStatus();
            };
          });
}

}  // namespace asyncd::ctl
