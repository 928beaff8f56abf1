// asyncd: runs system calls for clients that submit them over gRPC.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <thread>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "daemon/config.h"
#include "daemon/handover.h"
#include "daemon/listener.h"
#include "daemon/passed_fds.h"
#include "daemon/server.h"
#include "daemon/systemd_notify.h"
#include "daemon/takeover.h"
#include "src/common/runtime_paths.h"

int main(int argc, char** argv) {
  using asyncd::daemon::Config;
  CLI::App app{"asyncd: an async-syscall daemon (io_uring fast path, thread-pool fallback)"};
  app.set_version_flag("--version", "asyncd " ASYNCD_VERSION);
  app.footer(
      "Defaults are embedded: no config file is needed. Flags override the config file.\n"
      "Signals: SIGTERM/SIGINT drain and stop; SIGHUP reloads the config file; SIGUSR2\n"
      "hands the sessions and handles to the next daemon through systemd's descriptor\n"
      "store, then stops (a restart: the unit's ExecStop sends it); without systemd it is\n"
      "ignored.\n"
      "A Drain RPC (asyncctl drain) also stops the daemon once the drain is over.\n"
      "Takeover (an upgrade without systemd): `asyncd --takeover` with the running daemon's\n"
      "config and flags asks it, on server.takeover_socket (default: the socket's path\n"
      "plus \".takeover\", its own uid and root only), for its sessions, handles and\n"
      "listening socket; it drains, hands them over, exits 0, and the new process serves\n"
      "on the same socket (clients wait meanwhile, none is refused). If it refuses, or no\n"
      "daemon answers, --takeover exits 1 and says why; a daemon that refused serves on.\n"
      "Exit status: 0 stopped after a drain (signal, Drain RPC or takeover), or\n"
      "--check-config found the config valid; 1 could not start (socket, root, TLS files,\n"
      "backends), or --takeover found no daemon or was refused (stderr says which); 2 config\n"
      "error (file, flags or their combination: FILE:LINE: reason on stderr).");
  std::string config_path, socket, root, tcp, metrics, log_level, path_resolver;
  std::string tls_cert, tls_key, tls_client_ca, tcp_port_file;
  bool no_uring = false;
  bool check_config = false;
  bool tcp_insecure = false;
  bool takeover = false;
  app.add_option("--config", config_path, "TOML config file (see deploy/asyncd.toml.example)");
  app.add_flag("--check-config", check_config,
               "load and validate the config (file, flags) as a start would, print \"ok\" and "
               "exit 0, or exit 2 with the error; binds nothing, creates nothing");
  app.add_flag("--takeover", takeover,
               "take the place of the daemon running with this config: its sessions, handles "
               "and listening socket (server.takeover_socket); exit 1 if it refuses");
  app.add_option("--socket", socket,
                 "unix socket path (default: $ASYNCD_SOCKET, /run/asyncd/asyncd.sock as root, "
                 "else $XDG_RUNTIME_DIR/asyncd/asyncd.sock)");
  app.add_option("--root", root,
                 "directory every client path resolves beneath (default: $STATE_DIRECTORY/files, "
                 "/var/lib/asyncd/files as root, else ~/.local/share/asyncd/files)");
  app.add_option("--tcp", tcp,
                 "also listen on ADDR:PORT (off by default; port 0 = any free one); needs "
                 "--tls-cert/--tls-key or --tcp-insecure");
  app.add_option("--tls-cert", tls_cert, "PEM certificate chain for TCP (server.tls_cert)");
  app.add_option("--tls-key", tls_key, "PEM private key for TCP (server.tls_key)");
  app.add_option("--tls-client-ca", tls_client_ca,
                 "PEM CA: TCP clients must present a certificate it signed (mutual TLS)");
  app.add_flag("--tcp-insecure", tcp_insecure,
               "allow plaintext TCP (no TLS, no authentication; for tests on loopback)");
  app.add_option("--tcp-port-file", tcp_port_file,
                 "write the TCP port serving (useful with port 0) to this file once listening");
  app.add_option("--metrics", metrics,
                 "serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9464 "
                 "(off by default; config key server.metrics)");
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|critical|off (default info)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_flag("--no-io-uring", no_uring, "serve everything from the thread pool");
  app.add_option("--path-resolver", path_resolver,
                 "how paths are confined beneath the root: auto (default), openat2 or userspace "
                 "(config key backends.path_resolver)")
      ->check(CLI::IsMember({"auto", "openat2", "userspace"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Bad flags are config errors too: 2, never CLI11's own codes.
    return app.exit(e) == 0 ? 0 : 2;
  }

  auto load = [&]() -> absl::StatusOr<Config> {
    Config config;
    if (!config_path.empty()) {
      auto loaded = asyncd::daemon::LoadConfigFile(config_path, config);
      if (!loaded.ok()) return loaded.status();
      config = *loaded;
    }
    if (!socket.empty()) config.socket = socket;
    if (!root.empty()) config.root = root;
    if (!tcp.empty()) config.tcp = tcp;
    if (!tls_cert.empty()) config.tls_cert = tls_cert;
    if (!tls_key.empty()) config.tls_key = tls_key;
    if (!tls_client_ca.empty()) config.tls_client_ca = tls_client_ca;
    if (tcp_insecure) config.tcp_insecure = true;
    if (!metrics.empty()) config.metrics = metrics;
    if (!log_level.empty()) config.log_level = log_level;
    if (no_uring) config.io_uring = false;
    if (!path_resolver.empty()) config.path_resolver = path_resolver;
    asyncd::daemon::ApplyDefaults(config);
    if (absl::Status s = asyncd::daemon::ValidateConfig(config); !s.ok()) return s;
    return config;
  };
  absl::StatusOr<Config> config = load();
  if (!config.ok()) {
    std::fprintf(stderr, "asyncd: %s\n", std::string(config.status().message()).c_str());
    if (!check_config) {
      // systemd starts us again at once for any connection left pending on
      // its socket, until its start limit fails asyncd.socket.
      if (const size_t closed = asyncd::daemon::CloseActivatedConnections(1024); closed > 0) {
        std::fprintf(stderr,
                     "asyncd: config error: closed %zu pending connection(s) on the "
                     "socket-activated listener, so systemd does not restart asyncd for them\n",
                     closed);
      }
    }
    return 2;
  }
  if (check_config) {
    std::printf("ok\n");
    return 0;
  }
  asyncd::daemon::SetUpLogging();  // the journal under systemd, else the console
  spdlog::set_level(spdlog::level::from_str(config->log_level));

  // A predecessor's handover: asked for (--takeover), or kept for us by
  // systemd across a restart.
  std::optional<int> package;
  std::string refused;
  if (takeover) {
    if (config->takeover_socket == asyncd::daemon::kNoTakeoverSocket) {
      std::fprintf(stderr,
                   "asyncd: --takeover: server.takeover_socket is \"%s\": no daemon with this "
                   "config can be asked\n",
                   asyncd::daemon::kNoTakeoverSocket);
      return 2;
    }
    // The predecessor drains first: give it its grace, and some.
    const auto wait = std::chrono::milliseconds(config->drain_grace_ms) + std::chrono::seconds(30);
    spdlog::info("asking the daemon on {} to hand over", config->takeover_socket);
    absl::StatusOr<asyncd::daemon::TakenOver> got =
        asyncd::daemon::RequestTakeover(config->takeover_socket, wait);
    if (!got.ok()) {
      std::fprintf(stderr, "asyncd: --takeover: %s\n", std::string(got.status().message()).c_str());
      return 1;
    }
    // Server::Start takes the socket as it takes systemd's.
    asyncd::daemon::AddPassedFd(
        got->socket_fd,
        std::string(got->socket_path_bound ? asyncd::daemon::kTakenOverSocketFdName
                                           : asyncd::daemon::kTakenOverActivatedSocketFdName));
    if (got->package_fd >= 0) {
      package = got->package_fd;
    } else {
      refused = absl::StrCat("the predecessor's state is lost: ", got->state_lost);
      spdlog::error("took over the socket, but without the sessions: {}", got->state_lost);
    }
  } else if ((package = asyncd::daemon::TakePassedFd(asyncd::daemon::kHandoverFdName))) {
    // Out of the store at once: a crash from here on must not restore it twice.
    asyncd::daemon::RemoveFromDescriptorStore(asyncd::daemon::kHandoverFdName);
  }
  std::optional<asyncd::daemon::Handover> handover;
  if (package) {
    absl::StatusOr<asyncd::daemon::Handover> unpacked = asyncd::daemon::UnpackHandover(*package);
    if (unpacked.ok()) {
      handover = *std::move(unpacked);
    } else {
      refused = absl::StrCat("the handover is refused: ", unpacked.status().message());
      spdlog::error("the predecessor's handover is refused, starting without its state: {}",
                    std::string(unpacked.status().message()));
    }
  }

  // Signals are taken by one thread with sigwait, never by async handlers.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server =
      asyncd::daemon::Server::Start(*config, handover ? &*handover : nullptr, std::move(refused));
  handover.reset();  // descriptors the restore did not take are closed
  if (!server.ok()) {
    spdlog::critical("cannot start: {}", std::string(server.status().message()));
    return 1;
  }
  if (!tcp_port_file.empty()) {
    // Written whole under a temporary name, then renamed: a reader never sees half.
    const std::string tmp = tcp_port_file + ".tmp";
    if (FILE* f = std::fopen(tmp.c_str(), "w")) {
      std::fprintf(f, "%d\n", (*server)->tcp_port());
      std::fclose(f);
      std::rename(tmp.c_str(), tcp_port_file.c_str());
    } else {
      spdlog::error("cannot write --tcp-port-file {}", tcp_port_file);
    }
  }
  std::atomic<bool> stopped{false};
  std::thread signal_thread([&] {
    for (;;) {
      int sig = 0;
      sigwait(&signals, &sig);
      if (stopped.load()) return;  // woken by main: the daemon has stopped
      if (sig == SIGHUP) {
        asyncd::daemon::notify::Reloading();
        auto reloaded = load();
        if (!reloaded.ok()) {
          spdlog::error("reload refused, keeping the running config: {}",
                        std::string(reloaded.status().message()));
        } else if (std::optional<std::string> what = (*server)->Reload(*reloaded); !what) {
          spdlog::info("reload ignored: stopping");
          continue;  // no READY=1 after STOPPING=1
        } else {
          spdlog::info("reloaded{}{}", what->empty() ? "" : ": ", *what);
        }
        asyncd::daemon::notify::Ready((*server)->StatusLine());
        continue;
      }
      if (sig == SIGUSR2) {
        // A service of systemd's: a notify socket alone may be a container
        // manager's (nspawn sets one), which keeps no descriptors.
        const char* notify_socket = getenv("NOTIFY_SOCKET");
        const char* invocation = getenv("INVOCATION_ID");
        if (notify_socket == nullptr || *notify_socket == '\0' || invocation == nullptr ||
            *invocation == '\0') {
          spdlog::warn("SIGUSR2 ignored: handing over needs systemd's descriptor store");
          continue;
        }
        spdlog::info("SIGUSR2: handing over to the next daemon, then stopping");
        (*server)->HandOver([](int fd) {
          return asyncd::daemon::PushToDescriptorStore(fd, asyncd::daemon::kHandoverFdName);
        });
        return;
      }
      spdlog::info("{}: draining and stopping", strsignal(sig));
      (*server)->Shutdown();
      return;
    }
  });
  (*server)->Wait();
  // After a Drain RPC's stop the signal thread still waits for a signal.
  stopped.store(true);
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  return 0;
}
